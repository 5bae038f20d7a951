"""Blocks: layers made of other layers, so models are not limited to a straight line.

``Residual(body, shortcut)`` computes ``body(x) + shortcut(x)``: the skip
connection of a ResNet block. The shortcut is the identity by default, or a
projection (e.g. a strided 1x1 convolution and a BatchNorm) when the body
changes the shape.
"""

import numpy as np

from cnncli.layers import Layer, layer_config, register_layer
from cnncli.model import Sequential, plan

__all__ = ["Residual"]


@register_layer
class Residual(Layer):
    """``y = body(x) + shortcut(x)``.

    Parameters
    ----------
    body : list of Layer
    shortcut : list of Layer, optional
        None for the identity, which needs the body to keep the input shape.

    Parameters are named ``body.<layer>.<parameter>`` and
    ``shortcut.<layer>.<parameter>`` inside the block.
    """

    # Config entries that hold lists of layers rather than values.
    nested_keys = ("body", "shortcut")

    def __init__(self, body, shortcut=None, name=None, input_shape=None):
        super().__init__(name, input_shape)
        self.body_layers = list(body)
        self.shortcut_layers = None if shortcut is None else list(shortcut)
        if not self.body_layers:
            raise ValueError("body: expected at least one layer, got none")
        self.body = self.shortcut = None

    def build(self, input_shape, rng=None, dtype=np.float32, init=None):
        self.input_shape = tuple(int(v) for v in input_shape)
        rng = np.random.default_rng(0) if rng is None else rng
        body_seed, shortcut_seed = (int(v) for v in rng.integers(2**62, size=2))
        self.body = Sequential(self.body_layers, input_shape=self.input_shape, seed=body_seed,
                               dtype=dtype, name="body")
        self.shortcut = None
        side_shape = self.input_shape
        if self.shortcut_layers:
            self.shortcut = Sequential(self.shortcut_layers, input_shape=self.input_shape,
                                       seed=shortcut_seed, dtype=dtype, name="shortcut")
            side_shape = self.shortcut.output_shape
        if self.body.output_shape != side_shape:
            raise ValueError(f"{self.describe()}: the body outputs {self.body.output_shape} "
                             f"but the shortcut outputs {side_shape}; give a projection "
                             "shortcut that matches")
        self.output_shape = self.body.output_shape
        return self.output_shape

    def _plan(self, input_shape):
        """State shapes and output shapes of both branches, without building anything."""
        body, body_shape = plan(self.body_layers, input_shape)
        expected = {f"body.{key}": shape for key, shape in body.items()}
        side_shape = tuple(input_shape)
        if self.shortcut_layers:
            shortcut, side_shape = plan(self.shortcut_layers, input_shape)
            expected.update({f"shortcut.{key}": shape for key, shape in shortcut.items()})
        if body_shape != side_shape:
            raise ValueError(f"{self.describe()}: the body outputs {body_shape} but the "
                             f"shortcut outputs {side_shape}; give a projection shortcut that "
                             "matches")
        return expected, body_shape

    def compute_output_shape(self, input_shape):
        return self._plan(input_shape)[1]

    def state_shapes(self, input_shape):
        return self._plan(input_shape)[0]

    def get_config(self):
        def described(layers):
            return None if layers is None else [layer_config(layer) for layer in layers]
        return {"body": described(self.body_layers), "shortcut": described(self.shortcut_layers),
                "name": self.name}

    def children(self):
        if self.body is None:
            return []
        return [("body", self.body)] + ([("shortcut", self.shortcut)] if self.shortcut else [])

    def forward_layer_by_layer(self, x, visit, prefix=""):
        """``forward`` in inference with each inner layer on its own (see
        ``Sequential.forward_layer_by_layer``)."""
        out = self.body.forward_layer_by_layer(x, visit, prefix + "body.")
        side = x if self.shortcut is None else \
            self.shortcut.forward_layer_by_layer(x, visit, prefix + "shortcut.")
        return out + side

    def parameters(self):
        if self.body is None:
            return {}
        return {f"{branch}.{key}": parameter for branch, model in self.children()
                for key, parameter in model.named_parameters()}

    def buffers(self):
        if self.body is None:
            return {}
        return {f"{branch}.{key}": buffer for branch, model in self.children()
                for key, buffer in model.buffers().items()}

    def regularized(self):
        return [pair for _, model in self.children() if model is not None
                for pair in model.regularized()]

    def forward(self, x, training=False):
        x = self._check_input(x)
        # While training, both branches keep what the input gradient needs:
        # the block may sit above trainable layers.
        out = self.body.forward(x, training=training, need_input_grad=training)
        side = x if self.shortcut is None else \
            self.shortcut.forward(x, training=training, need_input_grad=training)
        if training or np.may_share_memory(out, x):
            # Training layers may keep their output for backward (a ReLU's
            # mask), and a body may pass its input through: add out of place.
            out = out + side
        else:
            out += side
        self._cache = True if training else None
        return out

    def backward(self, grad_output, need_input_grad=True):
        self._cached()
        grad = self.body.backward(grad_output, need_input_grad=need_input_grad)
        if self.shortcut is not None:
            side = self.shortcut.backward(grad_output, need_input_grad=need_input_grad)
        else:
            side = grad_output
        return grad + side if need_input_grad else None

    def extra_repr(self):
        body = ", ".join(repr(layer) for layer in self.body_layers)
        if self.shortcut_layers is None:
            return f"body=[{body}]"
        return f"body=[{body}], shortcut=[{', '.join(repr(l) for l in self.shortcut_layers)}]"
