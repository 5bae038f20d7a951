"""Batch normalisation of image channels (``BatchNorm2D``)."""

import math

import numpy as np

from cnncli import functional as F
from cnncli.layers.base import Layer, Parameter

__all__ = ["BatchNorm2D"]


class BatchNorm2D(Layer):
    """Batch normalisation of each channel: ``gamma * (x - mean) / sqrt(var + eps) + beta``.

    Training uses the statistics of the batch (over N, H and W) and updates
    the running estimates: ``running = (1 - momentum) * running + momentum *
    batch`` (the running variance is the unbiased one). Inference uses the
    running estimates. A frozen BatchNorm (gamma and beta not trainable) uses
    its running estimates and leaves them unchanged whatever the mode, so a
    frozen backbone behaves the same in training and in evaluation.

    ``synchronized`` (a ``cnncli.distributed.Communicator``, set by
    ``fit(sync_batchnorm=True)``) makes the batch statistics, and the sums of
    the backward pass, those of the global batch over every rank of a
    data-parallel run: the same arithmetic as one process on the whole batch.
    """

    config_keys = ("momentum", "eps")

    def __init__(self, momentum=0.1, eps=1e-5, name=None, input_shape=None):
        super().__init__(name, input_shape)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) \
                or not 0 <= momentum <= 1:
            raise ValueError(f"momentum: expected a value in [0, 1], got {momentum!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
            raise ValueError(f"eps: expected a positive value, got {eps!r}")
        self.momentum = float(momentum)
        self.eps = float(eps)
        self.gamma = self.beta = None
        self.running_mean = self.running_var = None
        self.synchronized = None

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

    def inference_affine(self):
        """(scale, shift) per channel such that inference computes ``x * scale + shift``."""
        scale = self.gamma.value / np.sqrt(self.running_var + self.eps)
        return scale, self.beta.value - self.running_mean * scale

    def forward(self, x, training=False):
        return self._normalise(x, training, relu=False)

    def forward_then_relu(self, x):
        """A training ``forward`` followed by a ReLU, both in one pass over the output
        (``inference.training_forward`` runs a BatchNorm2D and the ReLU after it so). The
        next ``backward`` then takes that ReLU's output gradient and returns the input
        gradient through both; the values are those of the two layers one after the other."""
        return self._normalise(x, True, relu=True)

    def _normalise(self, x, training, relu):
        x = self._check_input(x)
        use_batch = training and self.trainable
        if not training:
            self._cache = None
            return F.channel_affine(x, *self.inference_affine())
        if use_batch:
            count = x.shape[0] * x.shape[2] * x.shape[3]
            if count < 2:
                raise ValueError(f"{self.describe()}: batch statistics need more than one value "
                                 f"per channel, got input of shape {x.shape}")
            mean, var = self._statistics(x, count)
        else:
            mean, var = self.running_mean, self.running_var
        inverse_std = 1 / np.sqrt(var + x.dtype.type(self.eps))
        scale = self.gamma.value * inverse_std
        out = F.channel_affine(x, scale, self.beta.value - mean * scale, relu=relu)
        # A ReLU's output is its backward's mask.
        self._cache = (x, mean, inverse_std, use_batch, out if relu else None)
        return out

    def _statistics(self, x, count):
        """The batch's mean and biased variance per channel (the global batch's, when
        synchronized), the running estimates updated."""
        if self.synchronized is None:
            return F.batch_norm_statistics(x, self.running_mean, self.running_var,
                                           self.momentum)
        mean, var = F.batch_norm_statistics(x)
        sums = self.synchronized.sum(np.concatenate(
            [[count], count * mean.astype(np.float64),
             count * (var.astype(np.float64) + mean.astype(np.float64) ** 2)]))
        total, channels = sums[0], len(mean)
        mean64 = sums[1:1 + channels] / total
        var64 = np.maximum(sums[1 + channels:] / total - mean64 ** 2, 0)
        self.running_mean *= 1 - self.momentum
        self.running_mean += self.momentum * mean64
        self.running_var *= 1 - self.momentum
        self.running_var += self.momentum * var64 * (total / max(total - 1, 1))
        self._global_count = total
        return mean64.astype(x.dtype), var64.astype(x.dtype)

    def backward(self, grad_output, need_input_grad=True):
        x, mean, inverse_std, use_batch, relu_output = self._cached()
        synchronized = use_batch and self.synchronized is not None
        if synchronized and relu_output is not None:
            grad_output, relu_output = F.relu_backward(grad_output, relu_output), None
        grad_input, grad_gamma, grad_beta = F.batch_norm_backward(
            grad_output, x, mean, inverse_std, self.gamma.value, batch_statistics=use_batch,
            need_input_grad=need_input_grad and not synchronized, relu_output=relu_output)
        if synchronized and need_input_grad:
            grad_input = self._synchronized_input_grad(grad_output, x, mean, inverse_std,
                                                       grad_gamma, grad_beta)
        if self.gamma.trainable:
            self.gamma.grad = grad_gamma
        if self.beta.trainable:
            self.beta.grad = grad_beta
        return grad_input

    def _synchronized_input_grad(self, grad_output, x, mean, inverse_std, grad_gamma,
                                 grad_beta):
        """dL/dx with the global batch statistics: ``gamma * inverse_std * (g - (sum g +
        xhat * sum g*xhat) / N)``, the sums and N over every rank."""
        sums = self.synchronized.sum(np.concatenate([grad_beta, grad_gamma]).astype(np.float64))
        channels = len(grad_beta)
        shape = (1, channels, 1, 1)
        total = self._global_count
        mean_grad = (sums[:channels] / total).astype(x.dtype).reshape(shape)
        mean_grad_xhat = (sums[channels:] / total).astype(x.dtype).reshape(shape)
        xhat = (x - mean.reshape(shape)) * inverse_std.reshape(shape)
        return (self.gamma.value * inverse_std).reshape(shape) * \
            (grad_output - mean_grad - xhat * mean_grad_xhat)

    def extra_repr(self):
        return f"momentum={self.momentum}, eps={self.eps}"
