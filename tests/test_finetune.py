"""Fine-tuning with its defaults: the linear probe (against scikit-learn as the oracle), the
phases, keeping the best epoch, checkpoints, Ctrl-C and --resume, the NaN exit."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import cnncli
from cnncli import jobs
from cnncli.jobs import common, finetuner
from cnncli.linear_probe import C_GRID, MIN_VALIDATION, fit_linear_head
from cnncli.loading import load_model
from cnncli.modelfile import read_training_state
from cnncli.training import predict_outputs


def blobs(samples, classes, features, seed, spread=1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, features)) * 2
    labels = np.arange(samples) % classes
    return (centres[labels] + rng.normal(size=(samples, features)) * spread).astype(
        np.float32), labels


def logits(head, features):
    return features.reshape(len(features), -1) @ head.weight.T + head.bias


def objective(coef, intercept, x, y, C):
    """scikit-learn's multinomial objective: summed cross-entropy + ||W||^2 / (2C)."""
    scores = x @ coef.T + intercept
    scores -= scores.max(1, keepdims=True)
    log_probabilities = scores - np.log(np.exp(scores).sum(1, keepdims=True))
    return -log_probabilities[np.arange(len(y)), y].sum() + (coef ** 2).sum() / (2 * C)


def test_the_probe_solves_scikit_learns_logistic_regression_at_the_chosen_strength():
    x, y = blobs(300, 4, 6, seed=0, spread=2.0)
    head = fit_linear_head(x, y, 4)
    assert head.method == "cross-validation" and head.C in C_GRID
    # The oracle: scikit-learn on the standardised features at the same C, solved far
    # tighter. The probe's head, mapped back to those features, is as good to 1e-4.
    x = x.astype(np.float64)
    mean, scale = x.mean(0), x.std(0)
    standard = (x - mean) / scale
    oracle = LogisticRegression(C=head.C, max_iter=10000, tol=1e-12).fit(standard, y)
    coef = head.weight * scale
    intercept = head.bias + head.weight @ mean
    best = objective(oracle.coef_, oracle.intercept_, standard, y, head.C)
    ours = objective(coef, intercept, standard, y, head.C)
    assert best <= ours <= best * (1 + 1e-4)
    np.testing.assert_array_equal(logits(head, x).argmax(1), oracle.predict(standard))


@pytest.mark.parametrize("C", [1e-3, 1.0, 100.0])
def test_the_solver_reaches_scipys_optimum_over_the_strengths(C):
    """The probe's own L-BFGS against SciPy's L-BFGS-B (the solver it replaced) at the
    same tolerance: at its value or below, stopped by the gradient tolerance.
    C = 100 on separable classes is the ill-conditioned end of the grid."""
    from scipy.optimize import minimize
    from cnncli.linear_probe import TOLERANCE, _lbfgs, _loss_and_gradient
    x, y = blobs(400, 5, 30, seed=4, spread=1.5)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float64)
    targets = (y[:, None] == np.arange(5)).astype(np.float64)

    def objective(parameters):
        return _loss_and_gradient(parameters, x, targets, 1.0 / (C * len(x)))
    start = np.zeros(5 * 31)
    reference = minimize(objective, start, method="L-BFGS-B", jac=True,
                         options={"maxiter": 500, "gtol": TOLERANCE, "ftol": 64 * 2.0 ** -52})
    value, gradient = objective(_lbfgs(objective, start, TOLERANCE))
    assert value <= reference.fun * (1 + 1e-6)
    assert np.abs(gradient).max() <= TOLERANCE


def test_the_folds_of_the_cross_validation_are_stratified_and_cover_every_sample():
    from cnncli.linear_probe import _folds
    labels = np.repeat([0, 1, 2], [30, 12, 7])
    folds = _folds(labels, seed=0)
    assert len(folds) == 3
    held = np.concatenate([test for _, test in folds])
    assert sorted(held) == list(range(len(labels)))
    for train, test in folds:
        assert not set(train) & set(test) and len(train) + len(test) == len(labels)
        # Each class is dealt out evenly: 10, 4 and 2 or 3 of each per fold.
        assert set(np.bincount(labels[test], minlength=3) - [10, 4, 2]) <= {0, 1}
    assert [list(test) for _, test in _folds(labels, seed=0)] == [list(test) for _, test in folds]
    assert [list(test) for _, test in _folds(labels, seed=1)] != [list(test) for _, test in folds]
    # Two samples of a class: two folds.
    assert len(_folds(np.array([0, 0, 1, 1, 1]), seed=0)) == 2


