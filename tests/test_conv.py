import numpy as np
import pytest

import reference
from cnncli import functional as F
from cnncli.geometry import conv_geometry_of, pool_geometry_of
from cnncli.gradcheck import check_gradient

# (N, C, H, W, filters, kernel, stride, padding, dilation, groups, bias)
HAND_PICKED = [
    (2, 3, 7, 6, 4, (3, 3), 1, 1, 1, 1, True),           # odd sizes, 'same'-sized by padding
    (1, 1, 8, 8, 8, (3, 3), 1, 1, 1, 1, False),          # one input channel
    (3, 4, 9, 11, 6, (3, 2), (2, 3), (1, 0), 1, 2, True),  # uneven kernel/stride/padding, groups
    (2, 6, 10, 9, 6, (3, 3), 1, 1, 1, 6, True),          # depthwise
    (2, 8, 5, 7, 4, (1, 1), 1, 0, 1, 1, True),           # pointwise: no im2col
    (2, 8, 6, 6, 4, (1, 1), 2, 0, 1, 2, False),          # strided 1x1: goes through im2col
    (2, 3, 13, 12, 5, (3, 3), 2, 2, 2, 1, True),         # dilation with padding
    (1, 2, 9, 9, 3, (4, 2), 1, "same", 1, 1, True),      # even kernel 'same': asymmetric padding
    (1, 2, 9, 10, 3, (3, 3), 1, "same", (2, 1), 1, True),  # dilated 'same'
    (2, 3, 6, 5, 2, (6, 5), 1, "valid", 1, 1, True),     # kernel as large as the input
    (1, 3, 23, 23, 4, (11, 11), 4, 0, 1, 1, True),       # AlexNet's first layer, scaled down
    (2, 2, 4, 4, 3, (3, 3), 3, 3, 1, 1, True),           # padding wider than the stride pattern
    (0, 3, 5, 5, 2, (3, 3), 1, 1, 1, 1, True),           # empty batch
    # Stride 1 with the output as wide as the input: im2col copies whole blocks of rows.
    (3, 4, 6, 7, 5, (5, 5), 1, 2, 1, 1, True),           # LeNet's 5x5 'same', small
    (2, 3, 5, 2, 4, (5, 5), 1, 2, 1, 1, True),           # kernel offsets beyond the row
    (2, 2, 7, 6, 3, (3, 3), (2, 1), 1, 1, 1, True),      # strided rows, same width
    (2, 2, 6, 8, 3, (3, 5), 1, (0, 4), (1, 2), 1, False),  # dilated, same width
    (1, 2, 4, 1, 2, (3, 3), 1, 1, 1, 1, True),           # one column wide
    # Fewer than four samples: each sample's filters are shared out between threads.
    (1, 5, 9, 8, 40, (3, 3), 1, 1, 1, 1, True),
    (3, 3, 7, 7, 33, (2, 3), (2, 1), (1, 0), 1, 1, False),
    (2, 4, 5, 5, 70, (1, 1), 1, 0, 1, 1, True),          # pointwise
    # More filters than output positions: the backward takes samples side by side.
    (5, 4, 4, 4, 24, (3, 3), 1, 1, 1, 2, True),          # with groups
    (61, 2, 6, 6, 40, (3, 3), 1, 1, 1, 1, True),         # three groups of samples
    (3, 3, 9, 9, 30, (3, 3), 2, 0, 1, 1, False),         # strided
    (3, 24, 3, 3, 128, (3, 3), 1, 1, 1, 1, True),        # grad_weight in column and filter blocks
    (2, 48, 3, 3, 128, (3, 3), 1, 1, 1, 2, True),        # column blocks, with groups
]


