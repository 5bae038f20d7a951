"""Weighted layers: the convolution (``Conv2D``) and the fully connected layer (``Dense``),
each with an optional activation applied as part of the layer, as in Keras
(``Dense(64, activation="relu")``).
"""

from cnncli import functional as F
from cnncli.layers.activations import LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from cnncli.layers.base import Weighted, channels_last_hint, shape_tuple
from cnncli.validation import positive_int

__all__ = ["Conv2D", "Dense", "ACTIVATIONS"]

ACTIVATIONS = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh, "softmax": Softmax,
               "leaky_relu": LeakyReLU}


def activation_layer(name, channel_axis):
    """The layer that applies activation ``name`` (None: no layer); a softmax runs over
    ``channel_axis``."""
    if name is None:
        return None
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {', '.join(map(repr, ACTIVATIONS))} "
                         f"or None, got {name!r}")
    return Softmax(dim=channel_axis) if name == "softmax" else ACTIVATIONS[name]()


class Conv2D(Weighted):
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
    activation : 'relu', 'sigmoid', 'tanh', 'softmax' (over the channels), 'leaky_relu'
        or None
        Applied to the output as part of the layer.
    use_bias : bool
    init : 'auto', 'he_normal' or 'glorot_uniform'
        'auto' picks He before a ReLU (its own or the next layer), Glorot otherwise.
    regularizer : L1, L2 or L1L2, optional
        Penalty on the weights (not the bias), added to the loss by ``fit``.
    input_shape : (C, H, W), optional
        For the first layer of a model: its input shape, channels first.
    """

    def __init__(self, filters, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 activation=None, use_bias=True, init="auto", regularizer=None, name=None,
                 input_shape=None):
        super().__init__(use_bias, init, regularizer, name, input_shape)
        self.activation = activation
        self._activation = activation_layer(activation, channel_axis=1)
        self.filters = positive_int("filters", filters)
        self.kernel_size = shape_tuple("kernel_size", kernel_size, 2)
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = positive_int("groups", groups)

    config_keys = ("filters", "kernel_size", "stride", "padding", "dilation", "groups",
                   "activation", "use_bias", "init", "regularizer")

    def compute_output_shape(self, input_shape):
        self._expect_image(input_shape)
        # The functional API validates the arguments and names what is wrong.
        try:
            return (self.filters,) + F.conv2d_output_size(
                (1,) + tuple(input_shape), self._weight_shape(input_shape), self.stride,
                self.padding, self.dilation, self.groups)
        except ValueError as error:
            raise ValueError(f"{error}{channels_last_hint(input_shape)}") from None

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
        if not training and self.activation == "relu":
            return F.conv2d(x, self.weight.value, bias, **self._arguments(), relu=True)
        return self._activate(F.conv2d(x, self.weight.value, bias, **self._arguments()),
                              training)

    def forward_fused(self, x, scale=None, shift=None, relu=False):
        """Inference of this convolution, followed by ``y * scale[f] + shift[f]`` per output
        channel (a BatchNorm's affine map) and by ReLU if asked, in one pass: the kernel
        scales each filter's sums (or its weights while it packs them), the shift joins the
        bias, and ReLU is applied to each sample's output while it is in cache."""
        x = self._check_input(x)
        self._cache = None
        bias = None if self.bias is None else self.bias.value
        if scale is not None:
            bias = shift if bias is None else bias * scale + shift
        return F.conv2d(x, self.weight.value, bias, **self._arguments(), relu=relu,
                        scale=scale)

    def backward(self, grad_output, need_input_grad=True):
        x = self._cached()
        grad_output = self._activation_backward(grad_output)
        grad_input, grad_weight, grad_bias = F.conv2d_backward(
            grad_output, x, self.weight.value, **self._arguments(),
            need_input_grad=need_input_grad, need_weight_grad=self._needs_parameter_grads(),
            need_bias_grad=self.bias is not None)
        self._store_grads(grad_weight, grad_bias)
        return grad_input

    def extra_repr(self):
        parts = [f"{self.filters}", f"kernel_size={self.kernel_size}"]
        for key, default in (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1)):
            if getattr(self, key) != default:
                parts.append(f"{key}={getattr(self, key)!r}")
        if self.activation is not None:
            parts.append(f"activation={self.activation!r}")
        if not self.use_bias:
            parts.append("use_bias=False")
        return ", ".join(parts)


class Dense(Weighted):
    """Fully connected layer: ``y = x @ W.T + b`` with W of shape (units, in_features).

    ``activation`` ('relu', 'sigmoid', 'tanh', 'softmax', 'leaky_relu' or None) is
    applied to the output as part of the layer; ``regularizer`` (L1, L2 or L1L2)
    penalises the weights, as for Conv2D; ``input_shape`` (features,) makes it the
    first layer of a model.
    """

    def __init__(self, units, activation=None, use_bias=True, init="auto", regularizer=None,
                 name=None, input_shape=None):
        super().__init__(use_bias, init, regularizer, name, input_shape)
        self.activation = activation
        self._activation = activation_layer(activation, channel_axis=-1)
        self.units = positive_int("units", units)

    config_keys = ("units", "activation", "use_bias", "init", "regularizer")

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
        return self._activate(F.linear(x, self.weight.value, bias), training)

    def backward(self, grad_output, need_input_grad=True):
        x = self._cached()
        grad_output = self._activation_backward(grad_output)
        grad_input, grad_weight, grad_bias = F.linear_backward(
            grad_output, x, self.weight.value, need_input_grad=need_input_grad,
            need_weight_grad=self._needs_parameter_grads())
        self._store_grads(grad_weight, grad_bias)
        return grad_input

    def extra_repr(self):
        return f"{self.units}" + ("" if self.activation is None else
                                  f", activation={self.activation!r}") + \
            ("" if self.use_bias else ", use_bias=False")
