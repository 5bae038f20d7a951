"""The direct convolution kernel (float32 on AVX2 or AVX-512): against the NumPy oracle and
against im2col + GEMM, by finite differences, and at 1, 2 and 3 threads.

The kernel has no float64 variant, so its finite-difference check runs in float32: a
convolution is linear in its input and in its weight, so a central difference with a step
of 1 has no truncation error, only float32 rounding."""

import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest

import reference
from cnncli import _conv
from cnncli import functional as F
from test_conv import conv_arguments, make_operands, reference_arguments

# (N, C, H, W, filters, kernel, stride, padding, dilation, groups, bias), each with at
# least 16 taps, so the direct kernel takes some of its passes. Below 128 output positions
# per sample (256 for grad_weight) the passes list the whole batch's positions at once; the
# cases with more run sample by sample (four or more samples) or share each sample's tiles
# out (fewer).
DIRECT_CASES = [
    (4, 8, 10, 10, 16, (3, 3), 1, 1, 1, 1, True),         # 8 channels: grad_input on GEMM
    (2, 1, 9, 10, 16, (5, 5), 1, 2, 1, 1, True),          # one channel, 25 taps: forward only
    (5, 16, 9, 11, 28, (3, 3), 1, 1, 1, 1, True),         # a part-filled tile of filters
    (2, 16, 12, 12, 24, (3, 3), 1, 1, 1, 1, False),       # 2 samples: tiles shared out
    (1, 12, 13, 9, 40, (5, 3), 2, (2, 1), 1, 1, True),    # strided, one sample
    (3, 16, 11, 10, 16, (3, 3), 1, "same", 2, 1, True),   # dilated 'same'
    (4, 16, 9, 9, 16, (4, 4), 1, "same", 1, 1, True),     # even kernel: asymmetric padding
    (4, 13, 8, 8, 12, (5, 5), 1, 0, 1, 1, True),          # 'valid', odd channel counts
    (6, 16, 12, 12, 32, (3, 3), 1, 3, 1, 1, True),        # padding beyond the kernel's reach
    (7, 16, 10, 10, 16, (3, 3), (1, 2), 1, 1, 1, True),   # stride differs by axis
    (2, 3, 27, 27, 48, (11, 11), 4, 0, 1, 1, True),       # AlexNet's first layer, scaled
    (19, 16, 8, 8, 16, (3, 3), 1, 1, 1, 1, True),         # more samples than positions
    (8, 16, 4, 4, 48, (3, 3), 1, 1, 1, 1, True),          # more filters than positions
    (5, 16, 17, 16, 20, (3, 3), 1, 1, 1, 1, True),        # sample by sample
    (19, 12, 16, 17, 16, (3, 3), 1, 1, 1, 1, False),      # more samples than weight chunks
    (4, 16, 36, 33, 64, (3, 3), 1, 1, 1, 1, True),        # a sample's positions in 2 groups
    (2, 16, 18, 16, 28, (3, 3), 1, 1, 1, 1, True),        # each sample's tiles shared out
    (3, 32, 9, 9, 32, (3, 3), 1, 1, 1, 1, True),          # wide tiles in every pass
    (5, 40, 15, 15, 64, (3, 3), 1, 1, 1, 1, False),       # narrow grad_input, 2 wide blocks
    (4, 48, 10, 10, 16, (1, 1), 1, 0, 1, 1, True),        # narrowing 1x1, read in place
    (5, 64, 12, 12, 32, (1, 1), 1, 0, 1, 1, False),       # the same, sample by sample
    (2, 40, 13, 12, 32, (1, 1), 1, 0, 1, 1, True),        # the same, tiles shared out
    (3, 16, 11, 13, 32, (3, 3), 2, 0, 1, 1, True),        # stride 2, unpadded, odd widths
    (4, 32, 14, 14, 32, (3, 3), 2, 1, 1, 1, False),       # ResNet's downsampling, scaled
    (4, 16, 26, 25, 16, (4, 4), 3, 1, 1, 1, True),        # stride 3: nine phases
    (3, 64, 9, 9, 128, (3, 3), 1, 1, 1, 1, True),         # 64-wide tiles (AVX-512)
    (2, 64, 11, 10, 64, (3, 3), 2, 1, 1, 1, False),       # the same, strided, by phases
    (3, 48, 9, 9, 96, (3, 3), 2, 1, 1, 1, True),          # 48-wide tiles (AVX-512)
]
# Filters of the tiles that only the AVX-512 variant has (forward and grad_input): 64 for
# multiples of 64, 48 for other multiples of 48.
WIDEST = (64, 48) if F.direct_kernel_variant() == "avx512" else ()
TOLERANCE = dict(rtol=2e-4, atol=2e-4)


