import numpy as np
import pytest

import reference
from cnncli import functional as F
from cnncli.gradcheck import check_gradient

# (shape, kernel_size, stride, padding)
POOL_CASES = [
    ((2, 3, 8, 8), 2, None, 0),          # 2x2/2 on an even image
    ((2, 3, 9, 7), 2, None, 0),          # odd sizes: the last row/column is dropped
    ((1, 2, 11, 10), 3, 2, 0),           # 3x3/2: overlapping windows
    ((2, 2, 7, 9), 3, 2, 1),             # padding
    ((1, 3, 6, 10), (2, 3), (1, 2), (1, 1)),
    ((3, 1, 5, 5), 5, 1, 2),             # padding half the kernel
    ((1, 1, 4, 6), (4, 1), (1, 3), 0),
    ((0, 2, 4, 4), 2, None, 0),          # empty batch
    # Rows wide enough for the kernels' column sweeps (strides 2, 1 and 3),
    # with padded border windows on both sides.
    ((2, 2, 7, 41), 3, 2, 1),
    ((1, 2, 6, 33), 2, None, 0),
    ((1, 2, 5, 30), (2, 3), (1, 1), (1, 1)),
    ((1, 1, 4, 50), (1, 4), (1, 3), (0, 2)),
]


def pool_arguments(kernel_size, stride, padding):
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)
    kernel = pair(kernel_size)
    return kernel, (kernel if stride is None else pair(stride)), pair(padding)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kernel_size, stride, padding", POOL_CASES)
def test_max_pool2d_matches_reference(shape, kernel_size, stride, padding, dtype):
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    out, indices = F.max_pool2d(x, kernel_size, stride, padding, return_indices=True)
    expected, expected_indices = reference.max_pool2d(x, *pool_arguments(kernel_size, stride,
                                                                         padding))
    np.testing.assert_array_equal(out, expected.astype(dtype))
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_array_equal(F.max_pool2d(x, kernel_size, stride, padding), out)

    grad_output = np.random.default_rng(1).standard_normal(out.shape).astype(dtype)
    expected_grad = reference.max_pool2d_backward(
        grad_output, x, *pool_arguments(kernel_size, stride, padding))
    grad = F.max_pool2d_backward(grad_output, x, kernel_size, stride, padding)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-6, atol=1e-6)
    with_indices = F.max_pool2d_backward(grad_output, x, kernel_size, stride, padding,
                                         indices=indices)
    np.testing.assert_array_equal(with_indices, grad)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kernel_size, stride, padding", POOL_CASES)
def test_avg_pool2d_matches_reference(shape, kernel_size, stride, padding, dtype,
                                      count_include_pad):
    arguments = pool_arguments(kernel_size, stride, padding)
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    out = F.avg_pool2d(x, kernel_size, stride, padding, count_include_pad)
    expected = reference.avg_pool2d(x, *arguments, count_include_pad)
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12)
    np.testing.assert_allclose(out, expected, **tolerance)

    grad_output = np.random.default_rng(1).standard_normal(out.shape).astype(dtype)
    grad = F.avg_pool2d_backward(grad_output, x, kernel_size, stride, padding,
                                 count_include_pad)
    expected_grad = reference.avg_pool2d_backward(grad_output, x, *arguments, count_include_pad)
    np.testing.assert_allclose(grad, expected_grad, **tolerance)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_avg_pool2d_matches_mean(dtype):
    x = np.random.default_rng(0).standard_normal((3, 4, 5, 7)).astype(dtype)
    out = F.global_avg_pool2d(x)
    assert out.shape == (3, 4, 1, 1)
    np.testing.assert_allclose(out, x.astype(np.float64).mean(axis=(2, 3), keepdims=True),
                               rtol=1e-6 if dtype == np.float32 else 1e-13)
    grad_output = np.random.default_rng(1).standard_normal(out.shape).astype(dtype)
    grad = F.global_avg_pool2d_backward(grad_output, x)
    np.testing.assert_allclose(grad, np.broadcast_to(grad_output / 35, x.shape), rtol=1e-6)


GRADIENT_CASES = [case for case in POOL_CASES if case[0][0] > 0]


