"""Writing PyTorch-format archives without torch, so tests can make good and bad ones.

``state_dict_pickle`` assembles, opcode by opcode, the pickle ``torch.save``
writes for a state dict; ``write_archive`` puts a pickle and storages in the
zip layout of ``torch.save``. Tests change one thing at a time to make the
malformed files the reader must refuse.
"""

import struct
import zipfile

import numpy as np

STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                 np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage"}


def text(value):
    data = value.encode("utf-8")
    return b"X" + struct.pack("<I", len(data)) + data


def integer(value):
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    if -2**31 <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def global_(module, name):
    return b"c" + f"{module}\n{name}\n".encode()


def tuple_(*items):
    return b"(" + b"".join(items) + b"t"


MARK, EMPTY_TUPLE, REDUCE, SETITEMS, STOP = b"(", b")", b"R", b"u", b"."
PROTO2, BINPERSID, FALSE = b"\x80\x02", b"Q", b"\x89"


def tensor(storage_type, key, count, offset, size, stride, location="cpu"):
    """The opcodes that rebuild one tensor from storage ``key``."""
    persistent_id = tuple_(text("storage"), global_("torch", storage_type), text(key),
                           text(location), integer(count))
    return (global_("torch._utils", "_rebuild_tensor_v2")
            + tuple_(persistent_id + BINPERSID, integer(offset),
                     tuple_(*map(integer, size)), tuple_(*map(integer, stride)), FALSE,
                     global_("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE)
            + REDUCE)


def state_dict_pickle(entries):
    """A pickle of an OrderedDict {name: tensor opcodes}."""
    body = b"".join(text(name) + opcodes for name, opcodes in entries.items())
    return (PROTO2 + global_("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
            + MARK + body + SETITEMS + STOP)


def contiguous_strides(shape):
    strides, step = [], 1
    for extent in reversed(shape):
        strides.insert(0, step)
        step *= extent
    return tuple(strides)


def arrays_to_archive(arrays):
    """(pickle, {key: bytes}) of a state dict of arrays, one storage each."""
    entries, storages = {}, {}
    for index, (name, array) in enumerate(arrays.items()):
        array = np.array(array, order="C")
        key = str(index)
        entries[name] = tensor(STORAGE_NAMES[array.dtype], key, array.size, 0, array.shape,
                               contiguous_strides(array.shape))
        storages[key] = array.astype(array.dtype.newbyteorder("<")).tobytes()
    return state_dict_pickle(entries), storages


def write_archive(path, pickle, storages, folder="archive", extra=(), compression=None,
                  names=None):
    """A torch.save-style zip: <folder>/data.pkl, <folder>/data/<key>, version, byteorder.

    ``extra`` adds (name, bytes) entries; ``names`` renames entries ({old: new}).
    """
    names = names or {}
    entries = [(f"{folder}/data.pkl", pickle), (f"{folder}/byteorder", b"little")]
    entries += [(f"{folder}/data/{key}", data) for key, data in storages.items()]
    entries += [(f"{folder}/version", b"3\n")] + list(extra)
    with zipfile.ZipFile(path, "w", compression=compression or zipfile.ZIP_STORED) as archive:
        for name, data in entries:
            archive.writestr(names.get(name, name), data)
    return path
