"""Model files: round trips, the malformed-file corpus, truncation, fuzzing, atomic saving."""

import errno
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import safetensors

import cnncli
from cnncli import modelfile
from cnncli.blocks import Residual
from cnncli.layers import (AvgPool2D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten,
                           GlobalAvgPool2D, LeakyReLU, MaxPool2D, ReLU, Sigmoid, Softmax, Tanh)
from cnncli.model import Sequential
from cnncli.loading import load_model
from cnncli.modelfile import ModelFileError, save_model
from cnncli.preprocessing import Preprocessing
from cnncli.regularizers import L1, L2, L1L2


def every_layer_model(dtype=np.float32):
    """A model using every layer type and most options, with trained-looking state."""
    model = Sequential([
        Conv2D(4, 3, padding="same", regularizer=L2(1e-4)),
        BatchNorm2D(momentum=0.2),
        ReLU(),
        Residual([Conv2D(4, 3, padding=1, use_bias=False), BatchNorm2D(), LeakyReLU(0.2)]),
        Residual([Conv2D(6, 1, stride=2)], shortcut=[Conv2D(6, 1, stride=2, init="he_normal")]),
        Conv2D(6, (3, 1), padding=(1, 0), groups=2, regularizer=L1L2(1e-5, 1e-4)),
        Tanh(),
        MaxPool2D(2, stride=1, padding=1),
        AvgPool2D(2),
        Sigmoid(),
        GlobalAvgPool2D(),
        Dropout(0.25),
        Dense(8, regularizer=L1(1e-5)),
        Dense(3, name="classifier"),
        Softmax(),
    ], input_shape=(2, 8, 8), seed=7, dtype=dtype, name="everything")
    # Running statistics that are not the initial ones.
    x = np.random.default_rng(0).standard_normal((4, 2, 8, 8))
    model.forward(x, training=True)
    model.classes = ["cat", "dog", "bird"]
    model.preprocessing = Preprocessing(2, (8, 8), mean=[0.5, 0.25], std=[0.2, 0.3], scale=1 / 16)
    model.provenance = {"dataset": "synthetic", "epochs": 3, "accuracy": 0.5}
    model.freeze("conv2d_1", "batch_norm2d_1")
    return model


def tiny_model():
    model = Sequential([Conv2D(2, 3), ReLU(), Flatten(), Dense(2)], input_shape=(1, 4, 4), seed=1)
    model.classes = ["no", "yes"]
    return model


@pytest.fixture
def tiny_file(tmp_path):
    path = tmp_path / "tiny.cnn"
    save_model(tiny_model(), path)
    return path


# ---------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_bit_exact(tmp_path, dtype):
    model = every_layer_model(dtype)
    path = tmp_path / "model.cnn"
    model.save(path)
    loaded = load_model(path)

    assert loaded.dtype == np.dtype(dtype)
    assert loaded.input_shape == model.input_shape and loaded.name == "everything"
    assert [type(l) for l in loaded] == [type(l) for l in model]
    assert [l.get_config() for l in loaded] == [l.get_config() for l in model]
    original, restored = model.state_dict(), loaded.state_dict()
    assert list(original) == list(restored)
    for name in original:
        assert original[name].dtype == restored[name].dtype
        assert np.array_equal(original[name], restored[name]), name
    assert {n: p.trainable for n, p in loaded.named_parameters()} == \
        {n: p.trainable for n, p in model.named_parameters()}
    assert loaded.classes == ["cat", "dog", "bird"]
    assert loaded.preprocessing == model.preprocessing
    assert loaded.provenance == {"cnncli_version": cnncli.__version__, **model.provenance}
    x = np.random.default_rng(1).standard_normal((3, 2, 8, 8)).astype(dtype)
    assert np.array_equal(model.predict_proba(x), loaded.predict_proba(x))
    assert loaded.summary(print_fn=None) == model.summary(print_fn=None)

    # Saving the loaded model gives the very same bytes.
    loaded.save(tmp_path / "again.cnn")
    assert (tmp_path / "again.cnn").read_bytes() == path.read_bytes()


def test_the_same_model_always_gives_the_same_bytes(tmp_path):
    every_layer_model().save(tmp_path / "a.cnn")
    every_layer_model().save(tmp_path / "b.cnn")
    assert (tmp_path / "a.cnn").read_bytes() == (tmp_path / "b.cnn").read_bytes()


def test_files_open_in_any_safetensors_reader(tmp_path):
    model = every_layer_model()
    model.save(tmp_path / "model.cnn")
    with safetensors.safe_open(tmp_path / "model.cnn", framework="numpy") as handle:
        assert set(handle.keys()) == set(model.state_dict())
        assert np.array_equal(handle.get_tensor("classifier.weight"),
                              model["classifier"].weight.value)
        assert handle.metadata()["format"] == modelfile.FORMAT


