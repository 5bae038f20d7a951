"""Model files: one safetensors file with the architecture, weights, classes,
preprocessing and provenance of a model.

    model.save("digits.cnn")            # or save_model(model, "digits.cnn")
    model = cnncli.load_model("digits.cnn")     # see cnncli.loading

Layout. A file is in the safetensors format: an 8-byte little-endian header
length, a JSON header describing each tensor (dtype, shape, byte range), then
the raw little-endian tensor bytes. The tensors are the model's parameters
and buffers by dotted name (``conv2d_1.weight``,
``batch_norm2d_1.running_mean``). The header's string metadata holds the rest,
each entry JSON: ``format`` (``cnncli-model/1``), ``architecture`` (input
shape, dtype, seed and the layers as ``{"type", "config"}``), ``frozen`` (the
names of frozen parameters), ``classes``, ``preprocessing`` and
``provenance``. Any safetensors reader can open the weights.

This module encodes and decodes the format, and knows no model class: saving
takes any model with ``state_arrays()`` and its attributes, and the readers
check the header (entry sizes, strict JSON), classes, preprocessing and
tensors. ``cnncli.loading`` builds a model from a file with these readers.

Safety. Loading never runs code from the file: there is no pickle and no
fallback to anything that could run code; layers come from a fixed registry
(see ``cnncli.loading``). Every problem with a file raises
``ModelFileError`` naming the file and what is wrong.

Saving is atomic (``cnncli.files.atomic_write``): the bytes go to a temporary
file in the same folder, are flushed to disk, then renamed over the target,
so a crash or a full disk leaves the previous file intact.
"""

import json
import os

import numpy as np
import safetensors

from cnncli import __version__, files
from cnncli.files import atomic_write
from cnncli.layers import layer_config
from cnncli.limits import MAX_CLASSES
from cnncli.preprocessing import Preprocessing

__all__ = ["save_model", "read_tensors", "read_info", "read_training_state",
           "atomic_write", "ModelFileError", "FORMAT"]

FORMAT = "cnncli-model/1"

DTYPES = {"float32": "F32", "float64": "F64"}

MAX_METADATA_CHARS = {"format": 64, "architecture": 4_000_000, "frozen": 4_000_000,
                      "classes": 4_000_000, "preprocessing": 100_000, "provenance": 1_000_000,
                      "training_state": 16_000_000}
OPTIONAL_ENTRIES = ("training_state",)

# Tensors of a checkpoint's training state (optimizer moments...) are named
# under this prefix; loading a model ignores them.
TRAINING_PREFIX = "training_state/"
MAX_NAME_CHARS = 1000


class ModelFileError(ValueError):
    """A file that is not a valid cnncli model file: the message names the file and the problem."""


# ---------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------


def _to_json(value, what):
    try:
        return json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what}: cannot be saved as JSON ({error})") from None


def model_metadata(model, provenance=None):
    """The metadata entries a model file holds, as strings; checks what the model declares.

    ``provenance`` adds entries to (or overrides those of) ``model.provenance``.
    """
    if not len(model) or not model[0].built:
        raise ValueError("model: build the model (give it an input shape) before saving it")
    parameters = dict(model.named_parameters())
    architecture = {"input_shape": list(model.input_shape), "dtype": model.dtype.name,
                    "seed": model.seed, "name": model.name,
                    "layers": [layer_config(layer) for layer in model]}
    frozen = [name for name, parameter in parameters.items() if not parameter.trainable]
    check_classes(model.classes, tuple(model.output_shape), ValueError)
    check_preprocessing(model.preprocessing, model.input_shape, ValueError)
    if not isinstance(model.provenance, dict):
        raise ValueError(f"provenance: expected a dict, got {type(model.provenance).__name__}")
    if provenance is not None and not isinstance(provenance, dict):
        raise ValueError(f"provenance: expected a dict, got {type(provenance).__name__}")
    provenance = {"cnncli_version": __version__, **model.provenance, **(provenance or {})}
    preprocessing = None if model.preprocessing is None else model.preprocessing.get_config()
    return {"format": FORMAT,
            "architecture": _to_json(architecture, "architecture"),
            "frozen": _to_json(frozen, "frozen"),
            "classes": _to_json(None if model.classes is None else list(model.classes),
                                "classes"),
            "preprocessing": _to_json(preprocessing, "preprocessing"),
            "provenance": _to_json(provenance, "provenance")}


def serialize(tensors, metadata):
    """The bytes of a safetensors file holding ``tensors`` (name -> array) and ``metadata``.

    Written here rather than by the safetensors library, whose metadata order
    varies from run to run: tensors follow the given order and metadata is
    sorted, so the same model always gives the same bytes and a checksum
    identifies a file's contents.
    """
    header = {"__metadata__": dict(sorted(metadata.items()))}
    chunks = []
    offset = 0
    for name, array in tensors.items():
        array = np.asarray(array)
        kind = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64"}.get(array.dtype)
        if kind is None:
            raise ValueError(f"{name}: cannot save dtype {array.dtype}")
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": kind, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    # The data starts 8-byte aligned, padded with spaces as the format allows.
    text += b" " * (-len(text) % 8)
    return b"".join([len(text).to_bytes(8, "little"), text] + chunks)


def save_model(model, path, overwrite=True, provenance=None, training_state=None):
    """Save ``model`` to ``path`` atomically (see the module notes for the format).

    ``provenance`` (a dict) is saved on top of ``model.provenance``.
    ``training_state``, a pair (JSON-compatible dict, {name: float array}),
    makes the file a checkpoint that training can resume from (see
    ``read_training_state``); it is still an ordinary model file. The same
    model always gives the same bytes, so a file's checksum identifies its
    contents.
    """
    tensors = dict(model.state_arrays())
    metadata = model_metadata(model, provenance)
    if training_state is not None:
        settings, arrays = training_state
        metadata["training_state"] = _to_json(settings, "training_state")
        tensors.update({TRAINING_PREFIX + name: array for name, array in arrays.items()})
    atomic_write(path, serialize(tensors, metadata), overwrite=overwrite)


