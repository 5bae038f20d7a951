"""Convolution, pooling, dense layers, ReLU, batch normalisation and optimizer updates on
NumPy arrays, with the signatures of ``torch.nn.functional`` where it has them.

Layout is NCHW and convolution weights are ``(out_channels, in_channels / groups,
kernel_height, kernel_width)``, so any result can be checked against PyTorch.
float32 is the working dtype; float64 works too (for gradient checks). Inputs
of other layouts are copied to C order; all arrays of one call share a dtype.

Every function validates its arguments before a compiled loop runs and raises
``ValueError`` naming the argument and echoing what it received.

Threads: the kernels use ``get_num_threads()`` OpenMP threads, set with
``set_num_threads``, the ``threads`` context manager, or the environment
variable ``CNNCLI_NUM_THREADS`` (then ``OMP_NUM_THREADS``, then every core
this process may use). While a kernel runs, the BLAS library it calls is held
at one thread, so BLAS and OpenMP threads never oversubscribe the cores.
Results are bit-identical for any thread count.
"""

from typing import Optional, Union

import numpy as np

from cnncli import _conv, _elementwise, _linear, _parallel, _pool
from cnncli.activation_math import sigmoid, softmax
from cnncli.geometry import (IntPair, conv2d_output_size, conv_geometry, conv_output_size,
                             expect_shape, float_array, pair, pool2d_output_size, pool_geometry,
                             unfold_geometry)
from cnncli.parallelism import get_num_threads, set_num_threads, single_threaded_blas, threads

__all__ = [
    "conv2d", "conv2d_backward", "conv2d_paths", "use_direct_convolution", "use_winograd",
    "use_row_kernel", "use_direct_over_blas", "linear", "linear_backward", "max_pool2d",
    "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward", "global_avg_pool2d", "global_avg_pool2d_backward",
    "unfold", "fold", "relu", "relu_backward", "direct_kernel_variant", "planes_kernel_variant",
    "batch_norm", "batch_norm_statistics", "batch_norm_backward", "channel_affine",
    "sgd_update", "adam_update", "conv_output_size", "conv2d_output_size", "pool2d_output_size",
    "softmax", "sigmoid", "get_num_threads", "set_num_threads", "threads", "openmp_enabled",
]


def openmp_enabled() -> bool:
    """True when the compiled kernels were built with OpenMP."""
    return _parallel.openmp_enabled()


def _conv_operands(x, weight):
    x = float_array("x", x, 4, "(N, C, H, W)")
    weight = float_array("weight", weight, 4, "(out_channels, in_channels/groups, kH, kW)",
                          dtype=x.dtype)
    return x, weight


# --- Convolution ---


def conv2d(x, weight, bias=None, stride: IntPair = 1, padding: Union[IntPair, str] = 0,
           dilation: IntPair = 1, groups: int = 1, *, relu: bool = False,
           scale=None) -> np.ndarray:
    """2-D convolution (cross-correlation, as in deep learning) of a batch of images.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    weight : ndarray, shape (F, C / groups, KH, KW)
        Each of the F filters is shared across every position of the image.
    bias : ndarray, shape (F,), optional
    stride, dilation : int or (int, int)
    padding : int, (int, int), 'valid' or 'same'
        Zeros added on each side; 'same' keeps H and W (stride 1 only).
    groups : int
        Split channels into groups convolved separately (``groups == C``: depthwise).
    relu : bool
        Return ``max(conv, 0)`` (as ``relu(conv2d(...))``), applied in cache.
    scale : ndarray, shape (F,), optional
        Multiply filter f's sums by ``scale[f]`` before the bias (a folded BatchNorm).

    Returns
    -------
    ndarray, shape (N, F, OH, OW)
        With ``OW = (W - F' + 2P) // S + 1`` for the dilated kernel width F'
        (see ``conv_output_size``); likewise OH.
    """
    x, weight = _conv_operands(x, weight)
    geometry = conv_geometry(x, weight, stride, padding, dilation, groups)
    if bias is not None:
        bias = float_array("bias", bias, 1, "(out_channels,)", dtype=x.dtype)
        expect_shape("bias", bias, (weight.shape[0],))
    if scale is not None:
        scale = float_array("scale", scale, 1, "(out_channels,)", dtype=x.dtype)
        expect_shape("scale", scale, (weight.shape[0],))
    out = np.empty((x.shape[0], weight.shape[0]) + geometry.output_size, dtype=x.dtype)
    with single_threaded_blas:
        _conv.conv2d_forward(x, weight, bias, out, geometry.stride, geometry.padding,
                             geometry.dilation, geometry.groups, get_num_threads(), relu, scale)
    return out


