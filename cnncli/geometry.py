"""The geometry of convolution and pooling: argument checks, padding and output sizes.

Pure arithmetic on shapes and arguments, shared by ``cnncli.functional`` (before
a kernel runs) and the layers (to size their outputs without any data). Every
check raises ``ValueError`` naming the argument and echoing what it received.
"""

from functools import lru_cache
from typing import NamedTuple, Optional, Tuple, Union

import numpy as np

from cnncli.validation import positive_int

__all__ = ["conv_output_size", "conv2d_output_size", "pool2d_output_size", "IntPair",
           "INT_MAX"]

IntPair = Union[int, Tuple[int, int]]

# Sizes, strides and counts beyond 32 bits cannot describe a real image or kernel.
INT_MAX = 2**31 - 1


def pair(name, value, minimum):
    def is_int(item):
        return isinstance(item, (int, np.integer)) and not isinstance(item, (bool, np.bool_))

    if is_int(value):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(is_int(v) for v in value):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{name}: expected an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name}: expected values >= {minimum}, got {value!r}")
    if max(pair) > INT_MAX:
        raise ValueError(f"{name}: expected values <= {INT_MAX}, got {value!r}")
    return pair


def float_array(name, array, ndim, layout, dtype=None):
    """`array` as a C-contiguous float32/float64 ndarray of `ndim` dimensions."""
    array = np.asarray(array)
    if dtype is None and array.dtype not in (np.float32, np.float64):
        raise ValueError(f"{name}: expected dtype float32 or float64, got {array.dtype}")
    if dtype is not None and array.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype} (the dtype of x), got {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array {layout}, got shape {array.shape}")
    return np.ascontiguousarray(array)


def expect_shape(name, array, expected):
    if array.shape != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)}, got {array.shape}")


def conv2d_output_size(input_shape, weight_shape, stride: IntPair = 1, padding=0,
                       dilation: IntPair = 1, groups: int = 1) -> Tuple[int, int]:
    """(height, width) of ``conv2d``'s output for an input of shape ``input_shape``
    (N, C, H, W) and weights of ``weight_shape``, with ``conv2d``'s checks and messages,
    without any data."""
    def probe(shape):
        return np.broadcast_to(np.float32(0), tuple(shape))
    return conv_geometry(probe(input_shape), probe(weight_shape), stride, padding, dilation,
                          groups).output_size


def pool2d_output_size(input_shape, kernel_size: IntPair, stride: Optional[IntPair] = None,
                       padding: IntPair = 0) -> Tuple[int, int]:
    """(height, width) of ``max_pool2d`` / ``avg_pool2d``'s output for an input of shape
    ``input_shape`` (N, C, H, W), with their checks and messages, without any data."""
    return pool_geometry(np.broadcast_to(np.float32(0), tuple(input_shape)), kernel_size,
                          stride, padding)[3]


def conv_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0,
                     dilation: int = 1) -> int:
    """Output extent of a convolution or pooling along one axis.

    ``(W - F + 2P) // S + 1``, where F is the dilated kernel ``D * (K - 1) + 1``
    and ``2P`` the total padding of that axis.
    """
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


class ConvGeometry(NamedTuple):
    stride: Tuple[int, int]
    padding: Tuple[int, int]        # top, left
    dilation: Tuple[int, int]
    groups: int
    output_size: Tuple[int, int]