def test_a_large_validation_part_chooses_the_strength():
    x, y = blobs(2000, 3, 10, seed=1, spread=3.0)
    xv, yv = blobs(MIN_VALIDATION, 3, 10, seed=1, spread=3.0)
    head = fit_linear_head(x, y, 3, validation=(xv, yv))
    assert head.method == "validation"
    assert head.accuracy == np.mean(logits(head, xv).argmax(1) == yv)
    small = fit_linear_head(x, y, 3, validation=(xv[:50], yv[:50]))
    assert small.method == "cross-validation"


def test_noise_features_get_the_strongest_regularisation_that_is_as_good():
    # Labels that the features cannot predict: any C fits as badly, so the
    # one-standard-error rule keeps the strongest, whose head stays near zero.
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(200, 20)).astype(np.float32), rng.integers(0, 2, 200)
    head = fit_linear_head(x, y, 2)
    assert head.C == C_GRID[0]
    assert np.abs(head.weight).max() < 0.05


def test_two_classes_and_absent_classes():
    x, y = blobs(200, 2, 5, seed=3)
    head = fit_linear_head(x, y * 2, 3)      # classes 0 and 2; class 1 has no sample
    scores = logits(head, x)
    assert set(scores.argmax(1)) <= {0, 2} and np.mean(scores.argmax(1) == y * 2) > 0.9
    assert head.weight.shape == (3, 5) and np.all(head.weight[1] == 0)


@pytest.mark.parametrize("features, labels, message", [
    (np.full((10, 3), np.nan), np.arange(10) % 2, "NaN or infinite"),
    (np.ones((10, 3)), np.zeros(10, int), "at least 2 classes"),
    (np.ones((10, 3)), np.arange(9) % 2, "expected 10"),
    (np.ones((10, 3)), np.arange(10) % 4, "class indices 0..2"),
])
def test_probe_errors(features, labels, message):
    with pytest.raises(ValueError, match=message):
        fit_linear_head(features, labels, 3)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pretrained")
    jobs.train("digits", output=folder / "base.cnn", epochs=2, lr=3e-3, classes="0,1,2,3,4,5")
    return folder / "base.cnn"


def test_the_default_fits_the_head_then_trains_the_classifier(pretrained, tmp_path):
    result = jobs.finetune(pretrained, "digits", output=tmp_path / "t.cnn",
                           classes="6,7,8,9", epochs=0, seed=1, val_split=0.1)
    model = result.model
    # The backbone below the classifier's Dense layers is frozen; the classifier is not.
    assert [layer.name for layer in model if layer.parameters() and layer.trainable] == \
        ["dense_1", "dense_2"]
    assert [epoch["phase"] for epoch in jobs.read_history(tmp_path / "t.cnn")] == ["probe"]
    # The head is the probe's: refit it on the same features and compare.
    from cnncli.data import batch_transform
    splits = common.load_splits("digits", False, classes=["6", "7", "8", "9"],
                                **common.model_image_format(model))
    train, val = common.train_val(splits, 0.1, 1)
    transform = batch_transform(model.preprocessing, train.pixel_max)
    below = model[:model.index("dense_2")]
    head = fit_linear_head(predict_outputs(below, train.x, transform=transform), train.y, 4,
                           (predict_outputs(below, val.x, transform=transform), val.y), seed=1)
    np.testing.assert_allclose(model["dense_2"].weight.value, head.weight, rtol=1e-5,
                               atol=1e-6)
    trained = jobs.finetune(pretrained, "digits", output=tmp_path / "u.cnn",
                            classes="6,7,8,9", epochs=3, seed=1, val_split=0.1)
    phases = [epoch["phase"] for epoch in jobs.read_history(tmp_path / "u.cnn")]
    assert phases == ["probe", "top", "top", "top"]
    assert trained.history[0]["val_loss"] == result.history[0]["val_loss"]


