"""Layers: parameters, forward and backward passes, built against an input shape.

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

from cnncli import functional as F
from cnncli.validation import is_positive_int, positive_int

__all__ = [
    "Parameter", "Layer", "Conv2D", "Dense", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D",
    "Flatten", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "Dropout", "BatchNorm2D",
]


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


def _shape_tuple(name, value, length):
    if is_positive_int(value):
        return (int(value),) * length
    if isinstance(value, (tuple, list)) and len(value) == length \
            and all(is_positive_int(item) for item in value):
        return tuple(int(item) for item in value)
    raise ValueError(f"{name}: expected a positive int or a tuple of {length} positive ints, "
                     f"got {value!r}")


def _plain(value):
    """A hyper-parameter as JSON can hold it: tuples become lists, NumPy scalars Python ones."""
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
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
    """Base class: a named transformation with parameters, forward and backward."""

    def __init__(self, name=None):
        self.name = name
        self.input_shape = None      # without the batch axis; set by build()
        self.output_shape = None
        self._cache = None

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
        return any(p.trainable for p in self.parameters().values())

    def freeze(self):
        for parameter in self.parameters().values():
            parameter.trainable = False

    def unfreeze(self):
        for parameter in self.parameters().values():
            parameter.trainable = True

    # -- passes: subclasses define forward(x, training) and
    # backward(grad_output, need_input_grad) -------------------------------------
    def __call__(self, x, training=False):
        return self.forward(x, training)

    def _check_input(self, x):
        if not self.built:
            raise RuntimeError(f"{self.describe()}: build the layer (or add it to a model with "
                               "an input shape) before calling it")
        x = np.asarray(x)
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"{self.describe()}: expected input of shape (N, "
                             f"{', '.join(map(str, self.input_shape))}), got {x.shape}")
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
        config = {key: _plain(getattr(self, key)) for key in self.config_keys}
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


class _Weighted(Layer):
    """A layer with a weight and an optional bias (Conv2D, Dense)."""

    def __init__(self, use_bias, init, regularizer, name):
        super().__init__(name)
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
        self.weight = Parameter(initialize(shape, fan_in, fan_out, method or "glorot_uniform",
                                           rng, dtype))
        self.bias = Parameter(np.zeros(shape[0], dtype=dtype)) if self.use_bias else None
        return output_shape

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


class Conv2D(_Weighted):
    """2-D convolution: ``filters`` kernels of ``kernel_size``, shared across positions.

    Output size per axis: ``(W - F + 2P) // S + 1`` (F the dilated kernel
    extent); ``padding='same'`` keeps the input size (stride 1).

    Parameters
    ----------
    filters : int
        Number of kernels, i.e. output channels.
    kernel_size, stride, dilation : int or (int, int)
    padding : int, (int, int), 'valid' or 'same'
    groups : int
        ``groups == in_channels`` makes a depthwise convolution.
    use_bias : bool
    init : 'auto', 'he_normal' or 'glorot_uniform'
        'auto' lets the model pick He before a ReLU, Glorot otherwise.
    regularizer : L1, L2 or L1L2, optional
        Penalty on the weights (not the bias), added to the loss by ``fit``.
    """

    def __init__(self, filters, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 use_bias=True, init="auto", regularizer=None, name=None):
        super().__init__(use_bias, init, regularizer, name)
        self.filters = positive_int("filters", filters)
        self.kernel_size = _shape_tuple("kernel_size", kernel_size, 2)
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = positive_int("groups", groups)

    config_keys = ("filters", "kernel_size", "stride", "padding", "dilation", "groups",
                   "use_bias", "init", "regularizer")

    def compute_output_shape(self, input_shape):
        self._expect_image(input_shape)
        # The functional API validates the arguments and names what is wrong.
        return (self.filters,) + F.conv2d_output_size(
            (1,) + tuple(input_shape), self._weight_shape(input_shape), self.stride,
            self.padding, self.dilation, self.groups)

    def _weight_shape(self, input_shape):
        return (self.filters, input_shape[0] // self.groups) + self.kernel_size

    def _fans(self, shape):
        kernel_area = shape[2] * shape[3]
        return shape[1] * kernel_area, shape[0] // self.groups * kernel_area

    def _arguments(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups)

    def forward(self, x, training=False):
        x = self._check_input(x)
        bias = self.bias.value if self.bias is not None else None
        self._cache = x if training else None
        return F.conv2d(x, self.weight.value, bias, **self._arguments())

    def forward_scaled(self, x, scale, shift):
        """Inference of this convolution followed by ``y * scale[f] + shift[f]`` per output
        channel, in one pass: the scale folds into the weights, the shift into the bias."""
        x = self._check_input(x)
        self._cache = None
        weight = self.weight.value * scale.reshape(-1, 1, 1, 1)
        bias = shift if self.bias is None else self.bias.value * scale + shift
        return F.conv2d(x, weight, bias, **self._arguments())

    def backward(self, grad_output, need_input_grad=True):
        x = self._cached()
        grad_input, grad_weight, grad_bias = F.conv2d_backward(
            grad_output, x, self.weight.value, **self._arguments(),
            need_input_grad=need_input_grad, need_weight_grad=self._needs_parameter_grads())
        self._store_grads(grad_weight, grad_bias)
        return grad_input

    def extra_repr(self):
        parts = [f"{self.filters}", f"kernel_size={self.kernel_size}"]
        for key, default in (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1)):
            if getattr(self, key) != default:
                parts.append(f"{key}={getattr(self, key)!r}")
        if not self.use_bias:
            parts.append("use_bias=False")
        return ", ".join(parts)


class Dense(_Weighted):
    """Fully connected layer: ``y = x @ W.T + b`` with W of shape (units, in_features).

    ``regularizer`` (L1, L2 or L1L2) penalises the weights, as for Conv2D.
    """

    def __init__(self, units, use_bias=True, init="auto", regularizer=None, name=None):
        super().__init__(use_bias, init, regularizer, name)
        self.units = positive_int("units", units)

    config_keys = ("units", "use_bias", "init", "regularizer")

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"{self.describe()}: expected a flat input shape (features,), got "
                             f"{input_shape}; add a Flatten layer before it")
        return (self.units,)

    def _weight_shape(self, input_shape):
        return (self.units, input_shape[0])

    def _fans(self, shape):
        return shape[1], shape[0]

    def forward(self, x, training=False):
        x = self._check_input(x)
        self._cache = x if training else None
        bias = self.bias.value if self.bias is not None else None
        return F.linear(x, self.weight.value, bias)

    def backward(self, grad_output, need_input_grad=True):
        x = self._cached()
        grad_input, grad_weight, grad_bias = F.linear_backward(
            grad_output, x, self.weight.value, need_input_grad=need_input_grad,
            need_weight_grad=self._needs_parameter_grads())
        self._store_grads(grad_weight, grad_bias)
        return grad_input

    def extra_repr(self):
        return f"{self.units}" + ("" if self.use_bias else ", use_bias=False")


class _Pool2D(Layer):
    config_keys = ("pool_size", "stride", "padding")

    def __init__(self, pool_size=2, stride=None, padding=0, name=None):
        super().__init__(name)
        self.pool_size = pool_size
        self.stride = stride
        self.padding = padding

    def compute_output_shape(self, input_shape):
        self._expect_image(input_shape)
        return (input_shape[0],) + F.pool2d_output_size((1,) + tuple(input_shape),
                                                        self.pool_size, self.stride,
                                                        self.padding)

    def extra_repr(self):
        parts = [f"{self.pool_size}"]
        if self.stride is not None:
            parts.append(f"stride={self.stride!r}")
        if self.padding != 0:
            parts.append(f"padding={self.padding!r}")
        return ", ".join(parts)


class MaxPool2D(_Pool2D):
    """Max pooling; the gradient goes to the first maximum of each window."""

    def forward(self, x, training=False):
        x = self._check_input(x)
        if not training:
            self._cache = None
            return F.max_pool2d(x, self.pool_size, self.stride, self.padding)
        out, indices = F.max_pool2d(x, self.pool_size, self.stride, self.padding,
                                    return_indices=True)
        self._cache = (x, indices)
        return out

    def backward(self, grad_output, need_input_grad=True):
        x, indices = self._cached()
        if not need_input_grad:
            return None
        return F.max_pool2d_backward(grad_output, x, self.pool_size, self.stride, self.padding,
                                     indices=indices)


class AvgPool2D(_Pool2D):
    """Average pooling (zero padding counted in the divisor, as Keras and PyTorch do)."""

    def forward(self, x, training=False):
        x = self._check_input(x)
        self._cache = x if training else None
        return F.avg_pool2d(x, self.pool_size, self.stride, self.padding)

    def backward(self, grad_output, need_input_grad=True):
        x = self._cached()
        if not need_input_grad:
            return None
        return F.avg_pool2d_backward(grad_output, x, self.pool_size, self.stride, self.padding)


class GlobalAvgPool2D(Layer):
    """Mean of each channel over all positions: (N, C, H, W) -> (N, C)."""

    def compute_output_shape(self, input_shape):
        self._expect_image(input_shape)
        return (input_shape[0],)

    def forward(self, x, training=False):
        x = self._check_input(x)
        self._cache = x if training else None
        return F.global_avg_pool2d(x).reshape(x.shape[:2])

    def backward(self, grad_output, need_input_grad=True):
        x = self._cached()
        if not need_input_grad:
            return None
        return F.global_avg_pool2d_backward(grad_output.reshape(grad_output.shape + (1, 1)), x)


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W), in C order."""

    def compute_output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def forward(self, x, training=False):
        x = self._check_input(x)
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_output, need_input_grad=True):
        if not need_input_grad:
            return None
        return grad_output.reshape((grad_output.shape[0],) + self.input_shape)


