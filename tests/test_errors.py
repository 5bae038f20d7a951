"""Bad arguments raise ValueError naming the argument and echoing what was received."""

import re

import numpy as np
import pytest

from cnncli import _conv, _elementwise, _linear, _pool
from cnncli import functional as F

x32 = np.zeros((2, 3, 8, 8), dtype=np.float32)
w32 = np.zeros((4, 3, 3, 3), dtype=np.float32)
g32 = np.zeros((2, 4, 6, 6), dtype=np.float32)

FUNCTIONAL_ERRORS = [
    ("x 3-D", lambda: F.conv2d(x32[0], w32), "x: expected a 4-D array (N, C, H, W), got shape (3, 8, 8)"),
    ("x int", lambda: F.conv2d(x32.astype(np.int64), w32), "x: expected dtype float32 or float64, got int64"),
    ("x float16", lambda: F.conv2d(x32.astype(np.float16), w32), "x: expected dtype float32 or float64, got float16"),
    ("weight dtype", lambda: F.conv2d(x32, w32.astype(np.float64)),
     "weight: expected dtype float32 (the dtype of x), got float64"),
    ("weight 2-D", lambda: F.conv2d(x32, w32[0, 0]), "weight: expected a 4-D array"),
    ("channel mismatch", lambda: F.conv2d(x32, np.zeros((4, 2, 3, 3), np.float32)),
     "weight: expected 3 input channels per group (x has 3 channels, groups=1), got weight shape (4, 2, 3, 3)"),
    ("kernel too large", lambda: F.conv2d(x32, np.zeros((4, 3, 9, 3), np.float32)),
     "weight: the 9x3 (dilated) kernel is larger than the 8x8 padded input"),
    ("dilated kernel too large", lambda: F.conv2d(x32, w32, dilation=4),
     "weight: the 9x9 (dilated) kernel is larger than the 8x8 padded input"),
    ("stride 0", lambda: F.conv2d(x32, w32, stride=0), "stride: expected values >= 1, got 0"),
    ("stride negative", lambda: F.conv2d(x32, w32, stride=(1, -2)), "stride: expected values >= 1, got (1, -2)"),
    ("stride float", lambda: F.conv2d(x32, w32, stride=1.5), "stride: expected an int or a pair of ints, got 1.5"),
    ("stride triple", lambda: F.conv2d(x32, w32, stride=(1, 1, 1)), "stride: expected an int or a pair of ints, got (1, 1, 1)"),
    ("stride bool", lambda: F.conv2d(x32, w32, stride=True), "stride: expected an int or a pair of ints, got True"),
    ("padding negative", lambda: F.conv2d(x32, w32, padding=-1), "padding: expected values >= 0, got -1"),
    ("padding word", lambda: F.conv2d(x32, w32, padding="full"),
     "padding: expected an int, a pair, 'valid' or 'same', got 'full'"),
    ("same with stride", lambda: F.conv2d(x32, w32, stride=2, padding="same"),
     "padding: 'same' needs stride 1, got stride (2, 2)"),
    ("dilation 0", lambda: F.conv2d(x32, w32, dilation=0), "dilation: expected values >= 1, got 0"),
    ("stride absurd", lambda: F.conv2d(x32, w32, stride=10**30),
     "stride: expected values <= 2147483647, got 1000000000000000000000000000000"),
    ("groups absurd", lambda: F.conv2d(x32, w32, groups=2**40), "groups: expected a positive int, got 1099511627776"),
    ("groups 0", lambda: F.conv2d(x32, w32, groups=0), "groups: expected a positive int, got 0"),
    ("groups not dividing", lambda: F.conv2d(x32, np.zeros((4, 1, 3, 3), np.float32), groups=2),
     "groups: must divide the input channels (3) and the filters (4), got 2"),
    ("bias shape", lambda: F.conv2d(x32, w32, np.zeros(3, np.float32)), "bias: expected shape (4,), got (3,)"),
    ("bias dtype", lambda: F.conv2d(x32, w32, np.zeros(4)), "bias: expected dtype float32 (the dtype of x), got float64"),
    ("grad_output shape", lambda: F.conv2d_backward(g32[:, :, :5], x32, w32),
     "grad_output: expected shape (2, 4, 6, 6), got (2, 4, 5, 6)"),
    ("grad_output dtype", lambda: F.conv2d_backward(g32.astype(np.float64), x32, w32),
     "grad_output: expected dtype float32 (the dtype of x), got float64"),
    ("pool kernel 0", lambda: F.max_pool2d(x32, 0), "kernel_size: expected values >= 1, got 0"),
    ("pool stride 0", lambda: F.avg_pool2d(x32, 2, 0), "stride: expected values >= 1, got 0"),
    ("pool padding too wide", lambda: F.max_pool2d(x32, 3, 1, 2),
     "padding: must be at most half the kernel size (3, 3), got (2, 2)"),
    ("pool kernel too large", lambda: F.avg_pool2d(x32, 9), "kernel_size: (9, 9) is larger than the padded 8x8 input"),
    ("pool x 2-D", lambda: F.max_pool2d(x32[0, 0], 2), "x: expected a 4-D array (N, C, H, W), got shape (8, 8)"),
    ("pool grad_output shape", lambda: F.max_pool2d_backward(np.zeros((2, 3, 3, 4), np.float32), x32, 2),
     "grad_output: expected shape (2, 3, 4, 4), got (2, 3, 3, 4)"),
    ("pool indices dtype", lambda: F.max_pool2d_backward(np.zeros((2, 3, 4, 4), np.float32), x32, 2,
                                                         indices=np.zeros((2, 3, 4, 4), np.int32)),
     "indices: expected dtype int64, got int32"),
    ("pool indices shape", lambda: F.max_pool2d_backward(np.zeros((2, 3, 4, 4), np.float32), x32, 2,
                                                         indices=np.zeros((2, 3, 4), np.int64)),
     "indices: expected shape (2, 3, 4, 4), got (2, 3, 4)"),
    ("global grad_output shape", lambda: F.global_avg_pool2d_backward(np.zeros((2, 3), np.float32), x32),
     "grad_output: expected a 4-D array (N, C, OH, OW), got shape (2, 3)"),
    ("unfold kernel too large", lambda: F.unfold(x32, 9),
     "kernel_size: the (9, 9) kernel (dilation (1, 1)) is larger than the padded 8x8 image"),
    ("fold blocks", lambda: F.fold(np.zeros((2, 27, 35), np.float32), 8, 3),
     "cols: expected 36 blocks in dimension 2 for a (8, 8) image, got shape (2, 27, 35)"),
    ("fold channels", lambda: F.fold(np.zeros((2, 26, 36), np.float32), 8, 3),
     "cols: expected dimension 1 to be a positive multiple of kH*kW = 9, got shape (2, 26, 36)"),
]


