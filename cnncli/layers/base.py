"""The base of every layer: ``Parameter``, ``Layer``, weight initialisation and the registry
of layer types that model files may name.

A layer is created with its hyper-parameters (``Conv2D(32, 5, padding='same')``)
and built for an input shape (without the batch axis), which creates its
parameters. ``Sequential`` builds each layer as it is added, so shapes flow
through a model the way they do in Keras.

``forward(x, training)`` keeps what ``backward`` needs only when training;
``backward(grad_output, need_input_grad)`` stores parameter gradients in
``Parameter.grad`` (for trainable parameters only) and returns the gradient
with respect to the input, or None when it was not asked for.
"""

import math

import numpy as np

from cnncli.validation import is_positive_int

__all__ = ["Parameter", "Layer", "Weighted", "initialize", "INITIALIZERS", "layer_config",
           "LAYER_TYPES", "register_layer", "shape_tuple", "plain", "channels_last_hint"]


class Parameter:
    """A learnable array, its gradient, and whether it trains.

    Freezing is a per-parameter switch that optimizers check at every step,
    so freezing after an optimizer was created takes effect at once.
    """

    __slots__ = ("value", "grad", "trainable")

    def __init__(self, value, trainable=True):
        self.value = value
        self.grad = None
        self.trainable = trainable

    @property
    def shape(self):
        return self.value.shape

    @property
    def size(self):
        return self.value.size

    def __repr__(self):
        state = "" if self.trainable else ", frozen"
        return f"Parameter(shape={self.value.shape}, dtype={self.value.dtype}{state})"


def _input_shape(value, owner):
    if isinstance(value, (tuple, list)) and value and all(is_positive_int(v) for v in value):
        return tuple(int(v) for v in value)
    raise ValueError(f"input_shape: expected a tuple of positive ints such as (1, 28, 28) "
                     f"(channels first), got {value!r} for {owner}")


def channels_last_hint(shape, expected=None):
    """A sentence for errors about ``shape`` when it looks like an image with its channels
    last (H, W, C), as Keras and TensorFlow lay them out; "" otherwise."""
    shape = tuple(shape)
    if len(shape) != 3 or shape[-1] not in (1, 3, 4) or shape[0] <= 4:
        return ""
    if expected is not None and tuple(expected) != (shape[2], shape[0], shape[1]):
        return ""
    return (f"; {shape} looks channels-last (height, width, channels): cnncli takes "
            f"channels first, {(shape[2], shape[0], shape[1])} "
            "(for arrays: x.transpose(0, 3, 1, 2))")


def shape_tuple(name, value, length):
    if is_positive_int(value):
        return (int(value),) * length
    if isinstance(value, (tuple, list)) and len(value) == length \
            and all(is_positive_int(item) for item in value):
        return tuple(int(item) for item in value)
    raise ValueError(f"{name}: expected a positive int or a tuple of {length} positive ints, "
                     f"got {value!r}")


def plain(value):
    """A hyper-parameter as JSON can hold it: tuples become lists, NumPy scalars Python ones."""
    if isinstance(value, (tuple, list)):
        return [plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "get_config"):
        return value.get_config()
    return value


def _check_regularizer(regularizer):
    if regularizer is not None and not (hasattr(regularizer, "penalty")
                                        and hasattr(regularizer, "gradient")):
        raise ValueError(f"regularizer: expected L1, L2 or L1L2 from cnncli.regularizers, got "
                         f"{regularizer!r}")
    return regularizer


INITIALIZERS = ("he_normal", "glorot_uniform")


def initialize(shape, fan_in, fan_out, method, rng, dtype):
    """Random weights for a layer.

    ``he_normal``: N(0, 2 / fan_in), which keeps activations' variance through
    ReLU layers. ``glorot_uniform``: U(-a, a) with a = sqrt(6 / (fan_in +
    fan_out)), for layers followed by a symmetric or no activation.
    """
    if method == "he_normal":
        values = rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)
    elif method == "glorot_uniform":
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        values = rng.uniform(-limit, limit, shape)
    else:
        raise ValueError(f"init: expected one of {INITIALIZERS} or 'auto', got {method!r}")
    return values.astype(dtype)


