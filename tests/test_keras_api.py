"""The Keras-style API of the lecture notes, with cnncli in place of keras: activations as
part of a layer, input_shape on the first layer, layers called on their own, weights,
trainable, get_layer, del/insert, fit's validation_split and verbose, a model ending in
a softmax, summary()."""

import io

import numpy as np
import pytest

import cnncli
from cnncli import layers
from cnncli.gradcheck import check_gradient
from cnncli.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU, Softmax
from cnncli.losses import SoftmaxCrossEntropy
from cnncli.model import Sequential
from cnncli.training import fit


def check_layer_gradients(layer, x):
    """Input and parameter gradients of ``layer`` against finite differences (float64)."""
    out = layer.forward(x, training=True)
    grad_output = np.random.default_rng(9).standard_normal(out.shape)
    grad_input = layer.backward(grad_output)
    grads = {name: p.grad for name, p in layer.parameters().items()}
    forward = lambda: layer.forward(x, training=True)  # noqa: E731
    check_gradient(forward, x, grad_input, grad_output)
    for name, parameter in layer.parameters().items():
        check_gradient(forward, parameter.value, grads[name], grad_output)


def test_the_notes_three_layer_model():
    model = cnncli.Sequential([
        layers.Dense(2, activation="relu", name="layer1"),
        layers.Dense(3, activation="relu", name="layer2"),
        layers.Dense(4, name="layer3"),
    ])
    x = np.ones((3, 3), dtype=np.float32)
    y = model(x)                                   # built on the first call
    assert y.shape == (3, 4) and model.input_shape == (3,)
    assert [layer.name for layer in model.layers] == ["layer1", "layer2", "layer3"]
    # The same as calling the layers one after the other.
    layer1, layer2, layer3 = model.layers
    np.testing.assert_array_equal(layer3(layer2(layer1(x))), y)
    assert len(layer1.weights) == 2 and layer1.weights[0].shape == (2, 3)
    model.pop()
    assert len(model.layers) == 2
    model.add(layers.Dense(5))
    assert model(x).shape == (3, 5)


def test_layers_called_on_their_own_are_built_on_the_first_call():
    layer = Dense(4)
    assert layer.weights == []
    out = layer(np.ones((2, 3)))
    assert out.shape == (2, 4) and layer.weight.shape == (4, 3)
    conv = Conv2D(2, 3, activation="relu")
    maps = conv(np.random.default_rng(0).normal(size=(1, 1, 5, 5)).astype(np.float32))
    assert maps.shape == (1, 2, 3, 3) and maps.min() >= 0


@pytest.mark.parametrize("activation, layer", [
    ("relu", ReLU()), ("sigmoid", layers.Sigmoid()), ("tanh", layers.Tanh()),
    ("leaky_relu", layers.LeakyReLU()), ("softmax", Softmax()),
])
def test_an_activation_of_the_layer_equals_the_activation_layer_after_it(activation, layer):
    x = np.random.default_rng(1).normal(size=(5, 6))
    own = Sequential([Dense(4, activation=activation)], input_shape=(6,), seed=3,
                     dtype=np.float64)
    separate = Sequential([Dense(4), layer], input_shape=(6,), seed=3, dtype=np.float64)
    separate[0].weight.value[...] = own[0].weight.value
    np.testing.assert_allclose(own(x), separate(x), rtol=1e-12)
    # Training: the same gradients.
    for model in (own, separate):
        out = model.forward(x, training=True)
        model.backward(np.ones_like(out) * np.arange(out.shape[1]))
    np.testing.assert_allclose(own[0].weight.grad, separate[0].weight.grad, rtol=1e-10)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "softmax", "leaky_relu"])
def test_gradients_of_a_convolution_with_an_activation(activation):
    layer = Conv2D(3, 3, padding=1, activation=activation)
    layer.build((2, 5, 5), rng=np.random.default_rng(2), dtype=np.float64)
    x = np.random.default_rng(3).normal(size=(2, 2, 5, 5))
    check_layer_gradients(layer, x)


