"""Winograd's F(2x2, 3x3) (forward, grad_input and grad_weight of 3x3 stride-1 float32
layers) and F(2x2, 5x5) (the same for 5x5 ones): against the NumPy oracle,
against the direct kernel, by finite differences, and at 1, 2 and 3 threads. Accuracy is
held to the largest difference from the float64 result relative to the largest output.

Which passes take Winograd depends on the direct kernel's variant (winograd_pays in
pyx/winograd.pxi): on AVX-512 grad_weight never does. So the tests of its results run with
Winograd forced onto every pass it can compute, and each variant's rule has its own test
(the AVX2 one also runs on an AVX-512 CPU, through test_direct_conv.py's rerun)."""

import numpy as np
import pytest

import reference
from cnncli import _conv
from cnncli import functional as F
from test_conv import conv_arguments, make_operands, reference_arguments
from test_direct_conv import assert_gradients_match_finite_differences

# (N, C, H, W, filters, kernel, stride, padding, dilation, groups, bias): 64 channels and
# filters or more, at least 1536 output positions (what the AVX2 rule asks for), every pass
# on Winograd (grad_weight sums the tiles of 1, 1, 1, 2, 3, 4, 2 and 13 samples at a time).
WINOGRAD_CASES = [
    (1, 64, 40, 41, 64, (3, 3), 1, 1, 1, 1, True),        # one sample: bands shared out
    (3, 64, 29, 31, 64, (3, 3), 1, "same", 1, 1, True),   # odd sizes, 3 weight chunks
    (2, 96, 30, 30, 64, (3, 3), 1, (1, 0), 1, 1, True),   # padding differs by axis
    (4, 64, 20, 20, 64, (3, 3), 1, 1, 1, 1, True),        # 'same', sample by sample
    (5, 64, 17, 19, 96, (3, 3), 1, "same", 1, 1, False),  # odd sizes: half-used tiles
    (6, 72, 18, 18, 64, (3, 3), 1, 0, 1, 1, True),        # 'valid'
    (4, 64, 20, 20, 80, (3, 3), 1, 2, 1, 1, True),        # padding 2: grad_input unpadded
    (35, 64, 8, 8, 64, (3, 3), 1, 1, 1, 1, True),         # 13 samples a group, 2 chunks
]
# 5x5 kernels, 32 channels and filters or more, 3136 output positions or more: every pass
# on F(2x2, 5x5).
WINOGRAD5_CASES = [
    (16, 32, 14, 14, 64, (5, 5), 1, 2, 1, 1, True),       # LeNet's second layer
    (2, 40, 41, 39, 32, (5, 5), 1, "same", 1, 1, False),  # channels not a multiple of 8
    (4, 32, 30, 31, 48, (5, 5), 1, (3, 1), 1, 1, True),   # odd sizes, uneven padding
    (3, 32, 37, 37, 32, (5, 5), 1, 0, 1, 1, True),        # 'valid': grad_input padded 4
]


def paths(case):
    N, C, H, W, filters, kernel, *_ = case
    return F.conv2d_paths((N, C, H, W), (filters, C) + kernel, **conv_arguments(case))


def winograd_runs_here():
    previous = _conv.force_winograd(True)
    try:
        return any(paths(case)["winograd"] for case in WINOGRAD_CASES)
    finally:
        _conv.force_winograd(previous)


WINOGRAD_CPU = winograd_runs_here()
needs_winograd = pytest.mark.skipif(not WINOGRAD_CPU, reason="this CPU has no AVX2: no "
                                    "direct kernel, so no Winograd either")


@pytest.fixture(autouse=True)
def forced_winograd():
    previous = _conv.force_winograd(True)
    yield
    _conv.force_winograd(previous)


@pytest.fixture
def by_rule(forced_winograd):
    _conv.force_winograd(False)


def relative_error(got, want):
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


def accuracy(case):
    """The bound held: F(2x2, 5x5)'s larger coefficients (up to 5 in the input transform)
    cost about a decimal digit in its weight gradient, whose sums in the transformed space
    run over every tile (measured 0.9-1.7e-5; its forward and grad_input 3-5e-6)."""
    return 1e-5 if case[5] == (3, 3) else 5e-5


@needs_winograd
def test_every_case_runs_every_pass_on_winograd():
    for case in WINOGRAD_CASES:
        assert paths(case)["winograd"] == ("forward", "input_grad", "weight_grad")
    for case in WINOGRAD5_CASES:
        assert paths(case)["winograd"] == ("forward", "input_grad", "weight_grad")


def winograd(x_shape, weight_shape, **arguments):
    """The passes of this layer that its rule gives Winograd."""
    return F.conv2d_paths(x_shape, weight_shape, **arguments)["winograd"]


