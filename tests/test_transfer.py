"""Transfer learning: loading weights (strict and partial), freezing, head replacement,
feature extraction for scikit-learn, checkpoints."""

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline

from cnncli.blocks import Residual
from cnncli.features import FeatureExtractor
from cnncli.layers import BatchNorm2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU
from cnncli.model import IncompatibleWeightsError, Sequential
from cnncli.loading import load_model
from cnncli.optimizers import Adam
from cnncli.training import EarlyStopping, ModelCheckpoint


def cnn(classes=10, seed=0, head_name=None):
    return Sequential([Conv2D(8, 3, padding=1), BatchNorm2D(), ReLU(), MaxPool2D(2),
                       Conv2D(16, 3, padding=1), ReLU(), MaxPool2D(2),
                       Flatten(), Dense(32), ReLU(), Dense(classes, name=head_name)],
                      input_shape=(1, 8, 8), seed=seed)


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    return x, data.target


def values(model):
    return {name: array.copy() for name, array in model.state_dict().items()}


# ---------------------------------------------------------------------------
# Loading weights
# ---------------------------------------------------------------------------


def test_strict_loading_copies_everything():
    source, target = cnn(seed=1), cnn(seed=2)
    report = target.load_state_dict(source.state_dict())
    assert report.complete and len(report.loaded) == len(source.state_dict())
    for name, array in source.state_dict().items():
        assert np.array_equal(target.state_dict()[name], array)


def test_strict_loading_names_every_problem_and_loads_nothing():
    source = cnn(classes=5, seed=1).state_dict()
    source["extra.weight"] = np.zeros(3, np.float32)
    del source["conv2d_1.bias"]
    target = cnn(seed=2)
    before = values(target)
    with pytest.raises(IncompatibleWeightsError) as caught:
        target.load_state_dict(source)
    message = str(caught.value)
    assert "missing conv2d_1.bias" in message
    assert "unexpected extra.weight" in message
    assert "mis-shaped dense_2.weight (given (5, 32), model has (10, 32))" in message
    for name, array in target.state_dict().items():
        assert np.array_equal(array, before[name]), name


def test_partial_loading_skips_the_head_and_reports_it():
    source = cnn(classes=5, seed=1)
    target = cnn(classes=3, seed=2)
    head_before = target.head.weight.value.copy()
    report = target.load_state_dict(source.state_dict(), strict=False)
    assert sorted(report.skipped) == ["dense_2.bias", "dense_2.weight"]
    assert report.skipped["dense_2.weight"] == ((5, 32), (3, 32))
    assert report.missing == [] and report.unexpected == []
    assert len(report.loaded) == len(source.state_dict()) - 2
    assert np.array_equal(target.head.weight.value, head_before)
    assert np.array_equal(target["conv2d_2"].weight.value, source["conv2d_2"].weight.value)
    assert np.array_equal(target["batch_norm2d_1"].running_var,
                          source["batch_norm2d_1"].running_var)
    assert "mis-shaped dense_2.weight" in str(report)


def test_partial_loading_with_a_renamed_head():
    source = cnn(classes=5, seed=1)
    target = cnn(classes=3, seed=2, head_name="classifier")
    report = target.load_state_dict(source.state_dict(), strict=False)
    assert report.missing == ["classifier.weight", "classifier.bias"]
    assert report.unexpected == ["dense_2.weight", "dense_2.bias"]


def test_partial_loading_refuses_backbone_mismatches_unless_asked():
    source = cnn(seed=1)
    target = Sequential([Conv2D(8, 5, padding=2), BatchNorm2D(), ReLU(), MaxPool2D(2),
                         Conv2D(16, 3, padding=1), ReLU(), MaxPool2D(2),
                         Flatten(), Dense(32), ReLU(), Dense(10)], input_shape=(1, 8, 8))
    before = values(target)
    with pytest.raises(IncompatibleWeightsError, match="outside its head: conv2d_1.weight"):
        target.load_state_dict(source.state_dict(), strict=False)
    assert all(np.array_equal(a, before[n]) for n, a in target.state_dict().items())
    report = target.load_state_dict(source.state_dict(), strict=False,
                                    allow_backbone_mismatch=True)
    assert list(report.skipped) == ["conv2d_1.weight"]
    assert "conv2d_2.weight" in report.loaded and "batch_norm2d_1.gamma" in report.loaded