def test_frozen_batchnorm_state_survives_saving(tmp_path):
    model = every_layer_model()
    model.save(tmp_path / "model.cnn")
    loaded = load_model(tmp_path / "model.cnn")
    norm = loaded["batch_norm2d_1"]
    assert not norm.trainable
    before = norm.running_mean.copy()
    x = np.random.default_rng(2).standard_normal((4, 2, 8, 8)).astype(np.float32)
    # Training mode, yet the frozen BatchNorm keeps and uses its running statistics.
    training_out = loaded.forward(x, training=True)
    assert np.array_equal(norm.running_mean, before)
    assert np.array_equal(loaded[:2].forward(x, training=True), loaded[:2].forward(x))
    assert training_out.shape == (4, 3)


def test_loaded_model_trains_and_replaces_its_head(tmp_path):
    model = every_layer_model()
    model.save(tmp_path / "model.cnn")
    loaded = load_model(tmp_path / "model.cnn")
    loaded[-2] = Dense(5, name="classifier")
    loaded.classes = None
    rng = np.random.default_rng(3)
    history = loaded.fit(rng.standard_normal((16, 2, 8, 8)), rng.integers(0, 5, 16), epochs=2,
                         batch_size=8)
    assert len(history) == 2
    loaded.save(tmp_path / "new.cnn")
    assert load_model(tmp_path / "new.cnn").output_shape == (5,)


def test_read_info_reads_the_metadata_only(tmp_path):
    every_layer_model().save(tmp_path / "model.cnn")
    info = modelfile.read_info(tmp_path / "model.cnn")
    assert info["classes"] == ["cat", "dog", "bird"]
    assert info["architecture"]["input_shape"] == [2, 8, 8]
    assert info["provenance"]["dataset"] == "synthetic"


# ---------------------------------------------------------------------------
# What save refuses
# ---------------------------------------------------------------------------


def test_save_refuses_inconsistent_declarations(tmp_path):
    model = tiny_model()
    model.classes = ["a", "b", "c"]
    with pytest.raises(ValueError, match="classes: 3 names"):
        model.save(tmp_path / "x.cnn")
    model.classes = ["a", "a"]
    with pytest.raises(ValueError, match="unique"):
        model.save(tmp_path / "x.cnn")
    model.classes = None
    model.preprocessing = Preprocessing(3, (4, 4))
    with pytest.raises(ValueError, match="preprocessing"):
        model.save(tmp_path / "x.cnn")
    model.preprocessing = None
    model.provenance = {"when": object()}
    with pytest.raises(ValueError, match="provenance"):
        model.save(tmp_path / "x.cnn")
    with pytest.raises(ValueError, match="build the model"):
        Sequential([Dense(2)]).save(tmp_path / "x.cnn")
    assert not list(tmp_path.iterdir())


def test_save_without_overwrite_keeps_the_existing_file(tiny_file):
    before = tiny_file.read_bytes()
    other = tiny_model()
    other[-1] = Dense(2, use_bias=False)
    with pytest.raises(FileExistsError):
        other.save(tiny_file, overwrite=False)
    assert tiny_file.read_bytes() == before


# ---------------------------------------------------------------------------
# Atomic saving
# ---------------------------------------------------------------------------


class _DiskFullAfter:
    """A file object whose writes fail with ENOSPC after `limit` bytes."""

    def __init__(self, handle, limit):
        self.handle, self.limit, self.written = handle, limit, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()

    def write(self, data):
        room = self.limit - self.written
        if len(data) > room:
            self.handle.write(bytes(data[:room]))
            raise OSError(errno.ENOSPC, "No space left on device")
        self.written += len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)


def test_a_full_disk_mid_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "model.cnn"
    every_layer_model().save(path)
    before = path.read_bytes()
    bigger = Sequential([Flatten(), Dense(300000)], input_shape=(1, 2, 2))  # 6 MB: several chunks
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen",
                        lambda fd, mode: _DiskFullAfter(real_fdopen(fd, mode), 1_500_000))
    with pytest.raises(OSError, match="No space"):
        bigger.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.cnn"]
    load_model(path)


def test_a_crash_at_any_step_of_saving_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.cnn"
    tiny_model().save(path)
    before = path.read_bytes()

    def crash(*args):
        raise KeyboardInterrupt

    for step in ("fsync", "replace"):
        with monkeypatch.context() as patch:
            patch.setattr(os, step, crash)
            with pytest.raises(KeyboardInterrupt):
                every_layer_model().save(path)
        assert path.read_bytes() == before
        assert [p.name for p in tmp_path.iterdir()] == ["model.cnn"]


