"""A strided layer whose kernel spans three strides (AlexNet's first layer) folded into a
stride-1 3x3 layer of S*S times the channels, its forward run as Winograd's F(2x2, 3x3)
(winograd_fold_applies in pyx/winograd.pxi): against the NumPy oracle, against the direct
kernel, at 1, 2 and 3 threads, and the rule that picks it. The results tests force the fold
onto every layer it can compute; the rule test runs by the rule."""

import numpy as np
import pytest

import reference
from cnncli import _conv
from cnncli import functional as F
from test_conv import (assert_forward_ignores_the_thread_count, conv_arguments, make_operands,
                       reference_arguments)
from test_winograd import WINOGRAD_CPU, relative_error

# (N, C, H, W, filters, kernel, stride, padding, dilation, groups, bias)
FOLD_CASES = [
    (4, 3, 47, 47, 64, (11, 11), 4, 0, 1, 1, True),       # AlexNet's kernel, sample by sample
    (2, 3, 50, 45, 64, (11, 11), 4, 2, 1, 1, False),      # fewer samples: channels shared out
    (5, 12, 30, 31, 64, (6, 6), 2, (1, 2), 1, 1, True),   # stride 2, padding differs by axis
    (3, 6, 29, 29, 96, (7, 9), 3, 1, 1, 1, True),         # a kernel of 7 by 9 at stride 3
    (1, 4, 40, 40, 64, (10, 10), 4, 3, 1, 1, True),       # padding 3, one sample
]

needs_fold = pytest.mark.skipif(not WINOGRAD_CPU, reason="this CPU has no AVX2: no direct "
                                "kernel, so no Winograd either")


@pytest.fixture
def forced():
    previous = _conv.force_winograd(True)
    yield
    _conv.force_winograd(previous)


def folded(x_shape, weight_shape, **arguments):
    return F.conv2d_paths(x_shape, weight_shape, **arguments)["winograd"] == ("forward",)


@needs_fold
@pytest.mark.parametrize("case", FOLD_CASES)
def test_every_case_runs_its_forward_folded(forced, case):
    N, C, H, W, filters, kernel, *_ = case
    assert folded((N, C, H, W), (filters, C) + kernel, **conv_arguments(case))


@needs_fold
def test_the_fold_takes_only_the_layers_its_rule_names():
    alexnet = dict(stride=4)
    assert folded((8, 3, 227, 227), (96, 3, 11, 11), **alexnet)
    assert folded((8, 3, 224, 224), (64, 3, 11, 11), stride=4, padding=2)
    assert not folded((3, 3, 227, 227), (96, 3, 11, 11), **alexnet)      # below 4 samples
    assert not folded((8, 3, 227, 227), (48, 3, 11, 11), **alexnet)      # 48 filters
    assert not folded((8, 3, 227, 227), (96, 3, 9, 9), **alexnet)        # 64 of 81 products
    assert not folded((8, 16, 112, 112), (64, 16, 5, 5), stride=2, padding=2)   # 16 of 25
    assert not folded((8, 4, 128, 128), (96, 4, 11, 11), **alexnet)      # 30x30 outputs
    assert not folded((8, 3, 227, 227), (96, 3, 11, 11), dtype=np.float64, **alexnet)
    assert not folded((8, 3, 227, 227), (96, 3, 6, 6), stride=4, dilation=2)
    assert not folded((8, 6, 227, 227), (96, 3, 11, 11), stride=4, groups=2)
    assert not folded((8, 3, 227, 227), (96, 3, 11, 11), stride=(4, 3))


@needs_fold
@pytest.mark.parametrize("case", FOLD_CASES)
def test_the_fold_matches_reference_to_float32_rounding(forced, case):
    x, weight, bias = make_operands(case, np.float32)
    out = F.conv2d(x, weight, bias, **conv_arguments(case))
    want = reference.conv2d(x.astype(np.float64), weight.astype(np.float64),
                            None if bias is None else bias.astype(np.float64),
                            **reference_arguments(case))
    assert relative_error(out, want) < 1e-5


@needs_fold
@pytest.mark.parametrize("case", FOLD_CASES)
def test_the_fold_agrees_with_the_direct_kernel_with_bias_relu_and_scale(forced, case):
    x, weight, bias = make_operands(case, np.float32)
    scale = np.random.default_rng(4).uniform(0.5, 2, weight.shape[0]).astype(np.float32)
    results = {}
    for winograd in (True, False):
        previous = F.use_winograd(winograd)
        try:
            results[winograd] = F.conv2d(x, weight, bias, relu=True, scale=scale,
                                         **conv_arguments(case))
        finally:
            F.use_winograd(previous)
    direct = results[False]
    np.testing.assert_allclose(results[True], direct, rtol=1e-5,
                               atol=1e-5 * np.abs(direct).max())
    assert (results[True] >= 0).all()


@needs_fold
@pytest.mark.parametrize("case", FOLD_CASES)
def test_the_folds_results_do_not_depend_on_the_thread_count(forced, case):
    assert_forward_ignores_the_thread_count(case)


@needs_fold
@pytest.mark.parametrize("seed", range(12))
def test_random_folded_layers_agree_with_the_direct_kernel(forced, seed):
    """Strides 2 to 5, kernels spanning three strides each way, any padding within the
    kernel, 1 to 6 samples, sizes that leave partial tiles and partial strides."""
    rng = np.random.default_rng(seed)
    stride = int(rng.integers(2, 6))
    kernel = tuple(int(k) for k in rng.integers(2 * stride + 1, 3 * stride + 1, size=2))
    padding = tuple(int(rng.integers(0, k)) for k in kernel)
    channels, samples = int(rng.integers(1, 5)), int(rng.integers(1, 7))
    filters = int(rng.choice([32, 64]))
    height, width = (int(k + rng.integers(0, 30)) for k in kernel)
    x = rng.standard_normal((samples, channels, height, width)).astype(np.float32)
    weight = rng.standard_normal((filters, channels) + kernel).astype(np.float32)
    bias = rng.standard_normal(filters).astype(np.float32)
    arguments = dict(stride=stride, padding=padding)
    assert folded(x.shape, weight.shape, **arguments)
    out = F.conv2d(x, weight, bias, **arguments)
    previous = F.use_winograd(False)
    try:
        direct = F.conv2d(x, weight, bias, **arguments)
    finally:
        F.use_winograd(previous)
    assert relative_error(out, direct) < 1e-5
