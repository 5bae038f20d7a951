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


def test_alexnet_first_layer_summary():
    model = Sequential([Conv2D(96, 11, stride=4), ReLU()], input_shape=(3, 227, 227))
    assert model.output_shape == (96, 55, 55)
    assert model.count_parameters() == (34_944, 0)
    summary = model.summary()
    assert "(None, 96, 55, 55)" in summary and "34,944" in summary
    assert "Trainable params: 34,944" in summary


def lenet(seed=0):
    return Sequential([Conv2D(6, 5, padding="same"), ReLU(), MaxPool2D(2),
                       Conv2D(16, 5), ReLU(), MaxPool2D(2), Flatten(),
                       Dense(32), ReLU(), Dense(10)],
                      input_shape=(1, 28, 28), seed=seed, dtype=np.float64)


def test_sequential_names_shapes_and_list_behaviour():
    model = lenet()
    assert [layer.name for layer in model][:3] == ["conv2d_1", "re_lu_1", "max_pool2d_1"]
    assert model.output_shape == (10,)
    assert len(model) == 10 and model[-1] is model.layers[-1]
    assert model["dense_2"] is model[-1]
    assert list(model.parameters())[:2] == ["conv2d_1.weight", "conv2d_1.bias"]
    popped = model.pop()
    assert popped.name == "dense_2" and model.output_shape == (32,)
    model.add(Dense(5))
    assert model.output_shape == (5,)


def test_same_seed_same_model_and_he_before_relu():
    first, second, other = lenet(seed=3), lenet(seed=3), lenet(seed=4)
    for a, b in zip(first.weights, second.weights):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.weights[0], other.weights[0])
    # conv2d_1 feeds a ReLU: He, std sqrt(2 / fan_in) = sqrt(2/25); dense_2 does not: Glorot.
    assert abs(first[0].weight.value.std() / np.sqrt(2 / 25) - 1) < 0.35
    limit = np.sqrt(6 / (32 + 10))
    assert np.abs(first[-1].weight.value).max() <= limit


def test_replacing_the_head_builds_a_fresh_layer_for_the_same_input():
    model = lenet()
    backbone = [p.value.copy() for p in model[:-1].parameters().values()]
    model[-1] = Dense(3)
    assert model.output_shape == (3,)
    assert model[-1].name == "dense_2" and model[-1].weight.shape == (3, 32)
    for before, after in zip(backbone, model[:-1].parameters().values()):
        np.testing.assert_array_equal(before, after.value)
    # A replacement that changes what a later layer with weights receives is
    # refused and undone; the stateless layers in between are left as they were.
    conv = model[3]
    with pytest.raises(ValueError, match=r"dense_1: built for input \(400,\), but the layer "
                                         r"before it now outputs \(576,\)"):
        model[3] = Conv2D(16, 3)
    assert model[3] is conv and model[4].input_shape == (16, 10, 10)
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28))
    assert model.forward(x).shape == (2, 3)


def test_stateless_layers_after_a_replaced_head_follow_its_shape():
    model = Sequential([Flatten(), Dense(4), Dropout(0.5), Softmax()], input_shape=(1, 3, 3))
    model[1] = Dense(6)
    assert model.output_shape == (6,) and model[2].input_shape == (6,)
    probabilities = model.forward(np.ones((2, 1, 3, 3)))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-6)


def test_slice_is_a_feature_extractor_sharing_layers():
    model = lenet()
    features = model[:7]
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28))
    assert features.forward(x).shape == (2, 16 * 5 * 5)
    assert features[0] is model[0]


def check_model_gradients(model, x, grad_output):
    """Input and parameter gradients of a whole model against finite differences."""
    model.forward(x, training=True, need_input_grad=True)
    grad_input = model.backward(grad_output, need_input_grad=True)
    grads = {name: p.grad for name, p in model.parameters().items()}
    forward = lambda: model.forward(x, training=True)
    check_gradient(forward, x, grad_input, grad_output)
    for name, parameter in model.parameters().items():
        check_gradient(forward, parameter.value, grads[name], grad_output)


def test_model_gradients_match_finite_differences():
    model = Sequential([Conv2D(3, 3, padding=1), Tanh(), AvgPool2D(2), Flatten(), Dense(4)],
                       input_shape=(2, 6, 6), dtype=np.float64, seed=1)
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6))
    grad_output = np.random.default_rng(1).standard_normal((2, 4))
    check_model_gradients(model, x, grad_output)
    model.forward(x, training=True)
    assert model.backward(grad_output) is None