def paths(case):
    N, C, H, W, filters, kernel, *_ = case
    return F.conv2d_paths((N, C, H, W), (filters, C) + kernel, **conv_arguments(case))


DIRECT_CPU = any(any(paths(case).values()) for case in DIRECT_CASES)
needs_direct = pytest.mark.skipif(not DIRECT_CPU, reason="this CPU has no AVX2: the "
                                  "convolutions run on im2col + GEMM only")


@needs_direct
def test_the_cases_cover_every_direct_pass():
    # The row kernel takes some of the cases' forwards on AVX-512 (test_row_conv.py covers
    # it); without it the direct kernel would.
    previous = F.use_row_kernel(False)
    try:
        covered = {(name, width) for case in DIRECT_CASES
                   for name, width in paths(case).items() if width}
    finally:
        F.use_row_kernel(previous)
    expected = {(name, width) for name in ("forward", "input_grad", "weight_grad")
                for width in (16, 32)}
    expected |= {(name, width) for name in ("forward", "input_grad") for width in WIDEST}
    assert covered == expected
    assert not any(paths(DIRECT_CASES[0][:4] + (16, (1, 1)) + (1, 0, 1, 1, True)).values())


@needs_direct
def test_grad_input_of_a_strided_layer_runs_direct_where_every_phase_has_taps():
    """Phase by phase (phases.pxi): a stride no larger than the kernel and a padding each
    phase can start from; a strided 1x1 layer, a stride beyond the kernel, a padding wider
    than the kernel's reach or a dilated kernel keep im2col + GEMM."""
    def input_grad(kernel, stride, padding, dilation=1):
        return F.conv2d_paths((4, 32, 14, 14), (32, 32) + kernel, stride=stride,
                              padding=padding, dilation=dilation)["input_grad"]
    assert input_grad((3, 3), 2, 1) == 32 and input_grad((4, 4), 3, 1) == 32
    assert input_grad((1, 1), 2, 0) == 0
    assert input_grad((3, 3), 4, 1) == 0
    assert input_grad((3, 3), 2, 3) == 0
    assert input_grad((3, 3), 2, 1, dilation=2) == 0


@pytest.mark.skipif(not WIDEST, reason="the 64- and 48-filter tiles are AVX-512's")
@pytest.mark.parametrize("width", [64, 48])
@pytest.mark.parametrize("stride", [1, 2])
def test_the_widest_tiles_give_the_narrower_tiles_bits(width, stride):
    """Each output of the 64- and 48-filter tiles is the same chain of multiply-adds as in
    the 32- and 16-filter tiles: a layer's forward equals that of its filters taken 32 or
    16 at a time, and its grad_input (as many input channels) equals that of its channels
    taken so."""
    case = (3, width, 9, 9, width, (3, 3), stride, 1, 1, 1, True)
    x, weight, bias = make_operands(case, np.float32)
    arguments = conv_arguments(case)
    assert paths(case)["forward"] == width and paths(case)["input_grad"] == width
    step = 32 if width == 64 else 16
    parts = [slice(first, first + step) for first in range(0, width, step)]
    whole = F.conv2d(x, weight, bias, **arguments)
    np.testing.assert_array_equal(whole, np.concatenate(
        [F.conv2d(x, weight[part], bias[part], **arguments) for part in parts], axis=1))
    grad_output = np.random.default_rng(1).standard_normal(whole.shape).astype(np.float32)
    grad_input = F.conv2d_backward(grad_output, x, weight, **arguments,
                                   need_weight_grad=False)[0]
    for part in parts:
        np.testing.assert_array_equal(grad_input[:, part], F.conv2d_backward(
            grad_output, x[:, part], weight[:, part], **arguments, need_weight_grad=False)[0])


@needs_direct
def test_a_forward_of_few_positions_runs_direct_but_not_its_weight_gradient():
    """The forward and grad_input take any number of positions (ResNet-18's last stage at
    batch 1: 49); grad_weight needs MIN_DIRECT_SUM (64) positions in the batch."""
    assert F.conv2d_paths((1, 64, 7, 7), (32, 64, 3, 3), padding=1) == {
        "forward": 32, "input_grad": 64 if WIDEST else 32, "weight_grad": 0, "winograd": (),
        "rows": ()}
    assert F.conv2d_paths((2, 64, 7, 7), (32, 64, 3, 3), padding=1)["weight_grad"] == 32