class Layer:
    """Base class: a named transformation with parameters, forward and backward.

    ``input_shape`` (without the batch axis), given to the first layer of a
    ``Sequential``, is the model's input shape, as in Keras.
    """

    def __init__(self, name=None, input_shape=None):
        self.name = name
        self.input_shape = None      # without the batch axis; set by build()
        self.output_shape = None
        self._cache = None
        self.requested_input_shape = None if input_shape is None else \
            _input_shape(input_shape, type(self).__name__)

    # -- construction -------------------------------------------------------
    def build(self, input_shape, rng=None, dtype=np.float32, init=None):
        """Create parameters for inputs of ``input_shape`` (no batch axis).

        ``init`` is the weight initializer chosen by the model ('he_normal' or
        'glorot_uniform'); layers without weights ignore it.
        """
        self.input_shape = tuple(int(v) for v in input_shape)
        self.output_shape = self.compute_output_shape(self.input_shape)
        return self.output_shape

    @property
    def built(self):
        return self.input_shape is not None

    def compute_output_shape(self, input_shape):
        return input_shape

    def state_shapes(self, input_shape):
        """Shapes of the parameters and buffers ``build(input_shape)`` creates, by local name.

        Computed without allocating anything, so a model file can be checked
        against its architecture before any array is made.
        """
        return {}

    def parameters(self):
        """The layer's own parameters, by local name, in a fixed order."""
        return {}

    def buffers(self):
        """State that is saved with the layer but not trained (e.g. running statistics)."""
        return {}

    def regularized(self):
        """(parameter, regularizer) pairs whose penalty training adds to the loss."""
        return []

    def children(self):
        """(branch name, Sequential) of the layers inside this one: none, except in blocks."""
        return []

    def clear_cache(self):
        """Drop what the last training forward kept for backward."""
        self._cache = None

    @property
    def trainable(self):
        """Whether any parameter trains; setting it freezes or unfreezes them all."""
        return any(p.trainable for p in self.parameters().values())

    @trainable.setter
    def trainable(self, value):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"trainable: expected True or False, got {value!r}")
        if value:
            self.unfreeze()
        else:
            self.freeze()

    @property
    def weights(self):
        """The layer's arrays, as Keras' ``layer.weights``: the weight (kernel) and bias,
        then saved state such as a BatchNorm's running statistics. A Dense weight is
        (units, inputs) and a Conv2D weight (filters, channels, kh, kw): PyTorch's layout,
        the transpose of Keras' kernels."""
        return [p.value for p in self.parameters().values()] + list(self.buffers().values())

    def freeze(self):
        for parameter in self.parameters().values():
            parameter.trainable = False

    def unfreeze(self):
        for parameter in self.parameters().values():
            parameter.trainable = True

    # -- passes: subclasses define forward(x, training) and
    # backward(grad_output, need_input_grad) -------------------------------------
    def __call__(self, x, training=False):
        """``forward``; a layer not yet built is built for ``x`` first (seeded by 0), so
        layers work on their own: ``Dense(3)(x)``, ``layer3(layer2(layer1(x)))``."""
        if not self.built:
            shape = getattr(x, "shape", None)
            if shape is None:
                x = np.asarray(x, dtype=np.float32)
                shape = x.shape
            if len(shape) < 2:
                raise ValueError(f"{self.describe()}: expected a batch (N, ...) of inputs, "
                                 f"got shape {tuple(shape)}")
            dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float32
            self.build(tuple(shape[1:]), rng=np.random.default_rng(0), dtype=dtype,
                       init=self.default_init())
        # As a model does, take any numbers in the dtype of the layer's weights.
        weights = list(self.parameters().values())
        if weights:
            x = np.asarray(x, dtype=weights[0].value.dtype)
        return self.forward(x, training)

    def default_init(self):
        """The weight initialisation a layer built on its own gets (see ``Weighted``)."""
        return None

    def _check_input(self, x):
        if not self.built:
            raise RuntimeError(f"{self.describe()}: build the layer (or add it to a model with "
                               "an input shape) before calling it")
        x = np.asarray(x)
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"{self.describe()}: expected input of shape (N, "
                             f"{', '.join(map(str, self.input_shape))}), got {x.shape}"
                             f"{channels_last_hint(x.shape[1:], self.input_shape)}")
        return x

    def _expect_image(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.describe()}: expected an input shape (C, H, W), "
                             f"got {input_shape}")

    def _cached(self):
        if self._cache is None:
            raise RuntimeError(f"{self.describe()}: backward needs a forward pass with "
                               "training=True first")
        return self._cache

    # -- description ----------------------------------------------------------
    # Constructor arguments that recreate the layer, as saved in model files.
    config_keys = ()

    def get_config(self):
        """The constructor arguments (JSON-compatible) that recreate this layer, unbuilt."""
        config = {key: plain(getattr(self, key)) for key in self.config_keys}
        config["name"] = self.name
        return config

    def extra_repr(self):
        return ""

    def describe(self):
        return f"{self.name or type(self).__name__}"

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


