"""Loading a model file into a model: the architecture read from its JSON, checked value by
value, planned without allocating, compared with the file's tensors, then built.

    model = load_model("digits.cnn")

Safety. Loading never runs code from the file: layers are looked up in the
registry of cnncli layer classes (``layers.LAYER_TYPES``; blocks register
themselves) and built from plain JSON values. Everything is checked before
any array is made: the safetensors library checks the header against the
file; then the architecture is planned, and every tensor's name, shape and
dtype is compared with the plan. Only then is the model built, so no
declared size can cause an allocation larger than the file itself. Every
problem raises ``ModelFileError`` naming the file and what is wrong. The
file format itself (encoding, decoding, saving) is ``cnncli.modelfile``.
"""

import math
import os

from cnncli import blocks  # noqa: F401 - importing it registers Residual
from cnncli import regularizers
from cnncli.layers import LAYER_TYPES
from cnncli.limits import MAX_ACTIVATION_VALUES
from cnncli.model import MAX_ELEMENTS, Sequential, plan
from cnncli.modelfile import (DTYPES, MAX_NAME_CHARS, TRAINING_PREFIX, FileReader,
                              check_classes, check_preprocessing, open_model_file,
                              read_metadata, read_tensor, tensor_specs)
from cnncli.preprocessing import Preprocessing
from cnncli.resources import zoo_models

__all__ = ["load_model", "model_path"]

# Bounds on what a file may declare, far above any real model (ResNet-152 has
# about 500 layers), so a hostile file cannot make loading slow or deep.
MAX_LAYERS = 4096
MAX_NESTING = 16


def _is_int(value, low, high):
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


class _ArchitectureReader:
    """Builds unbuilt layer objects from the JSON architecture, checking every value."""

    def __init__(self, reader):
        self.reader = reader
        self.count = 0

    def layers(self, specs, where, depth):
        self.reader.check(isinstance(specs, list), f"{where}: expected a list of layers")
        self.reader.check(depth <= MAX_NESTING, f"{where}: blocks nested more than "
                                                f"{MAX_NESTING} deep")
        return [self.layer(spec, f"{where}[{index}]", depth) for index, spec in enumerate(specs)]

    def layer(self, spec, where, depth):
        fail, check = self.reader.fail, self.reader.check
        self.count += 1
        check(self.count <= MAX_LAYERS, f"more than {MAX_LAYERS} layers")
        check(isinstance(spec, dict) and set(spec) == {"type", "config"},
              f"{where}: expected {{\"type\": ..., \"config\": {{...}}}}")
        kind, config = spec["type"], spec["config"]
        if not isinstance(kind, str) or kind not in LAYER_TYPES:
            fail(f"{where}: unknown layer type {str(kind)[:100]!r}; known types: "
                 f"{', '.join(sorted(LAYER_TYPES))}")
        check(isinstance(config, dict), f"{where} ({kind}): the config is not an object")
        cls = LAYER_TYPES[kind]
        nested = getattr(cls, "nested_keys", ())
        allowed = set(cls.config_keys) | set(nested) | {"name"}
        unknown = sorted(set(config) - allowed)
        check(not unknown, f"{where} ({kind}): unknown settings {unknown}")
        name = config.get("name")
        check(name is None or (isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS),
              f"{where} ({kind}): the name must be a non-empty string")
        arguments = {}
        for key, value in config.items():
            if key in nested:
                arguments[key] = None if value is None else \
                    self.layers(value, f"{where}.{key}", depth + 1)
            elif key == "regularizer" and value is not None:
                arguments[key] = self.call(lambda: regularizers.from_config(value), where, kind)
            else:
                arguments[key] = self.value(value, f"{where} ({kind}) {key}")
        return self.call(lambda: cls(**arguments), where, kind)

    def value(self, value, where):
        """A plain JSON value: a number, string, bool, None, or a short list of them."""
        scalar = (int, float, str, bool, type(None))
        if isinstance(value, list):
            self.reader.check(len(value) <= 8 and all(isinstance(v, scalar) for v in value),
                              f"{where}: expected a number or a short list of numbers")
            return tuple(value)
        self.reader.check(isinstance(value, scalar), f"{where}: expected a plain value")
        return value

    def call(self, make, where, kind):
        try:
            return make()
        except (ValueError, TypeError, OverflowError) as error:
            self.reader.fail(f"{where} ({kind}): {error}")