@pytest.mark.skipif(F.direct_kernel_variant() != "avx2", reason="the AVX2 variant's rule")
def test_winograd_takes_only_the_layers_its_rule_names(by_rule):
    assert winograd((32, 64, 32, 32), (64, 64, 3, 3), padding=1) == ("forward", "input_grad",
                                                                     "weight_grad")
    # 64 channels at 224x224: a sample's transformed input would be 51 MB.
    assert winograd((2, 64, 224, 224), (64, 64, 3, 3), padding=1) == ("forward",
                                                                     "input_grad")
    # At 7x7, grad_weight stays on the direct kernel.
    assert winograd((64, 256, 7, 7), (256, 256, 3, 3), padding=1) == ("forward",
                                                                     "input_grad")
    assert not winograd((32, 32, 32, 32), (64, 32, 3, 3), padding=1)      # 32 channels
    assert not winograd((32, 512, 7, 7), (512, 512, 3, 3), padding=1)     # 16x the weights
    assert not winograd((1, 128, 28, 28), (128, 128, 3, 3), padding=1)    # 784 positions
    assert not winograd((32, 64, 32, 32), (64, 64, 3, 3), stride=2, padding=1)
    assert not winograd((32, 64, 32, 32), (64, 64, 3, 3), padding=2, dilation=2)
    assert not winograd((32, 64, 32, 32), (64, 64, 7, 7), padding=3)
    assert not winograd((8, 32, 14, 14), (64, 32, 5, 5), padding=2)       # 1568 positions
    assert not winograd((64, 16, 14, 14), (64, 16, 5, 5), padding=2)      # 16 channels
    assert not winograd((32, 64, 32, 32), (64, 64, 3, 3), padding=1, dtype=np.float64)
    assert not winograd((16, 64, 16, 16), (48, 64, 3, 3), padding=1)      # 48 filters
    # Each pass counts its own output positions: grad_input's are the layer's input.
    assert winograd((4, 64, 18, 18), (64, 64, 3, 3), padding=2) == ("forward", "weight_grad")
    assert winograd((6, 64, 17, 17), (64, 64, 3, 3), padding=0) == ("input_grad",)


AVX512 = F.direct_kernel_variant() == "avx512"


@pytest.mark.skipif(not AVX512 or _conv.full_rate_512(),
                    reason="the AVX-512 variant's rule, where 512-bit work runs at half rate")
def test_winograd_takes_only_the_layers_its_rule_names_on_avx512(by_rule):
    # A 3x3 layer's grad_weight never; the 5x5 layers' every pass.
    assert winograd((32, 64, 32, 32), (64, 64, 3, 3), padding=1) == ("forward", "input_grad")
    assert winograd((16, 128, 28, 28), (128, 128, 3, 3), padding=1) == ("forward",
                                                                       "input_grad")
    assert winograd((64, 32, 14, 14), (64, 32, 5, 5), padding=2) == ("forward", "input_grad",
                                                                     "weight_grad")
    assert not winograd((16, 256, 14, 14), (256, 256, 3, 3), padding=1)  # 4x the weights
    assert not winograd((2, 128, 28, 28), (128, 128, 3, 3), padding=1)   # 1568 positions
    assert winograd((1, 64, 56, 56), (64, 64, 3, 3), padding=1) == ("forward", "input_grad")
    assert not winograd((32, 32, 32, 32), (64, 32, 3, 3), padding=1)      # 32 channels
    assert not winograd((32, 64, 32, 32), (64, 64, 3, 3), stride=2, padding=1)
    assert not winograd((8, 32, 14, 14), (64, 32, 5, 5), padding=2)       # 1568 positions
    assert not winograd((32, 64, 32, 32), (64, 64, 3, 3), padding=1, dtype=np.float64)


@pytest.mark.skipif(not AVX512 or not _conv.full_rate_512(),
                    reason="the AVX-512 variant's rule where 512-bit work runs at full rate")
def test_winograd_takes_only_the_layers_its_rule_names_on_full_rate_avx512(by_rule):
    every_pass = ("forward", "input_grad", "weight_grad")
    assert winograd((16, 64, 28, 28), (64, 64, 3, 3), padding=1) == every_pass
    assert winograd((16, 256, 14, 14), (256, 256, 3, 3), padding=1) == every_pass
    assert winograd((2, 128, 28, 28), (128, 128, 3, 3), padding=1) == every_pass
    # One group of samples for grad_weight's sum: its one task would run on one thread.
    assert winograd((4, 128, 14, 14), (128, 128, 3, 3), padding=1) == ("forward",
                                                                       "input_grad")
    # Outputs below 8x8 keep grad_weight on the direct kernel.
    assert winograd((16, 256, 7, 7), (256, 256, 3, 3), padding=1) == ("forward",
                                                                     "input_grad")
    assert not winograd((8, 256, 7, 7), (256, 256, 3, 3), padding=1)     # 392 positions
    assert not winograd((16, 512, 7, 7), (512, 512, 3, 3), padding=1)    # 4x the weights
    assert not winograd((32, 32, 32, 32), (64, 32, 3, 3), padding=1)      # 32 channels
    assert winograd((64, 32, 14, 14), (64, 32, 5, 5), padding=2) == every_pass
    assert not winograd((8, 32, 14, 14), (64, 32, 5, 5), padding=2)       # 1568 positions