class _Activation(Layer):
    """An element-wise function whose derivative is computed from its output."""

    def forward(self, x, training=False):
        x = self._check_input(x)
        out = self.function(x)
        self._cache = out if training else None
        return out

    def backward(self, grad_output, need_input_grad=True):
        out = self._cached()
        return grad_output * self.derivative(out) if need_input_grad else None


class ReLU(_Activation):
    """max(0, x)."""

    def function(self, x):
        return np.maximum(x, 0)

    def derivative(self, out):
        # The boolean mask itself: multiplying by it is one pass, not two.
        return out > 0


class Sigmoid(_Activation):
    """1 / (1 + exp(-x)), computed without overflow for large |x|."""

    def function(self, x):
        return F.sigmoid(x)

    def derivative(self, out):
        return out * (1 - out)


class Tanh(_Activation):
    """tanh(x)."""

    def function(self, x):
        return np.tanh(x)

    def derivative(self, out):
        return 1 - out * out


class LeakyReLU(Layer):
    """x for x > 0, negative_slope * x otherwise."""

    config_keys = ("negative_slope",)

    def __init__(self, negative_slope=0.01, name=None):
        super().__init__(name)
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)) \
                or not math.isfinite(negative_slope):
            raise ValueError(f"negative_slope: expected a finite number, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)

    def forward(self, x, training=False):
        x = self._check_input(x)
        self._cache = x if training else None
        return np.where(x > 0, x, x * x.dtype.type(self.negative_slope))

    def backward(self, grad_output, need_input_grad=True):
        x = self._cached()
        if not need_input_grad:
            return None
        return np.where(x > 0, grad_output, grad_output * x.dtype.type(self.negative_slope))

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Softmax(Layer):
    """Probabilities over the last axis: exp(x - max) / sum(exp(x - max)).

    For training a classifier, prefer the fused softmax cross-entropy loss on
    the logits: it is numerically stabler and cheaper than Softmax + log.
    """

    def forward(self, x, training=False):
        x = self._check_input(x)
        out = F.softmax(x, dim=-1)
        self._cache = out if training else None
        return out

    def backward(self, grad_output, need_input_grad=True):
        out = self._cached()
        if not need_input_grad:
            return None
        return out * (grad_output - np.sum(grad_output * out, axis=-1, keepdims=True))


class Dropout(Layer):
    """Zeroes a fraction ``rate`` of activations while training, scaling the rest by 1/(1-rate).

    In inference it is the identity. The mask comes from the generator given
    at build time (seeded by the model), so runs are reproducible.
    """

    config_keys = ("rate",)

    def __init__(self, rate, name=None):
        super().__init__(name)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"rate: expected a fraction in [0, 1), got {rate!r}")
        self.rate = float(rate)
        self.rng = None

    def build(self, input_shape, rng=None, dtype=np.float32, init=None):
        self.rng = np.random.default_rng(0) if rng is None else rng
        return super().build(input_shape)

    def forward(self, x, training=False):
        x = self._check_input(x)
        if not training or self.rate == 0:
            self._cache = None if not training else np.ones((), dtype=x.dtype)
            return x
        keep = self.rng.random(x.shape) >= self.rate
        mask = keep.astype(x.dtype) / x.dtype.type(1 - self.rate)
        self._cache = mask
        return x * mask

    def backward(self, grad_output, need_input_grad=True):
        mask = self._cached()
        return grad_output * mask if need_input_grad else None

    def extra_repr(self):
        return f"rate={self.rate}"


