"""Reading PyTorch's ``.pt`` / ``.pth`` files without torch and without running anything.

    tensors = read_torch_file("resnet18.pth")     # {"conv1.weight": ndarray, ...}

Layout. Since PyTorch 1.6, ``torch.save`` writes a zip archive with one
top-level folder: ``<folder>/data.pkl`` is a pickle of the saved object (for
weights, an ``OrderedDict`` of tensors), and each tensor's storage is a raw
little-endian byte string stored uncompressed at ``<folder>/data/<key>``. The
pickle refers to a storage by a "persistent id" ``("storage", <dtype class>,
key, location, element count)`` and rebuilds a tensor as
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``.

Safety. Unpickling normally calls whatever function the file names, which
is how a malicious pickle runs code. This module never uses ``pickle.load``:
it decodes the opcodes with ``pickletools.genops`` (which only parses) and
executes them on its own small stack machine whose only callables are
those in ``ALLOWED``: an ordered dict and the two functions that rebuild a
tensor or a parameter from a storage. Any other global the file names, or
any opcode outside ``OPCODES``, refuses the file with ``TorchFileError`` (a
``ModelFileError``, so callers that catch model-file errors catch it too).
Before a byte of tensor data is read, every storage is checked against the
archive (its entry exists, is stored uncompressed, holds exactly element
count x item size bytes within the file) and every tensor's offset, sizes
and strides against its storage; tensors are returned as read-only views of
their storages, so however many tensors share one, no declared size can
cause an allocation larger than the file (twice it for bfloat16, widened to
float32). The pickle machine caps its opcodes and the nesting of tuples, so
no key is too deep to hash. Entry names with path tricks (absolute,
``..``, backslashes) and duplicate names are refused.
"""

import io
import os
import pickletools
import re
import struct
import warnings
import zipfile

import numpy as np

from cnncli.modelfile import ModelFileError, check_file

__all__ = ["read_torch_file", "TorchFileError", "STORAGE_DTYPES"]

# The dtype of each storage class a persistent id may name.
STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32), "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16), "BFloat16Storage": np.dtype(np.uint16),
    "LongStorage": np.dtype(np.int64), "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16), "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8), "BoolStorage": np.dtype(np.bool_),
}

# The opcodes torch.save emits (pickle protocol 2), plus the protocol 4
# framing and short forms a re-saved file may use. Nothing that builds an
# arbitrary object (INST, OBJ, NEWOBJ, NEWOBJ_EX, EXT*) is here.
OPCODES = frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP",
    "NONE", "NEWTRUE", "NEWFALSE", "BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT",
    "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES",
    "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_LIST", "APPEND", "APPENDS",
    "EMPTY_DICT", "SETITEM", "SETITEMS",
    "BINPUT", "LONG_BINPUT", "MEMOIZE", "BINGET", "LONG_BINGET",
    "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "BINPERSID",
})