def random_cases(count, seed):
    """A seeded grid of shapes that do not tile evenly."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        groups = int(rng.choice([1, 1, 2, 3]))
        C = groups * int(rng.integers(1, 4))
        filters = groups * int(rng.integers(1, 4))
        kernel = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        padding = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        H, W = int(rng.integers(3, 12)), int(rng.integers(3, 12))
        if any(H_ + 2 * p < d * (k - 1) + 1 for H_, p, d, k in
               zip((H, W), padding, dilation, kernel)):
            continue
        cases.append((int(rng.integers(1, 4)), C, H, W, filters, kernel, stride, padding,
                      dilation, groups, bool(rng.integers(0, 2))))
    return cases


CASES = HAND_PICKED + random_cases(40, seed=20261121)


def padding_sides(padding, kernel, stride, dilation):
    """The (top, bottom, left, right) padding the reference needs."""
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        sides = []
        for k, d in zip(kernel, pair(dilation)):
            total = d * (k - 1)
            sides += [total // 2, total - total // 2]
        return tuple(sides)
    ph, pw = pair(padding)
    return (ph, ph, pw, pw)


def make_operands(case, dtype, seed=0):
    N, C, H, W, filters, kernel, stride, padding, dilation, groups, with_bias = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    weight = rng.standard_normal((filters, C // groups) + kernel).astype(dtype)
    bias = rng.standard_normal(filters).astype(dtype) if with_bias else None
    return x, weight, bias


def assert_forward_ignores_the_thread_count(case):
    """The forward (bias and ReLU included) of a case: the same bits at 1, 2 and 3 threads."""
    x, weight, bias = make_operands(case, np.float32)
    outcomes = []
    for n in (1, 2, 3):
        with F.threads(n):
            outcomes.append(F.conv2d(x, weight, bias, relu=True, **conv_arguments(case)))
    for parallel in outcomes[1:]:
        np.testing.assert_array_equal(outcomes[0], parallel)


def conv_arguments(case):
    _, _, _, _, _, kernel, stride, padding, dilation, groups, _ = case
    return dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def reference_arguments(case):
    _, _, _, _, _, kernel, stride, padding, dilation, groups, _ = case
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)
    return dict(stride=pair(stride), padding=padding_sides(padding, kernel, stride, dilation),
                dilation=pair(dilation), groups=groups)


TOLERANCE = {np.float32: dict(rtol=2e-4, atol=2e-4), np.float64: dict(rtol=1e-10, atol=1e-10)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_conv2d_matches_reference(case, dtype):
    x, weight, bias = make_operands(case, dtype)
    out = F.conv2d(x, weight, bias, **conv_arguments(case))
    expected = reference.conv2d(x, weight, bias, **reference_arguments(case))
    assert out.dtype == dtype
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_conv2d_backward_matches_reference(case, dtype):
    x, weight, bias = make_operands(case, dtype)
    out = F.conv2d(x, weight, bias, **conv_arguments(case))
    grad_output = np.random.default_rng(1).standard_normal(out.shape).astype(dtype)
    grad_input, grad_weight, grad_bias = F.conv2d_backward(grad_output, x, weight,
                                                           **conv_arguments(case))
    expected = reference.conv2d_backward(grad_output, x, weight, **reference_arguments(case))
    for got, want in zip((grad_input, grad_weight, grad_bias), expected):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, **TOLERANCE[dtype])


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", HAND_PICKED)
def test_conv2d_scale_multiplies_each_filter_before_the_bias(case, dtype, direct):
    """``scale`` is a BatchNorm folded in: in the direct kernel's packing (float32) or in
    the output pass after the GEMM, with and without bias and ReLU."""
    x, weight, bias = make_operands(case, dtype)
    scale = np.random.default_rng(2).uniform(-2, 2, weight.shape[0]).astype(dtype)
    unscaled = reference.conv2d(x, weight, None, **reference_arguments(case))
    expected = unscaled * scale[:, None, None] + (0 if bias is None else bias[:, None, None])
    previous = F.use_direct_convolution(direct)
    try:
        out = F.conv2d(x, weight, bias, scale=scale, **conv_arguments(case))
        rectified = F.conv2d(x, weight, bias, scale=scale, relu=True, **conv_arguments(case))
    finally:
        F.use_direct_convolution(previous)
    np.testing.assert_allclose(out, expected, **TOLERANCE[dtype])
    np.testing.assert_array_equal(rectified, np.maximum(out, 0))


def test_conv2d_refuses_a_mis_shaped_scale():
    x, weight, bias = make_operands(HAND_PICKED[0], np.float32)
    with pytest.raises(ValueError, match=r"scale: expected shape \(4,\)"):
        F.conv2d(x, weight, bias, padding=1, scale=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="scale: expected dtype float32"):
        F.conv2d(x, weight, bias, padding=1, scale=np.ones(4))


# Small cases only: finite differences of a loss summed over many outputs lose digits
# to rounding (at 61 samples, about 1e-7, as large as the tolerance).
GRADIENT_CASES = [case for case in HAND_PICKED
                  if 0 < case[0] <= 8 and case[2] * case[3] < 150] + random_cases(6, seed=7)


@pytest.mark.parametrize("case", GRADIENT_CASES)
def test_conv2d_gradients_match_finite_differences(case):
    x, weight, bias = make_operands(case, np.float64, seed=3)
    if bias is None:
        bias = np.zeros(weight.shape[0])
    arguments = conv_arguments(case)
    forward = lambda: F.conv2d(x, weight, bias, **arguments)
    grad_output = np.random.default_rng(4).standard_normal(forward().shape)
    grad_input, grad_weight, grad_bias = F.conv2d_backward(grad_output, x, weight, **arguments)
    check_gradient(forward, x, grad_input, grad_output)
    check_gradient(forward, weight, grad_weight, grad_output)
    check_gradient(forward, bias, grad_bias, grad_output)


def test_conv2d_backward_computes_only_what_is_asked():
    x, weight, _ = make_operands(HAND_PICKED[0], np.float32)
    grad_output = np.ones((2, 4, 7, 6), dtype=np.float32)
    full = F.conv2d_backward(grad_output, x, weight, padding=1)
    only_input = F.conv2d_backward(grad_output, x, weight, padding=1, need_weight_grad=False)
    only_weight = F.conv2d_backward(grad_output, x, weight, padding=1, need_input_grad=False)
    assert only_input[1] is None and only_input[2] is None
    assert only_weight[0] is None
    np.testing.assert_array_equal(only_input[0], full[0])
    np.testing.assert_array_equal(only_weight[1], full[1])
    np.testing.assert_array_equal(only_weight[2], full[2])
    assert F.conv2d_backward(grad_output, x, weight, padding=1, need_input_grad=False,
                             need_weight_grad=False) == (None, None, None)
    no_bias = F.conv2d_backward(grad_output, x, weight, padding=1, need_bias_grad=False)
    assert no_bias[2] is None
    np.testing.assert_array_equal(no_bias[0], full[0])
    np.testing.assert_array_equal(no_bias[1], full[1])


@pytest.mark.parametrize("case", [(16, 64, 8, 64, 3, 1, 1), (16, 64, 8, 64, 3, 2, 1),
                                  (16, 64, 4, 256, 3, 1, 1), (2, 3, 9, 5, 3, 1, 1)])
def test_conv2d_backward_without_the_bias_gradient_leaves_the_others_alone(case):
    """Every weight-gradient path (direct, Winograd where it applies, GEMM sample by sample
    and side by side) without grad_bias: the same grad_weight and grad_input."""
    N, C, H, filters, kernel, stride, padding = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    weight = rng.standard_normal((filters, C, kernel, kernel)).astype(np.float32)
    out = F.conv2d(x, weight, None, stride, padding)
    grad_output = rng.standard_normal(out.shape).astype(np.float32)
    full = F.conv2d_backward(grad_output, x, weight, stride, padding)
    no_bias = F.conv2d_backward(grad_output, x, weight, stride, padding, need_bias_grad=False)
    assert no_bias[2] is None
    np.testing.assert_array_equal(no_bias[0], full[0])
    np.testing.assert_array_equal(no_bias[1], full[1])


def test_conv2d_accepts_non_contiguous_and_read_only_inputs():
    x, weight, bias = make_operands(HAND_PICKED[0], np.float32)
    expected = F.conv2d(x, weight, bias, padding=1)
    transposed = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert not transposed.flags.c_contiguous
    read_only = x.copy()
    read_only.flags.writeable = False
    np.testing.assert_array_equal(F.conv2d(transposed, weight, bias, padding=1), expected)
    np.testing.assert_array_equal(F.conv2d(read_only, weight, bias, padding=1), expected)


def test_alexnet_first_layer_output_size():
    # 227x227x3 input, 96 filters of 11x11, stride 4, no padding: (227 - 11 + 0) / 4 + 1 = 55
    assert F.conv_output_size(227, 11, stride=4, padding=0) == 55
    x = np.zeros((1, 3, 227, 227), dtype=np.float32)
    weight = np.zeros((96, 3, 11, 11), dtype=np.float32)
    assert F.conv2d(x, weight, stride=4).shape == (1, 96, 55, 55)


@pytest.mark.parametrize("padding", ["same", 0, (2, 1)])
def test_same_padding_keeps_the_size(padding):
    x = np.random.default_rng(0).standard_normal((1, 1, 9, 8)).astype(np.float32)
    out = F.conv2d(x, np.ones((1, 1, 5, 3), np.float32), padding=padding)
    expected = {"same": (9, 8), 0: (5, 6), (2, 1): (9, 8)}[padding]
    assert out.shape[2:] == expected


UNFOLD_CASES = [((2, 3, 7, 6), (3, 3), 1, 1, 1), ((1, 2, 9, 11), (2, 4), (2, 3), (1, 2), (2, 1)),
                ((3, 1, 5, 5), (5, 5), 1, 0, 1), ((2, 2, 8, 7), (3, 2), 3, 2, 1)]


@pytest.mark.parametrize("shape, kernel, stride, padding, dilation", UNFOLD_CASES)
def test_unfold_matches_reference(shape, kernel, stride, padding, dilation):
    x = np.random.default_rng(0).standard_normal(shape)
    pair = lambda v: (v, v) if isinstance(v, int) else v
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    expected = reference.unfold(x, kernel, pair(stride), pair(padding), pair(dilation))
    np.testing.assert_array_equal(cols, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kernel, stride, padding, dilation", UNFOLD_CASES)
def test_fold_is_the_adjoint_of_unfold(shape, kernel, stride, padding, dilation, dtype):
    # <unfold(x), c> == <x, fold(c)> for all x and c: col2im is exactly im2col's transpose.
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(dtype)
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    c = rng.standard_normal(cols.shape).astype(dtype)
    folded = F.fold(c, shape[2:], kernel, dilation=dilation, padding=padding, stride=stride)
    assert folded.shape == x.shape
    left = np.sum(cols.astype(np.float64) * c)
    right = np.sum(x.astype(np.float64) * folded)
    np.testing.assert_allclose(left, right, rtol=1e-12 if dtype == np.float64 else 1e-5)


def test_output_sizes_without_data_match_the_kernels():
    x = np.zeros((1, 3, 11, 9), np.float32)
    weight = np.zeros((4, 3, 3, 2), np.float32)
    for stride, padding, dilation in ((1, 0, 1), (2, 1, 1), ((2, 1), (0, 2), (2, 1))):
        expected = F.conv2d(x, weight, stride=stride, padding=padding, dilation=dilation).shape
        assert F.conv2d_output_size(x.shape, weight.shape, stride, padding, dilation) == \
            expected[2:]
    # (W - F + 2P) / S + 1 for AlexNet's first layer: (227 - 11) / 4 + 1 = 55.
    assert F.conv2d_output_size((1, 3, 227, 227), (96, 3, 11, 11), stride=4) == (55, 55)
    assert F.pool2d_output_size((1, 3, 11, 9), 2) == F.max_pool2d(x, 2).shape[2:]
    assert F.pool2d_output_size((1, 3, 11, 9), 3, 2, 1) == F.avg_pool2d(x, 3, 2, 1).shape[2:]
    with pytest.raises(ValueError, match="groups: must divide"):
        F.conv2d_output_size(x.shape, weight.shape, groups=2)


def test_checked_geometry_is_reused_only_for_plain_ints():
    """The checked geometry of a layer's arguments is cached; a bool or a NumPy integer,
    equal to a cached int, still meets its own checks."""
    x = np.ones((1, 2, 6, 6), np.float32)
    weight = np.ones((3, 2, 3, 3), np.float32)
    assert F.conv2d(x, weight, stride=(1, 1)).shape == (1, 3, 4, 4)
    assert F.max_pool2d(x, (1, 1)).shape == (1, 2, 6, 6)
    # The same arguments again are answered from the cache.
    conv_hits = conv_geometry_of.cache_info().hits
    pool_hits = pool_geometry_of.cache_info().hits
    assert F.conv2d(x, weight, stride=(1, 1)).shape == (1, 3, 4, 4)
    assert F.max_pool2d(x, (1, 1)).shape == (1, 2, 6, 6)
    assert conv_geometry_of.cache_info().hits == conv_hits + 1
    assert pool_geometry_of.cache_info().hits == pool_hits + 1
    with pytest.raises(ValueError, match="stride: expected an int or a pair of ints"):
        F.conv2d(x, weight, stride=(True, True))
    with pytest.raises(ValueError, match="kernel_size: expected an int or a pair of ints"):
        F.max_pool2d(x, (True, True))
    assert F.conv2d(x, weight, stride=np.int64(2)).shape == (1, 3, 2, 2)
    assert F.max_pool2d(x, [np.int64(2), 2]).shape == (1, 2, 3, 3)
    # A bad call raises every time: failures are never cached.
    for _ in range(2):
        with pytest.raises(ValueError, match="larger than the padded"):
            F.max_pool2d(x, 7)