@contextlib.contextmanager
def direct_over_blas(enabled):
    """Every 1x1 pass and every grad_weight the direct kernel can take on it (AVX-512), or
    only what it takes whatever the CPU and BLAS."""
    previous = F.use_direct_over_blas(enabled)
    try:
        yield
    finally:
        F.use_direct_over_blas(previous)


@needs_direct
def test_which_passes_of_a_1x1_layer_run_direct_whatever_the_blas():
    """The forward of a narrowing or strided 1x1 layer, and the grad_input of a widening
    one (the forward of its narrowing transpose); the rest keeps im2col + GEMM."""
    with direct_over_blas(False):
        assert paths((4, 48, 10, 10, 16, (1, 1), 1, 0, 1, 1, True)) == {
            "forward": 16, "input_grad": 0, "weight_grad": 0, "winograd": (), "rows": ()}
        assert paths((4, 16, 10, 10, 48, (1, 1), 1, 0, 1, 1, True)) == {
            "forward": 0, "input_grad": 16, "weight_grad": 0, "winograd": (), "rows": ()}
        assert paths((4, 48, 10, 10, 32, (1, 1), 2, 0, 1, 1, True)) == {
            "forward": 32, "input_grad": 0, "weight_grad": 0, "winograd": (), "rows": ()}
        for kept in [(4, 256, 10, 10, 129, (1, 1), 1, 0, 1, 1, True),
                     (4, 48, 10, 10, 16, (1, 1), 1, 1, 1, 1, True)]:
            assert not any(paths(kept).values())
    assert not any(F.conv2d_paths((4, 16, 9, 9), (16, 16, 3, 3), padding=1,
                                  dtype=np.float64).values())


# Layers whose every pass the direct kernel takes where it outruns the BLAS beside it
# (grad_input: stride 1, no padding): 1x1 layers, and grad_weight with more filters than
# positions summed over.
OVER_BLAS_CASES = [
    (4, 64, 10, 10, 128, (1, 1), 1, 0, 1, 1, True),      # widening, whole batch listed
    (3, 64, 17, 17, 64, (1, 1), 1, 0, 1, 1, False),      # as many channels, sample by sample
    (4, 96, 14, 13, 64, (1, 1), 2, 0, 1, 1, True),       # strided: grad_input on GEMM
    (2, 64, 9, 10, 96, (1, 1), 1, 1, 1, 1, True),        # padded: a copy of each sample
    (2, 128, 12, 12, 48, (1, 1), 1, 0, 1, 1, True),      # narrowing, tiles shared out
    (4, 64, 4, 4, 128, (3, 3), 1, 1, 1, 1, True),        # 128 filters, 64 positions
    (4, 32, 7, 7, 96, (3, 3), 2, 1, 1, 1, False),        # 96 filters, 64 positions, strided
]
AVX512 = F.direct_kernel_variant() == "avx512"
needs_avx512 = pytest.mark.skipif(not AVX512, reason="the direct kernel takes these passes "
                                  "over the BLAS's on AVX-512 only")


@needs_avx512
def test_the_direct_kernel_can_take_every_1x1_pass_and_every_weight_gradient():
    for case in OVER_BLAS_CASES:
        kernel, stride, padding = case[5:8]
        with direct_over_blas(True):
            assert paths(case)["forward"] and paths(case)["weight_grad"]
            assert bool(paths(case)["input_grad"]) == (kernel != (1, 1)
                                                       or (stride == 1 and padding == 0))
        with direct_over_blas(False):
            assert not paths(case)["weight_grad"]


@needs_avx512
def test_the_direct_kernel_outruns_an_openblas_held_to_avx2_kernels_on_full_rate_avx512():
    code = ("from cnncli import functional as F; paths = F.conv2d_paths((4, 64, 10, 10), "
            "(128, 64, 1, 1)); print(all(paths[name] for name in "
            "('forward', 'input_grad', 'weight_grad')))")
    held = dict(os.environ, OPENBLAS_CORETYPE="Haswell")
    assert printed_by(code, held) == str(_conv.full_rate_512())
    assert printed_by(code, dict(held, CNNCLI_DIRECT_ISA="avx2")) == "False"
    if "OPENBLAS_CORETYPE" not in os.environ:
        assert printed_by(code, dict(os.environ)) == str(
            _conv.full_rate_512() and _conv.blas_kernels_narrower())


@needs_avx512
@pytest.mark.parametrize("case", OVER_BLAS_CASES)
def test_direct_passes_over_the_blas_match_reference_gradients_and_threads(case):
    with direct_over_blas(True):
        test_direct_convolution_matches_reference(case)
        assert_gradients_match_finite_differences(case)
        test_direct_results_do_not_depend_on_the_thread_count(case)
        test_direct_convolution_agrees_with_im2col(case)