class BatchNorm2D(Layer):
    """Batch normalisation of each channel: ``gamma * (x - mean) / sqrt(var + eps) + beta``.

    Training uses the statistics of the batch (over N, H and W) and updates
    the running estimates: ``running = (1 - momentum) * running + momentum *
    batch`` (the running variance is the unbiased one). Inference uses the
    running estimates. A frozen BatchNorm (gamma and beta not trainable) uses
    its running estimates and leaves them unchanged whatever the mode, so a
    frozen backbone behaves the same in training and in evaluation.
    """

    config_keys = ("momentum", "eps")

    def __init__(self, momentum=0.1, eps=1e-5, name=None):
        super().__init__(name)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) \
                or not 0 <= momentum <= 1:
            raise ValueError(f"momentum: expected a value in [0, 1], got {momentum!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
            raise ValueError(f"eps: expected a positive value, got {eps!r}")
        self.momentum = float(momentum)
        self.eps = float(eps)
        self.gamma = self.beta = None
        self.running_mean = self.running_var = None

    def compute_output_shape(self, input_shape):
        self._expect_image(input_shape)
        return input_shape

    def state_shapes(self, input_shape):
        channels = (input_shape[0],)
        return {"gamma": channels, "beta": channels, "running_mean": channels,
                "running_var": channels}

    def build(self, input_shape, rng=None, dtype=np.float32, init=None):
        output_shape = super().build(input_shape)
        channels = self.input_shape[0]
        self.gamma = Parameter(np.ones(channels, dtype=dtype))
        self.beta = Parameter(np.zeros(channels, dtype=dtype))
        self.running_mean = np.zeros(channels, dtype=dtype)
        self.running_var = np.ones(channels, dtype=dtype)
        return output_shape

    def parameters(self):
        return {} if self.gamma is None else {"gamma": self.gamma, "beta": self.beta}

    def buffers(self):
        if self.gamma is None:
            return {}
        return {"running_mean": self.running_mean, "running_var": self.running_var}

    def _per_channel(self, values):
        return values.reshape(1, -1, 1, 1)

    def inference_affine(self):
        """(scale, shift) per channel such that inference computes ``x * scale + shift``."""
        scale = self.gamma.value / np.sqrt(self.running_var + self.eps)
        return scale, self.beta.value - self.running_mean * scale

    def forward(self, x, training=False):
        x = self._check_input(x)
        use_batch = training and self.trainable
        if not training:
            self._cache = None
            scale, shift = self.inference_affine()
            out = x * self._per_channel(scale)
            out += self._per_channel(shift)
            return out
        if use_batch:
            count = x.shape[0] * x.shape[2] * x.shape[3]
            if count < 2:
                raise ValueError(f"{self.describe()}: batch statistics need more than one value "
                                 f"per channel, got input of shape {x.shape}")
            mean = x.mean(axis=(0, 2, 3))
            var = x.var(axis=(0, 2, 3))
            self.running_mean *= 1 - self.momentum
            self.running_mean += self.momentum * mean
            self.running_var *= 1 - self.momentum
            self.running_var += self.momentum * var * (count / (count - 1))
        else:
            mean, var = self.running_mean, self.running_var
        inverse_std = 1 / np.sqrt(var + self.eps)
        normalised = (x - self._per_channel(mean)) * self._per_channel(inverse_std)
        self._cache = (normalised, inverse_std, use_batch) if training else None
        return normalised * self._per_channel(self.gamma.value) + \
            self._per_channel(self.beta.value)

    def backward(self, grad_output, need_input_grad=True):
        normalised, inverse_std, use_batch = self._cached()
        if self.gamma.trainable:
            self.gamma.grad = np.sum(grad_output * normalised, axis=(0, 2, 3))
        if self.beta.trainable:
            self.beta.grad = grad_output.sum(axis=(0, 2, 3))
        if not need_input_grad:
            return None
        scale = self._per_channel(self.gamma.value * inverse_std)
        if not use_batch:
            return grad_output * scale
        # The batch mean and variance depend on every input, hence the two
        # correction terms.
        mean_grad = grad_output.mean(axis=(0, 2, 3), keepdims=True)
        mean_grad_normalised = np.mean(grad_output * normalised, axis=(0, 2, 3), keepdims=True)
        return scale * (grad_output - mean_grad - normalised * mean_grad_normalised)

    def extra_repr(self):
        return f"momentum={self.momentum}, eps={self.eps}"


# The layer classes a model file may name, by class name; blocks add theirs
# with ``register_layer``. Nothing outside this table is ever built from a file.
LAYER_TYPES = {}


def register_layer(cls):
    """Make ``cls`` loadable from model files under its class name (a class decorator)."""
    LAYER_TYPES[cls.__name__] = cls
    return cls


for _layer_class in (Conv2D, Dense, MaxPool2D, AvgPool2D, GlobalAvgPool2D, Flatten, ReLU,
                     LeakyReLU, Sigmoid, Tanh, Softmax, Dropout, BatchNorm2D):
    register_layer(_layer_class)
