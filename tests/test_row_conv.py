"""The row kernel (rowconv.pxi, rowkernel.h): the forward of stride-1 layers of few taps,
vectorised along the output's rows. Against the NumPy oracle, against the direct kernel
(the same sums in the same order: the same bits), and at 1, 2 and 3 threads."""

import os

import numpy as np
import pytest

import reference
from cnncli import _conv
from cnncli import functional as F
from test_conv import (assert_forward_ignores_the_thread_count, conv_arguments, make_operands,
                       reference_arguments)
from test_direct_conv import TOLERANCE, assert_forward_matches_reference, printed_by

# (N, C, H, W, filters, kernel, stride, padding, dilation, groups, bias): each between 9
# and 128 taps, stride 1.
ROW_CASES = [
    (64, 1, 28, 28, 32, (5, 5), 1, 2, 1, 1, True),        # LeNet's first layer
    (1, 1, 28, 28, 32, (5, 5), 1, 2, 1, 1, True),         # batch 1: a sample's rows in bands
    (3, 1, 28, 28, 6, (5, 5), 1, 2, 1, 1, False),         # 6 filters: a part-filled tile
    (2, 3, 17, 19, 13, (3, 3), 1, 1, 1, 1, True),         # 3 channels, odd widths
    (2, 2, 8, 8, 9, (3, 3), 1, 1, 1, 1, True),            # 10-wide padded rows: a vector
                                                          # spans two output rows
    (2, 2, 9, 12, 16, (3, 5), 1, (1, 2), 1, 1, True),     # a 3x5 kernel
    (2, 2, 13, 13, 8, (3, 3), 1, "same", 2, 1, True),     # dilated 'same'
    (3, 1, 12, 11, 16, (4, 4), 1, "same", 1, 1, True),    # even kernel: asymmetric padding
    (2, 2, 14, 17, 24, (5, 5), 1, 0, 1, 1, True),         # 'valid': no padding
    (1, 2, 70, 300, 8, (5, 5), 1, 2, 1, 1, True),         # wide rows: bands of few rows
    (8, 1, 28, 28, 32, (3, 3), 1, 1, 1, 1, True),         # 9 taps over 6272 positions
    (2, 3, 20, 20, 16, (5, 5), 1, 2, 1, 1, True),         # 75 taps
    (2, 2, 24, 24, 24, (7, 7), 1, 3, 1, 1, False),        # 98 taps
]


def paths(case):
    N, C, H, W, filters, kernel, *_ = case
    return F.conv2d_paths((N, C, H, W), (filters, C) + kernel, **conv_arguments(case))


ROW_CPU = paths(ROW_CASES[1])["rows"] == ("forward",)
needs_rows = pytest.mark.skipif(not ROW_CPU, reason="the row kernel runs on AVX-512 only")
FULL_RATE = _conv.full_rate_512()


@pytest.fixture(autouse=True)
def row_kernel_whatever_the_batch():
    """The cases run on the row kernel at any batch (where 512-bit work runs at full rate,
    the rule gives batches of 8 or more to the direct kernel); the rule tests lift this."""
    previous = _conv.force_row_kernel(True)
    yield
    _conv.force_row_kernel(previous)


def rows(x_shape, weight_shape, **arguments):
    """Whether the rule gives this layer's forward to the row kernel."""
    previous = _conv.force_row_kernel(False)
    try:
        return F.conv2d_paths(x_shape, weight_shape, **arguments)["rows"] == ("forward",)
    finally:
        _conv.force_row_kernel(previous)


@needs_rows
@pytest.mark.parametrize("case", ROW_CASES)
def test_the_cases_run_on_the_row_kernel(case):
    assert paths(case)["rows"] == ("forward",)