MAX_PICKLE_BYTES = 64 << 20     # a ResNet-152 state dict's pickle is about 100 KB
# A ResNet-152 state dict's pickle runs about 20,000 opcodes and nests
# containers 5 deep; the caps bound the memory and the recursion (hashing a
# tuple key, describing a value) that a hostile pickle can ask for.
MAX_OPCODES = 2_000_000
MAX_NESTING = 32
MAX_DIMENSIONS = 8
SAFE_ENTRY = re.compile(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*\Z")
STORAGE_KEY = re.compile(r"[A-Za-z0-9_]{1,64}\Z")


class TorchFileError(ModelFileError):
    """A .pt/.pth file that cannot be read safely: the message names the file and why."""


class _Refused(Exception):
    """A problem with the file; becomes a TorchFileError naming the file."""


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class _Storage:
    """A storage the pickle refers to: its entry is read only after every check passed."""

    def __init__(self, key, storage_type, count):
        self.key = key
        self.storage_type = storage_type
        self.count = count
        self.array = None


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride


class _OrderedDict(dict):
    """What ``collections.OrderedDict`` rebuilds to: a plain dict (insertion-ordered)."""


def _kind(value):
    """What a value is, in the file's terms."""
    names = {_OrderedDict: "ordered dict", _Tensor: "tensor", _Storage: "storage",
             _StorageType: "storage class", dict: "dict", list: "list", tuple: "tuple"}
    return names.get(type(value), "function" if callable(value) else type(value).__name__)


def _short(value, depth=0):
    """A short description of a value from the file, never recursing far (``str`` of a
    deeply nested container would)."""
    if isinstance(value, (str, bytes)):
        return repr(value[:60]) + ("..." if len(value) > 60 else "")
    if isinstance(value, (int, float, bool, type(None))):
        return repr(value)[:40]
    if isinstance(value, (tuple, list)) and depth < 2:
        inner = ", ".join(_short(item, depth + 1) for item in value[:6])
        more = ", ..." if len(value) > 6 else ""
        return f"({inner}{more})" if isinstance(value, tuple) else f"[{inner}{more}]"
    return f"a {_kind(value)}"


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _int_tuple(value, what):
    if not isinstance(value, tuple) or len(value) > MAX_DIMENSIONS \
            or not all(_is_count(v) for v in value):
        raise _Refused(f"a tensor's {what} must be up to {MAX_DIMENSIONS} non-negative ints, "
                       f"got {_short(value)}")
    return value


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None,
                    metadata=None):
    if not isinstance(storage, _Storage):
        raise _Refused("a tensor is rebuilt from something that is not a storage")
    if not _is_count(offset):
        raise _Refused(f"a tensor's storage offset must be a non-negative int, got {offset!r}")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise _Refused(f"a tensor has {len(size)} sizes but {len(stride)} strides")
    count = int(np.prod(size, dtype=object))
    if count:
        last = offset + sum((extent - 1) * step for extent, step in zip(size, stride))
        if last >= storage.count:
            raise _Refused(f"a tensor of size {size} at offset {offset} reaches element "
                           f"{last:,} of storage {storage.key!r}, which has {storage.count:,}")
        if count > storage.count:
            raise _Refused(f"a tensor of size {size} has more elements than its storage "
                           f"{storage.key!r} ({storage.count:,})")
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None):
    if not isinstance(data, _Tensor):
        raise _Refused("a parameter is rebuilt from something that is not a tensor")
    return data


def _ordered_dict(*args):
    if args:
        raise _Refused("an ordered dict is rebuilt with arguments")
    return _OrderedDict()


# Everything a file may name. Storage classes are only markers for persistent ids.
ALLOWED = {("collections", "OrderedDict"): _ordered_dict,
           ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
           ("torch._utils", "_rebuild_parameter"): _rebuild_parameter}
ALLOWED.update({("torch", name): _StorageType(name) for name in STORAGE_DTYPES})


