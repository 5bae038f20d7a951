"""Sequential and blocks: list behaviour, names, seeds, head replacement, feature
extraction, freezing, whole-model gradients, residual blocks, and the inference fusions
(each checked both for its result and for having happened)."""

import numpy as np
import pytest

from cnncli import functional as F
from cnncli.gradcheck import check_gradient
from cnncli.layers import (AvgPool2D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten,
                           GlobalAvgPool2D, MaxPool2D, ReLU, Softmax, Tanh)
from cnncli.model import Sequential


def test_alexnet_first_layer_summary():
    model = Sequential([Conv2D(96, 11, stride=4), ReLU()], input_shape=(3, 227, 227))
    assert model.output_shape == (96, 55, 55)
    assert model.count_parameters() == (34_944, 0)
    summary = model.summary(print_fn=None)
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
    assert [name for name, _ in model.named_parameters()][:2] == ["conv2d_1.weight", "conv2d_1.bias"]
    assert model.parameters()[0] is model["conv2d_1"].weight
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
    backbone = [p.value.copy() for p in model[:-1].parameters()]
    model[-1] = Dense(3)
    assert model.output_shape == (3,)
    assert model[-1].name == "dense_2" and model[-1].weight.shape == (3, 32)
    for before, after in zip(backbone, model[:-1].parameters()):
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
    grads = {name: p.grad for name, p in model.named_parameters()}
    forward = lambda: model.forward(x, training=True)
    check_gradient(forward, x, grad_input, grad_output)
    for name, parameter in model.named_parameters():
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
    assert "(frozen)" in model.summary(print_fn=None)
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28))
    model.forward(x, training=True)
    # Layers below the lowest trainable one kept nothing for backward.
    assert all(layer._cache is None for layer in model[:7])
    assert model.backward(np.ones((2, 10))) is None
    assert all(p.grad is None for name, p in model.named_parameters() if name.startswith("conv"))
    assert model["dense_1"].weight.grad is not None
    # A fully frozen model still gives the gradient with respect to its input
    # when asked, and computes no parameter gradient on the way.
    model.freeze()
    for parameter in model.parameters():
        parameter.grad = None
    model.forward(x, training=True, need_input_grad=True)
    grad_input = model.backward(np.ones((2, 10)), need_input_grad=True)
    assert grad_input.shape == x.shape and np.abs(grad_input).sum() > 0
    assert all(p.grad is None for p in model.parameters())
    model.unfreeze()
    assert model.count_parameters()[1] == 0


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
    names = [name for name, _ in model.named_parameters()]
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
    assert all(not p.trainable for name, p in model.named_parameters()
               if name.startswith(("conv2d_1", "residual")))
    assert model["dense_1"].weight.trainable
    x = np.random.default_rng(0).standard_normal((3, 2, 6, 6))
    model.forward(x, training=True)
    model.backward(np.ones((3, 3)))
    assert all(p.grad is None for name, p in model.named_parameters()
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


def test_relu_before_max_pooling_really_sees_the_pooled_values(monkeypatch):
    """Not only the same result: the ReLU before a max pool sees the pooled values (a
    quarter of them), in inference and in training."""
    model = Sequential([Conv2D(4, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(), Dense(3)],
                       input_shape=(2, 8, 8), seed=0)
    seen = []
    original = ReLU.function
    monkeypatch.setattr(ReLU, "function", lambda self, x: seen.append(x.shape) or
                        original(self, x))
    x = np.random.default_rng(0).standard_normal((5, 2, 8, 8)).astype(np.float32)
    model.forward(x)
    assert seen == [(5, 4, 4, 4)]
    seen.clear()
    model.forward(x, training=True)
    assert seen == [(5, 4, 4, 4)]


class UnfusedReLU(ReLU):
    """A subclass: fusions take exact types only, so this one runs on its own."""


def assert_fused_relu_gives_the_unfused_bits(build, x, batch_size):
    """The model `build(relu)` makes, with a ReLU that fuses with its neighbour and with one
    that runs on its own: the same training output and input gradient, and the same
    weights after 3 epochs of fit, bit for bit."""
    runs = []
    for relu in (ReLU(name="relu"), UnfusedReLU(name="relu")):
        model = build(relu)
        output = model.forward(x, training=True, need_input_grad=True)
        grad_input = model.backward(np.ones_like(output), need_input_grad=True)
        model.fit(x, np.arange(len(x)) % 3, epochs=3, batch_size=batch_size)
        runs.append([output, grad_input] + model.weights)
    for fused, unfused in zip(*runs):
        np.testing.assert_array_equal(fused, unfused)


@pytest.mark.parametrize("pool", [MaxPool2D(2), MaxPool2D(3, stride=2, padding=1)])
def test_training_with_relu_then_max_pooling_fused_gives_the_unfused_bits(pool):
    """Pooling then ReLU in training: the same outputs, gradients and trained weights, bit
    for bit, as ReLU then pooling (overlapping windows and many non-positive ones included)."""
    import copy
    x = np.random.default_rng(1).standard_normal((6, 2, 9, 9)).astype(np.float32) - 0.5
    assert_fused_relu_gives_the_unfused_bits(
        lambda relu: Sequential([Conv2D(4, 3, padding=1), relu, copy.deepcopy(pool),
                                 Flatten(), Dense(3)], input_shape=(2, 9, 9), seed=0),
        x, batch_size=2)


@pytest.mark.parametrize("dtype, frozen", [(np.float32, False), (np.float64, False),
                                           (np.float32, True)])
def test_training_with_batchnorm_then_relu_fused_gives_the_unfused_bits(dtype, frozen):
    """BatchNorm and ReLU in one pass in training: the same outputs, gradients and trained
    weights, bit for bit, as the two layers apart (a frozen BatchNorm on its running
    statistics too), with many values at or below zero."""
    def build(relu):
        model = Sequential([Conv2D(4, 3, padding=1), BatchNorm2D(), relu, Conv2D(3, 3),
                            Flatten(), Dense(3)], input_shape=(2, 7, 7), seed=0, dtype=dtype)
        if frozen:
            model[1].freeze()
        return model

    x = np.random.default_rng(1).standard_normal((6, 2, 7, 7)).astype(dtype) - 0.5
    assert_fused_relu_gives_the_unfused_bits(build, x, batch_size=3)


def test_batchnorm_then_relu_fused_matches_finite_differences():
    model = Sequential([BatchNorm2D(), ReLU(), Flatten(), Dense(2)], input_shape=(3, 4, 4),
                       seed=0, dtype=np.float64)
    x = np.random.default_rng(2).standard_normal((4, 3, 4, 4))
    grad_output = np.random.default_rng(3).standard_normal((4, 2))
    model.forward(x, training=True, need_input_grad=True)
    grad_input = model.backward(grad_output, need_input_grad=True)
    check_gradient(lambda: model.forward(x, training=True), x, grad_input, grad_output)
    check_gradient(lambda: model.forward(x, training=True), model[0].gamma.value,
                   model[0].gamma.grad, grad_output)


def test_inference_really_folds_batchnorm_into_the_convolution(monkeypatch):
    """In inference the BatchNorm and the ReLU after a convolution are not run: the
    convolution runs once, scaled, with the ReLU inside; in training the convolution
    runs, then the BatchNorm with the ReLU in its pass."""
    model = Sequential([Conv2D(4, 3, padding=1), BatchNorm2D(), ReLU(), Flatten(), Dense(3)],
                       input_shape=(2, 6, 6), seed=0)
    calls = []
    for cls, method in ((Conv2D, "forward"), (Conv2D, "forward_fused"),
                        (BatchNorm2D, "forward"), (BatchNorm2D, "forward_then_relu"),
                        (ReLU, "forward"), (ReLU, "function")):
        original = getattr(cls, method)
        monkeypatch.setattr(cls, method, lambda self, *args, _original=original,
                            _name=f"{cls.__name__}.{method}", **kwargs:
                            calls.append(_name) or _original(self, *args, **kwargs))
    x = np.random.default_rng(0).standard_normal((3, 2, 6, 6)).astype(np.float32)
    expected = model.forward_layer_by_layer(x, lambda *seen: None)
    calls.clear()
    np.testing.assert_allclose(model.forward(x), expected, rtol=1e-5, atol=1e-6)
    assert calls == ["Conv2D.forward_fused"]
    calls.clear()
    model.forward(x, training=True)
    assert calls == ["Conv2D.forward", "BatchNorm2D.forward_then_relu"]


def test_a_convolution_with_relu_inside_gives_relu_of_the_convolution():
    rng = np.random.default_rng(0)
    for shape, weight_shape, arguments in (((2, 3, 9, 8), (5, 3, 3, 3), dict(padding=1)),
                                           ((1, 4, 7, 7), (70, 4, 3, 3), dict(stride=2)),
                                           ((6, 4, 5, 5), (6, 2, 1, 1), dict(groups=2))):
        x = rng.standard_normal(shape).astype(np.float32)
        weight = rng.standard_normal(weight_shape).astype(np.float32)
        bias = rng.standard_normal(weight_shape[0]).astype(np.float32)
        np.testing.assert_array_equal(F.conv2d(x, weight, bias, relu=True, **arguments),
                                      np.maximum(F.conv2d(x, weight, bias, **arguments), 0))


def test_named_layers_walks_into_blocks_in_order():
    model = residual_model()
    names = [name for name, _ in model.named_layers()]
    assert names[:4] == ["conv2d_1", "re_lu_1", "residual_1", "residual_1.body.conv2d_1"]
    assert "residual_2.shortcut.batch_norm2d_1" in names
    assert names.index("residual_2.body.conv2d_1") < names.index("residual_2.shortcut.conv2d_1")
    layers = dict(model.named_layers())
    assert layers["residual_1.body.conv2d_1"] is model["residual_1"].body[0]


def test_layer_by_layer_inference_sees_every_layer_and_gives_the_forward_values():
    model = residual_model()
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6))
    seen = []
    out = model.forward_layer_by_layer(x, lambda name, layer, value: seen.append(name))
    np.testing.assert_allclose(out, model.forward(x), rtol=1e-12)
    # A block is seen after the layers inside it, whose outputs make its own.
    assert seen == ["conv2d_1", "re_lu_1", "residual_1.body.conv2d_1",
                    "residual_1.body.batch_norm2d_1", "residual_1.body.tanh_1",
                    "residual_1.body.conv2d_2", "residual_1", "residual_2.body.conv2d_1",
                    "residual_2.body.batch_norm2d_1", "residual_2.shortcut.conv2d_1",
                    "residual_2.shortcut.batch_norm2d_1", "residual_2", "tanh_1",
                    "global_avg_pool2d_1", "dense_1"]