@needs_rows
def test_the_row_kernel_takes_stride_1_layers_of_9_to_128_taps_on_avx512_only():
    assert rows((4, 1, 28, 28), (32, 1, 5, 5), padding=2)          # 25 taps
    assert rows((4, 3, 32, 32), (64, 3, 3, 3), padding=1)          # 27
    assert rows((4, 8, 16, 16), (32, 8, 3, 3), padding=1)          # 72
    assert rows((4, 14, 16, 16), (32, 14, 3, 3), padding=1)        # 126
    assert not rows((4, 15, 16, 16), (32, 15, 3, 3), padding=1)    # 135: the direct kernel
    # Below 16 taps, over at least 4096 output positions (else im2col + GEMM).
    assert rows((8, 1, 28, 28), (32, 1, 3, 3), padding=1)          # 9 taps, 6272 positions
    assert not rows((2, 1, 28, 28), (32, 1, 3, 3), padding=1)      # 1568
    assert not rows((64, 1, 28, 28), (32, 1, 2, 2))                # 4 taps
    assert not rows((8, 1, 28, 28), (32, 1, 5, 5), stride=2, padding=2)
    assert not rows((8, 48, 10, 10), (16, 48, 1, 1))               # 1x1: the direct kernel
    # 3 real columns of 7 padded ones: over a quarter of the lanes would be dropped.
    assert not rows((8, 2, 3, 3), (16, 2, 5, 5), padding=2)
    assert not F.conv2d_paths((8, 1, 28, 28), (32, 1, 5, 5), padding=2,
                              dtype=np.float64)["rows"]
    code = ("from cnncli import functional as F; "
            "print(F.conv2d_paths((4, 1, 28, 28), (32, 1, 5, 5), padding=2)['rows'])")
    assert printed_by(code, dict(os.environ, CNNCLI_DIRECT_ISA="avx2")) == "()"


@needs_rows
def test_at_full_rate_the_direct_kernel_takes_batches_of_8_or_more():
    """Where it can: below 16 taps (or with filters its tiles would waste) the row kernel
    keeps them. Elsewhere the row kernel takes every batch."""
    assert rows((8, 1, 28, 28), (32, 1, 5, 5), padding=2) == (not FULL_RATE)
    assert rows((64, 1, 28, 28), (32, 1, 5, 5), padding=2) == (not FULL_RATE)
    assert rows((7, 1, 28, 28), (32, 1, 5, 5), padding=2)
    assert rows((8, 1, 28, 28), (32, 1, 3, 3), padding=1)          # 9 taps
    assert rows((8, 1, 28, 28), (6, 1, 5, 5), padding=2)           # 6 filters


@pytest.mark.parametrize("case", ROW_CASES)
def test_row_convolution_matches_reference(case):
    assert_forward_matches_reference(case)


@pytest.mark.parametrize("case", ROW_CASES)
def test_a_folded_scale_multiplies_each_filter(case):
    x, weight, bias = make_operands(case, np.float32)
    scale = np.linspace(0.5, 2.0, weight.shape[0]).astype(np.float32)
    out = F.conv2d(x, weight, bias, scale=scale, **conv_arguments(case))
    scaled = weight * scale[:, None, None, None]
    np.testing.assert_allclose(out, reference.conv2d(x, scaled, bias,
                                                     **reference_arguments(case)), **TOLERANCE)


@needs_rows
@pytest.mark.parametrize("case", ROW_CASES)
def test_the_row_kernel_gives_the_direct_kernels_bits(case):
    """Both sum the taps in order with fused multiply-adds from zero, then add the bias.
    Where the direct kernel does not take the layer (6 filters), im2col + GEMM does: close."""
    x, weight, bias = make_operands(case, np.float32)
    rows = F.conv2d(x, weight, bias, relu=True, **conv_arguments(case))
    previous = F.use_row_kernel(False)
    try:
        direct = paths(case)["forward"]
        other = F.conv2d(x, weight, bias, relu=True, **conv_arguments(case))
    finally:
        F.use_row_kernel(previous)
    if direct:
        np.testing.assert_array_equal(rows, other)
    else:
        np.testing.assert_allclose(rows, other, rtol=1e-5, atol=1e-5 * np.abs(other).max())


@pytest.mark.parametrize("case", ROW_CASES)
def test_row_results_do_not_depend_on_the_thread_count(case):
    assert_forward_ignores_the_thread_count(case)