def gradients(case, x, weight, grad_output):
    return F.conv2d_backward(grad_output, x, weight, **conv_arguments(case))


def assert_forward_matches_reference(case):
    """The float32 forward against the oracle, and with ReLU fused exactly its maximum
    with 0; returns the operands and the output."""
    x, weight, bias = make_operands(case, np.float32)
    out = F.conv2d(x, weight, bias, **conv_arguments(case))
    np.testing.assert_allclose(out, reference.conv2d(x, weight, bias,
                                                     **reference_arguments(case)), **TOLERANCE)
    np.testing.assert_array_equal(F.conv2d(x, weight, bias, relu=True, **conv_arguments(case)),
                                  np.maximum(out, 0))
    return x, weight, out


@pytest.mark.parametrize("case", DIRECT_CASES)
def test_direct_convolution_matches_reference(case):
    x, weight, out = assert_forward_matches_reference(case)
    grad_output = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
    expected = reference.conv2d_backward(grad_output, x, weight, **reference_arguments(case))
    for got, want in zip(gradients(case, x, weight, grad_output), expected):
        np.testing.assert_allclose(got, want, **TOLERANCE)


@needs_direct
@pytest.mark.parametrize("case", DIRECT_CASES)
def test_direct_convolution_agrees_with_im2col(case):
    x, weight, bias = make_operands(case, np.float32)
    grad_output = None
    results = {}
    for direct in (True, False):
        previous = F.use_direct_convolution(direct)
        try:
            out = F.conv2d(x, weight, bias, **conv_arguments(case))
            if grad_output is None:
                grad_output = np.random.default_rng(2).standard_normal(out.shape)
                grad_output = grad_output.astype(np.float32)
            results[direct] = [out, *gradients(case, x, weight, grad_output)]
        finally:
            F.use_direct_convolution(previous)
    for direct, gemm in zip(results[True], results[False]):
        np.testing.assert_allclose(direct, gemm, rtol=1e-5, atol=1e-5 * np.abs(gemm).max())


@pytest.mark.parametrize("case", DIRECT_CASES)
def test_direct_gradients_match_finite_differences(case):
    assert_gradients_match_finite_differences(case)


def assert_gradients_match_finite_differences(case):
    """The loss sum(conv(x, w) * g) is linear in x and in w, so a central difference with a
    step of 1 has no truncation error, only float32 rounding."""
    x, weight, _ = make_operands(case, np.float32)
    rng = np.random.default_rng(3)
    arguments = conv_arguments(case)
    grad_output = rng.standard_normal(F.conv2d(x, weight, **arguments).shape)

    def loss(x_, weight_):
        return float(np.sum(F.conv2d(x_, weight_, **arguments) * grad_output))

    grad_input, grad_weight, _ = gradients(case, x, weight, grad_output.astype(np.float32))
    for _ in range(3):
        dx = rng.standard_normal(x.shape).astype(np.float32)
        dw = rng.standard_normal(weight.shape).astype(np.float32)
        slope_x = (loss(x + dx, weight) - loss(x - dx, weight)) / 2
        slope_w = (loss(x, weight + dw) - loss(x, weight - dw)) / 2
        scale_x = np.sum(np.abs(grad_input * dx)) + 1
        scale_w = np.sum(np.abs(grad_weight * dw)) + 1
        assert abs(slope_x - np.sum(grad_input * dx, dtype=np.float64)) < 1e-4 * scale_x
        assert abs(slope_w - np.sum(grad_weight * dw, dtype=np.float64)) < 1e-4 * scale_w


@pytest.mark.parametrize("case", DIRECT_CASES)
def test_direct_results_do_not_depend_on_the_thread_count(case):
    x, weight, bias = make_operands(case, np.float32)
    outcomes = []
    for n in (1, 2, 3):
        with F.threads(n):
            out = F.conv2d(x, weight, bias, relu=True, **conv_arguments(case))
            outcomes.append([out, *gradients(case, x, weight, out)])
    for parallel in outcomes[1:]:
        for single, result in zip(outcomes[0], parallel):
            np.testing.assert_array_equal(single, result)


@needs_direct
def test_the_direct_kernel_can_be_turned_off_by_the_environment():
    code = ("from cnncli import functional as F; "
            "print(any(F.conv2d_paths((4, 16, 9, 9), (16, 16, 3, 3), padding=1).values()))")
    environment = dict(os.environ, CNNCLI_DIRECT_ISA="none")
    assert printed_by(code, environment) == "False"
    assert variant_chosen(environment) == "none"