def test_an_inference_plan_fuses_exact_pairs_only():
    from cnncli.inference import inference_steps

    class MyReLU(ReLU):
        pass

    model = Sequential([Conv2D(4, 3), BatchNorm2D(), ReLU(), MaxPool2D(2), MyReLU(),
                        MaxPool2D(1), Flatten()], input_shape=(2, 9, 9))
    # conv+bn, relu+pool, then the subclass, its pool and flatten on their own.
    assert len(inference_steps(model.layers)) == 5
    x = np.random.default_rng(0).standard_normal((2, 2, 9, 9)).astype(np.float32)
    value = x
    for step in inference_steps(model.layers):
        value = step(value)
    expected = model.forward_layer_by_layer(x, lambda *seen: None)
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)


def test_the_kept_inference_plan_follows_every_change_to_the_layers():
    """Sequential keeps its inference plan between calls: replacing, inserting, removing or
    freezing a layer must be seen at once, and a deep copy must run its own layers."""
    import copy
    model = Sequential([Conv2D(4, 3, padding=1), BatchNorm2D(), ReLU(), MaxPool2D(2), Flatten(),
                        Dense(3)], input_shape=(2, 6, 6), seed=0)
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6)).astype(np.float32)

    def unfused():
        return model.forward_layer_by_layer(x, lambda *seen: None)

    model.forward(x)
    model[2] = Tanh()
    np.testing.assert_allclose(model.forward(x), unfused(), rtol=1e-5, atol=1e-6)
    model.insert(3, ReLU())
    np.testing.assert_allclose(model.forward(x), unfused(), rtol=1e-5, atol=1e-6)
    del model[1]
    np.testing.assert_allclose(model.forward(x), unfused(), rtol=1e-5, atol=1e-6)
    model.pop()
    model.add(Dense(7))
    assert model.forward(x).shape == (2, 7)
    twin = copy.deepcopy(model)
    for parameter in twin.parameters():
        parameter.value[...] = 0
    assert np.abs(model.forward(x)).sum() > 0
    np.testing.assert_array_equal(twin.forward(x), np.zeros((2, 7), np.float32))
    model.freeze(upto=model[2].name)
    np.testing.assert_allclose(model.forward(x, training=True), unfused(), rtol=1e-5,
                               atol=1e-6)