def test_a_convolution_with_relu_infers_as_it_trains():
    layer = Conv2D(4, 3, activation="relu")
    x = np.random.default_rng(4).normal(size=(3, 2, 6, 6)).astype(np.float32)
    layer(x)
    np.testing.assert_allclose(layer.forward(x), layer.forward(x, training=True), rtol=1e-6)


def test_activations_are_saved_and_shown(tmp_path):
    model = Sequential([Conv2D(4, 3, activation="relu", input_shape=(1, 8, 8)), Flatten(),
                        Dense(3, activation="softmax")])
    assert model.input_shape == (1, 8, 8)
    text = model.summary(print_fn=None)
    assert "conv2d_1 (Conv2D, relu)" in text and "dense_1 (Dense, softmax)" in text
    model.save(tmp_path / "m.cnn")
    loaded = cnncli.load_model(tmp_path / "m.cnn")
    assert loaded[0].activation == "relu" and loaded[-1].activation == "softmax"
    x = np.random.default_rng(5).normal(size=(2, 1, 8, 8))
    np.testing.assert_array_equal(loaded(x), model(x))
    with pytest.raises(ValueError, match="activation: expected one of"):
        Dense(3, activation="gelu")


def test_a_relu_of_its_own_gives_he_initialisation():
    inner = Sequential([Dense(400, activation="relu")], input_shape=(1000,), seed=0)
    outer = Sequential([Dense(400, activation="sigmoid")], input_shape=(1000,), seed=0)
    assert inner[0].weight.value.std() == pytest.approx(np.sqrt(2 / 1000), rel=0.05)
    assert outer[0].weight.value.std() == pytest.approx(np.sqrt(2 / 1400), rel=0.05)


def test_a_model_ending_in_a_softmax_trains_on_its_probabilities():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(60, 4))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0)
    with_layer = Sequential([Dense(3), Softmax()], input_shape=(4,), seed=1, dtype=np.float64)
    with_activation = Sequential([Dense(3, activation="softmax")], input_shape=(4,), seed=1,
                                 dtype=np.float64)
    logits = Sequential([Dense(3)], input_shape=(4,), seed=1, dtype=np.float64)
    histories = [fit(model, x, y, epochs=3, batch_size=10, shuffle=False)
                 for model in (with_layer, with_activation, logits)]
    # The same training as the logits model with the softmax in the loss.
    for model, history in zip((with_layer, with_activation), histories):
        np.testing.assert_allclose(model[0].weight.value, logits[0].weight.value, rtol=1e-9)
        np.testing.assert_allclose(history["loss"], histories[2]["loss"], rtol=1e-9)
    assert np.allclose(with_activation.predict_proba(x).sum(1), 1)
    with pytest.raises(ValueError, match="apply softmax twice"):
        fit(with_layer, x, y, loss=SoftmaxCrossEntropy())


def test_weights_and_trainable():
    model = Sequential([Conv2D(2, 3), layers.BatchNorm2D(), Flatten(), Dense(2)],
                       input_shape=(1, 5, 5))
    conv, norm = model[0], model[1]
    assert [w.shape for w in conv.weights] == [(2, 1, 3, 3), (2,)]
    assert len(norm.weights) == 4                  # gamma, beta, running mean and variance
    conv.trainable = False
    assert not conv.trainable and model.count_parameters()[1] == 20
    conv.trainable = True
    assert model.count_parameters()[1] == 0
    with pytest.raises(ValueError, match="trainable: expected True or False"):
        conv.trainable = "no"