def direct_kernel_variant() -> str:
    """Which variant of the direct convolution kernel runs on this CPU: 'avx512', 'avx2',
    or 'none' (im2col + GEMM only); CNNCLI_DIRECT_ISA, read at import, can narrow it."""
    return _conv.direct_kernel_variant()


def planes_kernel_variant() -> str:
    """Which variant of batch normalisation's float32 loops runs on this CPU: 'avx512',
    'avx2' or 'baseline'; CNNCLI_DIRECT_ISA, read at import, can narrow it ('none':
    'baseline')."""
    return _elementwise.planes_kernel_variant()


# Switches for tests and benchmarks that compare a kernel's path with the one it replaces:
# each takes True (the rule's default) or False and returns the previous setting.
use_direct_convolution = _conv.use_direct_kernel  # False: im2col + GEMM only
use_winograd = _conv.use_winograd  # Winograd's F(2x2, 3x3) on the 3x3 layers it suits
use_row_kernel = _conv.use_row_kernel  # the row kernel on the layers of few taps it suits
use_direct_over_blas = _conv.use_direct_over_blas  # every 1x1 pass, every grad_weight


def conv2d_paths(x_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1,
                 dtype=np.float32) -> dict:
    """For 'forward', 'input_grad', 'weight_grad' of this convolution on this CPU: the
    filters of the kernel's tile that runs it (direct: 32 or 16, row: 8 or 2), 0 for im2col
    + GEMM; 'winograd' and 'rows': those passes Winograd (F(2x2, 3x3) or F(2x2, 5x5); for
    a strided layer, its forward on the input folded into a 3x3 layer), the row kernel run."""
    x, weight = np.empty(x_shape, dtype), np.empty(weight_shape, dtype)
    geometry = conv_geometry(x, weight, stride, padding, dilation, groups)
    return _conv.direct_paths(x.shape, weight.shape, geometry.output_size, geometry.stride,
                              geometry.padding, geometry.dilation, geometry.groups, dtype)


def conv2d_backward(grad_output, x, weight, stride: IntPair = 1,
                    padding: Union[IntPair, str] = 0, dilation: IntPair = 1, groups: int = 1,
                    need_input_grad: bool = True, need_weight_grad: bool = True,
                    need_bias_grad: bool = True):
    """Gradients of ``conv2d`` with respect to its input, weight and bias.

    Parameters
    ----------
    grad_output : ndarray, shape (N, F, OH, OW)
        Gradient of the loss with respect to the output of ``conv2d``.
    x, weight, stride, padding, dilation, groups
        As given to ``conv2d``.
    need_input_grad, need_weight_grad, need_bias_grad : bool
        What to compute; a frozen layer asks for no weight gradient, and the
        bottom of a frozen stack for no input gradient either; a layer without
        a bias for no bias gradient. Nothing that was not asked for is computed.

    Returns
    -------
    (grad_input, grad_weight, grad_bias)
        Shapes of x, weight and (F,); ``None`` for what was not asked for
        (grad_bias only with need_weight_grad).
    """
    x, weight = _conv_operands(x, weight)
    geometry = conv_geometry(x, weight, stride, padding, dilation, groups)
    grad_output = float_array("grad_output", grad_output, 4, "(N, F, OH, OW)", dtype=x.dtype)
    expect_shape("grad_output", grad_output,
                  (x.shape[0], weight.shape[0]) + geometry.output_size)
    if not need_input_grad and not need_weight_grad:
        return None, None, None
    grad_input = np.empty_like(x) if need_input_grad else None
    grad_weight = np.empty_like(weight) if need_weight_grad else None
    grad_bias = np.empty(weight.shape[0], dtype=x.dtype) \
        if need_weight_grad and need_bias_grad else None
    with single_threaded_blas:
        _conv.conv2d_backward(grad_output, x, weight, grad_input, grad_weight, grad_bias,
                              geometry.stride, geometry.padding, geometry.dilation,
                              geometry.groups, get_num_threads())
    return grad_input, grad_weight, grad_bias