@needs_winograd
@pytest.mark.parametrize("case", WINOGRAD_CASES + WINOGRAD5_CASES)
def test_winograd_matches_reference_to_float32_rounding(case):
    x, weight, bias = make_operands(case, np.float32)
    out = F.conv2d(x, weight, bias, **conv_arguments(case))
    want = reference.conv2d(x.astype(np.float64), weight.astype(np.float64),
                            None if bias is None else bias.astype(np.float64),
                            **reference_arguments(case))
    assert relative_error(out, want) < accuracy(case)
    grad_output = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
    got = F.conv2d_backward(grad_output, x, weight, **conv_arguments(case))
    want = reference.conv2d_backward(grad_output.astype(np.float64), x.astype(np.float64),
                                     weight.astype(np.float64), **reference_arguments(case))
    for got_gradient, want_gradient in zip(got, want):
        assert relative_error(got_gradient, want_gradient) < accuracy(case)


@needs_winograd
@pytest.mark.parametrize("case", WINOGRAD_CASES[:3] + WINOGRAD5_CASES[:2])
def test_winograd_agrees_with_the_direct_kernel_with_bias_relu_and_scale(case):
    x, weight, bias = make_operands(case, np.float32)
    rng = np.random.default_rng(4)
    scale = rng.uniform(0.5, 2, weight.shape[0]).astype(np.float32)
    grad_output = rng.standard_normal(F.conv2d(x, weight, **conv_arguments(case)).shape)
    grad_output = grad_output.astype(np.float32)
    results = {}
    for winograd in (True, False):
        previous = F.use_winograd(winograd)
        try:
            results[winograd] = [
                F.conv2d(x, weight, bias, relu=True, scale=scale, **conv_arguments(case)),
                *F.conv2d_backward(grad_output, x, weight, **conv_arguments(case))]
        finally:
            F.use_winograd(previous)
    for winograd, direct in zip(results[True], results[False]):
        np.testing.assert_allclose(winograd, direct, rtol=accuracy(case),
                                   atol=accuracy(case) * np.abs(direct).max())
    assert (results[True][0] >= 0).all()


@needs_winograd
@pytest.mark.parametrize("case", WINOGRAD_CASES[:2] + WINOGRAD_CASES[-1:] + WINOGRAD5_CASES[:2])
def test_winograd_gradients_match_finite_differences(case):
    """As for the direct kernel; the forward runs on Winograd too."""
    assert_gradients_match_finite_differences(case)


@needs_winograd
@pytest.mark.parametrize("case", WINOGRAD_CASES + WINOGRAD5_CASES)
def test_winograd_results_do_not_depend_on_the_thread_count(case):
    x, weight, bias = make_operands(case, np.float32)
    outcomes = []
    for n in (1, 2, 3):
        with F.threads(n):
            out = F.conv2d(x, weight, bias, relu=True, **conv_arguments(case))
            outcomes.append([out, *F.conv2d_backward(out, x, weight, **conv_arguments(case))])
    for parallel in outcomes[1:]:
        for single, result in zip(outcomes[0], parallel):
            np.testing.assert_array_equal(single, result)


@pytest.mark.parametrize("kernel, channels, batch", [(3, 64, 8), (5, 32, 16)])
def test_training_through_winograd_layers_ignores_the_thread_count(kernel, channels, batch):
    """Two epochs of a network whose middle layers take Winograd (3x3, 64 channels, batch 8
    at 16x16; 5x5, 32 channels, batch 16; every pass, forced),
    then inference of one sample: the same bits at 1, 2 and 3 threads."""
    import cnncli
    from cnncli.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
    from cnncli.model import Sequential
    from cnncli.optimizers import SGD
    from cnncli.training import fit
    rng = np.random.default_rng(5)
    images = rng.standard_normal((3 * batch, 3, 16, 16)).astype(np.float32)
    labels = np.arange(3 * batch) % 3
    padding = kernel // 2
    runs = []
    for threads in (1, 2, 3):
        with cnncli.threads(threads):
            model = Sequential([Conv2D(channels, 3, padding=1), ReLU(),
                                Conv2D(channels, kernel, padding=padding), ReLU(),
                                Conv2D(channels, kernel, padding=padding), ReLU(), MaxPool2D(4),
                                Flatten(), Dense(3)], input_shape=(3, 16, 16), seed=2)
            fit(model, images, labels, epochs=2, batch_size=batch, seed=1,
                optimizer=SGD(model.parameters(), lr=0.01, momentum=0.9))
            runs.append(model.weights + [model.forward(images[:1])])
    if WINOGRAD_CPU:
        assert F.conv2d_paths((batch, channels, 16, 16), (channels, channels, kernel, kernel),
                              padding=padding)["winograd"] == ("forward", "input_grad",
                                                               "weight_grad")
    for other in runs[1:]:
        for single, parallel in zip(runs[0], other):
            np.testing.assert_array_equal(single, parallel)