class _Machine:
    """Executes the allowed opcodes of one pickle."""

    def __init__(self, storage_of):
        self.stack = []
        self.marks = []
        self.memo = {}
        self.storage_of = storage_of
        # Nesting depth of each tuple made, by id: a tuple is immutable, so its
        # depth is known when it is made, before anything hashes it.
        self.depths = {}

    def pop_mark(self):
        if not self.marks:
            raise _Refused("a MARK is missing")
        start = self.marks.pop()
        if start > len(self.stack):
            raise _Refused("the stack is shorter than its MARK")
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def pop(self, count=1):
        if len(self.stack) - count < (self.marks[-1] if self.marks else 0):
            raise _Refused("the pickle pops more than it pushed")
        items = self.stack[len(self.stack) - count:]
        del self.stack[len(self.stack) - count:]
        return items

    def top(self):
        if not self.stack:
            raise _Refused("the pickle reads an empty stack")
        return self.stack[-1]

    def tuple(self, items):
        depth = 1 + max((self.depths.get(id(item), 1) for item in items
                         if type(item) is tuple), default=0)
        if depth > MAX_NESTING:
            raise _Refused(f"the pickle nests tuples more than {MAX_NESTING} deep")
        made = tuple(items)
        self.depths[id(made)] = depth
        return made

    def run(self, data):
        stream = io.BytesIO(data)
        with warnings.catch_warnings():
            # genops decodes a refused text opcode's argument before we see
            # it, which may warn about its escapes.
            warnings.simplefilter("ignore")
            return self._run(stream, len(data))

    def _run(self, stream, size):
        for count, (opcode, argument, position) in enumerate(pickletools.genops(stream)):
            if count >= MAX_OPCODES:
                raise _Refused(f"the pickle runs more than {MAX_OPCODES:,} opcodes, more than a "
                               "weights file needs")
            name = opcode.name
            if name not in OPCODES:
                raise _Refused(f"pickle opcode {name} at byte {position} is not allowed in a "
                               "weights file")
            if name == "STOP":
                if stream.tell() != size:
                    raise _Refused("the pickle has bytes after its end")
                (result,) = self.pop()
                if self.stack or self.marks:
                    raise _Refused("the pickle ends with values left on its stack")
                return result
            self.step(name, argument)
        raise _Refused("the pickle has no STOP")

    def step(self, name, argument):
        stack = self.stack
        if name in ("PROTO", "FRAME"):
            return
        if name == "MARK":
            self.marks.append(len(stack))
        elif name == "POP":
            self.pop()
        elif name == "POP_MARK":
            self.pop_mark()
        elif name == "DUP":
            stack.append(self.top())
        elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
            stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
        elif name in ("BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT", "BINUNICODE",
                      "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES"):
            stack.append(argument)
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name == "TUPLE":
            stack.append(self.tuple(self.pop_mark()))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            stack.append(self.tuple(self.pop(int(name[-1]))))
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name in ("APPEND", "APPENDS"):
            items = self.pop() if name == "APPEND" else self.pop_mark()
            target = self.top()
            if type(target) is not list:
                raise _Refused(f"{name} on a {_kind(target)}, not a list")
            target.extend(items)
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name in ("SETITEM", "SETITEMS"):
            self.set_items(name, self.pop(2) if name == "SETITEM" else self.pop_mark())
        elif name in ("BINPUT", "LONG_BINPUT", "MEMOIZE"):
            self.memo[len(self.memo) if name == "MEMOIZE" else argument] = self.top()
        elif name in ("BINGET", "LONG_BINGET"):
            if argument not in self.memo:
                raise _Refused(f"the pickle reads memo entry {argument}, which it never wrote")
            stack.append(self.memo[argument])
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            stack.append(self.allowed_global(name, argument))
        elif name == "REDUCE":
            stack.append(self.reduce(*self.pop(2)))
        elif name == "BUILD":
            (state,) = self.pop()
            # An OrderedDict state dict carries its per-module version numbers
            # as attribute state; they are not needed and are dropped.
            if not isinstance(self.top(), _OrderedDict) or not isinstance(state, dict):
                raise _Refused("BUILD sets the state of something other than an ordered dict")
        elif name == "BINPERSID":
            (identifier,) = self.pop()
            stack.append(self.storage_of(identifier))

    def set_items(self, name, items):
        target = self.top()
        if not isinstance(target, dict):
            raise _Refused(f"{name} on a {_kind(target)}, not a dict")
        if len(items) % 2:
            raise _Refused(f"{name} with a key and no value")
        for key, value in zip(items[::2], items[1::2]):
            if not isinstance(key, (str, int, bytes, tuple, type(None))):
                raise _Refused(f"a dict key is a {type(key).__name__}")
            target[key] = value

    def allowed_global(self, name, argument):
        """What GLOBAL or STACK_GLOBAL names, if it is on the allow-list."""
        if name == "GLOBAL":
            module, _, qualified = argument.partition(" ")
        else:
            module, qualified = self.pop(2)
            if not isinstance(module, str) or not isinstance(qualified, str):
                raise _Refused("STACK_GLOBAL names something that is not a string")
        if (module, qualified) not in ALLOWED:
            raise _Refused(f"the pickle asks for {module[:100]}.{qualified[:100]}, which a "
                           "weights file may not use (only tensors, their storages and "
                           "ordered dicts are rebuilt)")
        return ALLOWED[module, qualified]

    def reduce(self, function, arguments):
        """REDUCE: call one of the allowed rebuilding functions."""
        if function not in (_ordered_dict, _rebuild_tensor, _rebuild_parameter) \
                or not isinstance(arguments, tuple):
            raise _Refused("REDUCE calls something that is not an allowed function")
        try:
            return function(*arguments)
        except TypeError:
            name = next(f"{module}.{qualified}" for (module, qualified), allowed
                        in ALLOWED.items() if allowed is function)
            raise _Refused(f"{name} called with {len(arguments)} arguments") from None