# --- Fully connected ---


def _linear_operands(x, weight):
    x = float_array("x", x, 2, "(N, in_features)")
    weight = float_array("weight", weight, 2, "(out_features, in_features)", dtype=x.dtype)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight: expected {x.shape[1]} input features (x has shape "
                         f"{x.shape}), got weight shape {weight.shape}")
    if x.shape[1] < 1 or weight.shape[0] < 1:
        raise ValueError(f"weight: expected at least one input and output feature, got "
                         f"shape {weight.shape}")
    return x, weight


def linear(x, weight, bias=None) -> np.ndarray:
    """Fully connected layer: ``x @ weight.T + bias``.

    Parameters
    ----------
    x : ndarray, shape (N, in_features)
    weight : ndarray, shape (out_features, in_features)
    bias : ndarray, shape (out_features,), optional

    Returns
    -------
    ndarray, shape (N, out_features)
    """
    x, weight = _linear_operands(x, weight)
    if bias is not None:
        bias = float_array("bias", bias, 1, "(out_features,)", dtype=x.dtype)
        expect_shape("bias", bias, (weight.shape[0],))
    out = np.empty((x.shape[0], weight.shape[0]), dtype=x.dtype)
    if x.shape[0] == 0:
        return out
    with single_threaded_blas:
        _linear.linear_forward(x, weight, bias, out, get_num_threads())
    return out


def linear_backward(grad_output, x, weight, need_input_grad: bool = True,
                    need_weight_grad: bool = True):
    """Gradients of ``linear`` with respect to its input, weight and bias.

    Returns ``(grad_input, grad_weight, grad_bias)`` with the shapes of x,
    weight and (out_features,); ``None`` for what was not asked for, as in
    ``conv2d_backward``.
    """
    x, weight = _linear_operands(x, weight)
    grad_output = float_array("grad_output", grad_output, 2, "(N, out_features)",
                               dtype=x.dtype)
    expect_shape("grad_output", grad_output, (x.shape[0], weight.shape[0]))
    if not need_input_grad and not need_weight_grad:
        return None, None, None
    grad_input = np.empty_like(x) if need_input_grad else None
    grad_weight = np.empty_like(weight) if need_weight_grad else None
    grad_bias = np.empty(weight.shape[0], dtype=x.dtype) if need_weight_grad else None
    if x.shape[0] == 0:
        for gradient in (grad_weight, grad_bias):
            if gradient is not None:
                gradient.fill(0)
        return grad_input, grad_weight, grad_bias
    with single_threaded_blas:
        _linear.linear_backward(grad_output, x, weight, grad_input, grad_weight, grad_bias,
                                get_num_threads())
    return grad_input, grad_weight, grad_bias


