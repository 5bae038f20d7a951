"""Pooling layers: max, average and global average pooling, and ``Flatten``, which turns
the pooled maps into the features a dense head reads."""

import numpy as np

from cnncli import functional as F
from cnncli.layers.base import Layer

__all__ = ["MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "Flatten"]


class _Pool2D(Layer):
    config_keys = ("pool_size", "stride", "padding")

    def __init__(self, pool_size=2, stride=None, padding=0, name=None, input_shape=None):
        super().__init__(name, input_shape)
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