def test_a_killed_writer_never_leaves_a_broken_file(tmp_path):
    """SIGKILL a process that saves two different models over one file in a loop."""
    path = tmp_path / "model.cnn"
    script = textwrap.dedent(f"""
        import sys
        from cnncli.layers import Dense, Flatten
        from cnncli.model import Sequential
        models = [Sequential([Flatten(), Dense(200000 + k)], input_shape=(1, 2, 2), seed=k)
                  for k in (0, 1)]
        models[0].save({str(path)!r})
        print("ready", flush=True)
        while True:
            for model in models:
                model.save({str(path)!r})
        """)
    for delay in (0.05, 0.2, 0.45):
        process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        assert process.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdout.close()
        assert load_model(path).output_shape in ((200000,), (200001,))


def test_missing_folder_and_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        tiny_model().save(tmp_path / "no" / "such" / "model.cnn")
    with pytest.raises(FileNotFoundError, match="no such model file or pretrained model"):
        load_model(tmp_path / "absent.cnn")
    with pytest.raises(ModelFileError, match="folder"):
        load_model(tmp_path)


# ---------------------------------------------------------------------------
# The malformed-file corpus
# ---------------------------------------------------------------------------


def split(data):
    """(header dict, tensor bytes) of a safetensors file."""
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + length]), data[8 + length:]


def join(header, body):
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + body


def edit_header(data, change):
    header, body = split(data)
    change(header)
    return join(header, body)


def edit_entry(key, change):
    """Apply `change` to the parsed JSON of metadata entry `key`."""
    def edit(header):
        header["__metadata__"][key] = json.dumps(change(json.loads(header["__metadata__"][key])))
    return edit


def edit_layer(index, change):
    def edit(architecture):
        change(architecture["layers"][index])
        return architecture
    return edit_entry("architecture", edit)


def rewrite_tensors(data, change):
    """Re-serialise a file with `change` applied to its {name: array} tensors."""
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"cnncli-corpus-{os.getpid()}")
    with open(path, "wb") as handle:
        handle.write(data)
    try:
        with safetensors.safe_open(path, framework="numpy") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            metadata = handle.metadata()
    finally:
        os.unlink(path)
    header, _ = split(data)
    ordered = {name: tensors[name] for name in header if name in tensors}
    change(ordered)
    return modelfile.serialize(ordered, metadata)


def _numpy_archive(data):
    buffer = io.BytesIO()
    np.savez(buffer, weights=np.ones(3), names=np.array([{"a": 1}], dtype=object))
    return buffer.getvalue()


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-model-file",))


def _set(mapping, key, value):
    mapping[key] = value


def _relabel_tensor(header, name, **changes):
    header[name].update(changes)


def _nan_weights(data):
    header, body = split(data)
    start, _ = header["dense_1.bias"]["data_offsets"]
    body = bytearray(body)
    body[start:start + 4] = np.float32(np.nan).tobytes()
    return join(header, bytes(body))


def _many_relus(architecture):
    architecture["layers"][1:2] = [{"type": "ReLU", "config": {"name": f"r{k}"}}
                                   for k in range(5000)]
    return architecture


def _deep_blocks(architecture):
    layer = {"type": "ReLU", "config": {"name": "inner"}}
    for depth in range(40):
        layer = {"type": "Residual", "config": {"body": [layer], "shortcut": None,
                                                "name": f"block{depth}"}}
    architecture["layers"][1] = layer
    return architecture


