import numpy as np
import pytest

import reference
from cnncli import functional as F
from cnncli.gradcheck import check_gradient

TOLERANCE = {np.float32: dict(rtol=1e-4, atol=1e-4), np.float64: dict(rtol=1e-10, atol=1e-10)}

# (batch, in_features, out_features): single columns, a block and a tail, many blocks.
# One sample: a matrix-vector product per block of units (the last block of 65 is one
# unit wide: a strided column of grad_output in the backward).
SHAPES = [(1, 1, 1), (3, 7, 5), (64, 3136, 128), (5, 300, 1100), (17, 2000, 10), (2, 64, 65),
          (1, 3136, 128), (1, 50, 65), (6, 40, 1)]


def operands(shape, dtype, seed=0):
    batch, features, units = shape
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, features)).astype(dtype),
            rng.standard_normal((units, features)).astype(dtype),
            rng.standard_normal(units).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_linear_matches_reference(shape, dtype):
    x, weight, bias = operands(shape, dtype)
    for b in (bias, None):
        out = F.linear(x, weight, b)
        assert out.dtype == dtype and out.shape == (shape[0], shape[2])
        np.testing.assert_allclose(out, reference.linear(x, weight, b), **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_linear_backward_matches_reference(shape, dtype):
    x, weight, _ = operands(shape, dtype)
    grad_output = np.random.default_rng(1).standard_normal((shape[0], shape[2])).astype(dtype)
    got = F.linear_backward(grad_output, x, weight)
    for g, want in zip(got, reference.linear_backward(grad_output, x, weight)):
        assert g.dtype == dtype
        np.testing.assert_allclose(g, want, **TOLERANCE[dtype])


@pytest.mark.parametrize("shape", [(3, 7, 5), (4, 20, 70)])
def test_linear_gradients_match_finite_differences(shape):
    x, weight, bias = operands(shape, np.float64, seed=3)
    forward = lambda: F.linear(x, weight, bias)
    grad_output = np.random.default_rng(4).standard_normal(forward().shape)
    grad_input, grad_weight, grad_bias = F.linear_backward(grad_output, x, weight)
    check_gradient(forward, x, grad_input, grad_output)
    check_gradient(forward, weight, grad_weight, grad_output)
    check_gradient(forward, bias, grad_bias, grad_output)


def test_linear_backward_computes_only_what_is_asked():
    x, weight, _ = operands((5, 300, 130), np.float32)
    grad_output = np.ones((5, 130), dtype=np.float32)
    full = F.linear_backward(grad_output, x, weight)
    only_input = F.linear_backward(grad_output, x, weight, need_weight_grad=False)
    only_weight = F.linear_backward(grad_output, x, weight, need_input_grad=False)
    assert only_input[1:] == (None, None) and only_weight[0] is None
    np.testing.assert_array_equal(only_input[0], full[0])
    np.testing.assert_array_equal(only_weight[1], full[1])
    np.testing.assert_array_equal(only_weight[2], full[2])
    assert F.linear_backward(grad_output, x, weight, need_input_grad=False,
                             need_weight_grad=False) == (None, None, None)


def test_linear_results_do_not_depend_on_the_thread_count():
    x, weight, bias = operands((33, 1500, 1100), np.float32)
    grad_output = np.random.default_rng(2).standard_normal((33, 1100)).astype(np.float32)
    outcomes = []
    for n in (1, 2, 3):
        with F.threads(n):
            outcomes.append([F.linear(x, weight, bias),
                             *F.linear_backward(grad_output, x, weight)])
    for parallel in outcomes[1:]:
        for single, other in zip(outcomes[0], parallel):
            np.testing.assert_array_equal(single, other)


def test_linear_accepts_non_contiguous_inputs_and_empty_batches():
    x, weight, bias = operands((6, 40, 9), np.float32)
    expected = F.linear(x, weight, bias)
    np.testing.assert_array_equal(F.linear(np.asfortranarray(x), weight, bias), expected)
    np.testing.assert_array_equal(F.linear(x, np.asfortranarray(weight), bias), expected)
    empty = np.zeros((0, 40), dtype=np.float32)
    assert F.linear(empty, weight, bias).shape == (0, 9)
    grad_input, grad_weight, grad_bias = F.linear_backward(
        np.zeros((0, 9), np.float32), empty, weight)
    assert grad_input.shape == (0, 40)
    assert not grad_weight.any() and not grad_bias.any()


@pytest.mark.parametrize("arguments, message", [
    ((np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32)), "expected 3 input features"),
    ((np.zeros((2, 3, 1), np.float32), np.zeros((4, 3), np.float32)), "x: expected a 2-D array"),
    ((np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float64)), "weight: expected dtype"),
    ((np.zeros((2, 3), np.int64), np.zeros((4, 3), np.int64)), "x: expected dtype float32"),
    ((np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float32), np.zeros(5, np.float32)),
     "bias: expected shape"),
    ((np.zeros((2, 0), np.float32), np.zeros((4, 0), np.float32)), "at least one input"),
])
def test_linear_refuses_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        F.linear(*arguments)


def test_linear_backward_refuses_a_mis_shaped_gradient():
    x, weight, _ = operands((3, 7, 5), np.float32)
    with pytest.raises(ValueError, match="grad_output: expected shape"):
        F.linear_backward(np.zeros((3, 4), np.float32), x, weight)