# ---------------------------------------------------------------------------
# Loading: checks
# ---------------------------------------------------------------------------


def check_classes(classes, output_shape, error):
    if classes is None:
        return None
    if not isinstance(classes, (list, tuple)):
        raise error(f"classes: expected a list of names, got {type(classes).__name__}")
    if len(output_shape) != 1 or len(classes) != output_shape[0]:
        raise error(f"classes: {len(classes)} names for a model whose output has shape "
                    f"{output_shape}; give one name per output, or None")
    if len(classes) > MAX_CLASSES.value or not all(
            isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS for name in classes):
        raise error("classes: expected non-empty strings as class names")
    if len(set(classes)) != len(classes):
        raise error("classes: names must be unique")
    return list(classes)


def check_preprocessing(preprocessing, input_shape, error):
    if preprocessing is None:
        return None
    if not isinstance(preprocessing, Preprocessing):
        raise error(f"preprocessing: expected a Preprocessing, got {type(preprocessing).__name__}")
    if preprocessing.input_shape != tuple(input_shape):
        raise error(f"preprocessing: produces images of shape {preprocessing.input_shape} but "
                    f"the model takes {tuple(input_shape)}")
    return preprocessing


class FileReader:
    """Turns everything wrong with one file into a ModelFileError naming it."""

    def __init__(self, path):
        self.path = os.fspath(path)

    def fail(self, message):
        raise ModelFileError(f"{self.path}: {message}")

    def json(self, metadata, key):
        if key not in metadata:
            self.fail(f"the '{key}' entry is missing from the header")
        text = metadata[key]
        if len(text) > MAX_METADATA_CHARS[key]:
            self.fail(f"the '{key}' entry is implausibly large ({len(text):,} characters)")
        try:
            return files.parse_json(text)
        except ValueError as error:
            self.fail(f"the '{key}' entry is not valid JSON ({error})")

    def check(self, condition, message):
        if not condition:
            self.fail(message)


def check_file(path, kind="model file"):
    """``path`` as a string, if it names a readable file: FileNotFoundError when it does not
    exist, ModelFileError when it is a folder, not a regular file, or unreadable."""
    return files.check_file(path, kind, ModelFileError)


def open_model_file(path):
    """The safetensors handle of ``path``: header parsed and checked, no tensor read yet."""
    path = check_file(path)
    try:
        return safetensors.safe_open(path, framework="numpy")
    except safetensors.SafetensorError as error:
        raise ModelFileError(f"{path}: not a valid model file ({error})") from None
    except OSError as error:
        raise ModelFileError(f"{path}: cannot be read ({error.strerror or error})") from None


def tensor_specs(handle):
    """{name: (shape, safetensors dtype)} from the header."""
    specs = {}
    for name in handle.keys():
        view = handle.get_slice(name)
        specs[name] = (tuple(view.get_shape()), view.get_dtype())
    return specs


def read_tensor(reader, handle, name):
    try:
        array = handle.get_tensor(name)
    except (safetensors.SafetensorError, ValueError, TypeError) as error:
        reader.fail(f"tensor {name!r} cannot be read ({error})")
    reader.check(np.isfinite(array).all(), f"tensor {name!r} holds NaN or infinite values")
    return array


def read_info(path):
    """The metadata of a model file as Python values (format, architecture, classes...),
    checked, without reading any tensor."""
    reader = FileReader(path)
    with open_model_file(path) as handle:
        return read_metadata(reader, handle.metadata())


def read_metadata(reader, metadata):
    if not metadata or "format" not in metadata:
        reader.fail("not a cnncli model file (its header has no cnncli format entry)")
    reader.check(metadata["format"] == FORMAT,
                 f"unsupported format {metadata['format'][:40]!r}; this version of cnncli "
                 f"reads {FORMAT!r}")
    return {key: reader.json(metadata, key) for key in MAX_METADATA_CHARS
            if key != "format" and (key in metadata or key not in OPTIONAL_ENTRIES)}


def read_tensors(path):
    """Every tensor of a safetensors file (a model file or weights from elsewhere), by name,
    as float arrays. Used to load weights into a model of another architecture."""
    reader = FileReader(path)
    with open_model_file(path) as handle:
        specs = {name: spec for name, spec in tensor_specs(handle).items()
                 if not name.startswith(TRAINING_PREFIX)}
        for name, (shape, dtype) in specs.items():
            reader.check(dtype in ("F16", "F32", "F64", "I64", "I32"),
                         f"tensor {name!r} has dtype {dtype}, not numbers cnncli can use")
        return {name: read_tensor(reader, handle, name) for name in specs}


def read_training_state(path):
    """The training state a checkpoint was saved with: (settings dict, {name: array}),
    or None for a model file without one. Raises ModelFileError for a bad file."""
    reader = FileReader(path)
    with open_model_file(path) as handle:
        info = read_metadata(reader, handle.metadata())
        if "training_state" not in info:
            return None
        settings = info["training_state"]
        reader.check(isinstance(settings, dict), "'training_state' must be an object")
        arrays = {}
        for name, (shape, dtype) in tensor_specs(handle).items():
            if name.startswith(TRAINING_PREFIX):
                reader.check(dtype in ("F32", "F64"), f"tensor {name!r} has dtype {dtype}")
                arrays[name[len(TRAINING_PREFIX):]] = read_tensor(reader, handle, name)
        return settings, arrays