def test_load_weights_from_a_model_file(tmp_path):
    source = cnn(classes=5, seed=1)
    source.save(tmp_path / "pretrained.cnn")
    target = cnn(classes=3, seed=2)
    with pytest.raises(IncompatibleWeightsError):
        target.load_weights(tmp_path / "pretrained.cnn")
    report = target.load_weights(tmp_path / "pretrained.cnn", strict=False)
    assert sorted(report.skipped) == ["dense_2.bias", "dense_2.weight"]
    assert np.array_equal(target["dense_1"].weight.value, source["dense_1"].weight.value)


def test_loading_converts_float64_weights():
    source = cnn(seed=1).state_dict()
    target = cnn(seed=2)
    target.load_state_dict({name: array.astype(np.float64) for name, array in source.items()})
    assert target["conv2d_1"].weight.value.dtype == np.float32
    assert np.array_equal(target["conv2d_1"].weight.value, source["conv2d_1.weight"])


# ---------------------------------------------------------------------------
# Freezing and head replacement
# ---------------------------------------------------------------------------


def trainable_layers(model):
    return [layer.name for layer in model if layer.parameters() and layer.trainable]


def test_freeze_by_layer_name_index_and_upto():
    model = cnn()
    model.freeze("conv2d_1")
    assert trainable_layers(model) == ["batch_norm2d_1", "conv2d_2", "dense_1", "dense_2"]
    model.freeze(model["conv2d_2"], 1)
    assert trainable_layers(model) == ["dense_1", "dense_2"]
    model.unfreeze("conv2d_2")
    assert trainable_layers(model) == ["conv2d_2", "dense_1", "dense_2"]
    model.unfreeze()
    model.freeze(upto="flatten_1")
    assert trainable_layers(model) == ["dense_1", "dense_2"]
    trainable, frozen = model.count_parameters()
    assert frozen == 8 * 9 + 8 + 16 + 16 * 8 * 9 + 16
    with pytest.raises(ValueError, match="not both"):
        model.freeze("dense_1", upto="dense_1")
    with pytest.raises(KeyError, match="no layer named 'nope'"):
        model.freeze("nope")


def test_freezing_after_the_optimizer_was_made_takes_effect(digits):
    x, y = digits
    model = cnn()
    optimizer = Adam(model.parameters(), lr=0.01)
    model.freeze(upto="dense_1")
    frozen = {name: p.value.copy() for name, p in model.named_parameters() if not p.trainable}
    model.fit(x[:200], y[:200], epochs=1, optimizer=optimizer)
    for name, value in frozen.items():
        assert np.array_equal(dict(model.named_parameters())[name].value, value), name
    assert np.array_equal(model["batch_norm2d_1"].running_mean,
                          cnn()["batch_norm2d_1"].running_mean)


def test_head_replacement_is_seeded():
    heads = []
    for _ in range(2):
        model = cnn(seed=4)
        model[-1] = Dense(3)
        heads.append(model.head.weight.value.copy())
    assert np.array_equal(heads[0], heads[1])
    assert heads[0].shape == (3, 32)


def test_the_classic_transfer_protocol_on_digits(digits, tmp_path):
    """Pretrain on digits 0-4, save; load, replace the head, freeze, fine-tune on 5-9."""
    x, y = digits
    low, high = y < 5, y >= 5
    x_low_train, x_low_test, y_low_train, y_low_test = train_test_split(
        x[low], y[low], test_size=0.3, random_state=0, stratify=y[low])
    pretrained = cnn(classes=5)
    pretrained.fit(x_low_train, y_low_train, epochs=6,
                   optimizer=Adam(pretrained.parameters(), lr=0.005))
    assert pretrained.evaluate(x_low_test, y_low_test)["accuracy"] >= 0.95
    pretrained.classes = [str(d) for d in range(5)]
    pretrained.save(tmp_path / "digits04.cnn")

    model = load_model(tmp_path / "digits04.cnn")
    model[-1] = Dense(5)
    model.classes = [str(d) for d in range(5, 10)]
    model.freeze(upto="flatten_1")
    backbone = {name: p.value.copy() for name, p in model.named_parameters()
                if not p.trainable}
    x_train, x_test, y_train, y_test = train_test_split(
        x[high], y[high] - 5, test_size=0.3, random_state=0, stratify=y[high])
    # The pretrained dense_1 trains at a lower rate than the new head.
    optimizer = Adam([{"params": model[:-1].parameters(), "lr": 0.002},
                      {"params": model[-1:].parameters()}], lr=0.01)
    model.fit(x_train, y_train, epochs=8, optimizer=optimizer)
    assert model.evaluate(x_test, y_test)["accuracy"] >= 0.9
    for name, value in backbone.items():
        assert np.array_equal(dict(model.named_parameters())[name].value, value)
    model.save(tmp_path / "digits59.cnn")
    assert load_model(tmp_path / "digits59.cnn").classes[0] == "5"