@pytest.mark.parametrize("shape, kernel_size, stride, padding", GRADIENT_CASES)
def test_max_pool2d_gradient_matches_finite_differences(shape, kernel_size, stride, padding):
    # A permutation keeps the values apart, so no step of eps changes which cell is the maximum.
    rng = np.random.default_rng(2)
    x = rng.permutation(np.prod(shape)).reshape(shape).astype(np.float64) * 0.01
    forward = lambda: F.max_pool2d(x, kernel_size, stride, padding)
    grad_output = rng.standard_normal(forward().shape)
    grad = F.max_pool2d_backward(grad_output, x, kernel_size, stride, padding)
    check_gradient(forward, x, grad, grad_output)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("shape, kernel_size, stride, padding", GRADIENT_CASES)
def test_avg_pool2d_gradient_matches_finite_differences(shape, kernel_size, stride, padding,
                                                        count_include_pad):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    forward = lambda: F.avg_pool2d(x, kernel_size, stride, padding, count_include_pad)
    grad_output = rng.standard_normal(forward().shape)
    grad = F.avg_pool2d_backward(grad_output, x, kernel_size, stride, padding,
                                 count_include_pad)
    check_gradient(forward, x, grad, grad_output)


def test_global_avg_pool2d_gradient_matches_finite_differences():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 4, 5))
    grad_output = rng.standard_normal((2, 3, 1, 1))
    check_gradient(lambda: F.global_avg_pool2d(x), x,
                   F.global_avg_pool2d_backward(grad_output, x), grad_output)


def test_gradient_check_rejects_a_wrong_gradient():
    x = np.random.default_rng(5).standard_normal((1, 1, 4, 4))
    grad_output = np.ones((1, 1, 2, 2))
    wrong = F.avg_pool2d_backward(grad_output, x, 2) * 1.01
    with pytest.raises(AssertionError, match="gradient mismatch"):
        check_gradient(lambda: F.avg_pool2d(x, 2), x, wrong, grad_output)


def test_max_pool2d_ties_go_to_the_first_maximum():
    x = np.zeros((1, 1, 4, 4), dtype=np.float32)
    _, indices = F.max_pool2d(x, 2, return_indices=True)
    np.testing.assert_array_equal(indices[0, 0], [[0, 2], [8, 10]])
    grad = F.max_pool2d_backward(np.ones((1, 1, 2, 2), np.float32), x, 2)
    expected = np.zeros((4, 4), np.float32)
    expected[[0, 0, 2, 2], [0, 2, 0, 2]] = 1
    np.testing.assert_array_equal(grad[0, 0], expected)


def test_max_pool2d_overlapping_windows_accumulate():
    # In 3x3/1 pooling of a 4x4 plane, every window contains the centre maximum.
    x = np.zeros((1, 1, 4, 4), dtype=np.float64)
    x[0, 0, 1, 1] = 5.0
    x[0, 0, 2, 2] = 4.0
    grad = F.max_pool2d_backward(np.ones((1, 1, 2, 2)), x, 3, 1)
    assert grad[0, 0, 1, 1] == 4.0 and grad.sum() == 4.0


def test_max_pool2d_propagates_nan():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    x[0, 0, 0, 1] = np.nan
    out, indices = F.max_pool2d(x, 2, return_indices=True)
    assert np.isnan(out[0, 0, 0, 0]) and indices[0, 0, 0, 0] == 1
    assert out[0, 0, 1, 1] == 15


def first_maximum_2x2(x):
    """NumPy oracle of 2x2, stride-2 max pooling: the four cells in row-major order, the
    first maximum winning and a NaN counting as the maximum (the first NaN)."""
    N, C, H, W = x.shape
    OH, OW = H // 2, W // 2
    best = x[:, :, 0:2 * OH:2, 0:2 * OW:2].copy()
    at = np.zeros(best.shape, np.int64)
    for offset, (dh, dw) in ((1, (0, 1)), (W, (1, 0)), (W + 1, (1, 1))):
        cell = x[:, :, dh:2 * OH:2, dw:2 * OW:2]
        beats = (cell > best) | (np.isnan(cell) & ~np.isnan(best))
        best = np.where(beats, cell, best)
        at = np.where(beats, offset, at)
    corners = (2 * np.arange(OH)[:, None] * W + 2 * np.arange(OW)[None, :])
    return best, corners + at