def test_get_layer_delete_and_insert():
    model = Sequential([Flatten(input_shape=(1, 4, 4)), Dense(8, name="hidden"), ReLU(),
                        Dense(3, name="out")])
    assert model.get_layer("hidden") is model[1] and model.get_layer(index=-1) is model[3]
    with pytest.raises(KeyError, match="no layer named 'nope'"):
        model.get_layer("nope")
    model.insert(3, Dropout(0.5))
    assert [type(layer).__name__ for layer in model] == ["Flatten", "Dense", "ReLU",
                                                          "Dropout", "Dense"]
    del model[3]
    assert len(model) == 4
    # A Dense of 8 inputs cannot follow a new Dense of 5: refused, nothing changes.
    before = [layer.name for layer in model]
    with pytest.raises(ValueError, match="built for input"):
        model.insert(2, Dense(5))
    assert [layer.name for layer in model] == before
    # Removing the hidden layer would hand "out" 16 inputs instead of 8: refused too.
    with pytest.raises(ValueError, match="out: built for input"):
        del model[1]
    assert [layer.name for layer in model] == before
    del model[2]                                   # the ReLU: shapes unchanged
    assert [layer.name for layer in model] == ["flatten_1", "hidden", "out"]
    model.insert(2, Dense(8, activation="tanh"))
    assert model(np.ones((2, 1, 4, 4))).shape == (2, 3)


def test_fit_validation_split_and_verbose(capsys):
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(50, 3)), rng.integers(0, 2, 50)
    model = Sequential([Dense(2)], input_shape=(3,))
    history = model.fit(x, y, epochs=2, validation_split=0.2, verbose=2)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and printed[1].startswith("Epoch 2/2") and "val_loss" in printed[1]
    # Keras holds out the last samples, before any shuffling.
    expected = model.evaluate(x[40:], y[40:])
    assert history["val_loss"][-1] == pytest.approx(expected["loss"])
    model.fit(x, y, epochs=1, verbose=0)
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="validation_split"):
        model.fit(x, y, validation_split=1.5, verbose=0)


def test_summary_prints_as_keras_and_returns_the_text(capsys):
    model = Sequential([Dense(4, activation="relu", input_shape=(3,)), Dense(2)], name="small")
    model[0].trainable = False
    text = model.summary()
    printed = capsys.readouterr().out
    assert printed.rstrip("\n") == text
    lines = text.splitlines()
    assert lines[0] == 'Model: "small"' and set(lines[1]) == {"_"} and set(lines[3]) == {"="}
    assert "Total params: 26 (104.00 B)" in text and "Non-trainable params: 16" in text
    assert "dense_1 (Dense, relu) (frozen)" in text and "(None, 4)" in text
    lines = []
    model.summary(print_fn=lines.append)
    assert "\n".join(lines) == text and "print it" in repr(text)


def test_channels_last_shapes_are_named_in_errors():
    model = Sequential([Conv2D(4, 3), Flatten(), Dense(2)], input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="looks channels-last.*x.transpose"):
        model.fit(np.zeros((2, 28, 28, 1)), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"\(28, 28, 1\) looks channels-last"):
        Sequential([Conv2D(4, 5), Flatten(), Dense(2)], input_shape=(28, 28, 1))


def test_keras_code_end_to_end_on_digits():
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = (digits.images[:, None] / 16).astype(np.float32)
    model = cnncli.Sequential()
    model.add(layers.Conv2D(8, 3, activation="relu", input_shape=(1, 8, 8)))
    model.add(layers.MaxPool2D(2))
    model.add(layers.Flatten())
    model.add(layers.Dense(10, activation="softmax"))
    history = model.fit(x, digits.target, epochs=10, batch_size=32, validation_split=0.2,
                        verbose=0)
    assert history["val_accuracy"][-1] > 0.8
    stream = io.StringIO()
    model.summary(print_fn=lambda line: stream.write(line + "\n"))
    assert "max_pool2d_1 (MaxPool2D)" in stream.getvalue()
    assert isinstance(model.get_layer("conv2d_1"), Conv2D)
    assert MaxPool2D is layers.MaxPool2D


def test_the_readme_coming_from_keras_code_runs(capsys):
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("### Coming from Keras"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    rng = np.random.default_rng(0)
    exec(code, {"x_train": rng.normal(size=(40, 1, 28, 28)).astype(np.float32),
                "y_train": np.arange(40) % 10})
    printed = capsys.readouterr().out
    assert "conv2d_1 (Conv2D, relu)" in printed and "Epoch 5/5" in printed