@pytest.mark.parametrize("call, message", [case[1:] for case in FUNCTIONAL_ERRORS],
                         ids=[case[0] for case in FUNCTIONAL_ERRORS])
def test_functional_errors_name_the_argument(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def read_only(array):
    array = array.copy()
    array.flags.writeable = False
    return array


out32 = np.zeros((2, 4, 6, 6), dtype=np.float32)
x2d = np.zeros((2, 6), dtype=np.float32)
w2d = np.zeros((4, 6), dtype=np.float32)
shared_weight_grad = np.zeros((4, 6), dtype=np.float32)
CONV_ARGS = ((1, 1), (0, 0), (1, 1), 1, 2)

flat4 = np.zeros(4, np.float32)
planes = np.zeros((2, 3, 5), np.float32)
shared3 = np.zeros(3, np.float32)


def channels3():
    return np.zeros(3, np.float32)


flat3 = channels3

KERNEL_ERRORS = [
    ("non-contiguous x", lambda: _conv.conv2d_forward(x32[:, :, ::2], w32, None, out32, *CONV_ARGS),
     "x: expected a C-contiguous array"),
    ("read-only out", lambda: _conv.conv2d_forward(x32, w32, None, read_only(out32), *CONV_ARGS),
     "out: expected a writable array, got a read-only one"),
    ("out aliases x", lambda: _conv.conv2d_forward(x32, w32, None, x32.reshape(-1)[:288].reshape(2, 4, 6, 6),
                                                   *CONV_ARGS),
     "out: must not share memory with x"),
    ("out filters", lambda: _conv.conv2d_forward(x32, w32, None, np.zeros((2, 5, 6, 6), np.float32), *CONV_ARGS),
     "out: expected shape (2, 4, 6, 6), got (2, 5, 6, 6)"),
    ("weight dtype", lambda: _conv.conv2d_forward(x32, w32.astype(np.float64), None, out32, *CONV_ARGS),
     "weight: expected dtype float32, got float64"),
    ("list x", lambda: _conv.conv2d_forward([[1.0]], w32, None, out32, *CONV_ARGS),
     "x: expected a numpy.ndarray, got list"),
    ("n_threads 0", lambda: _conv.conv2d_forward(x32, w32, None, out32, (1, 1), (0, 0), (1, 1), 1, 0),
     "n_threads: expected a value >= 1, got 0"),
    ("negative padding", lambda: _conv.conv2d_forward(x32, w32, None, out32, (1, 1), (-1, 0), (1, 1), 1, 1),
     "padding: expected a value >= 0, got -1"),
    ("grad_bias without grad_weight", lambda: _conv.conv2d_backward(g32, x32, w32, None, None,
                                                                    np.zeros(w32.shape[0], np.float32),
                                                                    *CONV_ARGS),
     "grad_bias: pass grad_weight with it"),
    ("read-only grad_input", lambda: _conv.conv2d_backward(g32, x32, w32, read_only(x32), None, None, *CONV_ARGS),
     "grad_input: expected a writable array, got a read-only one"),
    ("indices out of range", lambda: _pool.max_pool2d_backward(np.ones((2, 3, 4, 4), np.float32),
                                                               np.full((2, 3, 4, 4), 64, np.int64),
                                                               np.zeros_like(x32), 1),
     "indices: 96 entries lie outside the 8x8 input plane"),
    ("negative index", lambda: _pool.max_pool2d_backward(np.ones((2, 3, 4, 4), np.float32),
                                                         -np.ones((2, 3, 4, 4), np.int64),
                                                         np.zeros_like(x32), 1),
     "indices: 96 entries lie outside the 8x8 input plane"),
    ("pool windows outside", lambda: _pool.max_pool2d_forward(x32, np.zeros((2, 3, 9, 9), np.float32), None,
                                                              (2, 2), (2, 2), (0, 0), 1),
     "output: shape (9, 9) has windows that lie entirely outside the input (8, 8)"),
    ("pool padding as wide as kernel", lambda: _pool.avg_pool2d_forward(x32, np.zeros((2, 3, 5, 5), np.float32),
                                                                        (2, 2), (2, 2), (2, 2), True, 1),
     "padding: must be smaller than the kernel (2, 2), got (2, 2)"),
    ("pool channels", lambda: _pool.avg_pool2d_forward(x32, np.zeros((2, 4, 4, 4), np.float32),
                                                       (2, 2), (2, 2), (0, 0), True, 1),
     "output: expected batch and channels (2, 3), got (2, 4)"),
    ("linear non-contiguous out", lambda: _linear.linear_forward(x2d, w2d, None, x2d[:, :4], 1),
     "out: expected a C-contiguous array"),
    ("linear out shares x", lambda: _linear.linear_forward(x2d, w2d, None, x2d.reshape(-1)[:8].reshape(2, 4), 1),
     "out: must not share memory with x"),
    ("linear weight features", lambda: _linear.linear_forward(x2d, w2d[:, :5].copy(), None,
                                                              np.zeros((2, 4), np.float32), 1),
     "weight: expected shape (4, 6), got (4, 5)"),
    ("linear grad_bias without grad_weight", lambda: _linear.linear_backward(
        np.zeros((2, 4), np.float32), x2d, w2d, None, None, np.zeros(4, np.float32), 1),
     "grad_weight and grad_bias: pass both or neither"),
    ("linear grad_weight shares grad_bias", lambda: _linear.linear_backward(
        np.zeros((2, 4), np.float32), x2d, w2d, None, shared_weight_grad, shared_weight_grad.reshape(-1)[:4], 1),
     "grad_bias: must not share memory with grad_weight"),
    ("linear empty batch", lambda: _linear.linear_forward(x2d[:0], w2d, None, np.zeros((0, 4), np.float32), 1),
     "batch size: expected a value >= 1, got 0"),
    ("relu out shape", lambda: _elementwise.relu_forward(flat4, np.zeros(3, np.float32), 1),
     "out: expected shape (4,), got (3,)"),
    ("relu 2-D", lambda: _elementwise.relu_forward(x2d, x2d.copy(), 1), "x: expected a 1-D array"),
    ("relu read-only grad_input", lambda: _elementwise.relu_backward(flat4, flat4, read_only(flat4), 1),
     "grad_input: expected a writable array"),
    ("statistics of nothing", lambda: _elementwise.batch_statistics(np.zeros((0, 3, 4), np.float32),
                                                                   channels3(), channels3(), 1),
     "values per channel: expected a value >= 1, got 0"),
    ("affine scale channels", lambda: _elementwise.channel_affine(planes, np.zeros(2, np.float32),
                                                                  channels3(), planes.copy(), 1),
     "scale: expected shape (3,), got (2,)"),
    ("batchnorm grad_input is x", lambda: _elementwise.batchnorm_backward(
        planes.copy(), planes, channels3(), channels3(), channels3(), planes, channels3(), channels3(),
        True, 1), "grad_input: must not share memory with x"),
    ("batchnorm grads shared", lambda: _elementwise.batchnorm_backward(
        planes.copy(), planes, channels3(), channels3(), channels3(), None, shared3, shared3, True, 1),
     "grad_gamma: must not share memory with grad_beta"),
    ("sgd velocity is value", lambda: _elementwise.sgd_update(shared3, flat3(), shared3, 0.1, 0.9, 0.0,
                                                              False, False, 1),
     "velocity: must not share memory with value"),
    ("adam step 0", lambda: _elementwise.adam_update(flat3(), flat3(), flat3(), flat3(), 0.1, 0.9, 0.999,
                                                     1e-8, 0.0, False, 0, 1),
     "step: expected a value >= 1, got 0"),
    ("adam float64 moments", lambda: _elementwise.adam_update(flat3(), flat3(), flat3(), np.zeros(3), 0.1,
                                                              0.9, 0.999, 1e-8, 0.0, False, 1, 1),
     "v: expected dtype float32, got float64"),
]


@pytest.mark.parametrize("call, message", [case[1:] for case in KERNEL_ERRORS],
                         ids=[case[0] for case in KERNEL_ERRORS])
def test_kernel_entry_points_check_their_buffers(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_kernels_survive_inconsistent_arguments():
    """Seeded fuzz of the raw kernels: every call succeeds or raises ValueError, never crashes."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        shape = lambda: tuple(int(v) for v in rng.integers(0, 6, size=4))
        x = rng.standard_normal(shape()).astype(np.float32)
        weight = rng.standard_normal(shape()).astype(np.float32)
        out = np.zeros(shape(), np.float32)
        x2, weight2, out2 = (np.zeros(shape()[:2], np.float32) for _ in range(3))
        vector = lambda: np.zeros(int(rng.integers(0, 6)), np.float32)
        pair = lambda low: (int(rng.integers(low, 4)), int(rng.integers(low, 4)))
        params = (pair(-1), pair(-1), pair(-1), int(rng.integers(-1, 4)), int(rng.integers(1, 3)))
        for call in (lambda: _conv.conv2d_forward(x, weight, None, out, *params),
                     lambda: _conv.conv2d_backward(out, x, weight, np.zeros_like(x),
                                                   np.zeros_like(weight),
                                                   np.zeros(weight.shape[0], np.float32), *params),
                     lambda: _pool.max_pool2d_forward(x, out, None, *params[:3], 1),
                     lambda: _pool.avg_pool2d_forward(x, out, *params[:3], False, 1),
                     lambda: _pool.avg_pool2d_backward(out, x, *params[:3], True, 1),
                     lambda: _linear.linear_forward(x2, weight2, None, out2, 2),
                     lambda: _linear.linear_backward(out2, x2, weight2, np.zeros_like(x2),
                                                     np.zeros_like(weight2),
                                                     np.zeros(weight2.shape[0], np.float32), 2),
                     lambda: _elementwise.relu_backward(x.reshape(-1), out.reshape(-1),
                                                        np.zeros(x.size, np.float32), 2),
                     lambda: _elementwise.batch_statistics(x.reshape(x.shape[0], x.shape[1], -1),
                                                           vector(), vector(), 2),
                     lambda: _elementwise.batchnorm_backward(
                         out.reshape(out.shape[0], out.shape[1], -1),
                         x.reshape(x.shape[0], x.shape[1], -1), vector(), vector(), vector(), None,
                         vector(), vector(), True, 2),
                     lambda: _elementwise.adam_update(x.reshape(-1), out.reshape(-1),
                                                      np.zeros(x.size, np.float32), out2.reshape(-1),
                                                      0.1, 0.9, 0.999, 1e-8, 0.0, False, 1, 2)):
            try:
                call()
            except ValueError:
                pass