CORPUS = {
    # -- not a safetensors file at all, or a broken container
    "empty file": lambda data: b"",
    "random bytes": lambda data: bytes(np.random.default_rng(0).integers(0, 256, 500,
                                                                         dtype=np.uint8)),
    "a pickle that would run a command": lambda data: pickle.dumps(_RunsCode()),
    "a numpy archive with pickled objects": _numpy_archive,
    "header length beyond the file": lambda data: (len(data) + 100).to_bytes(8, "little") +
    data[8:],
    "absurd header length": lambda data: (2**63 - 1).to_bytes(8, "little") + data[8:],
    "header is not JSON": lambda data: b"\x10" + b"\x00" * 7 + b"{not json at all" + data[24:],
    "header is a JSON list": lambda data: join([1, 2, 3], split(data)[1]),
    "offsets beyond the data": lambda data: edit_header(
        data, lambda h: _relabel_tensor(h, "dense_1.bias", data_offsets=[0, 10**9])),
    "overlapping offsets": lambda data: edit_header(
        data, lambda h: _relabel_tensor(h, "dense_1.bias", data_offsets=[0, 8])),
    "shape lies about the byte count": lambda data: edit_header(
        data, lambda h: _relabel_tensor(h, "dense_1.bias", shape=[3])),
    "absurd tensor shape": lambda data: edit_header(
        data, lambda h: _relabel_tensor(h, "dense_1.weight", shape=[2**40, 2**40])),
    "unknown dtype": lambda data: edit_header(
        data, lambda h: _relabel_tensor(h, "dense_1.bias", dtype="F99")),
    "trailing bytes": lambda data: data + b"\x00" * 16,
    # -- a safetensors file, but not a valid cnncli model
    "no metadata": lambda data: edit_header(data, lambda h: h.pop("__metadata__")),
    "no format entry": lambda data: edit_header(data, lambda h: h["__metadata__"].pop("format")),
    "unknown format version": lambda data: edit_header(
        data, lambda h: _set(h["__metadata__"], "format", "cnncli-model/99")),
    "missing architecture": lambda data: edit_header(
        data, lambda h: h["__metadata__"].pop("architecture")),
    "architecture is not JSON": lambda data: edit_header(
        data, lambda h: _set(h["__metadata__"], "architecture", "{layers: [")),
    "NaN in the architecture": lambda data: edit_header(
        data, lambda h: _set(h["__metadata__"], "architecture",
                             h["__metadata__"]["architecture"].replace('"seed": 1', '"seed": NaN'))),
    "duplicate keys": lambda data: edit_header(
        data, lambda h: _set(h["__metadata__"], "classes", '{"a": 1, "a": 2}')),
    "deeply nested JSON": lambda data: edit_header(
        data, lambda h: _set(h["__metadata__"], "provenance", "[" * 100000 + "]" * 100000)),
    "oversized metadata entry": lambda data: edit_header(
        data, lambda h: _set(h["__metadata__"], "preprocessing", '"' + "x" * 200000 + '"')),
    "architecture with extra entries": lambda data: edit_header(
        data, edit_entry("architecture", lambda a: {**a, "code": "import os"})),
    "unknown layer type": lambda data: edit_header(
        data, edit_layer(1, lambda l: _set(l, "type", "os.system"))),
    "unknown layer setting": lambda data: edit_header(
        data, edit_layer(0, lambda l: _set(l["config"], "activation", "eval"))),
    "negative filters": lambda data: edit_header(
        data, edit_layer(0, lambda l: _set(l["config"], "filters", -3))),
    "kernel size of the wrong type": lambda data: edit_header(
        data, edit_layer(0, lambda l: _set(l["config"], "kernel_size", "3x3"))),
    "object where a number belongs": lambda data: edit_header(
        data, edit_layer(0, lambda l: _set(l["config"], "stride", {"x": 1}))),
    "huge number": lambda data: edit_header(
        data, lambda h: _set(h["__metadata__"], "architecture",
                             h["__metadata__"]["architecture"].replace('"stride": 1',
                                                                       '"stride": 1e999'))),
    "absurd layer size": lambda data: edit_header(
        data, edit_layer(3, lambda l: _set(l["config"], "units", 10**12))),
    "absurd input shape": lambda data: edit_header(
        data, edit_entry("architecture", lambda a: {**a, "input_shape": [1, 10**6, 10**6]})),
    "absurd activation size": lambda data: edit_header(
        data, edit_layer(0, lambda l: _set(l["config"], "padding", 2**20))),
    "layers that do not fit together": lambda data: edit_header(
        data, edit_entry("architecture", lambda a: {**a, "layers": [a["layers"][0],
                                                                    a["layers"][3]]})),
    "too many layers": lambda data: edit_header(data, edit_entry("architecture", _many_relus)),
    "blocks nested too deep": lambda data: edit_header(data,
                                                       edit_entry("architecture", _deep_blocks)),
    "duplicate layer names": lambda data: edit_header(
        data, edit_layer(1, lambda l: _set(l["config"], "name", "conv2d_1"))),
    "dotted layer name": lambda data: edit_header(
        data, edit_layer(1, lambda l: _set(l["config"], "name", "a.b"))),
    "missing tensor": lambda data: rewrite_tensors(data, lambda t: t.pop("conv2d_1.bias")),
    "layer larger than its tensors": lambda data: edit_header(
        data, edit_layer(3, lambda l: _set(l["config"], "units", 100000))),
    "unexpected tensor": lambda data: edit_header(
        data, lambda h: _set(h, "extra", {"dtype": "F32", "shape": [0],
                                          "data_offsets": [len(split(data)[1])] * 2})),
    "tensor of the wrong shape": lambda data: edit_header(
        data, lambda h: _relabel_tensor(h, "dense_1.bias", shape=[1, 2])),
    "tensor of the wrong dtype": lambda data: edit_header(
        data, lambda h: _relabel_tensor(h, "dense_1.bias", dtype="I32")),
    "NaN weights": _nan_weights,
    "classes of the wrong count": lambda data: edit_header(
        data, edit_entry("classes", lambda c: c + ["maybe"])),
    "classes that are not strings": lambda data: edit_header(
        data, edit_entry("classes", lambda c: [0, 1])),
    "preprocessing with zero std": lambda data: edit_header(
        data, edit_entry("preprocessing", lambda p: {"channels": 1, "size": [4, 4],
                                                     "std": [0.0]})),
    "preprocessing for other images": lambda data: edit_header(
        data, edit_entry("preprocessing", lambda p: {"channels": 3, "size": [4, 4]})),
    "frozen names an unknown tensor": lambda data: edit_header(
        data, edit_entry("frozen", lambda f: ["conv2d_9.weight"])),
    "provenance is not an object": lambda data: edit_header(
        data, edit_entry("provenance", lambda p: [1, 2])),
}