# ---------------------------------------------------------------------------
# Feature extraction
# ---------------------------------------------------------------------------


def test_extract_features_cuts_below_the_head():
    model = cnn()
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    assert model.extract_features(x).shape == (5, 32)
    assert model.extract_features(x, upto="flatten_1").shape == (5, 64)
    assert model.extract_features(x, upto=3).shape == (5, 8 * 4 * 4)
    np.testing.assert_allclose(model.extract_features(x, batch_size=2),
                               model[:-1].forward(x), rtol=1e-6, atol=1e-6)


def test_features_feed_a_scikit_learn_estimator(digits):
    x, y = digits
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0,
                                                        stratify=y)
    model = cnn()
    model.fit(x_train, y_train, epochs=5, optimizer=Adam(model.parameters(), lr=0.005))
    pipeline = make_pipeline(FeatureExtractor(model), LogisticRegression(max_iter=2000))
    pipeline.fit(x_train, y_train)
    assert pipeline.score(x_test, y_test) >= 0.93


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------


def test_checkpoint_keeps_the_best_model_on_disk(digits, tmp_path):
    x, y = digits
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.3, random_state=0)
    model = cnn()
    checkpoint = ModelCheckpoint(tmp_path / "best.cnn", monitor="val_accuracy")
    history = model.fit(x_train[:300], y_train[:300], epochs=4, validation_data=(x_val, y_val),
                        callbacks=[checkpoint], optimizer=Adam(model.parameters(), lr=0.01))
    best_epoch = int(np.argmax(history["val_accuracy"]))
    saved = load_model(tmp_path / "best.cnn")
    assert saved.provenance["epoch"] == best_epoch + 1
    assert saved.provenance["metrics"]["val_accuracy"] == max(history["val_accuracy"])
    assert saved.evaluate(x_val, y_val)["accuracy"] == pytest.approx(max(history["val_accuracy"]))
    assert checkpoint.saved and all(path == str(tmp_path / "best.cnn") for path in checkpoint.saved)


def test_checkpoint_every_epoch_with_early_stopping(digits, tmp_path):
    x, y = digits
    model = cnn()
    checkpoint = ModelCheckpoint(str(tmp_path / "epoch-{epoch:02d}.cnn"), monitor="loss",
                                 save_best_only=False)
    # Patience 0 stops after the first epoch that does not improve; the
    # checkpoint still sees that epoch.
    stopper = EarlyStopping(monitor="loss", patience=1, min_delta=10.0)
    history = model.fit(x[:100], y[:100], epochs=5, callbacks=[stopper, checkpoint])
    assert history.stopped_early and len(history) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-01.cnn", "epoch-02.cnn"]


def test_residual_models_transfer_too(tmp_path):
    def build(classes):
        return Sequential([Conv2D(4, 3, padding=1), ReLU(),
                           Residual([Conv2D(4, 3, padding=1), BatchNorm2D(), ReLU()]),
                           Flatten(), Dense(classes)], input_shape=(1, 6, 6), seed=classes)
    source = build(4)
    source.save(tmp_path / "res.cnn")
    target = build(2)
    report = target.load_weights(tmp_path / "res.cnn", strict=False)
    assert "residual_1.body.batch_norm2d_1.running_mean" in report.loaded
    assert sorted(report.skipped) == ["dense_1.bias", "dense_1.weight"]
