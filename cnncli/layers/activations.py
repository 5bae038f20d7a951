"""Element-wise layers: activations (ReLU, LeakyReLU, Sigmoid, Tanh, Softmax) and Dropout."""

import math

import numpy as np

from cnncli import functional as F
from cnncli.layers.base import Layer

__all__ = ["ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "Dropout"]


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
        return F.relu(x)

    def forward_any_shape(self, x, training=False):
        """``forward`` on an array of any shape: a training pass that fuses this ReLU with
        the max pooling after it applies it to the pooled values."""
        out = self.function(np.asarray(x))
        self._cache = out if training else None
        return out

    def backward(self, grad_output, need_input_grad=True):
        out = self._cached()
        # The compiled kernel masks and copies in one pass.
        return F.relu_backward(grad_output, out) if need_input_grad else None


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

    def __init__(self, negative_slope=0.01, name=None, input_shape=None):
        super().__init__(name, input_shape)
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
    """Probabilities over axis ``dim`` (the last by default; 1 is the channels of an
    image batch): exp(x - max) / sum(exp(x - max)).

    A model that ends in a Softmax outputs probabilities: ``fit`` and
    ``evaluate`` then take the cross-entropy of those probabilities (the
    softmax is not applied twice). Ending in logits and letting the loss apply
    the softmax is stabler and cheaper.
    """

    config_keys = ("dim",)

    def __init__(self, dim=-1, name=None, input_shape=None):
        super().__init__(name, input_shape)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim == 0:
            raise ValueError(f"dim: expected a non-batch axis (-1, 1, ...), got {dim!r}")
        self.dim = dim

    def compute_output_shape(self, input_shape):
        if not -len(input_shape) <= (self.dim - 1 if self.dim > 0 else self.dim) \
                < len(input_shape):
            raise ValueError(f"{self.describe()}: dim {self.dim} is not an axis of inputs "
                             f"(N, {', '.join(map(str, input_shape))})")
        return input_shape

    def forward(self, x, training=False):
        x = self._check_input(x)
        out = F.softmax(x, dim=self.dim)
        self._cache = out if training else None
        return out

    def backward(self, grad_output, need_input_grad=True):
        out = self._cached()
        if not need_input_grad:
            return None
        return out * (grad_output - np.sum(grad_output * out, axis=self.dim, keepdims=True))

    def extra_repr(self):
        return "" if self.dim == -1 else f"dim={self.dim}"


class Dropout(Layer):
    """Zeroes a fraction ``rate`` of activations while training, scaling the rest by 1/(1-rate).

    In inference it is the identity. The mask comes from the generator given
    at build time (seeded by the model), so runs are reproducible.
    """

    config_keys = ("rate",)

    def __init__(self, rate, name=None, input_shape=None):
        super().__init__(name, input_shape)
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