def test_head_sgd_is_the_epoch_by_epoch_head_training(pretrained, tmp_path):
    result = jobs.finetune(pretrained, "digits", output=tmp_path / "s.cnn", classes="6,7,8,9",
                           head="sgd")
    model = result.model
    assert [layer.name for layer in model if layer.parameters() and layer.trainable] == \
        ["dense_2"]
    assert [epoch["phase"] for epoch in result.history and
            jobs.read_history(tmp_path / "s.cnn")] == ["head"] * 5


def test_the_best_validation_epoch_is_kept(pretrained, tmp_path, monkeypatch):
    # A rate that wrecks the classifier after the probe: the probe's epoch is the best.
    result = jobs.finetune(pretrained, "digits", output=tmp_path / "b.cnn", classes="6,7,8,9",
                           epochs=2, lr=5.0, optimizer="sgd", val_split=0.1)
    losses = [epoch["val_loss"] for epoch in result.history]
    assert np.argmin(losses) == 0 and result.best["epoch"] == 1
    kept = load_model(tmp_path / "b.cnn").state_dict()
    best = load_model(tmp_path / "b-checkpoints" / "best.cnn").state_dict()
    last = load_model(tmp_path / "b-checkpoints" / "last.cnn").state_dict()
    assert all(np.array_equal(kept[name], best[name]) for name in kept)
    assert not all(np.array_equal(kept[name], last[name]) for name in kept)


def test_unfreezing_uses_discriminative_rates_with_warm_up(pretrained, tmp_path, monkeypatch):
    made = []
    original = finetuner._FineTuning._optimizer

    def recording(self, name):
        optimizer = original(self, name)
        made.append((name, optimizer))
        return optimizer

    monkeypatch.setattr(finetuner._FineTuning, "_optimizer", recording)
    jobs.finetune(pretrained, "digits", output=tmp_path / "a.cnn", classes="6,7,8,9",
                  epochs=1, unfreeze_epochs=2, lr=2e-3, backbone_lr_factor=0.1)
    name, optimizer = made[-1]
    assert name == "all layers" and len(optimizer.groups) == 2
    backbone, top = ({name for name, _ in group["params"]} for group in optimizer.groups)
    # The pretrained layers that stayed frozen until now train at the lower rate; the
    # classifier trained on their features at the full rate.
    assert top == {"dense_1.weight", "dense_1.bias", "dense_2.weight", "dense_2.bias"}
    assert backbone == {"conv2d_1.weight", "conv2d_1.bias", "conv2d_2.weight", "conv2d_2.bias"}
    backbone, top = optimizer.groups
    assert backbone["base_lr"] == pytest.approx(2e-4) and top["base_lr"] == pytest.approx(2e-3)
    # One cycle: the rates warmed up and then decayed to far below their peak.
    assert top["lr"] < 2e-3 / 1000 and backbone["lr"] == pytest.approx(top["lr"] / 10)


def interrupting(monkeypatch, after_calls):
    """Make Ctrl-C look pressed at the ``after_calls``-th check between batches."""
    calls = []

    def pressed(self):
        calls.append(1)
        return len(calls) == after_calls

    monkeypatch.setattr(common.CtrlC, "__call__", pressed)


@pytest.mark.parametrize("after_calls", [3, 40])
def test_ctrl_c_then_resume_gives_the_same_weights(pretrained, tmp_path, monkeypatch,
                                                   after_calls):
    options = dict(classes="6,7,8,9", epochs=2, unfreeze_epochs=2, seed=3, batch_size=16,
                   shift=0)
    whole = jobs.finetune(pretrained, "digits", output=tmp_path / "whole.cnn", **options)
    with monkeypatch.context() as patch:
        interrupting(patch, after_calls)
        with pytest.raises(jobs.TrainingInterrupted, match="continue with --resume"):
            jobs.finetune(pretrained, "digits", output=tmp_path / "cut.cnn", **options)
    assert not (tmp_path / "cut.cnn").exists()
    state, _ = read_training_state(tmp_path / "cut-checkpoints" / "last.cnn")
    assert state["position"]["batch"] >= 1
    resumed = jobs.finetune(pretrained, "digits", output=tmp_path / "cut.cnn", resume=True,
                            **options)
    assert resumed.resumed_from
    for name, value in whole.model.state_dict().items():
        assert np.array_equal(value, resumed.model.state_dict()[name]), name
    assert resumed.history == whole.history


