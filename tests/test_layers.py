import numpy as np
import pytest

from cnncli.gradcheck import check_gradient
from cnncli.layers import (AvgPool2D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten,
                           GlobalAvgPool2D, LeakyReLU, MaxPool2D, ReLU, Sigmoid, Softmax, Tanh)
from cnncli.model import Sequential


def built(layer, input_shape, seed=0):
    layer.build(input_shape, rng=np.random.default_rng(seed), dtype=np.float64,
                init="glorot_uniform")
    return layer


def check_layer_gradients(layer, x, seed=1):
    """Input and parameter gradients of `layer` against finite differences (float64)."""
    rng = np.random.default_rng(seed)
    out = layer.forward(x, training=True)
    grad_output = rng.standard_normal(out.shape)
    grad_input = layer.backward(grad_output)
    parameter_grads = {name: p.grad for name, p in layer.parameters().items()}
    forward = lambda: layer.forward(x, training=True)
    check_gradient(forward, x, grad_input, grad_output)
    for name, parameter in layer.parameters().items():
        check_gradient(forward, parameter.value, parameter_grads[name], grad_output)


LAYER_CASES = [
    (lambda: Conv2D(4, 3, padding=1), (3, 6, 5)),
    (lambda: Conv2D(4, (3, 2), stride=2, padding="valid", groups=2), (2, 7, 6)),
    (lambda: Conv2D(2, 3, padding="same", dilation=2), (2, 7, 7)),
    (lambda: Dense(5), (7,)),
    (lambda: MaxPool2D(2), (2, 6, 6)),
    (lambda: MaxPool2D(3, stride=2, padding=1), (2, 7, 7)),
    (lambda: AvgPool2D(2), (2, 5, 6)),
    (lambda: GlobalAvgPool2D(), (3, 4, 5)),
    (lambda: Flatten(), (2, 3, 4)),
    (lambda: Sigmoid(), (6,)),
    (lambda: Tanh(), (2, 3, 3)),
    (lambda: LeakyReLU(0.1), (6,)),
    (lambda: Softmax(), (5,)),
]


@pytest.mark.parametrize("make, input_shape", LAYER_CASES,
                         ids=[type(make()).__name__ for make, _ in LAYER_CASES])
def test_layer_gradients_match_finite_differences(make, input_shape):
    layer = built(make(), input_shape)
    rng = np.random.default_rng(2)
    if isinstance(layer, MaxPool2D):
        # Distinct values: no step of eps changes which cell is the maximum.
        x = rng.permutation(3 * int(np.prod(input_shape))).astype(np.float64)[:3 * int(
            np.prod(input_shape))].reshape((3,) + input_shape) * 0.01
    else:
        x = rng.standard_normal((3,) + input_shape)
    check_layer_gradients(layer, x)


def test_relu_gradient_matches_finite_differences():
    layer = built(ReLU(), (8,))
    x = np.random.default_rng(0).standard_normal((4, 8))
    x[np.abs(x) < 1e-3] = 0.5       # keep clear of the kink at 0
    check_layer_gradients(layer, x)


def test_dropout_is_identity_in_inference_and_scales_in_training():
    layer = Dropout(0.5)
    layer.build((1000,), rng=np.random.default_rng(0))
    x = np.ones((4, 1000), dtype=np.float32)
    np.testing.assert_array_equal(layer.forward(x), x)
    out = layer.forward(x, training=True)
    assert set(np.unique(out)) == {0.0, 2.0}
    assert 0.45 < (out == 0).mean() < 0.55
    grad = layer.backward(np.ones_like(out))
    np.testing.assert_array_equal(grad, out)


def test_layer_errors_name_the_problem():
    with pytest.raises(ValueError, match="filters: expected a positive int, got 0"):
        Conv2D(0, 3)
    with pytest.raises(ValueError, match=r"weight: the 9x9 \(dilated\) kernel is larger"):
        Sequential([Conv2D(4, 9)], input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="add a Flatten layer"):
        Sequential([Dense(4)], input_shape=(1, 8, 8))
    model = Sequential([Dense(4)], input_shape=(3,))
    with pytest.raises(ValueError, match=r"dense_1: expected input of shape \(N, 3\), got \(2, 5\)"):
        model.forward(np.zeros((2, 5)))
    with pytest.raises(RuntimeError, match="backward needs a forward pass with training=True"):
        Sequential([Dense(4)], input_shape=(3,))[0].backward(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="already in this model"):
        model.add(model[0])


def test_batchnorm_gradients_match_finite_differences_in_both_modes():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3, 3, 2)) * 2 + 1
    layer = built(BatchNorm2D(), (3, 3, 2))
    layer.gamma.value[:] = rng.standard_normal(3)
    layer.beta.value[:] = rng.standard_normal(3)
    check_layer_gradients(layer, x)                     # batch statistics
    layer.running_mean[:] = rng.standard_normal(3)
    layer.running_var[:] = rng.random(3) + 0.5
    layer.freeze()
    out = layer.forward(x, training=True)               # frozen: running statistics
    grad_output = rng.standard_normal(out.shape)
    check_gradient(lambda: layer.forward(x, training=True), x,
                   layer.backward(grad_output), grad_output)


def test_batchnorm_statistics_and_the_frozen_rule():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 2, 4, 4)) * 3 + 5
    layer = built(BatchNorm2D(momentum=0.5), (2, 4, 4))
    out = layer.forward(x, training=True)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(out.var(axis=(0, 2, 3)), 1, rtol=1e-4)
    np.testing.assert_allclose(layer.running_mean, 0.5 * x.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(layer.running_var, 0.5 + 0.5 * x.var(axis=(0, 2, 3), ddof=1))
    inference = layer.forward(x)
    expected = (x - layer.running_mean.reshape(1, -1, 1, 1)) / np.sqrt(
        layer.running_var.reshape(1, -1, 1, 1) + 1e-5)
    np.testing.assert_allclose(inference, expected)
    layer.freeze()
    before = (layer.running_mean.copy(), layer.running_var.copy())
    np.testing.assert_allclose(layer.forward(x, training=True), inference)
    np.testing.assert_array_equal(layer.running_mean, before[0])
    np.testing.assert_array_equal(layer.running_var, before[1])
    assert set(layer.buffers()) == {"running_mean", "running_var"}
