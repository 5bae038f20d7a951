"""The PyTorch-file reader: real torch.save files, and a corpus of malformed and hostile ones.

Every bad file must be refused with ModelFileError (one line naming the
problem), never run code, crash, or allocate more than the file holds.
"""

import io
import os
import pickle
import random
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cnncli.modelfile import ModelFileError
from cnncli.torchfile import read_torch_file

from torch_archive import (BINPERSID, EMPTY_TUPLE, MARK, PROTO2, REDUCE, SETITEMS, STOP,
                           arrays_to_archive, global_, integer, state_dict_pickle, tensor,
                           text, tuple_, write_archive)

FIXTURES = Path(__file__).parent / "fixtures" / "torchvision"
TORCH_FILE = FIXTURES / "resnet18_w8.pt"


def small_arrays():
    rng = np.random.default_rng(0)
    return {"conv.weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
            "bn.running_var": rng.random(4).astype(np.float32),
            "bn.num_batches_tracked": np.array(7, dtype=np.int64),
            "fc.weight": rng.normal(size=(2, 4))}


def refused(path, match):
    with pytest.raises(ModelFileError, match=match) as caught:
        read_torch_file(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and "\n" not in message
    return message


# -- good files ---------------------------------------------------------------------------


def test_reads_a_state_dict_saved_by_torch():
    tensors = read_torch_file(TORCH_FILE)
    assert len(tensors) == 122
    assert tensors["conv1.weight"].shape == (8, 3, 7, 7)
    assert tensors["conv1.weight"].dtype == np.float32
    assert tensors["bn1.num_batches_tracked"].dtype == np.int64
    assert tensors["bn1.num_batches_tracked"].shape == ()
    assert list(tensors)[:2] == ["conv1.weight", "bn1.weight"]     # the saved order


def test_the_pt_and_safetensors_fixtures_hold_the_same_tensors():
    from safetensors.numpy import load_file
    ours = read_torch_file(TORCH_FILE)
    theirs = load_file(FIXTURES / "resnet18_w8.safetensors")
    assert set(ours) == set(theirs)
    for name, value in theirs.items():
        np.testing.assert_array_equal(ours[name], value, err_msg=name)


def test_reads_what_the_test_writer_writes(tmp_path):
    arrays = small_arrays()
    path = write_archive(tmp_path / "w.pt", *arrays_to_archive(arrays))
    tensors = read_torch_file(path)
    assert list(tensors) == list(arrays)
    for name, value in arrays.items():
        assert tensors[name].dtype == value.dtype and tensors[name].shape == value.shape
        np.testing.assert_array_equal(tensors[name], value)


def test_views_share_a_storage_and_keep_their_strides(tmp_path):
    base = np.arange(24, dtype=np.float32)
    entries = {"matrix": tensor("FloatStorage", "0", 24, 0, (4, 6), (6, 1)),
               "transposed": tensor("FloatStorage", "0", 24, 0, (6, 4), (1, 6)),
               "corner": tensor("FloatStorage", "0", 24, 8, (3, 4), (6, 1)),
               "empty": tensor("FloatStorage", "0", 24, 0, (0, 5), (5, 1))}
    path = write_archive(tmp_path / "v.pt", state_dict_pickle(entries), {"0": base.tobytes()})
    tensors = read_torch_file(path)
    matrix = base.reshape(4, 6)
    np.testing.assert_array_equal(tensors["matrix"], matrix)
    np.testing.assert_array_equal(tensors["transposed"], matrix.T)
    np.testing.assert_array_equal(tensors["corner"], matrix[1:, 2:])
    assert tensors["empty"].shape == (0, 5)
    # Read-only views of the one storage: however many tensors share it, what
    # is read is no larger than the archive.
    assert np.shares_memory(tensors["matrix"], tensors["transposed"])
    with pytest.raises(ValueError, match="read-only"):
        tensors["matrix"][0, 0] = 100


def test_big_endian_and_half_precision_storages(tmp_path):
    values = np.linspace(-2, 2, 6)
    entries = {"double": tensor("DoubleStorage", "0", 6, 0, (6,), (1,)),
               "half": tensor("HalfStorage", "1", 6, 0, (2, 3), (3, 1))}
    storages = {"0": values.astype(">f8").tobytes(), "1": values.astype(">f2").tobytes()}
    path = write_archive(tmp_path / "be.pt", state_dict_pickle(entries), storages)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("archive/byteorder_", b"")   # an unknown entry is ignored
    # Rewrite with a big-endian byteorder entry.
    data = _entries(path)
    data["archive/byteorder"] = b"big"
    _rezip(path, data)
    tensors = read_torch_file(path)
    np.testing.assert_array_equal(tensors["double"], values)
    np.testing.assert_array_equal(tensors["half"], values.astype(np.float16).reshape(2, 3))


def test_bfloat16_storages_become_float32(tmp_path):
    values = np.array([1.0, -2.5, 0.15625, 3e38], dtype=np.float32)
    top_halves = (values.view(np.uint32) >> 16).astype("<u2")
    entries = {"b": tensor("BFloat16Storage", "0", 4, 0, (4,), (1,))}
    path = write_archive(tmp_path / "bf.pt", state_dict_pickle(entries),
                         {"0": top_halves.tobytes()})
    expected = (top_halves.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(read_torch_file(path)["b"], expected)


def test_a_checkpoint_holding_the_state_dict(tmp_path):
    pickle_bytes, storages = arrays_to_archive({"fc.weight": np.ones((2, 3), np.float32)})
    inner = pickle_bytes[len(PROTO2):-1]      # the OrderedDict without PROTO and STOP
    checkpoint = (PROTO2 + b"}" + MARK + text("epoch") + integer(12) + text("lr")
                  + b"G" + struct.pack(">d", 0.1) + text("state_dict") + inner + SETITEMS
                  + STOP)
    path = write_archive(tmp_path / "ckpt.pth", checkpoint, storages)
    np.testing.assert_array_equal(read_torch_file(path)["fc.weight"], np.ones((2, 3)))


# -- the malformed and hostile corpus ------------------------------------------------------


def _entries(path):
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _rezip(path, entries, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


def _with_pickle(tmp_path, pickle_bytes, name="bad.pt"):
    _, storages = arrays_to_archive(small_arrays())
    return write_archive(tmp_path / name, pickle_bytes, storages)


def test_a_pickle_that_calls_a_function_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    payload = (PROTO2 + global_("os", "system") + tuple_(text(f"touch {marker}")) + REDUCE
               + STOP)
    refused(_with_pickle(tmp_path, payload), r"asks for os\.system, which a weights file "
                                             r"may not use")
    # The same attack as Python's own pickle module would write it.
    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)
    refused(_with_pickle(tmp_path, pickle.dumps(Exploit(), protocol=2), "b.pt"),
            r"asks for posix\.system")
    refused(_with_pickle(tmp_path, pickle.dumps(Exploit(), protocol=4), "c.pt"),
            r"asks for posix\.system")
    assert not marker.exists()


@pytest.mark.parametrize("module, name", [
    ("builtins", "eval"), ("builtins", "getattr"), ("subprocess", "Popen"),
    ("numpy.core.multiarray", "_reconstruct"), ("torch._utils", "_rebuild_qtensor"),
    ("torch", "load"), ("collections", "defaultdict"), ("torch._utils", "_rebuild_tensor"),
])
def test_unknown_globals_are_refused(tmp_path, module, name):
    payload = PROTO2 + global_(module, name) + EMPTY_TUPLE + REDUCE + STOP
    refused(_with_pickle(tmp_path, payload), rf"asks for {module}\.{name}")


def test_a_global_is_refused_even_when_never_called(tmp_path):
    payload = PROTO2 + global_("os", "system") + STOP
    refused(_with_pickle(tmp_path, payload), r"asks for os\.system")


@pytest.mark.parametrize("opcode, name", [
    (b"i__builtin__\neval\n", "INST"), (b"\x82\x01", "EXT1"), (b"\x81", "NEWOBJ"),
    (b"o", "OBJ"), (b"I1\n", "INT"), (b"S'x'\n", "STRING"), (b"\x93", "STACK_GLOBAL"),
])
def test_opcodes_outside_the_allow_list_are_refused(tmp_path, opcode, name):
    payload = PROTO2 + b"}" + MARK + opcode + STOP
    if name == "STACK_GLOBAL":      # allowed, but it names a function like GLOBAL does
        payload = PROTO2 + text("os") + text("system") + opcode + STOP
        refused(_with_pickle(tmp_path, payload), r"asks for os\.system")
        return
    refused(_with_pickle(tmp_path, payload), rf"pickle opcode {name} at byte 4 is not allowed")


def test_build_only_sets_an_ordered_dicts_state(tmp_path):
    payload = PROTO2 + b"]" + b"}" + b"b" + STOP
    refused(_with_pickle(tmp_path, payload), "BUILD sets the state of something other than "
                                             "an ordered dict")


@pytest.mark.parametrize("payload, match", [
    (PROTO2 + b"]" + STOP, "expected a state dict"),
    (PROTO2 + integer(3) + STOP, "expected a state dict"),
    (PROTO2 + b"}" + STOP, "expected a state dict"),
    (PROTO2 + b"h\x05" + STOP, "memo entry 5, which it never wrote"),
    (PROTO2 + b"}" + b"s" + STOP, "pops more than it pushed"),
    (PROTO2 + b"}" + b"t" + STOP, "MARK is missing"),
    (PROTO2 + b"}" + b"}", "pickle exhausted before seeing STOP"),
    (PROTO2 + b"}" + STOP + b"junk", "bytes after its end"),
    (PROTO2 + b"}}" + STOP, "values left on its stack"),
    (PROTO2 + b"]" + text("a") + text("b") + b"s" + STOP, "SETITEM on a list"),
    (PROTO2 + b"}" + b"]" + integer(1) + b"s" + STOP, "dict key is a list"),
    (PROTO2 + b"X\xff\xff\xff\x7f" + b"abc", "not a valid pickle"),
    (PROTO2 + b"\xfe" + STOP, "not a valid pickle"),
    (PROTO2 + text("x") + BINPERSID + STOP, "unsupported persistent id"),
    (PROTO2 + tuple_(text("storage"), text("FloatStorage"), text("0"), text("cpu"),
                     integer(4)) + BINPERSID + STOP, "no known dtype class"),
    (PROTO2 + global_("torch", "FloatStorage") + EMPTY_TUPLE + REDUCE + STOP,
     "REDUCE calls something that is not an allowed function"),
    (PROTO2 + global_("collections", "OrderedDict") + tuple_(integer(1)) + REDUCE + STOP,
     "rebuilt with arguments"),
    (PROTO2 + global_("torch._utils", "_rebuild_tensor_v2") + tuple_(integer(1)) + REDUCE
     + STOP, r"torch\._utils\._rebuild_tensor_v2 called with 1 arguments"),
    (PROTO2 + global_("torch._utils", "_rebuild_tensor_v2")
     + tuple_(integer(1), integer(0), EMPTY_TUPLE, EMPTY_TUPLE) + REDUCE + STOP,
     "not a storage"),
])
def test_malformed_pickles_are_refused(tmp_path, payload, match):
    refused(_with_pickle(tmp_path, payload), match)


def _one_tensor(tmp_path, storage_bytes, count, offset, size, stride, key="0",
                storage_type="FloatStorage"):
    entries = {"w": tensor(storage_type, key, count, offset, size, stride)}
    return write_archive(tmp_path / "t.pt", state_dict_pickle(entries), {"0": storage_bytes})


@pytest.mark.parametrize("count, offset, size, stride, match", [
    (8, 0, (4,), (1,), r"declares 8 FloatStorage elements \(32 bytes\) but its entry holds "
                       "16 bytes"),
    (2, 0, (2,), (1,), "declares 2 FloatStorage elements"),
    (4, 2, (4,), (1,), "reaches element 5 of storage '0', which has 4"),
    (4, 0, (2, 2), (4, 1), "reaches element 5"),
    (4, 0, (1000, 1000), (0, 0), "more elements than its storage"),
    (4, -1, (2,), (1,), "offset must be a non-negative int"),
    (4, 0, (2,), (-1,), "stride must be up to 8 non-negative ints"),
    (4, 0, (1,) * 9, (1,) * 9, "size must be up to 8"),
    (4, 0, (2, 2), (1,), "2 sizes but 1 strides"),
    (-4, 0, (2,), (1,), "bad location or element count"),
])
def test_storages_and_tensors_that_lie_about_their_size(tmp_path, count, offset, size, stride,
                                                         match):
    path = _one_tensor(tmp_path, np.zeros(4, np.float32).tobytes(), count, offset, size, stride)
    refused(path, match)


def test_a_storage_missing_from_the_archive(tmp_path):
    path = _one_tensor(tmp_path, b"", 4, 0, (4,), (1,), key="7")
    refused(path, r"storage '7' has no entry 'archive/data/7'")


@pytest.mark.parametrize("key", ["../0", "0/../../x", "", "a" * 65, "0\n"])
def test_storage_keys_cannot_name_other_paths(tmp_path, key):
    path = _one_tensor(tmp_path, np.zeros(4, np.float32).tobytes(), 4, 0, (4,), (1,), key=key)
    refused(path, "storage key must be a short name")


def test_a_storage_declared_twice_with_different_sizes(tmp_path):
    entries = {"a": tensor("FloatStorage", "0", 4, 0, (4,), (1,)),
               "b": tensor("FloatStorage", "0", 2, 0, (2,), (1,))}
    path = write_archive(tmp_path / "t.pt", state_dict_pickle(entries),
                         {"0": bytes(16)})
    refused(path, "declared twice")


def test_compressed_storages_are_refused(tmp_path):
    # A compressed entry could expand far beyond the file (a zip bomb); torch never
    # compresses.
    path = write_archive(tmp_path / "z.pt", *arrays_to_archive(small_arrays()),
                         compression=zipfile.ZIP_DEFLATED)
    refused(path, "is compressed")


@pytest.mark.parametrize("bad_name", [
    "../archive/data.pkl", "/archive/data.pkl", "archive/../../etc/passwd",
    "archive\\..\\x", "archive//data/0", "C:/archive/x", "archive/./data.pkl",
])
def test_path_tricks_in_the_zip_are_refused(tmp_path, bad_name):
    path = write_archive(tmp_path / "p.pt", *arrays_to_archive(small_arrays()),
                         extra=[(bad_name, b"x")])
    refused(path, "unsafe name")


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_duplicate_entries_are_refused(tmp_path):
    pickle_bytes, storages = arrays_to_archive(small_arrays())
    path = write_archive(tmp_path / "d.pt", pickle_bytes, storages,
                         extra=[("archive/data/0", b"\0" * 16)])
    refused(path, "two entries named 'archive/data/0'")


def test_archives_without_exactly_one_pickle(tmp_path):
    pickle_bytes, storages = arrays_to_archive(small_arrays())
    two = write_archive(tmp_path / "two.pt", pickle_bytes, storages,
                        extra=[("other/data.pkl", pickle_bytes)])
    refused(two, "expected one <folder>/data.pkl entry, found 2")
    none = write_archive(tmp_path / "none.pt", pickle_bytes, storages,
                         names={"archive/data.pkl": "archive/model.pkl"})
    refused(none, "found 0")
    script = write_archive(tmp_path / "script.pt", pickle_bytes, storages,
                           extra=[("archive/constants.pkl", b"")])
    refused(script, "TorchScript archive")


def test_truncated_archives_are_refused(tmp_path):
    data = TORCH_FILE.read_bytes()
    for cut in (10, 100, 5_000, len(data) // 2, len(data) - 300, len(data) - 1):
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(data[:cut])
        with pytest.raises(ModelFileError):
            read_torch_file(path)


def test_a_storage_entry_pointing_past_the_end(tmp_path):
    # Keep the central directory but cut away the storages' bytes: the sizes it
    # declares no longer fit in the file.
    data = bytearray(TORCH_FILE.read_bytes())
    with zipfile.ZipFile(TORCH_FILE) as archive:
        info = archive.getinfo("resnet18_w8/data/50")
    start = info.header_offset + 200
    data[start:start + info.file_size // 2] = b""
    path = tmp_path / "short.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError):
        read_torch_file(path)


@pytest.mark.parametrize("content, match", [
    (b"", "not a PyTorch file"), (b"hello world", "not a PyTorch file"),
    (b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.", "legacy format"),
    (b"PK\x03\x04broken", "not a PyTorch file|not a readable PyTorch archive"),
])
def test_files_that_are_not_pytorch_archives(tmp_path, content, match):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    refused(path, match)


def test_missing_paths_and_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_torch_file(tmp_path / "absent.pt")
    with pytest.raises(ModelFileError, match="is a folder"):
        read_torch_file(tmp_path)


# -- fuzzing -------------------------------------------------------------------------------


def _mutate(data, rng):
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        choice = rng.random()
        position = rng.randrange(len(data)) if data else 0
        if choice < 0.08:
            # Deep nesting: tuples of tuples (hashed as keys), marks, lists in lists.
            depth = rng.choice([31, 32, 33, 1200, 50_000])
            data[position:position] = rng.choice([b")" + b"\x85" * depth, b"(" * depth,
                                                  b"]" * depth + b"a" * (depth - 1)])
        elif choice < 0.5 and data:
            data[position] = rng.randrange(256)
        elif choice < 0.7:
            data[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif choice < 0.85 and data:
            del data[position:position + rng.randint(1, 16)]
        else:
            # Interesting integers where lengths and indices live.
            value = rng.choice([0, 1, 255, 256, 65535, 2**31 - 1, 2**32 - 1, 2**63 - 1])
            data[position:position + 4] = struct.pack("<Q", value)[:4]
    return bytes(data)


def test_fuzz_the_reader(tmp_path):
    """Random mutations of a real file, of its pickle (re-zipped so the pickle machine sees
    them) and of its zip structure: each read either succeeds or raises ModelFileError."""
    rng = random.Random(1234)
    original = _entries(TORCH_FILE)
    pickle_name = "resnet18_w8/data.pkl"
    raw = TORCH_FILE.read_bytes()
    path = tmp_path / "fuzz.pt"
    outcomes = {"read": 0, "refused": 0}
    deadline = time.monotonic() + 20
    for trial in range(600):
        kind = trial % 3
        if kind == 0:
            entries = dict(original)
            entries[pickle_name] = _mutate(original[pickle_name], rng)
            _rezip(path, entries)
        elif kind == 1:
            path.write_bytes(_mutate(raw, rng))
        else:
            # Mutate a storage and the pickle's numbers together.
            entries = dict(original)
            key = rng.choice([name for name in entries if "/data/" in name])
            entries[key] = _mutate(entries[key], rng)
            entries[pickle_name] = _mutate(original[pickle_name], rng)
            _rezip(path, entries)
        try:
            tensors = read_torch_file(path)
        except ModelFileError as error:
            assert "\n" not in str(error)
            outcomes["refused"] += 1
        else:
            assert isinstance(tensors, dict)
            outcomes["read"] += 1
        assert time.monotonic() < deadline, "the fuzz test is too slow for CI"
    assert outcomes["refused"] > 100


def test_fuzz_tensors_sharing_storages(tmp_path):
    """Random views over a few shared storages: each read either refuses the file or returns
    views into those storages only, so what is read never exceeds the archive."""
    rng = random.Random(99)
    path = tmp_path / "shared.pt"
    outcomes = {"read": 0, "refused": 0}
    for trial in range(300):
        counts = {str(key): rng.choice([1, 7, 64, 1000]) for key in range(rng.randint(1, 3))}
        entries = {}
        for index in range(rng.randint(1, 8)):
            key = rng.choice(list(counts))
            size = tuple(rng.choice([0, 1, 2, 2, 5, 10**6]) for _ in range(rng.randint(0, 3)))
            stride = tuple(rng.choice([0, 1, 1, 3, 10**9]) for _ in size)
            offset = rng.choice([0, 0, 1, counts[key] - 1, counts[key], 2**40])
            entries[f"t{index}"] = tensor("FloatStorage", key, counts[key], offset, size, stride)
        storages = {key: bytes(4 * count) for key, count in counts.items()}
        write_archive(path, state_dict_pickle(entries), storages)
        try:
            tensors = read_torch_file(path)
        except ModelFileError:
            outcomes["refused"] += 1
            continue
        outcomes["read"] += 1
        for value in tensors.values():
            assert value.size == 0 or value.base is not None or not value.flags.owndata
    assert outcomes["read"] > 20 and outcomes["refused"] > 20


def test_refusals_have_their_own_error_class(tmp_path):
    from cnncli.torchfile import TorchFileError
    path = tmp_path / "bad.pt"
    path.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(TorchFileError, match="bad.pt"):
        read_torch_file(path)
    assert issubclass(TorchFileError, ModelFileError)