def _check_entry_names(infos):
    seen = set()
    for info in infos:
        name = info.filename
        if info.flag_bits & 0x1:
            raise _Refused(f"the archive entry {name[:100]!r} is encrypted")
        if not SAFE_ENTRY.match(name) or any(part in ("", ".", "..") for part in name.split("/")):
            raise _Refused(f"the archive has an entry with an unsafe name {name[:100]!r}")
        if name in seen:
            raise _Refused(f"the archive has two entries named {name[:100]!r}")
        seen.add(name)


def _archive_folder(archive):
    pickles = [info for info in archive.infolist() if info.filename.endswith("/data.pkl")
               and info.filename.count("/") == 1]
    if "constants.pkl" in {name.rsplit("/", 1)[-1] for name in archive.namelist()}:
        raise _Refused("this is a TorchScript archive (torch.jit.save); save the model's "
                       "state_dict() with torch.save instead")
    if len(pickles) != 1:
        raise _Refused("not a PyTorch archive: expected one <folder>/data.pkl entry, found "
                       f"{len(pickles)}")
    return pickles[0].filename[:-len("data.pkl")]


def _read_storage(archive, folder, storage, size_of_file, byteorder):
    name = f"{folder}data/{storage.key}"
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise _Refused(f"storage {storage.key!r} has no entry {name!r} in the archive") from None
    dtype = storage.storage_type.dtype.newbyteorder("<" if byteorder == "little" else ">")
    expected = storage.count * dtype.itemsize
    if info.compress_type != zipfile.ZIP_STORED:
        raise _Refused(f"storage {storage.key!r} is compressed; PyTorch stores tensors "
                       "uncompressed")
    if info.file_size != expected:
        raise _Refused(f"storage {storage.key!r} declares {storage.count:,} "
                       f"{storage.storage_type.name} elements ({expected:,} bytes) but its "
                       f"entry holds {info.file_size:,} bytes")
    if info.header_offset + info.file_size > size_of_file:
        raise _Refused(f"storage {storage.key!r} lies beyond the end of the file "
                       "(the archive is truncated)")
    with archive.open(info) as entry:
        raw = entry.read(expected + 1)
    if len(raw) != expected:
        raise _Refused(f"storage {storage.key!r} is truncated")
    array = np.frombuffer(raw, dtype=dtype)
    if storage.storage_type.name == "BFloat16Storage":
        # bfloat16 is the top half of a float32.
        array = (array.astype(np.uint32) << 16).view(np.float32)
    elif not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    return array


def _materialize(tensor):
    """The tensor as a read-only view of its storage: tensors that share a storage share its
    memory, so what is read never exceeds the archive's size."""
    storage = tensor.storage
    base = storage.array
    if 0 in tensor.size:
        return np.zeros(tensor.size, dtype=base.dtype)
    strides = tuple(step * base.itemsize for step in tensor.stride)
    return np.lib.stride_tricks.as_strided(base[tensor.offset:], shape=tensor.size,
                                           strides=strides, writeable=False)


def _state_dict(saved):
    """The {name: tensor} inside what was saved: a state dict, or a checkpoint holding one."""
    if isinstance(saved, dict) and saved and all(isinstance(v, _Tensor) for v in saved.values()):
        return saved
    if isinstance(saved, dict):
        for key in ("state_dict", "model_state_dict", "model", "module", "net"):
            inner = saved.get(key)
            if isinstance(inner, dict) and inner and \
                    all(isinstance(v, _Tensor) for v in inner.values()):
                return inner
    raise _Refused(f"expected a state dict (names to tensors) or a checkpoint holding one "
                   f"under 'state_dict' or 'model', found a {_kind(saved)}")