def printed_by(code, environment):
    """What a fresh Python process running `code` under `environment` prints."""
    return subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True,
                          text=True, check=True).stdout.strip()


def variant_chosen(environment):
    """The direct kernel's variant a fresh process picks under `environment`."""
    return printed_by("from cnncli import functional as F; print(F.direct_kernel_variant())",
                      environment)


# On an AVX-512 CPU the AVX2 variant still runs where CNNCLI_DIRECT_ISA asks for it.
NARROWER_VARIANTS = ["avx2"] if F.direct_kernel_variant() == "avx512" else []


@pytest.mark.parametrize("variant", NARROWER_VARIANTS)
def test_a_narrower_variant_passes_the_kernel_tests_too(variant):
    """The direct, Winograd and row kernel tests, rerun in a process that asks for `variant`."""
    environment = dict(os.environ, CNNCLI_DIRECT_ISA=variant)
    assert variant_chosen(environment) == variant
    tests = os.path.dirname(os.path.abspath(__file__))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         "-k", "not narrower_variant",
         os.path.join(tests, "test_direct_conv.py"), os.path.join(tests, "test_winograd.py"),
         os.path.join(tests, "test_row_conv.py")],
        env=environment, capture_output=True, text=True, cwd=os.path.dirname(tests))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_training_on_the_direct_kernel_ignores_the_thread_count():
    """Two epochs of a network whose convolutions run on the direct kernel, sample by
    sample (16x16: 256 positions) and with the whole batch listed (8x8), then inference
    of one sample: the same bits at 1, 2 and 3 threads."""
    import cnncli
    from cnncli.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
    from cnncli.model import Sequential
    from cnncli.optimizers import Adam
    from cnncli.training import fit
    rng = np.random.default_rng(4)
    images = rng.standard_normal((48, 3, 16, 16)).astype(np.float32)
    labels = np.arange(48) % 3
    runs = []
    for threads in (1, 2, 3):
        with cnncli.threads(threads):
            model = Sequential([Conv2D(16, 3, padding=1), ReLU(), Conv2D(16, 3, padding=1),
                                ReLU(), MaxPool2D(2), Conv2D(32, 3, padding=1), ReLU(),
                                Flatten(), Dense(3)], input_shape=(3, 16, 16), seed=2)
            fit(model, images, labels, epochs=2, batch_size=16, seed=1,
                optimizer=Adam(model.parameters(), lr=0.01))
            runs.append(model.weights + [model.forward(images[:1])])
    if DIRECT_CPU:
        assert F.conv2d_paths((16, 16, 16, 16), (16, 16, 3, 3), padding=1)["weight_grad"]
    for other in runs[1:]:
        for single, parallel in zip(runs[0], other):
            np.testing.assert_array_equal(single, parallel)


@needs_direct
@pytest.mark.parametrize("case", [case for case in DIRECT_CASES if paths(case)["forward"]])
def test_a_scale_folds_into_the_packed_weights_exactly(case):
    """The direct kernel multiplies the weights by the scale while packing them: the same
    bits as folding the scale into the weights first (what inference did before)."""
    x, weight, bias = make_operands(case, np.float32)
    scale = np.random.default_rng(2).uniform(-2, 2, weight.shape[0]).astype(np.float32)
    folded = F.conv2d(x, weight * scale[:, None, None, None], bias, **conv_arguments(case))
    np.testing.assert_array_equal(F.conv2d(x, weight, bias, scale=scale,
                                           **conv_arguments(case)), folded)


def test_the_bias_gradient_has_the_same_bits_on_every_variant():
    """filtersum.h's vector variants do the baseline's additions in the same order: rows of
    whole groups of eight and rows with a few values left over, in fresh processes with the
    direct kernel (and so the sums' variant) off, on AVX2 and on the CPU's own choice."""
    code = ("import numpy as np; from cnncli import functional as F\n"
            "rng = np.random.default_rng(3)\n"
            "for n, size in ((4, 16), (3, 13), (1, 5)):\n"
            "    grad_output = (rng.standard_normal((n, 24, size, size)) * 10).astype(np.float32)\n"
            "    x = rng.standard_normal((n, 2, size, size)).astype(np.float32)\n"
            "    weight = rng.standard_normal((24, 2, 3, 3)).astype(np.float32)\n"
            "    print(F.conv2d_backward(grad_output, x, weight, padding=1)[2].tobytes().hex())")
    sums = {variant: printed_by(code, dict(os.environ, CNNCLI_DIRECT_ISA=variant))
            for variant in ("none", "avx2", "auto")}
    assert sums["none"] == sums["avx2"] == sums["auto"]
    assert len(sums["none"].split()) == 3