def test_a_run_stopped_between_phases_resumes(pretrained, tmp_path, monkeypatch):
    options = dict(classes="6,7,8,9", epochs=1, unfreeze_epochs=1, seed=4)
    whole = jobs.finetune(pretrained, "digits", output=tmp_path / "whole.cnn", **options)
    original = finetuner.Checkpointer.save_last

    def dies_at_the_second_phase(self, model, epochs_done, position=None):
        if epochs_done == 2 and self.optimizer is not None and len(self.optimizer.groups) == 2:
            raise KeyboardInterrupt      # as if killed before the phase saved its start
        return original(self, model, epochs_done, position)

    with monkeypatch.context() as patch:
        patch.setattr(finetuner.Checkpointer, "save_last", dies_at_the_second_phase)
        with pytest.raises(KeyboardInterrupt):
            jobs.finetune(pretrained, "digits", output=tmp_path / "cut.cnn", **options)
    resumed = jobs.finetune(pretrained, "digits", output=tmp_path / "cut.cnn", resume=True,
                            **options)
    for name, value in whole.model.state_dict().items():
        assert np.array_equal(value, resumed.model.state_dict()[name]), name


def test_resume_refuses_other_settings_and_finishes_a_done_run(pretrained, tmp_path):
    jobs.finetune(pretrained, "digits", output=tmp_path / "f.cnn", classes="6,7,8,9",
                  epochs=1)
    with pytest.raises(jobs.JobError, match="made with lr=0.001"):
        jobs.finetune(pretrained, "digits", output=tmp_path / "f.cnn", classes="6,7,8,9",
                      epochs=1, lr=0.01, resume=True)
    (tmp_path / "f.cnn").unlink()
    done = jobs.finetune(pretrained, "digits", output=tmp_path / "f.cnn", classes="6,7,8,9",
                         epochs=1, resume=True)
    assert (tmp_path / "f.cnn").exists() and len(done.history) == 2
    with pytest.raises(jobs.JobError, match="checkpoints of an earlier run"):
        jobs.finetune(pretrained, "digits", output=tmp_path / "g.cnn", classes="6,7,8,9",
                      checkpoints=tmp_path / "f-checkpoints")


def test_a_diverging_finetune_stops_with_the_nan_error(pretrained, tmp_path):
    with pytest.raises(jobs.TrainingDiverged, match="last good checkpoint"):
        jobs.finetune(pretrained, "digits", output=tmp_path / "n.cnn", classes="6,7,8,9",
                      epochs=2, unfreeze_epochs=1, optimizer="sgd", lr=1e12)
    assert not (tmp_path / "n.cnn").exists()
    load_model(tmp_path / "n-checkpoints" / "last.cnn")


def test_automatic_epochs_and_validation_split(pretrained, tmp_path):
    small = jobs.finetune(pretrained, "digits", output=tmp_path / "s.cnn", classes="6,7,8,9",
                          per_class=10)
    # 40 images: no validation part (4 would judge nothing), 2 steps an epoch.
    assert "val_loss" not in small.history[0]
    assert len(small.history) == 1 + finetuner.AUTO_STEPS // 2
    large = jobs.finetune(pretrained, "digits", output=tmp_path / "l.cnn")
    assert "val_loss" in large.history[0]
    # 1617 images at batch 32: 51 steps an epoch, 4 epochs for 200 steps.
    assert len(large.history) == 1 + 4


