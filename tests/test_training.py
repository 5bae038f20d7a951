import re
import time

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import cnncli
from cnncli.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU, Softmax
from cnncli.model import Sequential
from cnncli.optimizers import SGD, Adam
from cnncli.training import Callback, EarlyStopping, evaluate, fit, predict, predict_proba


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]      # (1797, 1, 8, 8)
    return train_test_split(x, data.target, test_size=0.25, random_state=0,
                            stratify=data.target)


def small_cnn(seed=0):
    return Sequential([Conv2D(16, 3, padding=1), ReLU(), MaxPool2D(2),
                       Conv2D(32, 3, padding=1), ReLU(), MaxPool2D(2),
                       Flatten(), Dense(10)], input_shape=(1, 8, 8), seed=seed)


def test_a_small_cnn_learns_digits_within_seconds(digits):
    x_train, x_test, y_train, y_test = digits
    model = small_cnn()
    start = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=8, batch_size=32,
                        optimizer=Adam(model.parameters(), lr=0.005),
                        validation_data=(x_test, y_test))
    elapsed = time.perf_counter() - start
    assert history["loss"][-1] < history["loss"][0] / 4
    assert history["val_accuracy"][-1] >= 0.95, history
    assert elapsed < 60, f"training took {elapsed:.1f} s"
    probabilities = model.predict_proba(x_test)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    accuracy = np.mean(model.predict(x_test) == y_test)
    assert accuracy == pytest.approx(model.evaluate(x_test, y_test)["accuracy"])


def test_training_is_reproducible_whatever_the_thread_count(digits):
    x_train, _, y_train, _ = digits
    weights = []
    for threads in (1, 2):
        with cnncli.threads(threads):
            model = small_cnn(seed=3)
            fit(model, x_train[:256], y_train[:256], epochs=2, batch_size=32, seed=5,
                optimizer=SGD(model.parameters(), lr=0.05, momentum=0.9))
            weights.append(model.weights)
    for single, double in zip(*weights):
        np.testing.assert_array_equal(single, double)


def test_batchnorm_adam_training_and_batch_one_inference_ignore_the_thread_count(digits):
    """The compiled BatchNorm, ReLU and Adam kernels, a residual network's backward with
    samples side by side, and the single-sample forward that shares a sample between
    threads: the same bits at 1, 2 and 3 threads."""
    from cnncli.architectures import resnet
    from cnncli.layers import BatchNorm2D
    x_train, x_test, y_train, _ = digits
    runs = []
    for threads in (1, 2, 3):
        with cnncli.threads(threads):
            model = Sequential([Conv2D(16, 3, padding=1), BatchNorm2D(), ReLU(), MaxPool2D(2),
                                Conv2D(32, 3, padding=1), BatchNorm2D(), ReLU(),
                                Flatten(), Dense(10)], input_shape=(1, 8, 8), seed=3)
            fit(model, x_train[:256], y_train[:256], epochs=2, batch_size=32, seed=5,
                optimizer=Adam(model.parameters(), lr=0.01))
            network = resnet(18, (3, 32, 32), classes=7, seed=1, width=8)
            images = np.random.default_rng(2).standard_normal((4, 3, 32, 32)).astype(np.float32)
            fit(network, images, np.arange(4) % 7, epochs=2, batch_size=4,
                optimizer=SGD(network.parameters(), lr=0.01, momentum=0.9))
            runs.append(model.weights + list(model.buffers().values()) + network.weights
                        + [model.forward(x_test[:1]), network.forward(images[:1])])
    for other in runs[1:]:
        for single, parallel in zip(runs[0], other):
            np.testing.assert_array_equal(single, parallel)


def test_early_stopping_restores_the_best_weights(digits):
    x_train, x_test, y_train, y_test = digits

    class Recorder(Callback):
        def on_epoch_end(self, epoch, logs, model):
            snapshots.append([w.copy() for w in model.weights])

    snapshots = []
    model = small_cnn()
    stopper = EarlyStopping(monitor="val_loss", patience=2, restore_best=True)
    # A learning rate this high makes the validation loss bounce, so it stops early.
    history = fit(model, x_train, y_train, epochs=30, batch_size=64,
                  optimizer=SGD(model.parameters(), lr=0.3, momentum=0.9),
                  validation_data=(x_test, y_test), callbacks=[Recorder(), stopper])
    assert len(history) < 30 and history.stopped_early
    best = int(np.argmin(history["val_loss"]))
    assert stopper.best_epoch == best
    for restored, kept in zip(model.weights, snapshots[best]):
        np.testing.assert_array_equal(restored, kept)