def _architecture(reader, architecture):
    check = reader.check
    keys = {"input_shape", "dtype", "seed", "name", "layers"}
    check(isinstance(architecture, dict) and set(architecture) == keys,
          f"the architecture must be an object with exactly the entries {sorted(keys)}")
    input_shape = architecture["input_shape"]
    limit = min(MAX_ELEMENTS, MAX_ACTIVATION_VALUES.value)
    check(isinstance(input_shape, list) and 1 <= len(input_shape) <= 3
          and all(_is_int(v, 1, limit) for v in input_shape)
          and math.prod(input_shape) <= limit,
          f"the input shape must be 1 to 3 positive sizes of at most {limit:,} values "
          f"in all, got {str(input_shape)[:100]} (the limit is {MAX_ACTIVATION_VALUES.variable})")
    check(isinstance(architecture["dtype"], str) and architecture["dtype"] in DTYPES,
          f"the dtype must be one of {sorted(DTYPES)}")
    check(_is_int(architecture["seed"], 0, 2**63 - 1), "the seed must be an int >= 0")
    name = architecture["name"]
    check(name is None or (isinstance(name, str) and len(name) <= MAX_NAME_CHARS),
          "the model name must be a string")
    layers = _ArchitectureReader(reader).layers(architecture["layers"], "layers", 0)
    check(layers, "the architecture has no layers")
    return architecture, tuple(input_shape), layers


def _check_tensors(reader, specs, expected, dtype):
    """Every tensor the architecture needs is in the file with its shape and dtype, and no other."""
    missing = [name for name in expected if name not in specs]
    unexpected = [name for name in specs if name not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:10]}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:10]}")
        reader.fail("the weights do not match the architecture: " + "; ".join(parts))
    for name, shape in expected.items():
        file_shape, file_dtype = specs[name]
        reader.check(file_shape == shape, f"tensor {name!r} has shape {file_shape}, the "
                                          f"architecture needs {shape}")
        reader.check(file_dtype == DTYPES[dtype], f"tensor {name!r} is {file_dtype}, the "
                                                  f"model is {dtype}")


def model_path(name_or_path):
    """The file of ``name_or_path``: the path itself when it exists, else the shipped
    pretrained model of that name (``cnncli models`` lists them), else the path as given."""
    text = os.fspath(name_or_path)
    if not os.path.exists(text):
        for name, path, _ in zoo_models():
            if name == text:
                return path
    return text


def load_model(path):
    """Load a model file, or a shipped pretrained model by name (``load_model("lenet-mnist")``):
    a built Sequential with its weights, frozen layers, classes, preprocessing and
    provenance. Raises ModelFileError for anything wrong with the file."""
    path = model_path(path)
    if not os.path.lexists(path):
        known = ", ".join(name for name, _, _ in zoo_models()) or "none installed"
        raise FileNotFoundError(f"{path}: no such model file or pretrained model "
                                f"(pretrained: {known})")
    reader = FileReader(path)
    with open_model_file(path) as handle:
        info = read_metadata(reader, handle.metadata())
        architecture, input_shape, layers = _architecture(reader, info["architecture"])
        try:
            expected, output_shape = plan(layers, input_shape,
                                          min(MAX_ELEMENTS, MAX_ACTIVATION_VALUES.value))
        except (ValueError, TypeError, OverflowError) as error:
            reader.fail(f"the architecture does not fit together ({error})")
        specs = tensor_specs(handle)
        model_specs = {name: spec for name, spec in specs.items()
                       if not name.startswith(TRAINING_PREFIX)}
        _check_tensors(reader, model_specs, expected, architecture["dtype"])

        frozen = info["frozen"]
        reader.check(isinstance(frozen, list) and all(isinstance(n, str) for n in frozen),
                     "'frozen' must be a list of parameter names")
        unknown = sorted(set(frozen) - set(expected))
        reader.check(not unknown, f"'frozen' names tensors the model does not have: "
                                  f"{unknown[:10]}")
        try:
            classes = check_classes(info["classes"], output_shape, ValueError)
            preprocessing = None if info["preprocessing"] is None else \
                Preprocessing.from_config(info["preprocessing"])
            check_preprocessing(preprocessing, input_shape, ValueError)
        except ValueError as error:
            reader.fail(str(error))
        reader.check(isinstance(info["provenance"], dict), "'provenance' must be an object")

        # Everything is consistent: the arrays below are no larger than the file.
        try:
            model = Sequential(layers, input_shape=input_shape, seed=architecture["seed"],
                               dtype=architecture["dtype"], name=architecture["name"])
        except (ValueError, TypeError) as error:
            reader.fail(f"the architecture cannot be built ({error})")
        targets = model.state_arrays()
        for name in expected:
            targets[name][...] = read_tensor(reader, handle, name)
    parameters = dict(model.named_parameters())
    for name in frozen:
        reader.check(name in parameters, f"'frozen' names {name!r}, which is not a parameter")
        parameters[name].trainable = False
    model.classes = classes
    model.preprocessing = preprocessing
    model.provenance = info["provenance"]
    return model