@pytest.mark.parametrize("kind", sorted(CORPUS))
def test_malformed_files_are_refused_with_the_model_file_error(tiny_file, tmp_path, kind):
    path = tmp_path / "bad.cnn"
    path.write_bytes(CORPUS[kind](tiny_file.read_bytes()))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(ModelFileError) as caught:
            load_model(path)
    finally:
        os.chdir(cwd)
    message = str(caught.value)
    assert message.startswith(str(path)) and "\n" not in message
    assert not (tmp_path / "pwned-by-model-file").exists()


def test_the_corpus_is_large_enough():
    assert len(CORPUS) >= 15


def test_truncation_at_every_length_is_refused(tiny_file, tmp_path):
    data = tiny_file.read_bytes()
    path = tmp_path / "cut.cnn"
    for length in range(len(data)):
        path.write_bytes(data[:length])
        with pytest.raises(ModelFileError):
            load_model(path)
    path.write_bytes(data)
    load_model(path)


def test_random_corruption_never_raises_anything_else(tiny_file, tmp_path):
    data = tiny_file.read_bytes()
    rng = np.random.default_rng(0)
    path = tmp_path / "fuzzed.cnn"
    outcomes = {"loaded": 0, "refused": 0}
    for _ in range(2000):
        corrupted = bytearray(data)
        for position in rng.integers(0, len(data), rng.integers(1, 4)):
            corrupted[position] = rng.integers(0, 256)
        path.write_bytes(bytes(corrupted))
        try:
            model = load_model(path)
        except ModelFileError:
            outcomes["refused"] += 1
        else:
            outcomes["loaded"] += 1
            assert all(np.isfinite(a).all() for a in model.state_dict().values())
    assert outcomes["refused"] > 500


NASTY_VALUES = [None, True, -1, 0, 2**31, 2**64, 10**400, 1e300, -0.0, "", "same", "x" * 300,
                [], [1], [0, 0], [1, 2, 3], {}, {"type": "L2"}]


def _leaves(value, path=()):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, path + (index,))
    yield path


def test_random_metadata_values_never_raise_anything_else(tmp_path):
    """Replace one value anywhere in the metadata with an odd one: load or refuse, nothing else."""
    path = tmp_path / "model.cnn"
    every_layer_model().save(path)
    header, body = split(path.read_bytes())
    entries = {key: json.loads(text) for key, text in header["__metadata__"].items()
               if key != "format"}
    rng = np.random.default_rng(1)
    refused = 0
    for _ in range(800):
        key = sorted(entries)[rng.integers(len(entries))]
        entry = json.loads(json.dumps(entries[key]))
        leaves = list(_leaves(entry))
        where = leaves[rng.integers(len(leaves))]
        replacement = NASTY_VALUES[rng.integers(len(NASTY_VALUES))]
        if not where:
            entry = replacement
        else:
            parent = entry
            for step in where[:-1]:
                parent = parent[step]
            parent[where[-1]] = replacement
        changed = dict(header, __metadata__=dict(header["__metadata__"], **{key: json.dumps(entry)}))
        path.write_bytes(join(changed, body))
        try:
            model = load_model(path)
        except ModelFileError:
            refused += 1
        else:
            # Whatever loads also runs.
            model.forward(np.zeros((1,) + model.input_shape))
    assert refused > 300
