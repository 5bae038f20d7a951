"""ResNet-18/34/50 and the other named architectures: shapes, parameter counts, gradients."""

import numpy as np
import pytest

from cnncli import architectures
from cnncli.gradcheck import check_gradient
from cnncli.loading import load_model
from cnncli.optimizers import SGD


@pytest.mark.parametrize("depth, count", [(18, 11_689_512), (34, 21_797_672),
                                          (50, 25_557_032)])
def test_resnet_has_the_well_known_parameter_count(depth, count):
    model = architectures.resnet(depth)
    assert model.count_parameters() == (count, 0)
    summary = model.summary(print_fn=None)
    assert f"Total params: {count:,}" in summary


@pytest.mark.parametrize("depth, final_channels", [(18, 512), (50, 2048)])
def test_resnet_stage_shapes_at_224(depth, final_channels):
    model = architectures.resnet(depth)
    assert model["conv1"].output_shape == (64, 112, 112)
    assert model["maxpool"].output_shape == (64, 56, 56)
    # Stages 2-4 halve the size at their first block.
    assert model["layer1_0"].output_shape == (64 * (4 if depth == 50 else 1), 56, 56)
    assert model["layer2_0"].output_shape[1:] == (28, 28)
    assert model["layer3_0"].output_shape[1:] == (14, 14)
    assert model["layer4_0"].output_shape == (final_channels, 7, 7)
    assert model["avgpool"].output_shape == (final_channels,)
    assert model.output_shape == (1000,)


def test_resnet_shortcuts_project_only_where_the_shape_changes():
    resnet18 = architectures.resnet18(classes=10, width=4, input_shape=(3, 32, 32))
    assert resnet18["layer1_0"].shortcut is None
    assert resnet18["layer2_0"].shortcut is not None and resnet18["layer2_1"].shortcut is None
    resnet50 = architectures.resnet50(classes=10, width=4, input_shape=(3, 32, 32))
    # A bottleneck widens four times, so even the first block of stage 1 projects.
    assert resnet50["layer1_0"].shortcut is not None and resnet50["layer1_1"].shortcut is None
    stride = resnet50["layer2_0"].body["conv2"].stride
    assert stride == 2     # v1.5: the 3x3 convolution carries the stride


def test_resnet_rejects_an_unknown_depth():
    with pytest.raises(ValueError, match=r"depth: expected one of \[18, 34, 50\], got 101"):
        architectures.resnet(101)


@pytest.mark.parametrize("depth", [18, 50])
def test_narrow_resnet_gradients_match_finite_differences(depth):
    model = architectures.resnet(depth, input_shape=(3, 8, 8), classes=3, width=2)
    model = type(model)(model.layers, input_shape=(3, 8, 8), dtype=np.float64)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 8, 8))
    grad_output = rng.normal(size=(2, 3))
    model.forward(x, training=True, need_input_grad=True)
    grad_input = model.backward(grad_output, need_input_grad=True)
    weight = model["layer2_0"].body["conv1"].weight
    analytic_weight = weight.grad.copy()

    def outputs():
        return model.forward(x, training=True, need_input_grad=True)
    # Batch statistics make every output depend on every input: the check covers the
    # BatchNorm backward through both branches of the blocks.
    check_gradient(outputs, x, grad_input, grad_output, rtol=1e-4, atol=1e-6)
    check_gradient(outputs, weight.value, analytic_weight, grad_output, rtol=1e-4, atol=1e-6)


def test_resnet_trains_and_survives_a_model_file(tmp_path):
    model = architectures.resnet18(input_shape=(3, 16, 16), classes=2, width=4)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 3, 16, 16)).astype(np.float32)
    y = (x[:, 0].mean(axis=(1, 2)) > 0).astype(np.int64)
    history = model.fit(x, y, epochs=8, batch_size=8, optimizer=SGD(model.parameters(), lr=0.05))
    assert history["loss"][-1] < history["loss"][0]
    path = tmp_path / "resnet.cnn"
    model.save(path)
    loaded = load_model(path)
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))
    assert loaded.summary(print_fn=None) == model.summary(print_fn=None)


def _randomize_batchnorms(model, rng):
    for name, array in model.buffers().items():
        array[...] = rng.random(array.shape) + 0.5 if name.endswith("running_var") else \
            rng.normal(size=array.shape) * 0.1
    for name, parameter in model.named_parameters():
        if ".gamma" in name or ".beta" in name or name.startswith("bn"):
            parameter.value[...] = rng.normal(size=parameter.shape) * 0.2 + \
                (1 if name.endswith("gamma") else 0)


@pytest.mark.parametrize("use_bias", [False, True])
def test_inference_folds_batchnorm_into_the_convolution_before_it(use_bias):
    from cnncli.layers import BatchNorm2D, Conv2D, ReLU
    from cnncli.model import Sequential
    model = Sequential([Conv2D(5, 3, padding=1, use_bias=use_bias), BatchNorm2D(), ReLU(),
                        Conv2D(4, 3, stride=2), BatchNorm2D()], input_shape=(3, 9, 9),
                       dtype=np.float64)
    rng = np.random.default_rng(0)
    _randomize_batchnorms(model, rng)
    if use_bias:
        model[0].bias.value[...] = rng.normal(size=5)
    x = rng.normal(size=(3, 3, 9, 9))
    layer_by_layer = x
    for layer in model:
        layer_by_layer = layer.forward(layer_by_layer)
    np.testing.assert_allclose(model.forward(x), layer_by_layer, rtol=1e-12, atol=1e-12)
    # A frozen backbone runs in inference while the layers above it train: folded too.
    model.freeze(upto=2)
    out = model.forward(x, training=True)
    assert model[0]._cache is None and model[1]._cache is None
    assert model[3]._cache is not None
    model.unfreeze()
    model.forward(x, training=True)
    assert model[0]._cache is not None and model[1]._cache is not None


def test_folded_resnet_matches_layer_by_layer_in_float32():
    model = architectures.resnet50(input_shape=(3, 32, 32), classes=5, width=4)
    rng = np.random.default_rng(2)
    _randomize_batchnorms(model, rng)
    x = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)

    def unfused(layers, value):
        for layer in layers:
            if hasattr(layer, "body"):
                side = value if layer.shortcut is None else unfused(layer.shortcut, value)
                value = unfused(layer.body, value) + side
            else:
                value = layer.forward(value)
        return value
    expected = unfused(model, x)
    assert np.abs(model.forward(x) - expected).max() <= 1e-5 * np.abs(expected).max()


def test_residual_inference_adds_in_place_without_touching_the_input():
    from cnncli.blocks import Residual
    from cnncli.layers import Dropout, ReLU
    from cnncli.model import Sequential
    model = Sequential([Residual([ReLU()]), Residual([Dropout(0.5)])], input_shape=(2, 3, 3))
    x = np.random.default_rng(0).normal(size=(2, 2, 3, 3)).astype(np.float32)
    before = x.copy()
    # The second block's body passes its input through in inference.
    expected = 2 * (np.maximum(x, 0) + x)
    np.testing.assert_allclose(model.forward(x), expected, rtol=1e-6)
    np.testing.assert_array_equal(x, before)