def unfold(x, kernel_size: IntPair, dilation: IntPair = 1, padding: IntPair = 0,
           stride: IntPair = 1) -> np.ndarray:
    """im2col: every sliding block of ``x`` as a column.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)

    Returns
    -------
    ndarray, shape (N, C * KH * KW, OH * OW)
        Rows ordered (channel, kernel row, kernel column); zeros where a block
        covers padding. As ``torch.nn.functional.unfold``.
    """
    x = float_array("x", x, 4, "(N, C, H, W)")
    kernel_size, dilation, padding, stride, output_size = unfold_geometry(
        kernel_size, dilation, padding, stride, x.shape[2:])
    cols = np.empty((x.shape[0], x.shape[1] * kernel_size[0] * kernel_size[1],
                     output_size[0] * output_size[1]), dtype=x.dtype)
    _conv.im2col(x, cols, kernel_size, output_size, stride, padding, dilation,
                 get_num_threads())
    return cols


def fold(cols, output_size: IntPair, kernel_size: IntPair, dilation: IntPair = 1,
         padding: IntPair = 0, stride: IntPair = 1) -> np.ndarray:
    """col2im, the adjoint of ``unfold``: sums every column back into its block.

    Parameters
    ----------
    cols : ndarray, shape (N, C * KH * KW, L)
    output_size : int or (int, int)
        The image size (H, W); L must equal the number of blocks it holds.

    Returns
    -------
    ndarray, shape (N, C, H, W). As ``torch.nn.functional.fold``.
    """
    cols = float_array("cols", cols, 3, "(N, C*kH*kW, L)")
    image_size = pair("output_size", output_size, 1)
    kernel_size, dilation, padding, stride, blocks = unfold_geometry(
        kernel_size, dilation, padding, stride, image_size)
    kernel_area = kernel_size[0] * kernel_size[1]
    if cols.shape[1] % kernel_area or cols.shape[1] == 0:
        raise ValueError(f"cols: expected dimension 1 to be a positive multiple of "
                         f"kH*kW = {kernel_area}, got shape {cols.shape}")
    if cols.shape[2] != blocks[0] * blocks[1]:
        raise ValueError(f"cols: expected {blocks[0] * blocks[1]} blocks in dimension 2 "
                         f"for a {image_size} image, got shape {cols.shape}")
    x = np.empty((cols.shape[0], cols.shape[1] // kernel_area) + image_size, dtype=cols.dtype)
    _conv.col2im(cols, x, kernel_size, blocks, stride, padding, dilation, get_num_threads())
    return x


# --- Pooling ---


def _pool_input(x):
    return float_array("x", x, 4, "(N, C, H, W)")


def _pool_grad_output(grad_output, x, output_size):
    grad_output = float_array("grad_output", grad_output, 4, "(N, C, OH, OW)", dtype=x.dtype)
    expect_shape("grad_output", grad_output, x.shape[:2] + output_size)
    return grad_output


def max_pool2d(x, kernel_size: IntPair, stride: Optional[IntPair] = None,
               padding: IntPair = 0, return_indices: bool = False):
    """Max pooling over sliding windows of each channel.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to kernel_size (non-overlapping windows).
    padding : int or (int, int)
        Implicit -inf padding, at most half the kernel size.
    return_indices : bool
        Also return, for each output, the flat index ``h * W + w`` of the
        first maximum of its window (as PyTorch does).

    Returns
    -------
    ndarray, shape (N, C, OH, OW), and the int64 indices if asked for.
    """
    x = _pool_input(x)
    kernel_size, stride, padding, output_size = pool_geometry(x, kernel_size, stride, padding)
    out = np.empty(x.shape[:2] + output_size, dtype=x.dtype)
    indices = np.empty(out.shape, dtype=np.int64) if return_indices else None
    _pool.max_pool2d_forward(x, out, indices, kernel_size, stride, padding, get_num_threads())
    return (out, indices) if return_indices else out


def max_pool2d_backward(grad_output, x, kernel_size: IntPair,
                        stride: Optional[IntPair] = None, padding: IntPair = 0,
                        indices=None) -> np.ndarray:
    """Gradient of ``max_pool2d`` with respect to x.

    Each output's gradient goes to the first maximum of its window;
    overlapping windows accumulate. Pass the ``indices`` returned by
    ``max_pool2d(..., return_indices=True)`` to skip finding the maxima again.

    Returns
    -------
    ndarray, shape of x.
    """
    x = _pool_input(x)
    kernel_size, stride, padding, output_size = pool_geometry(x, kernel_size, stride, padding)
    grad_output = _pool_grad_output(grad_output, x, output_size)
    if indices is None:
        _, indices = max_pool2d(x, kernel_size, stride, padding, return_indices=True)
    else:
        indices = np.asarray(indices)
        if indices.dtype != np.int64:
            raise ValueError(f"indices: expected dtype int64, got {indices.dtype}")
        expect_shape("indices", indices, grad_output.shape)
        indices = np.ascontiguousarray(indices)
    grad_input = np.empty_like(x)
    _pool.max_pool2d_backward(grad_output, indices, grad_input, get_num_threads())
    return grad_input


def avg_pool2d(x, kernel_size: IntPair, stride: Optional[IntPair] = None,
               padding: IntPair = 0, count_include_pad: bool = True) -> np.ndarray:
    """Average pooling over sliding windows of each channel.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel_size, stride, padding
        As for ``max_pool2d`` (zero padding).
    count_include_pad : bool
        Divide by the full window area (True) or by the cells of the window
        that lie inside the input (False).

    Returns
    -------
    ndarray, shape (N, C, OH, OW)
    """
    x = _pool_input(x)
    kernel_size, stride, padding, output_size = pool_geometry(x, kernel_size, stride, padding)
    out = np.empty(x.shape[:2] + output_size, dtype=x.dtype)
    _pool.avg_pool2d_forward(x, out, kernel_size, stride, padding, bool(count_include_pad),
                             get_num_threads())
    return out


def avg_pool2d_backward(grad_output, x, kernel_size: IntPair,
                        stride: Optional[IntPair] = None, padding: IntPair = 0,
                        count_include_pad: bool = True) -> np.ndarray:
    """Gradient of ``avg_pool2d`` with respect to x (shape of x)."""
    x = _pool_input(x)
    kernel_size, stride, padding, output_size = pool_geometry(x, kernel_size, stride, padding)
    grad_output = _pool_grad_output(grad_output, x, output_size)
    grad_input = np.empty_like(x)
    _pool.avg_pool2d_backward(grad_output, grad_input, kernel_size, stride, padding,
                              bool(count_include_pad), get_num_threads())
    return grad_input


def global_avg_pool2d(x) -> np.ndarray:
    """Mean of each channel over all positions: (N, C, H, W) -> (N, C, 1, 1).

    The same as ``torch.nn.functional.adaptive_avg_pool2d(x, 1)``.
    """
    x = _pool_input(x)
    if min(x.shape[2:]) < 1:
        raise ValueError(f"x: expected a non-empty image, got shape {x.shape}")
    out = np.empty(x.shape[:2], dtype=x.dtype)
    _pool.global_avg_pool2d_forward(x, out, get_num_threads())
    return out.reshape(x.shape[:2] + (1, 1))


def global_avg_pool2d_backward(grad_output, x) -> np.ndarray:
    """Gradient of ``global_avg_pool2d``: each cell gets grad_output / (H * W)."""
    x = _pool_input(x)
    if min(x.shape[2:]) < 1:
        raise ValueError(f"x: expected a non-empty image, got shape {x.shape}")
    grad_output = _pool_grad_output(grad_output, x, (1, 1))
    grad_input = np.empty_like(x)
    _pool.global_avg_pool2d_backward(grad_output.reshape(x.shape[:2]), grad_input,
                                     get_num_threads())
    return grad_input


# --- Element-wise and per-channel work between the convolutions ---


def _same_array(name, array, like):
    array = float_array(name, array, like.ndim, f"of shape {like.shape}", dtype=like.dtype)
    expect_shape(name, array, like.shape)
    return array


def _output(out, like):
    if out is None:
        return np.empty_like(like)
    if not isinstance(out, np.ndarray) or out.shape != like.shape or out.dtype != like.dtype \
            or not out.flags.c_contiguous:
        raise ValueError(f"out: expected a C-contiguous {like.dtype} array of shape "
                         f"{like.shape}")
    return out


def relu(input, out=None) -> np.ndarray:
    """``max(input, 0)`` element-wise in one pass; ``out`` (may be ``input``) receives it."""
    input = float_array("input", input, np.ndim(input), "")
    out = _output(out, input)
    _elementwise.relu_forward(input.reshape(-1), out.reshape(-1), get_num_threads())
    return out


def relu_backward(grad_output, output, out=None) -> np.ndarray:
    """Gradient of ``relu`` from its ``output``: ``grad_output`` where ``output > 0``, else 0.
    ``out`` may be ``grad_output`` itself."""
    output = float_array("output", output, np.ndim(output), "")
    grad_output = _same_array("grad_output", grad_output, output)
    out = _output(out, output)
    _elementwise.relu_backward(grad_output.reshape(-1), output.reshape(-1), out.reshape(-1),
                               get_num_threads())
    return out


def _planes(name, x):
    x = float_array(name, x, 4, "(N, C, H, W)")
    if x.shape[0] * x.shape[2] * x.shape[3] < 1:
        raise ValueError(f"{name}: expected at least one value per channel, got shape "
                         f"{x.shape}")
    return x, x.reshape(x.shape[0], x.shape[1], -1)


def _channels(name, values, x):
    return _same_array(name, values, np.broadcast_to(x.dtype.type(0), (x.shape[1],)))


def batch_norm_statistics(input, running_mean=None, running_var=None, momentum=0.1):
    """(mean, biased variance) of each channel of ``input`` (N, C, H, W) over N, H and W,
    summed in double precision.

    Given ``running_mean`` and ``running_var``, also updates them in place as
    ``batch_norm`` does in training: ``running = (1 - momentum) * running + momentum *
    batch``, the variance unbiased.
    """
    input, planes = _planes("input", input)
    mean = np.empty(input.shape[1], dtype=input.dtype)
    var = np.empty_like(mean)
    _elementwise.batch_statistics(planes, mean, var, get_num_threads())
    if running_mean is not None:
        count = input.size // input.shape[1]
        running_mean *= 1 - momentum
        running_mean += momentum * mean
        running_var *= 1 - momentum
        running_var += momentum * var * (count / max(count - 1, 1))
    return mean, var


def channel_affine(input, scale, shift, out=None, relu: bool = False) -> np.ndarray:
    """``input * scale[c] + shift[c]`` for each channel c of ``input`` (N, C, H, W), in one
    pass, then ``max(0, .)`` if ``relu`` (the same values as ``relu`` after it); ``out``
    may be ``input`` itself."""
    input, planes = _planes("input", input)
    out = _output(out, input)
    _elementwise.channel_affine(planes, _channels("scale", scale, input),
                                _channels("shift", shift, input),
                                out.reshape(planes.shape), get_num_threads(), bool(relu))
    return out


def batch_norm(input, running_mean, running_var, weight=None, bias=None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5):
    """Batch normalisation of the channels of ``input`` (N, C, H, W), as
    ``torch.nn.functional.batch_norm``: ``(x - mean) / sqrt(var + eps) * weight + bias``.

    With ``training``, mean and var are the batch's (over N, H, W) and the running
    estimates are updated in place (``running = (1 - momentum) * running + momentum *
    batch``, the variance unbiased); otherwise the running estimates are used.
    """
    input, _ = _planes("input", input)
    running_mean = _channels("running_mean", running_mean, input)
    running_var = _channels("running_var", running_var, input)
    ones = np.ones(input.shape[1], dtype=input.dtype)
    weight = ones if weight is None else _channels("weight", weight, input)
    bias = 0 * ones if bias is None else _channels("bias", bias, input)
    mean, var = running_mean, running_var
    if training:
        mean, var = batch_norm_statistics(input, running_mean, running_var, momentum)
    scale = weight / np.sqrt(var + input.dtype.type(eps))
    return channel_affine(input, scale, bias - mean * scale)


def batch_norm_backward(grad_output, input, mean, inverse_std, weight,
                        batch_statistics: bool = True, need_input_grad: bool = True,
                        relu_output=None):
    """Gradients of ``(input - mean) * inverse_std * weight + bias`` per channel:
    ``(grad_input, grad_weight, grad_bias)``, grad_input None unless asked for.

    With ``batch_statistics``, mean and inverse_std are the batch's own, so they depend on
    every input and grad_input carries the two correction terms of batch normalisation.
    With ``relu_output`` (the output of a ReLU applied to this normalisation's output,
    ``channel_affine(..., relu=True)``), grad_output is that ReLU's output gradient: the
    gradients are taken through both, the same values as ``relu_backward`` first.
    """
    input, planes = _planes("input", input)
    grad_output = _same_array("grad_output", grad_output, input)
    if relu_output is not None:
        relu_output = _same_array("relu_output", relu_output, input).reshape(planes.shape)
    grad_input = np.empty_like(input) if need_input_grad else None
    grad_weight = np.empty(input.shape[1], dtype=input.dtype)
    grad_bias = np.empty_like(grad_weight)
    _elementwise.batchnorm_backward(
        grad_output.reshape(planes.shape), planes, _channels("mean", mean, input),
        _channels("inverse_std", inverse_std, input), _channels("weight", weight, input),
        None if grad_input is None else grad_input.reshape(planes.shape), grad_weight,
        grad_bias, bool(batch_statistics), get_num_threads(), relu_output)
    return grad_input, grad_weight, grad_bias


def _in_place(name, array, like=None):
    """``array`` flattened, if the kernel can update it in place."""
    if not isinstance(array, np.ndarray) or not array.flags.c_contiguous \
            or not array.flags.writeable or array.dtype not in (np.float32, np.float64):
        raise ValueError(f"{name}: expected a writable C-contiguous float32 or float64 array")
    if like is not None and (array.shape != like.shape or array.dtype != like.dtype):
        raise ValueError(f"{name}: expected a {like.dtype} array of shape {like.shape}, got "
                         f"{array.dtype} {array.shape}")
    return array.reshape(-1)


def _update_operands(value, grad):
    return _in_place("value", value), _same_array("grad", grad, value).reshape(-1)


def sgd_update(value, grad, velocity, lr, momentum=0.0, weight_decay=0.0, nesterov=False,
               first_step=False):
    """One SGD step on ``value`` in place, as ``torch.optim.SGD``: ``g = grad + weight_decay *
    value``; ``velocity = g`` on the first step, else ``momentum * velocity + g`` (in place;
    None without momentum); ``value -= lr * (g + momentum * velocity if nesterov else
    velocity)``."""
    flat_value, flat_grad = _update_operands(value, grad)
    flat_velocity = None if velocity is None else _in_place("velocity", velocity, value)
    _elementwise.sgd_update(flat_value, flat_grad, flat_velocity, lr, momentum, weight_decay,
                            nesterov, first_step, get_num_threads())


def adam_update(value, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                weight_decay=0.0, decoupled=False):
    """Adam step number ``step`` (from 1) on ``value`` and its moments ``m``, ``v``, in
    place, as ``torch.optim.Adam`` (or ``AdamW`` with ``decoupled``)."""
    flat_value, flat_grad = _update_operands(value, grad)
    _elementwise.adam_update(flat_value, flat_grad, _in_place("m", m, value),
                             _in_place("v", v, value), lr, beta1, beta2, eps, weight_decay,
                             decoupled, step, get_num_threads())