def layer_config(layer):
    """``{"type": class name, "config": constructor arguments}``: how a model file stores a layer."""
    return {"type": type(layer).__name__, "config": layer.get_config()}


class Weighted(Layer):
    """A layer with a weight, an optional bias and an optional activation applied as part
    of the layer (Conv2D, Dense). Subclasses compute ``linear`` and set ``_activation``
    (a built-in activation layer, or None)."""

    def __init__(self, use_bias, init, regularizer, name, input_shape=None):
        super().__init__(name, input_shape)
        self._activation = None
        self.regularizer = _check_regularizer(regularizer)
        if not isinstance(use_bias, (bool, np.bool_)):
            raise ValueError(f"use_bias: expected True or False, got {use_bias!r}")
        if init not in ("auto",) + INITIALIZERS:
            raise ValueError(f"init: expected 'auto' or one of {INITIALIZERS}, got {init!r}")
        self.use_bias = bool(use_bias)
        self.init = init
        self.weight = None
        self.bias = None

    def build(self, input_shape, rng=None, dtype=np.float32, init=None):
        """Seeded weights (the model's choice of initializer unless one was given), zero bias."""
        output_shape = super().build(input_shape)
        shape = self.state_shapes(self.input_shape)["weight"]
        fan_in, fan_out = self._fans(shape)
        rng = np.random.default_rng(0) if rng is None else rng
        method = init if self.init == "auto" else self.init
        if self.init == "auto" and self._activation is not None:
            method = self.default_init()
        self.weight = Parameter(initialize(shape, fan_in, fan_out, method or "glorot_uniform",
                                           rng, dtype))
        self.bias = Parameter(np.zeros(shape[0], dtype=dtype)) if self.use_bias else None
        if self._activation is not None:
            self._activation.build(output_shape)
        return output_shape

    def default_init(self):
        """He initialisation under a ReLU-like activation of its own, Glorot otherwise."""
        return "he_normal" if self.activation in ("relu", "leaky_relu") else "glorot_uniform"

    def _activate(self, y, training):
        """The activation, if any, applied to the layer's linear output ``y``."""
        return y if self._activation is None else self._activation.forward(y, training)

    def _activation_backward(self, grad_output):
        return grad_output if self._activation is None else \
            self._activation.backward(grad_output)

    def state_shapes(self, input_shape):
        weight = self._weight_shape(tuple(input_shape))
        return {"weight": weight, **({"bias": (weight[0],)} if self.use_bias else {})}

    def parameters(self):
        if self.weight is None:
            return {}
        return {"weight": self.weight, **({"bias": self.bias} if self.bias is not None else {})}

    def regularized(self):
        if self.regularizer is None or self.weight is None:
            return []
        return [(self.weight, self.regularizer)]

    def _needs_parameter_grads(self):
        return self.weight.trainable or (self.bias is not None and self.bias.trainable)

    def _store_grads(self, grad_weight, grad_bias):
        """Keep the gradients of trainable parameters only."""
        if self.weight.trainable:
            self.weight.grad = grad_weight
        if self.bias is not None and self.bias.trainable:
            self.bias.grad = grad_bias


# The layer classes a model file may name, by class name; blocks add theirs
# with ``register_layer``. Nothing outside this table is ever built from a file.
LAYER_TYPES = {}


def register_layer(cls):
    """Make ``cls`` loadable from model files under its class name (a class decorator)."""
    LAYER_TYPES[cls.__name__] = cls
    return cls