def test_frozen_layers_get_no_gradient_and_backward_stops_early():
    model = lenet()
    model.freeze(upto="flatten_1")
    trainable, frozen = model.count_parameters()
    assert frozen == 6 * 25 + 6 + 16 * 6 * 25 + 16 and trainable == 400 * 32 + 32 + 32 * 10 + 10
    assert "(frozen)" in model.summary()
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28))
    model.forward(x, training=True)
    # Layers below the lowest trainable one kept nothing for backward.
    assert all(layer._cache is None for layer in model[:7])
    assert model.backward(np.ones((2, 10))) is None
    assert all(p.grad is None for name, p in model.parameters().items() if name.startswith("conv"))
    assert model["dense_1"].weight.grad is not None
    # A fully frozen model still gives the gradient with respect to its input
    # when asked, and computes no parameter gradient on the way.
    model.freeze()
    for parameter in model.parameters().values():
        parameter.grad = None
    model.forward(x, training=True, need_input_grad=True)
    grad_input = model.backward(np.ones((2, 10)), need_input_grad=True)
    assert grad_input.shape == x.shape and np.abs(grad_input).sum() > 0
    assert all(p.grad is None for p in model.parameters().values())
    model.unfreeze()
    assert model.count_parameters()[1] == 0


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


def residual_model():
    from cnncli.blocks import Residual
    return Sequential([
        Conv2D(4, 3, padding=1), ReLU(),
        Residual([Conv2D(4, 3, padding=1), BatchNorm2D(), Tanh(), Conv2D(4, 3, padding=1)]),
        Residual([Conv2D(6, 3, stride=2, padding=1), BatchNorm2D()],
                 shortcut=[Conv2D(6, 1, stride=2), BatchNorm2D()]),
        Tanh(), GlobalAvgPool2D(), Dense(3)],
        input_shape=(2, 6, 6), dtype=np.float64, seed=2)


def test_residual_model_gradients_match_finite_differences():
    model = residual_model()
    assert model.output_shape == (3,)
    names = list(model.parameters())
    assert "residual_1.body.conv2d_1.weight" in names
    assert "residual_2.shortcut.batch_norm2d_1.gamma" in names
    assert "residual_1.body.batch_norm2d_1.running_mean" in model.buffers()
    x = np.random.default_rng(0).standard_normal((3, 2, 6, 6))
    grad_output = np.random.default_rng(1).standard_normal((3, 3))
    # Batch statistics move the running estimates on every call, but the
    # training-mode output depends only on the batch: finite differences hold.
    check_model_gradients(model, x, grad_output)


def test_residual_shapes_must_match():
    from cnncli.blocks import Residual
    with pytest.raises(ValueError, match=r"the body outputs \(4, 3, 3\) but the shortcut outputs "
                                         r"\(2, 6, 6\)"):
        Sequential([Residual([Conv2D(4, 3, stride=2, padding=1)])], input_shape=(2, 6, 6))


def test_freezing_a_residual_block_freezes_its_inner_layers():
    model = residual_model()
    model.freeze(upto="residual_2")
    assert all(not p.trainable for name, p in model.parameters().items()
               if name.startswith(("conv2d_1", "residual")))
    assert model["dense_1"].weight.trainable
    x = np.random.default_rng(0).standard_normal((3, 2, 6, 6))
    model.forward(x, training=True)
    model.backward(np.ones((3, 3)))
    assert all(p.grad is None for name, p in model.parameters().items()
               if name.startswith("residual"))


def test_inference_pools_before_relu_with_the_same_result():
    """Sequential runs ReLU -> MaxPool as MaxPool -> ReLU below the trained layers."""
    model = Sequential([Conv2D(4, 3, padding=1), ReLU(), MaxPool2D(2, padding=1), Flatten(),
                        Dense(5), ReLU(), Dense(3)], input_shape=(2, 7, 7), seed=0)
    x = np.random.default_rng(0).standard_normal((6, 2, 7, 7)).astype(np.float32)
    layer_by_layer = x
    for layer in model:
        layer_by_layer = layer.forward(layer_by_layer)
    np.testing.assert_array_equal(model.forward(x), layer_by_layer)
    model.freeze(upto="max_pool2d_1")
    np.testing.assert_array_equal(model.forward(x, training=True), layer_by_layer)
    assert model[1]._cache is None and model[2]._cache is None
    model.unfreeze()
    np.testing.assert_array_equal(model.forward(x, training=True), layer_by_layer)
    assert model[1]._cache is not None