def read_torch_file(path):
    """The state dict of a ``.pt``/``.pth`` file as {name: ndarray}, read without torch.

    A checkpoint holding the state dict under ``state_dict``, ``model_state_dict``
    or ``model`` works too. Raises FileNotFoundError for a missing file and
    TorchFileError for anything the file gets wrong or is not allowed to do.
    """
    path = check_file(path, "PyTorch file")
    try:
        with open(path, "rb") as handle:
            start = handle.read(4)
    except OSError as error:
        raise TorchFileError(f"{path}: cannot be read ({error.strerror or error})") from None
    try:
        return _read(path, start)
    except _Refused as error:
        raise TorchFileError(f"{path}: {error}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError,
            struct.error, NotImplementedError, OverflowError) as error:
        # What the zipfile module raises for a damaged archive (bad magic
        # numbers, undecodable names, seeks outside the file, unknown
        # compression, bad CRC...).
        detail = getattr(error, "strerror", None) or error
        raise TorchFileError(f"{path}: not a readable PyTorch archive ({detail})"[:400]) \
            from None


def _read(path, start):
    size_of_file = os.path.getsize(path)
    if start[:1] == b"\x80":    # a bare pickle protocol header
        raise _Refused("saved in PyTorch's legacy format (before 1.6), which cnncli does not "
                       "read; re-save it with a recent torch.save, or as .safetensors")
    if not zipfile.is_zipfile(path):
        raise _Refused("not a PyTorch file (expected a zip archive written by torch.save)")
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        _check_entry_names(infos)
        folder = _archive_folder(archive)
        pickle_info = archive.getinfo(f"{folder}data.pkl")
        if pickle_info.file_size > MAX_PICKLE_BYTES:
            raise _Refused(f"data.pkl is {pickle_info.file_size:,} bytes, more than a "
                           "weights file needs")
        with archive.open(pickle_info) as entry:
            data = entry.read(MAX_PICKLE_BYTES + 1)
        byteorder = "little"
        if f"{folder}byteorder" in archive.namelist():
            with archive.open(f"{folder}byteorder") as entry:
                byteorder = entry.read(16).decode("ascii", "replace")
            if byteorder not in ("little", "big"):
                raise _Refused(f"unknown byte order {byteorder[:16]!r}")

        storages = {}

        def storage_of(identifier):
            if not (isinstance(identifier, tuple) and len(identifier) == 5
                    and identifier[0] == "storage"):
                raise _Refused(f"unsupported persistent id (a {_kind(identifier)}; expected "
                               "('storage', dtype class, key, location, element count))")
            _, storage_type, key, location, count = identifier
            if not isinstance(storage_type, _StorageType):
                raise _Refused("a storage has no known dtype class")
            if not isinstance(key, str) or not STORAGE_KEY.match(key):
                raise _Refused(f"a storage key must be a short name, got {_short(key)}")
            if not isinstance(location, str) or not _is_count(count):
                raise _Refused(f"storage {key!r} has a bad location or element count")
            if key in storages:
                known = storages[key]
                if known.storage_type is not storage_type or known.count != count:
                    raise _Refused(f"storage {key!r} is declared twice with different types "
                                   "or sizes")
                return known
            storages[key] = _Storage(key, storage_type, count)
            return storages[key]

        try:
            saved = _Machine(storage_of).run(data)
        except _Refused:
            raise
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, EOFError) as error:
            raise _Refused(f"data.pkl is not a valid pickle ({error})"[:300]) from None
        tensors = _state_dict(saved)
        names = [name for name in tensors if not isinstance(name, str)]
        if names:
            raise _Refused(f"tensor names must be strings, found {_short(names[0])}")
        for tensor in tensors.values():
            storage = tensor.storage
            if storage.array is None:
                storage.array = _read_storage(archive, folder, storage, size_of_file, byteorder)
        return {name: _materialize(tensor) for name, tensor in tensors.items()}
