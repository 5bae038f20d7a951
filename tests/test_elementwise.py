"""The compiled element-wise and per-channel kernels (ReLU, batch normalisation, optimizer
updates) against NumPy oracles, finite differences and every thread count."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import reference
from cnncli import functional as F
from cnncli.gradcheck import check_gradient

# Sizes on both sides of the kernels' single-thread threshold (32768 values).
SHAPES = [(2, 3, 4, 5), (5, 7, 31, 37), (1, 1, 1, 3)]


def random(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_matches_numpy(shape, dtype):
    x = random(shape, dtype)
    x.flat[0] = np.nan
    out = F.relu(x)
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    grad_output = random(shape, dtype, seed=1)
    np.testing.assert_array_equal(F.relu_backward(grad_output, out),
                                  np.where(out > 0, grad_output, 0))


def test_relu_writes_in_place_when_asked():
    x = random((3, 4))
    expected = np.maximum(x, 0)
    assert F.relu(x, out=x) is x
    np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize("shape", SHAPES[:2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_statistics_match_numpy(shape, dtype):
    x = random(shape, dtype) * 3 + 5
    mean, var = F.batch_norm_statistics(x)
    exact = x.astype(np.float64)
    tolerance = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(mean, exact.mean(axis=(0, 2, 3)), rtol=tolerance)
    np.testing.assert_allclose(var, exact.var(axis=(0, 2, 3)), rtol=tolerance * 10)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_matches_the_formula_and_updates_running_statistics(training):
    x = random((4, 3, 5, 6), np.float64)
    gamma, beta = random(3, np.float64, 1), random(3, np.float64, 2)
    running_mean, running_var = np.full(3, 0.5), np.full(3, 2.0)
    before = running_mean.copy(), running_var.copy()
    out = F.batch_norm(x, running_mean, running_var, gamma, beta, training=training,
                       momentum=0.1, eps=1e-5)
    if training:
        mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
        count = x.size // 3
        np.testing.assert_allclose(running_mean, 0.9 * before[0] + 0.1 * mean)
        np.testing.assert_allclose(running_var, 0.9 * before[1] + 0.1 * var * count / (count - 1))
    else:
        mean, var = before
        np.testing.assert_array_equal(running_mean, before[0])
    np.testing.assert_allclose(out, reference.batch_norm(x, mean, var, gamma, beta, 1e-5),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch_statistics", [True, False])
def test_batch_norm_backward_matches_numpy(batch_statistics):
    x = random((5, 7, 31, 37))
    mean, var = F.batch_norm_statistics(x)
    inverse_std = (1 / np.sqrt(var + 1e-5)).astype(np.float32)
    gamma, grad_output = random(7, seed=1), random(x.shape, seed=2)
    got = F.batch_norm_backward(grad_output, x, mean, inverse_std, gamma, batch_statistics)
    expected = reference.batch_norm_backward(*(a.astype(np.float64) for a in (
        grad_output, x, mean, inverse_std, gamma)), batch_statistics)
    for mine, oracle in zip(got, expected):
        np.testing.assert_allclose(mine, oracle, rtol=2e-3, atol=2e-3)


# Plane sizes on both sides of planes.h's groups of 16 lanes and runs of 256 values.
PLANE_SIZES = [3, 16, 49, 256, 257, 300, 1147]


def plane_errors():
    """For float32 planes of each of PLANE_SIZES: the largest error of the batch statistics,
    of the gradient's sums and of grad_input against float64, each relative to the scale of
    what it sums (the largest value times the count)."""
    errors = []
    for size in PLANE_SIZES:
        x = random((3, 4, 1, size)) * 3 + 5
        grad_output = random(x.shape, seed=1)
        gamma = random(4, seed=2)
        exact_x, exact_dy = x.astype(np.float64), grad_output.astype(np.float64)
        count = 3 * size
        mean, var = F.batch_norm_statistics(x)
        errors.append(np.abs(mean - exact_x.mean(axis=(0, 2, 3))).max() / 8)
        errors.append(np.abs(var - exact_x.var(axis=(0, 2, 3))).max() / 9)
        inverse_std = (1 / np.sqrt(var + 1e-5)).astype(np.float32)
        got = F.batch_norm_backward(grad_output, x, mean, inverse_std, gamma)
        expected = reference.batch_norm_backward(
            exact_dy, exact_x, mean.astype(np.float64), inverse_std.astype(np.float64),
            gamma.astype(np.float64), True)
        for mine, oracle in zip(got, expected):
            scale = np.abs(exact_dy).max() * (1 if mine.ndim == 4 else count) * 4
            errors.append(np.abs(mine - oracle).max() / scale)
    return errors


def test_float32_plane_sums_stay_within_float_rounding():
    assert max(plane_errors()) < 1e-6


# The AVX-512 and AVX2 variants of planes.h's loops, where the CPU has them.
PLANE_VARIANTS = {"avx512": ["none", "avx2"], "avx2": ["none"]}.get(
    F.planes_kernel_variant(), [])


@pytest.mark.parametrize("variant", PLANE_VARIANTS)
def test_a_narrower_variant_of_the_plane_loops_stays_within_float_rounding(variant):
    code = ("import test_elementwise as t; from cnncli import functional as F; "
            "print(F.planes_kernel_variant(), max(t.plane_errors()))")
    printed = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ, CNNCLI_DIRECT_ISA=variant),
        cwd=os.path.dirname(os.path.abspath(__file__)), capture_output=True, text=True,
        check=True).stdout.split()
    assert printed[0] == {"none": "baseline"}.get(variant, variant)
    assert float(printed[1]) < 1e-6


@pytest.mark.parametrize("batch_statistics", [True, False])
def test_batch_norm_gradients_match_finite_differences(batch_statistics):
    x = random((3, 2, 4, 5), np.float64)
    gamma, beta = random(2, np.float64, 1), random(2, np.float64, 2)
    fixed_mean, fixed_var = random(2, np.float64, 3), np.array([0.7, 1.9])
    grad_output = random(x.shape, np.float64, 4)

    def forward():
        if batch_statistics:
            return F.batch_norm(x, np.zeros(2), np.ones(2), gamma, beta, training=True)
        return F.batch_norm(x, fixed_mean, fixed_var, gamma, beta)

    mean, var = F.batch_norm_statistics(x) if batch_statistics else (fixed_mean, fixed_var)
    grads = F.batch_norm_backward(grad_output, x, mean, 1 / np.sqrt(var + 1e-5), gamma,
                                  batch_statistics)
    for array, analytic in zip((x, gamma, beta), grads):
        check_gradient(forward, array, analytic, grad_output)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch_statistics", [True, False])
def test_batch_norm_with_relu_in_its_passes_gives_the_bits_of_the_two_apart(dtype,
                                                                          batch_statistics):
    """channel_affine(relu=True) and batch_norm_backward(relu_output=...) against relu after
    the affine map and relu_backward before the normalisation's backward: planes of every
    size class of planes.h, a quarter of the values made exactly zero."""
    for shape in [(3, 4, 1, 3), (3, 4, 7, 7), (2, 3, 31, 37)]:
        x = random(shape, dtype)
        mean, var = F.batch_norm_statistics(x)
        inverse_std = (1 / np.sqrt(var + 1e-5)).astype(dtype)
        gamma, beta = random(shape[1], dtype, 1), random(shape[1], dtype, 2)
        scale = gamma * inverse_std
        shift = beta - mean * scale
        shift[0] = -x[:, 0].max() * scale[0]        # channel 0: some outputs exactly zero
        out = F.channel_affine(x, scale, shift, relu=True)
        np.testing.assert_array_equal(out, F.relu(F.channel_affine(x, scale, shift)))
        grad_output = random(shape, dtype, 3)
        fused = F.batch_norm_backward(grad_output, x, mean, inverse_std, gamma,
                                      batch_statistics, relu_output=out)
        apart = F.batch_norm_backward(F.relu_backward(grad_output, out), x, mean, inverse_std,
                                      gamma, batch_statistics)
        for one, other in zip(fused, apart):
            np.testing.assert_array_equal(one, other)


def test_batch_norm_backward_computes_only_what_is_asked():
    x = random((2, 3, 4, 4))
    grad_input, grad_gamma, grad_beta = F.batch_norm_backward(
        np.ones_like(x), x, np.zeros(3, np.float32), np.ones(3, np.float32),
        np.ones(3, np.float32), need_input_grad=False)
    assert grad_input is None
    np.testing.assert_allclose(grad_beta, np.full(3, 32.0))


def test_channel_affine_is_one_multiply_add_per_channel():
    x = random((3, 4, 5, 6))
    scale, shift = random(4, seed=1), random(4, seed=2)
    np.testing.assert_allclose(F.channel_affine(x, scale, shift),
                               x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("momentum, weight_decay, nesterov",
                         [(0.0, 0.0, False), (0.9, 0.0, False), (0.9, 1e-2, True),
                          (0.5, 1e-3, False)])
def test_sgd_update_matches_pytorchs_formula(momentum, weight_decay, nesterov):
    value = random(40000, np.float64)
    grads = [random(40000, np.float64, seed) for seed in range(1, 5)]
    expected = reference.sgd_steps(value, grads, 0.05, momentum, weight_decay, nesterov)
    velocity = np.empty_like(value) if momentum else None
    for step, grad in enumerate(grads):
        F.sgd_update(value, grad, velocity, 0.05, momentum, weight_decay, nesterov,
                     first_step=step == 0)
    np.testing.assert_allclose(value, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("weight_decay, decoupled", [(0.0, False), (1e-2, False), (1e-2, True)])
def test_adam_update_matches_pytorchs_formula(weight_decay, decoupled):
    value = random((200, 201), np.float64)
    grads = [random((200, 201), np.float64, seed) for seed in range(1, 5)]
    expected = reference.adam_steps(value, grads, 1e-3, 0.9, 0.999, 1e-8, weight_decay,
                                    decoupled)
    m, v = np.zeros_like(value), np.zeros_like(value)
    for step, grad in enumerate(grads, start=1):
        F.adam_update(value, grad, m, v, step, 1e-3, 0.9, 0.999, 1e-8, weight_decay, decoupled)
    np.testing.assert_allclose(value, expected, rtol=1e-12, atol=1e-12)


def run_every_kernel():
    x = random((5, 7, 31, 37))
    out = [F.relu(x), F.relu_backward(random(x.shape, seed=1), F.relu(x))]
    mean, var = F.batch_norm_statistics(x)
    out += [mean, var, F.channel_affine(x, mean, var)]
    out += list(F.batch_norm_backward(random(x.shape, seed=2), x, mean, var, mean))
    out += [F.channel_affine(x, mean, var, relu=True)]
    out += list(F.batch_norm_backward(random(x.shape, seed=2), x, mean, var, mean,
                                      relu_output=out[-1]))
    value, m, v = random(50000), np.zeros(50000, np.float32), np.zeros(50000, np.float32)
    F.adam_update(value, random(50000, seed=3), m, v, 1, 1e-3)
    velocity = np.empty_like(value)
    F.sgd_update(value, random(50000, seed=4), velocity, 0.1, 0.9, 1e-4, True, True)
    return out + [value, m, v, velocity]


def test_results_do_not_depend_on_the_thread_count():
    outcomes = {}
    for n in (1, 2, 3):
        with F.threads(n):
            outcomes[n] = run_every_kernel()
    for n in (2, 3):
        for single, parallel in zip(outcomes[1], outcomes[n]):
            np.testing.assert_array_equal(single, parallel)


@pytest.mark.parametrize("call, message", [
    (lambda: F.relu(np.zeros(3, np.int32)), "input: expected dtype float32 or float64"),
    (lambda: F.relu(np.zeros(3, np.float32), out=np.zeros(4, np.float32)), "out: expected"),
    (lambda: F.relu_backward(np.zeros(3), np.zeros(4)), "grad_output: expected shape"),
    (lambda: F.batch_norm_statistics(np.zeros((2, 3, 4))), "input: expected a 4-D array"),
    (lambda: F.batch_norm_statistics(np.zeros((0, 3, 4, 4))), "at least one value per channel"),
    (lambda: F.channel_affine(np.zeros((1, 3, 2, 2)), np.zeros(2), np.zeros(3)),
     "scale: expected shape"),
    (lambda: F.batch_norm_backward(np.zeros((1, 2, 2, 2)), np.zeros((1, 2, 2, 2)),
                                   np.zeros(2), np.zeros(2), np.zeros(2, np.float32)),
     "weight: expected dtype float64"),
    (lambda: F.batch_norm_backward(np.zeros((1, 2, 2, 2)), np.zeros((1, 2, 2, 2)),
                                   np.zeros(2), np.ones(2), np.ones(2),
                                   relu_output=np.zeros((1, 2, 2, 3))),
     "relu_output: expected shape"),
    (lambda: F.sgd_update(np.zeros(3)[::-1], np.zeros(3), None, 0.1), "value: expected a writable"),
    (lambda: F.sgd_update(np.zeros(3), np.zeros(4), None, 0.1), "grad: expected shape"),
    (lambda: F.adam_update(np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(2), 1, 0.1),
     "v: expected a float64 array of shape (3,)"),
    (lambda: F.adam_update(np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(3), 0, 0.1),
     "step: expected a value >= 1"),
])
def test_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()