def test_callbacks_see_every_epoch_and_batch(digits):
    x_train, _, y_train, _ = digits
    calls = []

    class Recorder(Callback):
        def on_epoch_begin(self, epoch, batches, model):
            calls.append(("begin", epoch, batches))

        def on_batch_end(self, epoch, batch, batches, logs):
            calls.append((epoch, batch, batches))
            assert set(logs) == {"loss", "accuracy"}

        def on_epoch_end(self, epoch, logs, model):
            calls.append(("end", epoch))

    fit(small_cnn(), x_train[:100], y_train[:100], epochs=2, batch_size=32,
        callbacks=[Recorder()])
    assert calls == [call for e in range(2) for call in
                     [("begin", e, 4)] + [(e, b, 4) for b in range(4)] + [("end", e)]]
    assert not fit(small_cnn(), x_train[:32], y_train[:32], epochs=1).stopped_early


def test_predict_proba_of_a_softmax_model_is_not_softmaxed_twice():
    model = Sequential([Dense(3), Softmax()], input_shape=(4,))
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(predict_proba(model, x), model.forward(x), rtol=1e-6)
    assert predict(model, x).shape == (5,)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_a_diverging_loss_stops_with_a_clear_error(digits):
    x_train, _, y_train, _ = digits
    model = small_cnn()
    with pytest.raises(FloatingPointError, match="loss became"):
        fit(model, x_train[:64] * 1e30, y_train[:64], epochs=1,
            optimizer=SGD(model.parameters(), lr=1e10))


@pytest.mark.parametrize("call, message", [
    (lambda m, x, y: fit(m, x[:, :, :4], y, epochs=1), "x: expected shape (N, 1, 8, 8), got (10, 1, 4, 8)"),
    (lambda m, x, y: fit(m, x, y[:5], epochs=1), "y: expected 10 labels (one per sample of x), got 5"),
    (lambda m, x, y: fit(m, x, y, epochs=0), "epochs: expected a positive int, got 0"),
    (lambda m, x, y: fit(m, x, y + 10, epochs=1), "labels: expected values in [0, 10)"),
    (lambda m, x, y: fit(m, x, y, epochs=1, callbacks=[EarlyStopping()]),
     "monitor: 'val_loss' is not among the metrics"),
])
def test_training_errors_name_the_problem(call, message, digits):
    x_train, _, y_train, _ = digits
    with pytest.raises(ValueError, match=re.escape(message)):
        call(small_cnn(), x_train[:10], y_train[:10])


def test_inference_batches_shrink_for_large_activations_and_give_the_same_outputs(monkeypatch):
    from cnncli import architectures, training
    model = architectures.resnet18(input_shape=(3, 32, 32), classes=3, width=4)
    assert training.inference_batch_size(model, 256) == 256
    x = np.random.default_rng(0).normal(size=(10, 3, 32, 32)).astype(np.float32)
    whole = training.predict_outputs(model, x)
    # The input, 3x32x32 float32 values per image, is this narrow model's largest
    # activation: a budget of three of them makes batches of three.
    monkeypatch.setattr(training, "INFERENCE_ACTIVATION_BYTES", 3 * 3 * 32 * 32 * 4)
    assert training.inference_batch_size(model, 256) == 3
    # The kernels may block a batch differently: equal up to float32 rounding.
    np.testing.assert_allclose(training.predict_outputs(model, x), whole, rtol=1e-5,
                               atol=1e-5 * np.abs(whole).max())
    assert training.inference_batch_size(architectures.resnet18(), 256) == 1


def test_a_dropout_below_the_lowest_trainable_layer_drops_in_training():
    # The Dropout has no parameters, so the lowest trainable layer is the Dense above it;
    # the layers below run in inference mode, but the Dropout must still drop.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 20)), rng.integers(0, 3, 64)
    weights = []
    for rate in (0.9, 0.0):
        model = Sequential([Dropout(rate), Dense(3)], input_shape=(20,), seed=1,
                           dtype=np.float64)
        fit(model, x, y, epochs=2, batch_size=16)
        weights.append(model[-1].weight.value.copy())
    assert not np.allclose(weights[0], weights[1])
    # Below frozen layers too: the frozen Dense sees dropped inputs.
    frozen = Sequential([Dropout(0.5), Dense(8), Dense(3)], input_shape=(20,), seed=1,
                        dtype=np.float64)
    frozen.freeze(upto=1)
    first = frozen.forward(x, training=True)
    second = frozen.forward(x, training=True)
    assert not np.allclose(first, second)
    np.testing.assert_array_equal(frozen.forward(x), frozen.forward(x))