def test_few_labels_train_on_shifted_copies_by_default(pretrained, tmp_path):
    few = jobs.finetune(pretrained, "digits", output=tmp_path / "f.cnn", classes="6,7,8,9",
                        per_class=10, epochs=2)
    state, _ = read_training_state(tmp_path / "f-checkpoints" / "last.cnn")
    # 40 images of 8x8: shifts of up to a tenth of the side, at least a pixel; the frozen
    # layers then run at every step instead of once.
    assert state["settings"]["shift"] == 1 and not few.cached_features
    unshifted = jobs.finetune(pretrained, "digits", output=tmp_path / "u.cnn",
                              classes="6,7,8,9", per_class=10, epochs=2, shift=0)
    assert unshifted.cached_features
    assert few.history[0] == unshifted.history[0]          # the same probe
    assert few.history[-1]["loss"] != unshifted.history[-1]["loss"]
    # Enough images, only a head to fit, no epochs, or --head sgd: no shifts.
    for options in ({"classes": None, "per_class": None},
                    {"freeze": "dense_1"}, {"epochs": 0}, {"head": "sgd"}):
        run = {"classes": "6,7,8,9", "per_class": 10, "epochs": 1, **options}
        jobs.finetune(pretrained, "digits", output=tmp_path / "n.cnn", force=True, **run)
        state, _ = read_training_state(tmp_path / "n-checkpoints" / "last.cnn")
        assert state["settings"]["shift"] == 0, options
    with pytest.raises(jobs.JobError, match="--shift: expected pixels >= 0, got -1"):
        jobs.finetune(pretrained, "digits", output=tmp_path / "e.cnn", shift=-1)


def test_a_pretrained_model_by_name_in_the_library():
    model = cnncli.load_model("lenet-mnist")
    assert model.classes == [str(digit) for digit in range(10)]
    with pytest.raises(FileNotFoundError, match="pretrained: lenet-mnist"):
        cnncli.load_model("lenet-nothing")


def test_the_command_line_exit_codes_of_finetune(pretrained, tmp_path):
    import sys
    from processes import interrupted
    from typer.testing import CliRunner
    from cnncli.cli import app
    common_args = [str(pretrained), "digits", "--classes", "6,7,8,9"]
    diverged = CliRunner().invoke(app, ["finetune", *common_args, "-o", str(tmp_path / "n.cnn"),
                                        "--unfreeze-epochs", "1", "--optimizer", "sgd",
                                        "--lr", "1e12"])
    assert diverged.exit_code == 3 and "last good checkpoint" in diverged.stderr
    # Ctrl-C: a checkpoint, exit 130, and --resume finishes the run.
    code, stderr = interrupted([sys.executable, "-m", "cnncli", "finetune", *common_args,
                                "-o", "c.cnn", "--epochs", "1", "--unfreeze-epochs", "30",
                                "--batch-size", "4"], tmp_path, "epoch 1/30")
    assert code == 130, stderr
    assert "continue with --resume" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "c.cnn").exists()
    load_model(tmp_path / "c-checkpoints" / "last.cnn")


def test_a_run_killed_between_checkpoint_writes_replays_the_same_epochs(pretrained, tmp_path,
                                                                       monkeypatch):
    options = dict(classes="6,7,8,9", epochs=4, seed=6, batch_size=16)
    whole = jobs.finetune(pretrained, "digits", output=tmp_path / "whole.cnn", **options)
    monkeypatch.setattr(finetuner, "CHECKPOINT_INTERVAL", 1e9)   # only at phase ends
    original = finetuner.Checkpointer.on_epoch_end

    def killed_at_epoch_four(self, epoch, logs, model):
        original(self, epoch, logs, model)
        if self.offset + epoch + 1 == 4:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(finetuner.Checkpointer, "on_epoch_end", killed_at_epoch_four)
        with pytest.raises(KeyboardInterrupt):
            jobs.finetune(pretrained, "digits", output=tmp_path / "cut.cnn", **options)
    # Only the probe's checkpoint was written; the resumed run does epochs 2-5 again.
    state, _ = read_training_state(tmp_path / "cut-checkpoints" / "last.cnn")
    assert state["epochs_done"] == 1
    resumed = jobs.finetune(pretrained, "digits", output=tmp_path / "cut.cnn", resume=True,
                            **options)
    for name, value in whole.model.state_dict().items():
        assert np.array_equal(value, resumed.model.state_dict()[name]), name