def conv_padding(padding, kernel_size, stride, dilation):
    """(top, bottom, left, right) padding from an int, a pair, 'valid' or 'same'."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding: 'same' needs stride 1, got stride {stride}")
            sides = []
            for k, d in zip(kernel_size, dilation):
                total = d * (k - 1)
                # An odd total puts the extra row/column at the bottom/right, as PyTorch does.
                sides += [total // 2, total - total // 2]
            return tuple(sides)
        raise ValueError(f"padding: expected an int, a pair, 'valid' or 'same', got {padding!r}")
    ph, pw = pair("padding", padding, 0)
    return (ph, ph, pw, pw)


def is_plain(value):
    """Whether an argument may key a cache of checked geometries: None, a str, an int or a
    pair of ints whose type is exactly int. A bool or a NumPy integer equals an int and
    hashes alike, yet must meet its own checks, so such arguments skip the cache."""
    if value is None or type(value) in (int, str):
        return True
    return type(value) is tuple and len(value) == 2 and type(value[0]) is int \
        and type(value[1]) is int


def cached_when_plain(shapes):
    """Decorate a geometry check whose first ``shapes`` arguments are ints or tuples of
    ints: calls whose other arguments are all plain are answered from a cache.

    The checks cost a few microseconds a call, which a batch-1 forward of a small network
    pays at every layer; a layer's arguments, checked once, are looked up after. Failed
    checks raise and so are never cached; the results are tuples, never changed.
    """
    def decorate(check):
        cached = lru_cache(maxsize=1024)(check)

        def checked(*arguments):
            if all(map(is_plain, arguments[shapes:])):
                return cached(*arguments)
            return check(*arguments)
        checked.cache_info = cached.cache_info
        return checked
    return decorate


def conv_geometry(x, weight, stride, padding, dilation, groups):
    return conv_geometry_of(tuple(x.shape[1:]), tuple(weight.shape), stride, padding,
                            dilation, groups)


@cached_when_plain(shapes=2)
def conv_geometry_of(input_shape, weight_shape, stride, padding, dilation, groups):
    """The checked geometry of a convolution of an input of shape (C, H, W)."""
    stride = pair("stride", stride, 1)
    dilation = pair("dilation", dilation, 1)
    groups = positive_int("groups", groups, INT_MAX)
    channels, height, width = input_shape
    filters, group_channels, kernel_h, kernel_w = weight_shape
    if channels % groups or filters % groups:
        raise ValueError(f"groups: must divide the input channels ({channels}) and the "
                         f"filters ({filters}), got {groups}")
    if group_channels * groups != channels:
        raise ValueError(f"weight: expected {channels // groups} input channels per group "
                         f"(x has {channels} channels, groups={groups}), got weight shape "
                         f"{weight_shape}")
    if min(filters, kernel_h, kernel_w) < 1:
        raise ValueError(f"weight: expected non-empty filters, got shape {weight_shape}")
    top, bottom, left, right = conv_padding(padding, (kernel_h, kernel_w), stride, dilation)
    padded = (height + top + bottom, width + left + right)
    dilated = (dilation[0] * (kernel_h - 1) + 1, dilation[1] * (kernel_w - 1) + 1)
    if dilated[0] > padded[0] or dilated[1] > padded[1]:
        raise ValueError(f"weight: the {dilated[0]}x{dilated[1]} (dilated) kernel is larger "
                         f"than the {padded[0]}x{padded[1]} padded input")
    output_size = ((padded[0] - dilated[0]) // stride[0] + 1,
                   (padded[1] - dilated[1]) // stride[1] + 1)
    return ConvGeometry(stride, (top, left), dilation, groups, output_size)


def unfold_geometry(kernel_size, dilation, padding, stride, image_size):
    kernel_size = pair("kernel_size", kernel_size, 1)
    dilation = pair("dilation", dilation, 1)
    padding = pair("padding", padding, 0)
    stride = pair("stride", stride, 1)
    output_size = tuple(conv_output_size(image_size[axis], kernel_size[axis], stride[axis],
                                         padding[axis], dilation[axis]) for axis in (0, 1))
    if min(output_size) < 1:
        raise ValueError(f"kernel_size: the {kernel_size} kernel (dilation {dilation}) is "
                         f"larger than the padded {image_size[0]}x{image_size[1]} image")
    return kernel_size, dilation, padding, stride, output_size


def pool_geometry(x, kernel_size, stride, padding):
    return pool_geometry_of(x.shape[2], x.shape[3], kernel_size, stride, padding)


@cached_when_plain(shapes=2)
def pool_geometry_of(height, width, kernel_size, stride, padding):
    """The checked kernel size, stride, padding and output size of a pooling of
    height x width planes."""
    kernel_size = pair("kernel_size", kernel_size, 1)
    stride = kernel_size if stride is None else pair("stride", stride, 1)
    padding = pair("padding", padding, 0)
    if padding[0] > kernel_size[0] // 2 or padding[1] > kernel_size[1] // 2:
        raise ValueError(f"padding: must be at most half the kernel size {kernel_size}, "
                         f"got {padding}")
    if kernel_size[0] > height + 2 * padding[0] or kernel_size[1] > width + 2 * padding[1]:
        raise ValueError(f"kernel_size: {kernel_size} is larger than the padded "
                         f"{height + 2 * padding[0]}x{width + 2 * padding[1]} input")
    output_size = (conv_output_size(height, kernel_size[0], stride[0], padding[0]),
                   conv_output_size(width, kernel_size[1], stride[1], padding[1]))
    return kernel_size, stride, padding, output_size