@pytest.mark.parametrize("width", [2, 3, 14, 15, 16, 17, 28, 33, 48])
def test_max_pool2d_2x2_keeps_the_first_maximum_and_nan_at_every_width(width):
    """The 2x2 stride-2 path (pool2x2.h: eight windows at a time, the rest masked) on rows
    of 1 to 24 windows, values drawn from {0, 1, 2} so that most windows hold ties, and
    NaNs, some windows holding two."""
    rng = np.random.default_rng(width)
    x = rng.integers(0, 3, (2, 3, 7, width)).astype(np.float32)
    x[rng.random(x.shape) < 0.08] = np.nan
    expected, expected_indices = first_maximum_2x2(x)
    for threads in (1, 2, 3):
        with F.threads(threads):
            out, indices = F.max_pool2d(x, 2, return_indices=True)
            np.testing.assert_array_equal(out, expected)
            np.testing.assert_array_equal(indices, expected_indices)
            np.testing.assert_array_equal(F.max_pool2d(x, 2), expected)
    grad_output = rng.standard_normal(expected.shape).astype(np.float32)
    grad = F.max_pool2d_backward(grad_output, x, 2, indices=indices)
    want = np.zeros((2, 3, 7 * width), np.float32)
    np.put_along_axis(want, expected_indices.reshape(2, 3, -1), grad_output.reshape(2, 3, -1),
                      axis=2)
    np.testing.assert_array_equal(grad, want.reshape(x.shape))


def first_maximum(x, kernel, stride, padding):
    """NumPy oracle of max pooling: each window's cells in row-major order (padding never
    counted), the first maximum winning and a NaN counting as the maximum."""
    N, C, H, W = x.shape
    (KH, KW), (SH, SW), (PH, PW) = kernel, stride, padding
    OH, OW = (H + 2 * PH - KH) // SH + 1, (W + 2 * PW - KW) // SW + 1
    best = np.full((N, C, OH, OW), np.nan, np.float32)
    at = np.full((N, C, OH, OW), -1, np.int64)
    for oh in range(OH):
        for ow in range(OW):
            for h in range(oh * SH - PH, oh * SH - PH + KH):
                for w in range(ow * SW - PW, ow * SW - PW + KW):
                    if not (0 <= h < H and 0 <= w < W):
                        continue
                    cell, current = x[:, :, h, w], best[:, :, oh, ow]
                    beats = (at[:, :, oh, ow] < 0) | (cell > current) | (
                        np.isnan(cell) & ~np.isnan(current))
                    best[:, :, oh, ow] = np.where(beats, cell, current)
                    at[:, :, oh, ow] = np.where(beats, h * W + w, at[:, :, oh, ow])
    return best, at


@pytest.mark.parametrize("kernel, padding", [((3, 3), (1, 1)), ((3, 3), (0, 0)),
                                             ((2, 3), (1, 1)), ((3, 2), (0, 1))])
@pytest.mark.parametrize("width", [5, 15, 16, 17, 19, 33, 34, 35, 57])
def test_max_pool2d_at_stride_2_keeps_the_first_maximum_and_nan_at_every_width(kernel,
                                                                              padding, width):
    """Stride-2 windows (pool2x2.h's interior windows, eight at a time, the last block
    masked; the border windows on the general path) with ties and NaNs, against the
    oracle; indices and gradients included, at 1 to 3 threads."""
    rng = np.random.default_rng(width)
    x = rng.integers(0, 3, (2, 3, 9, width)).astype(np.float32)
    x[rng.random(x.shape) < 0.08] = np.nan
    expected, expected_indices = first_maximum(x, kernel, (2, 2), padding)
    for threads in (1, 2, 3):
        with F.threads(threads):
            out, indices = F.max_pool2d(x, kernel, 2, padding, return_indices=True)
            np.testing.assert_array_equal(out, expected)
            np.testing.assert_array_equal(indices, expected_indices)
            np.testing.assert_array_equal(F.max_pool2d(x, kernel, 2, padding), expected)


def test_max_pool2d_padding_never_wins():
    x = -np.ones((1, 1, 3, 3), dtype=np.float32)
    out = F.max_pool2d(x, 3, 1, 1)
    np.testing.assert_array_equal(out, -np.ones((1, 1, 3, 3)))
