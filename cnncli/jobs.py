"""The jobs behind the command-line tool: train, finetune, evaluate, predict, import.

Each job takes plain arguments, reports progress through a ``Reporter`` and
returns a result object; none prints. The CLI turns arguments into a call
and results into text.

Checkpoints. ``train`` writes two files in its checkpoint folder after every
epoch, atomically: ``last.cnn`` (the model with its training state:
optimizer moments, schedule, epoch, history, the random generators of
dropout and augmentation, and the run's settings) and ``best.cnn`` (the best
model by validation accuracy, or training loss without validation). Both are
ordinary model files. ``resume=True`` continues from ``last.cnn``: the
shuffling order of epoch e comes from (seed, e), so a resumed run ends with
the same weights as an uninterrupted one. Ctrl-C saves ``last.cnn`` after
the current batch with the position inside the epoch (batches done, running
totals), and a resumed run carries on from that batch. Every run holds a
lock on its output and checkpoint folder (``cnncli.files.RunLock``); a
checkpoint whose epochs are all done, but whose final model was never
written, gives the final model on ``--resume``.
"""

import contextlib
import functools
import inspect
import json
import math
import os
import signal
import threading
import time

import numpy as np

from cnncli import architectures, data as datasets
from cnncli.data import DataError
from cnncli.files import OutputLocked, RunLock, atomic_write, read_json_file
from cnncli.functional import threads
from cnncli.layers import Dense, Dropout
from cnncli.modelfile import ModelFileError, load_model, read_training_state, save_model
from cnncli.trainstate import TrainingStateError, check_training_state
from cnncli.validation import positive_int
from cnncli.optimizers import SGD, Adam, AdamW, CosineLR, OneCycleLR, StepLR
from cnncli.preprocessing import Preprocessing
from cnncli.training import Callback, Interrupted, Monitor, fit, predict_outputs

__all__ = ["train", "finetune", "evaluate", "predict", "import_model", "Reporter", "JobError",
           "TrainingDiverged", "TrainingInterrupted", "zoo_models", "open_model"]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "step", "cosine", "onecycle")

# Skipped items named one by one in the progress messages.
MAX_LISTED = 20

# Settings that must match for --resume to continue a run exactly.
RESUME_SETTINGS = ("data", "arch", "batch_size", "lr", "optimizer", "schedule", "seed",
                   "val_split", "shift", "flip", "size", "channels", "weight_decay",
                   "momentum", "classes", "per_class")


class JobError(ValueError):
    """An expected failure of a job (bad argument, existing file, class mismatch...):
    the message is one line for the user."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(Exception):
    """Ctrl-C stopped training between two batches; a checkpoint of that point was saved."""


class _CtrlC:
    """While active, Ctrl-C asks training to stop after the current batch; a second Ctrl-C
    interrupts at once."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, number, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False

    def __call__(self):
        return self.requested


class Reporter:
    """Receives progress; the CLI draws it. Every method may be left as is."""

    def message(self, text):
        """A line of information (data skipped, features cached...)."""

    def epoch_begin(self, epoch, epochs, batches, phase=""):
        """Epoch ``epoch`` (from 0) of ``epochs`` starts, with ``batches`` batches."""

    def batch_end(self, epoch, batch, batches, logs):
        """A batch finished; ``logs`` has the epoch's running loss and accuracy."""

    def epoch_end(self, epoch, epochs, logs, seconds):
        """An epoch finished with its metrics."""


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _check_output(path, force):
    path = os.fspath(path)
    if os.path.isdir(path):
        raise JobError(f"{path}: is a folder; give a file name for the model")
    if os.path.exists(path) and not force:
        raise JobError(f"{path}: already exists; pass --force to overwrite it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise JobError(f"{folder}: no such folder for the output")
    return path


def _positive(name, value):
    try:
        positive_int(name, value)
    except ValueError as error:
        raise JobError(str(error)) from None


def _on_threads(job):
    """Run ``job`` with the kernels on its ``threads`` argument's count (None: as they are),
    restoring the previous setting when it ends."""
    signature = inspect.signature(job)

    @functools.wraps(job)
    def run(*args, **kwargs):
        count = signature.bind(*args, **kwargs).arguments.get("threads")
        if count is None:
            return job(*args, **kwargs)
        _positive("--threads", count)
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(threads(count))
            except ValueError as error:
                raise JobError(f"--threads: {error}") from None
            return job(*args, **kwargs)

    return run


def _class_list(classes):
    """Class names from a list or a comma-separated string; None stays None."""
    if classes is None:
        return None
    names = classes.split(",") if isinstance(classes, str) else list(classes)
    names = [str(name).strip() for name in names]
    if not names or not all(names):
        raise JobError(f"--classes: expected comma-separated class names, got {classes!r}")
    return names


def _model_image_format(model):
    """The channels and size a model's images load at, so a folder of photos of any size
    becomes what the model takes (None, None when the model does not say)."""
    if model.preprocessing is None:
        return {}
    return {"channels": model.preprocessing.channels, "size": model.preprocessing.size}


def _load_splits(data_source, skip_bad, channels=None, size=None, reporter=None,
                 classes=None, per_class=None, seed=0):
    """The dataset's parts, restricted to ``classes`` and to ``per_class`` training images
    of each class (chosen by ``seed``) when given."""
    try:
        splits = datasets.load_dataset(data_source, channels=channels, size=size,
                                       skip_bad=skip_bad)
        if classes is not None:
            for part in ("train", "val", "test"):
                if getattr(splits, part) is not None:
                    setattr(splits, part, datasets.select_classes(getattr(splits, part),
                                                                  classes))
        if per_class is not None:
            splits.train = datasets.sample_per_class(splits.train, per_class, seed)
    except DataError as error:
        raise JobError(str(error)) from None
    skipped = splits.train.skipped
    if skipped and reporter is not None:
        listed = "\n  ".join(skipped[:MAX_LISTED])
        more = f"\n  ... and {len(skipped) - MAX_LISTED} more" if len(skipped) > MAX_LISTED else ""
        reporter.message(f"skipped {len(skipped)} bad item(s):\n  {listed}{more}")
    return splits


def _at_least_two_classes(dataset):
    """Training needs two classes to tell apart (and a sample to learn from)."""
    if len(dataset) == 0:
        raise JobError(f"{dataset.source}: no samples to train on")
    present = np.count_nonzero(dataset.class_counts())
    if present < 2:
        raise JobError(f"{dataset.source}: {present} class with images "
                       f"({', '.join(dataset.classes[:3])}); training needs at least 2")


def _train_val(splits, val_split, seed):
    """The training and validation parts: the source's own, or a stratified split."""
    if splits.val is not None:
        return splits.train, splits.val
    if not val_split:
        return splits.train, None
    try:
        return datasets.stratified_split(splits.train, val_split, seed=seed)
    except (DataError, ValueError) as error:
        raise JobError(str(error)) from None


def _make_optimizer(name, groups, lr, momentum, weight_decay):
    if name == "sgd":
        return SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return AdamW(groups, lr=lr, weight_decay=weight_decay)
    return Adam(groups, lr=lr, weight_decay=weight_decay)


def _make_schedule(name, optimizer, epochs, batches):
    if name == "step":
        return StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1)
    if name == "cosine":
        return CosineLR(optimizer, total=epochs)
    if name == "onecycle":
        return OneCycleLR(optimizer, total=max(2, epochs * batches))
    return None


def _random_layers(model):
    """Every Dropout layer, nested blocks included, in a fixed order."""
    return [layer for _, layer in model.named_layers() if isinstance(layer, Dropout)]


class _EpochReporter(Callback):
    """Times epochs and forwards epochs and batches to the reporter."""

    def __init__(self, reporter, epochs, phase=""):
        self.reporter, self.epochs, self.phase = reporter, epochs, phase

    def on_epoch_begin(self, epoch, batches, model):
        self.started = time.perf_counter()
        self.reporter.epoch_begin(epoch, self.epochs, batches, self.phase)

    def on_batch_end(self, epoch, batch, batches, logs):
        self.reporter.batch_end(epoch, batch, batches, logs)

    def on_epoch_end(self, epoch, logs, model):
        self.reporter.epoch_end(epoch, self.epochs, logs, time.perf_counter() - self.started)


class TrainResult:
    """What ``train`` and ``finetune`` did."""

    def __init__(self, model, history, output, checkpoints=None, best=None, resumed_from=None,
                 skipped=(), cached_features=False):
        self.model = model
        self.history = history          # list of per-epoch metric dicts
        self.output = output
        self.checkpoints = checkpoints
        self.best = best                # (epoch, metrics) of the best epoch
        self.resumed_from = resumed_from
        self.skipped = list(skipped)
        self.cached_features = cached_features


# ---------------------------------------------------------------------------
# Training histories
# ---------------------------------------------------------------------------

HISTORY_FORMAT = "cnncli-history/1"


def history_path(model_path):
    """Where the history of the run that wrote ``model_path`` lives: beside it,
    ``digits.cnn`` -> ``digits.history.json``."""
    root, extension = os.path.splitext(os.fspath(model_path))
    return (root if extension == ".cnn" else os.fspath(model_path)) + ".history.json"


def write_history(model_path, command, history, phases):
    """Write the per-epoch metrics of a run next to its model, atomically."""
    epochs = [{"epoch": number, "phase": phase, **metrics}
              for number, (metrics, phase) in enumerate(zip(history, phases), start=1)]
    document = {"format": HISTORY_FORMAT, "model": os.path.basename(os.fspath(model_path)),
                "command": command, "epochs": epochs}
    path = history_path(model_path)
    atomic_write(path, (json.dumps(document, indent=1) + "\n").encode("utf-8"))
    return path


def read_history(run):
    """The per-epoch metrics of a run, from its history file, a model file beside one, or a
    checkpoint (``last.cnn`` keeps the history of the epochs it has done)."""
    run = os.fspath(run)
    if not os.path.exists(run):
        raise JobError(f"{run}: no such file")
    candidates = [run] if run.endswith(".json") else [history_path(run)]
    for path in candidates:
        if os.path.isfile(path):
            return _parse_history(path)
    try:
        state = read_training_state(run)
    except ModelFileError as error:
        raise JobError(f"{run}: no history beside it ({candidates[0]}) and {error}") from None
    if state is None or not state[0].get("history"):
        raise JobError(f"{run}: no history beside it ({candidates[0]}) and no training state "
                       "in it; train and finetune write one next to the model")
    history = state[0]["history"]
    _check_epochs(history, run)
    return [dict(metrics, epoch=number, phase="train")
            for number, metrics in enumerate(history, start=1)]


def _check_epochs(epochs, path):
    """A history's epochs: a list of {name: finite number}, with a text ``phase``."""
    if not isinstance(epochs, list) or not epochs or not all(
            isinstance(epoch, dict) and isinstance(epoch.get("phase", ""), str) and all(
                isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value) for key, value in epoch.items() if key != "phase")
            for epoch in epochs):
        raise JobError(f"{path}: the history has no epochs, or values that are not finite "
                       "numbers")


def _parse_history(path):
    try:
        document = read_json_file(path, "history file")
    except ValueError as error:
        raise JobError(str(error)) from None
    if not isinstance(document, dict) or document.get("format") != HISTORY_FORMAT:
        raise JobError(f"{path}: not a cnncli history file (expected format "
                       f"{HISTORY_FORMAT!r})")
    epochs = document.get("epochs")
    _check_epochs(epochs, path)
    return epochs


# ---------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------


class _Checkpointer(Callback):
    """Writes last.cnn (with training state) and best.cnn after every epoch."""

    def __init__(self, folder, settings, optimizer, schedule, augmentation, history, monitor):
        self.folder = folder
        self.settings = settings
        self.optimizer, self.schedule, self.augmentation = optimizer, schedule, augmentation
        self.history = history
        self.tracker = Monitor(monitor, min_delta=0.0)
        self.best = None

    def restore_best(self, best):
        """Carry on from the best epoch a checkpoint recorded ({"epoch", "value", ...})."""
        self.best = best
        if best is not None:
            self.tracker.best, self.tracker.best_epoch = best["value"], best["epoch"] - 1

    def training_state(self, model, epochs_done, position=None):
        optimizer = self.optimizer.state_dict()
        arrays = {}
        scalars = {}
        for name, slots in optimizer["parameters"].items():
            for slot, value in slots.items():
                if isinstance(value, np.ndarray):
                    arrays[f"optimizer/{name}/{slot}"] = value
                else:
                    scalars.setdefault(name, {})[slot] = value
        state = {
            "epochs_done": epochs_done,
            "position": position,
            "settings": self.settings,
            "history": self.history,
            "best": self.best,
            "optimizer": {"steps": optimizer["steps"], "lr": optimizer["lr"],
                          "scalars": scalars},
            "schedule": None if self.schedule is None else self.schedule.state_dict(),
            "augmentation": None if self.augmentation is None
            else self.augmentation.rng.bit_generator.state,
            "dropout": [layer.rng.bit_generator.state for layer in _random_layers(model)],
        }
        return state, arrays

    def save_last(self, model, epochs_done, position=None):
        """Write last.cnn; ``position`` ({"batch", "totals"}) marks a point inside an epoch."""
        save_model(model, os.path.join(self.folder, "last.cnn"),
                   provenance={"epochs": epochs_done},
                   training_state=self.training_state(model, epochs_done, position))

    def on_epoch_end(self, epoch, logs, model):
        self.history.append({key: float(value) for key, value in logs.items()})
        if self.tracker.improved(epoch, logs):
            self.best = {"epoch": epoch + 1, "value": float(self.tracker.best),
                         "metrics": self.history[-1]}
            save_model(model, os.path.join(self.folder, "best.cnn"),
                       provenance={"epochs": epoch + 1, "metrics": self.history[-1]})
        self.save_last(model, epoch + 1)


def _restore_training_state(path, model, optimizer, schedule, augmentation, settings,
                            batches):
    try:
        loaded = read_training_state(path)
    except ModelFileError as error:
        raise JobError(str(error)) from None
    if loaded is None:
        raise JobError(f"{path}: holds no training state to resume from")
    state, arrays = loaded
    saved = state.get("settings")
    if isinstance(saved, dict):
        # A schedule's shape depends on the number of epochs; without one, a
        # resumed run may go on for more epochs than first asked.
        keys = RESUME_SETTINGS + (("epochs",) if settings["schedule"] != "constant" else ())
        different = [key for key in keys if saved.get(key) != settings.get(key)]
        if different:
            key = different[0]
            raise JobError(f"--resume: the checkpoint was made with {key}="
                           f"{str(saved.get(key))[:80]}, this run has {key}="
                           f"{settings.get(key)!r}; use the same settings")
    parameters = model.parameters()
    dropout = _random_layers(model)
    try:
        check_training_state(state, arrays, epochs=max(settings["epochs"],
                                                       _int_or_zero(state.get("epochs_done"))),
                             batches=batches, optimizer_name=settings["optimizer"],
                             parameters={name: p.value for name, p in parameters.items()},
                             groups=len(optimizer.groups), schedule=schedule,
                             augmentation=augmentation, dropout_layers=dropout)
    except TrainingStateError as error:
        raise JobError(f"{path}: {error}; it cannot be resumed") from None
    slots = {}
    for name, values in state["optimizer"]["scalars"].items():
        slots.setdefault(name, {}).update(values)
    for key, array in arrays.items():
        _, name, slot = key.split("/")
        slots.setdefault(name, {})[slot] = array
    optimizer.load_state_dict({"steps": state["optimizer"]["steps"],
                               "lr": state["optimizer"]["lr"], "parameters": slots})
    if schedule is not None:
        try:
            schedule.load_state_dict(state["schedule"])
        except (TypeError, ValueError) as error:
            raise JobError(f"{path}: the training state has a bad schedule ({error})") from None
    if augmentation is not None:
        augmentation.rng.bit_generator.state = state["augmentation"]
    for layer, generator in zip(dropout, state["dropout"]):
        layer.rng.bit_generator.state = generator
    return int(state["epochs_done"]), state["position"], list(state["history"]), state["best"]


def _int_or_zero(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@_on_threads
def train(data, arch="lenet", output="model.cnn", epochs=10, batch_size=32, lr=1e-3,
          optimizer="adam", schedule="constant", momentum=0.9, weight_decay=0.0, seed=0,
          threads=None, val_split=0.1, shift=0, flip=False, size=None, channels=None,
          skip_bad=False, checkpoints=None, resume=False, force=False, classes=None,
          per_class=None, reporter=None):
    """Train architecture ``arch`` from scratch on ``data`` and save it to ``output``.

    ``classes`` keeps only the named classes of the data (a list, or names
    separated by commas), ``per_class`` at most that many training images of
    each. See the module notes for checkpoints and ``resume``. Raises JobError for
    expected failures, TrainingDiverged when the loss is no longer finite, and
    lets KeyboardInterrupt through after making sure a checkpoint exists.
    """
    reporter = reporter or Reporter()
    if arch not in architectures.ARCHITECTURES:
        raise JobError(f"--arch: expected one of {', '.join(architectures.ARCHITECTURES)}, "
                       f"got {arch!r}")
    if optimizer not in OPTIMIZERS:
        raise JobError(f"--optimizer: expected one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if schedule not in SCHEDULES:
        raise JobError(f"--schedule: expected one of {', '.join(SCHEDULES)}, got {schedule!r}")
    for name, value in (("--epochs", epochs), ("--batch-size", batch_size)):
        _positive(name, value)
    classes = _class_list(classes)
    if per_class is not None:
        _positive("--per-class", per_class)
    if not (lr > 0 and math.isfinite(lr)):
        raise JobError(f"--lr: expected a positive learning rate, got {lr!r}")
    if not 0 <= val_split < 1:
        raise JobError(f"--val-split: expected a fraction in [0, 1), got {val_split!r}")
    if channels not in (None, 1, 3):
        raise JobError(f"--channels: expected 1 (grayscale) or 3 (RGB), got {channels!r}")
    output = os.fspath(output)
    folder = os.fspath(checkpoints) if checkpoints else \
        os.path.splitext(output)[0] + "-checkpoints"
    settings = {"data": os.fspath(data), "arch": arch, "batch_size": batch_size, "lr": lr,
                "optimizer": optimizer, "schedule": schedule, "seed": seed,
                "val_split": val_split, "shift": shift, "flip": bool(flip),
                "size": list(size) if size else None, "channels": channels,
                "weight_decay": weight_decay, "momentum": momentum, "epochs": epochs,
                "classes": classes, "per_class": per_class}
    # Checked under the locks, so two runs cannot both find the output free.
    with _locked(output, folder):
        last = os.path.join(folder, "last.cnn")
        if not resume:
            _check_output(output, force)
        if resume and not os.path.exists(last):
            raise JobError(f"--resume: no checkpoint at {last}")
        if not resume and os.path.exists(last) and not force:
            raise JobError(f"{folder}: holds checkpoints of an earlier run; pass --resume to "
                           "continue it or --force to start over")
        splits = _load_splits(data, skip_bad, channels, size, reporter, classes, per_class,
                              seed)
        train_part, val_part = _train_val(splits, val_split, seed)
        _at_least_two_classes(train_part)
        return _train_run(settings, train_part, val_part, output, folder, resume, reporter)


def _locked(*targets):
    """The run locks of every file and folder a run writes (see ``cnncli.files.RunLock``)."""
    stack = contextlib.ExitStack()
    try:
        for target in targets:
            stack.enter_context(RunLock(target))
    except OutputLocked as error:
        stack.close()
        raise JobError(str(error)) from None
    return stack


def _new_model(settings, train_part):
    """The architecture built for the data, with preprocessing from its statistics."""
    size, channels = settings["size"], settings["channels"]
    shape = train_part.image_shape
    input_shape = (channels or shape[0],) + (tuple(size) if size else shape[1:])
    try:
        model = architectures.build(settings["arch"], input_shape, len(train_part.classes),
                                    seed=settings["seed"])
    except ValueError as error:
        raise JobError(str(error)) from None
    mean, std = datasets.channel_statistics(train_part.x, train_part.pixel_max)
    if len(mean) != input_shape[0]:
        mean, std = [float(np.mean(mean))] * input_shape[0], [float(np.mean(std))] * input_shape[0]
    model.preprocessing = Preprocessing(input_shape[0], input_shape[1:], mean=mean, std=std,
                                        scale=1 / train_part.pixel_max)
    model.classes = list(train_part.classes)
    model.provenance = {"command": "train", **settings, "dataset_size": len(train_part)}
    return model


def _train_run(settings, train_part, val_part, output, folder, resume, reporter):
    """The run of ``train`` once its options are checked and its outputs locked."""
    epochs, batch_size, seed = settings["epochs"], settings["batch_size"], settings["seed"]
    model = _new_model(settings, train_part)
    last = os.path.join(folder, "last.cnn")
    batches = math.ceil(len(train_part) / batch_size)
    opt = _make_optimizer(settings["optimizer"], model.parameters(), settings["lr"],
                          settings["momentum"], settings["weight_decay"])
    sched = _make_schedule(settings["schedule"], opt, epochs, batches)
    shift, flip = settings["shift"], settings["flip"]
    augmentation = datasets.Augmentation(shift=shift, flip=flip, seed=seed) \
        if shift or flip else None
    history, best, start, position = [], None, 0, None
    if resume:
        try:
            saved = load_model(last)
        except ModelFileError as error:
            raise JobError(str(error)) from None
        try:
            model.load_state_dict(saved.state_dict())
        except ValueError as error:
            raise JobError(f"{last}: does not fit this run's model ({error})") from None
        model.provenance = saved.provenance
        start, position, history, best = _restore_training_state(last, model, opt, sched,
                                                                 augmentation, settings,
                                                                 batches)
        where = f"epoch {start}" if not position else \
            f"batch {position['batch']} of epoch {start + 1}"
        reporter.message(f"resuming from {last} after {where}")
        if start > epochs or (start == epochs and position):
            raise JobError(f"--resume: the checkpoint has done {start} epochs already; ask "
                           f"for more with --epochs")
    os.makedirs(folder, exist_ok=True)
    monitor = "val_accuracy" if val_part is not None else "loss"
    checkpointer = _Checkpointer(folder, settings, opt, sched, augmentation, history, monitor)
    checkpointer.restore_best(best)
    if not resume:
        checkpointer.save_last(model, 0)
    if start < epochs:
        _fit_with_checkpoints(model, train_part, val_part, settings, opt, sched, augmentation,
                              checkpointer, start, position, batches, reporter)
    else:
        # Every epoch was done, but the final model was never written (say,
        # the disk was full): the checkpoint holds the finished weights.
        reporter.message(f"{last} has finished all {epochs} epochs; writing the final model")
    save_model(model, output, overwrite=True,
               provenance={"epochs": epochs, "metrics": history[-1] if history else {}})
    write_history(output, "train", history, ["train"] * len(history))
    return TrainResult(model, history, output, checkpoints=folder,
                       best=checkpointer.best, resumed_from=last if resume else None,
                       skipped=train_part.skipped)


def _fit_with_checkpoints(model, train_part, val_part, settings, optimizer, schedule,
                          augmentation, checkpointer, start, position, batches, reporter):
    last = os.path.join(checkpointer.folder, "last.cnn")
    transform = datasets.batch_transform(model.preprocessing, train_part.pixel_max, augmentation)
    val_transform = datasets.batch_transform(model.preprocessing, train_part.pixel_max)
    epoch_reporter = _EpochReporter(reporter, settings["epochs"])
    try:
        with _CtrlC() as ctrl_c:
            fit(model, train_part.x, train_part.y, epochs=settings["epochs"],
                batch_size=settings["batch_size"], optimizer=optimizer, schedule=schedule,
                seed=settings["seed"], initial_epoch=start,
                initial_batch=position["batch"] if position else 0,
                initial_totals=tuple(position["totals"]) if position else None,
                interrupt=ctrl_c,
                validation_data=None if val_part is None else (val_part.x, val_part.y),
                transform=transform, validation_transform=val_transform,
                callbacks=[checkpointer, epoch_reporter])
    except FloatingPointError as error:
        raise TrainingDiverged(f"{error}; the last good checkpoint is {last}") from None
    except Interrupted as stop:
        checkpointer.save_last(model, stop.epoch, {"batch": stop.batch,
                                                   "totals": list(stop.totals)})
        raise TrainingInterrupted(f"interrupted in epoch {stop.epoch + 1} after batch "
                                  f"{stop.batch}; saved {last}; continue with --resume") from None


# ---------------------------------------------------------------------------
# Pretrained models
# ---------------------------------------------------------------------------


def zoo_folder():
    """The folder of the shipped pretrained models (installed with the package)."""
    from importlib import resources
    try:
        return str(resources.files("cnncli.zoo"))
    except ModuleNotFoundError:
        return None


def zoo_models():
    """[(name, path, card text)] of the shipped pretrained models."""
    folder = zoo_folder()
    if folder is None or not os.path.isdir(folder):
        return []
    found = []
    for entry in sorted(os.listdir(folder)):
        if entry.endswith(".cnn"):
            name = entry[:-4]
            card = os.path.join(folder, name + ".md")
            text = open(card, encoding="utf-8").read() if os.path.exists(card) else ""
            found.append((name, os.path.join(folder, entry), text))
    return found



def resolve_model(name_or_path):
    """A model file's path from a path or the name of a shipped pretrained model."""
    text = os.fspath(name_or_path)
    if os.path.exists(text):
        return text
    for name, path, _ in zoo_models():
        if name == text:
            return path
    known = ", ".join(name for name, _, _ in zoo_models()) or "none installed"
    raise JobError(f"{text}: no such model file or pretrained model (pretrained: {known})")


def open_model(name_or_path):
    try:
        return load_model(resolve_model(name_or_path))
    except ModelFileError as error:
        raise JobError(str(error)) from None


# ---------------------------------------------------------------------------
# finetune
# ---------------------------------------------------------------------------


def _lowest_trainable(model):
    for position, layer in enumerate(model):
        if layer.parameters() and layer.trainable:
            return position
    return len(model)


@_on_threads
def finetune(pretrained, data, output="finetuned.cnn", epochs=5, batch_size=32, lr=1e-3,
             freeze=None, unfreeze_epochs=0, backbone_lr_factor=0.1, optimizer="adam",
             seed=0, threads=None, val_split=0.1, shift=0, flip=False, skip_bad=False,
             cache_features=True, force=False, classes=None, per_class=None, reporter=None):
    """Transfer learning: replace the head of ``pretrained`` for the classes of ``data``,
    freeze the backbone (up to ``freeze``, default everything but the head), train, and
    optionally train everything for ``unfreeze_epochs`` more with the pretrained layers at
    ``backbone_lr_factor`` times the rate.

    With a frozen backbone and no augmentation, the backbone's outputs are
    computed once and the trainable top trains on them (``cache_features``):
    the same result, for a fraction of the cost. ``classes`` and ``per_class``
    select data as in ``train``.
    """
    reporter = reporter or Reporter()
    for name, value in (("--epochs", epochs), ("--batch-size", batch_size)):
        _positive(name, value)
    if isinstance(unfreeze_epochs, bool) or not isinstance(unfreeze_epochs, int) \
            or unfreeze_epochs < 0:
        raise JobError(f"--unfreeze-epochs: expected an integer >= 0, got {unfreeze_epochs!r}")
    if optimizer not in OPTIMIZERS:
        raise JobError(f"--optimizer: expected one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    classes = _class_list(classes)
    if per_class is not None:
        _positive("--per-class", per_class)
    with _locked(os.fspath(output)):
        output = _check_output(output, force)
        return _finetune_run(pretrained, data, output, epochs, batch_size, lr, freeze,
                             unfreeze_epochs, backbone_lr_factor, optimizer, seed, val_split,
                             shift, flip, skip_bad, cache_features, classes, per_class,
                             reporter)


def _finetune_run(pretrained, data, output, epochs, batch_size, lr, freeze, unfreeze_epochs,
                  backbone_lr_factor, optimizer, seed, val_split, shift, flip, skip_bad,
                  cache_features, classes, per_class, reporter):
    model = open_model(pretrained)
    source = os.fspath(pretrained)
    splits = _load_splits(data, skip_bad, reporter=reporter, classes=classes,
                          per_class=per_class, seed=seed, **_model_image_format(model))
    train_part, val_part = _train_val(splits, val_split, seed)
    _at_least_two_classes(train_part)

    if model.preprocessing is None:
        mean, std = datasets.channel_statistics(train_part.x, train_part.pixel_max)
        channels = model.input_shape[0]
        if len(mean) != channels:
            mean, std = [float(np.mean(mean))] * channels, [float(np.mean(std))] * channels
        model.preprocessing = Preprocessing(channels, model.input_shape[1:], mean=mean,
                                            std=std, scale=1 / train_part.pixel_max)
    head = model.head
    if head is None or not isinstance(head, Dense):
        raise JobError(f"{source}: the model has no Dense head to replace")
    position = model.index(head)
    model[position] = Dense(len(train_part.classes), name=head.name)
    model.classes = list(train_part.classes)
    model.unfreeze()
    try:
        if freeze is None:
            if position > 0:
                model.freeze(upto=position - 1)
        elif freeze != "none":
            model.freeze(upto=freeze)
    except KeyError as error:
        raise JobError(f"--freeze: {error.args[0]}") from None
    reporter.message(f"{source}: head replaced by {len(train_part.classes)} classes; "
                     f"{model.count_parameters()[1]:,} parameters frozen")

    transform = datasets.batch_transform(model.preprocessing, train_part.pixel_max)
    augmentation = datasets.Augmentation(shift=shift, flip=flip, seed=seed) \
        if shift or flip else None
    train_transform = datasets.batch_transform(model.preprocessing, train_part.pixel_max,
                                               augmentation)
    validation = None if val_part is None else (val_part.x, val_part.y)
    cut = _lowest_trainable(model)
    history = []
    cached = cache_features and augmentation is None and 0 < cut < len(model)
    phase_epochs = epochs
    if cached:
        # The frozen layers run in inference mode during training anyway, so
        # their outputs can be computed once.
        backbone, top = model[:cut], model[cut:]
        reporter.message(f"computing the frozen backbone's features once ({cut} layers)")
        features = predict_outputs(backbone, train_part.x, batch_size=256, transform=transform)
        val_features = None if val_part is None else \
            (predict_outputs(backbone, val_part.x, batch_size=256, transform=transform),
             val_part.y)
        history += _run_phase(top, features, train_part.y, val_features, None, None,
                              phase_epochs, batch_size, lr, optimizer, seed, reporter,
                              "head")
    else:
        history += _run_phase(model, train_part.x, train_part.y, validation, train_transform,
                              transform, phase_epochs, batch_size, lr, optimizer, seed,
                              reporter, "head")
    phases = ["head"] * len(history)
    if unfreeze_epochs:
        model.unfreeze()
        groups = [{"params": model[:position].parameters(), "lr": lr * backbone_lr_factor},
                  {"params": model[position:].parameters()}]
        history += _run_phase(model, train_part.x, train_part.y, validation, train_transform,
                              transform, unfreeze_epochs, batch_size, lr, optimizer, seed + 1,
                              reporter, "all layers", groups=groups)
        phases += ["all layers"] * (len(history) - len(phases))
    model.provenance = {**model.provenance, "command": "finetune", "pretrained": source,
                        "data": os.fspath(data), "epochs": epochs,
                        "unfreeze_epochs": unfreeze_epochs, "lr": lr, "seed": seed,
                        "classes": classes, "per_class": per_class,
                        "metrics": history[-1] if history else {}}
    save_model(model, output, overwrite=True)
    write_history(output, "finetune", history, phases)
    return TrainResult(model, history, output, skipped=train_part.skipped,
                       cached_features=cached)


def _run_phase(model, x, y, validation, transform, validation_transform, epochs, batch_size,
               lr, optimizer, seed, reporter, phase, groups=None):
    opt = _make_optimizer(optimizer, groups or model.parameters(trainable_only=True), lr,
                          0.9, 0.0)
    try:
        history = fit(model, x, y, epochs=epochs, batch_size=batch_size, optimizer=opt,
                      seed=seed, validation_data=validation, transform=transform,
                      validation_transform=validation_transform,
                      callbacks=[_EpochReporter(reporter, epochs, phase)])
    except FloatingPointError as error:
        raise TrainingDiverged(str(error)) from None
    return [{key: float(value) for key, value in logs.items()} for logs in history.epochs]


# ---------------------------------------------------------------------------
# evaluate and predict
# ---------------------------------------------------------------------------


class Evaluation:
    """Metrics of a model on a labelled dataset (see ``as_dict`` for the JSON form)."""

    def __init__(self, classes, labels, probabilities, top_k, source):
        from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
        self.classes = list(classes)
        self.source = source
        self.count = len(labels)
        predicted = probabilities.argmax(axis=1)
        everything = np.arange(len(self.classes))
        self.accuracy = float(np.mean(predicted == labels)) if len(labels) else 0.0
        self.top_k = min(top_k, len(self.classes))
        ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :self.top_k]
        self.top_k_accuracy = float(np.mean((ranked == labels[:, None]).any(axis=1)))
        precision, recall, f1, support = precision_recall_fscore_support(
            labels, predicted, labels=everything, zero_division=0)
        self.per_class = [{"class": name, "precision": float(p), "recall": float(r),
                           "f1": float(f), "support": int(s)}
                          for name, p, r, f, s in zip(self.classes, precision, recall, f1,
                                                      support)]
        self.confusion = confusion_matrix(labels, predicted, labels=everything)
        off = self.confusion.copy()
        np.fill_diagonal(off, 0)
        pairs = np.dstack(np.unravel_index(np.argsort(-off, axis=None, kind="stable"),
                                           off.shape))[0]
        self.confused = [{"true": self.classes[t], "predicted": self.classes[p],
                          "count": int(off[t, p])} for t, p in pairs[:5] if off[t, p] > 0]
        self.predicted = predicted

    def as_dict(self):
        return {"source": self.source, "samples": self.count, "accuracy": self.accuracy,
                f"top_{self.top_k}_accuracy": self.top_k_accuracy, "top_k": self.top_k,
                "per_class": self.per_class, "classes": self.classes,
                "confusion_matrix": self.confusion.tolist(), "most_confused": self.confused}


def _label_map(model, dataset, source):
    """Data labels -> model output indices, by class name."""
    if model.classes is None:
        if len(dataset.classes) > model.output_shape[0]:
            raise JobError(f"{source}: {len(dataset.classes)} classes, but the model has "
                           f"{model.output_shape[0]} outputs")
        return np.arange(len(dataset.classes)), [str(k) for k in range(model.output_shape[0])]
    unknown = [name for name in dataset.classes if name not in model.classes]
    if unknown:
        raise JobError(f"{source}: classes {unknown[:5]} are not among the model's classes "
                       f"{model.classes[:10]}")
    return np.array([model.classes.index(name) for name in dataset.classes]), model.classes


def _model_transform(model, pixel_max):
    if model.preprocessing is None:
        raise JobError("the model file has no preprocessing; it cannot read raw images")
    return datasets.batch_transform(model.preprocessing, pixel_max)


@_on_threads
def evaluate(model_path, data, split=None, top_k=5, batch_size=256, threads=None,
             skip_bad=False, val_split=0.1, seed=0, classes=None, reporter=None):
    """Evaluate a model file on a part of a dataset (of its ``classes`` only, when given).

    ``split``: "test", "val", "train" or "all". By default the test part,
    else the validation part; data with neither is split as ``train`` splits
    it (``val_split``, ``seed``), so the default evaluates on the images that
    training held out.
    """
    reporter = reporter or Reporter()
    _positive("--top-k", top_k)
    _positive("--batch-size", batch_size)
    classes = _class_list(classes)
    model = open_model(model_path)
    splits = _load_splits(data, skip_bad, reporter=reporter, classes=classes,
                          **_model_image_format(model))
    if split is None:
        split = "test" if splits.test is not None else "val"
    if split not in ("train", "val", "test", "all"):
        raise JobError(f"--split: expected train, val, test or all, got {split!r}")
    if split in ("train", "val") and splits.val is None:
        held_out = _train_val(splits, val_split, seed)
        dataset = held_out[0 if split == "train" else 1]
    else:
        dataset = splits.train if split == "all" else getattr(splits, split)
    if dataset is None:
        raise JobError(f"--split: {data} has no {split!r} part")
    if len(dataset) == 0:
        raise JobError(f"{dataset.source}: no samples to evaluate ({split} part)")
    remap, classes = _label_map(model, dataset, os.fspath(data))
    probabilities = _probabilities(model, dataset.x, dataset.pixel_max, batch_size)
    return Evaluation(classes, remap[dataset.y], probabilities, top_k,
                      f"{os.fspath(data)} ({split})")


def _probabilities(model, x, pixel_max, batch_size):
    from cnncli.training import predict_proba
    try:
        probabilities = predict_proba(model, x, batch_size=batch_size,
                                      transform=_model_transform(model, pixel_max))
    except DataError as error:
        raise JobError(str(error)) from None
    broken = np.count_nonzero(~np.isfinite(probabilities).all(axis=1))
    if broken:
        raise JobError(f"the model gives NaN or infinite outputs for {broken} of "
                       f"{len(probabilities)} inputs; its weights or preprocessing are broken")
    return probabilities


class Prediction:
    """Top-k classes and probabilities for each input."""

    def __init__(self, names, classes, probabilities, top_k):
        self.names = names
        self.classes = classes
        self.probabilities = probabilities
        ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :min(top_k, len(classes))]
        self.top = [[(classes[k], float(row[k])) for k in order]
                    for order, row in zip(ranked, probabilities)]


def _image_files(paths):
    """The image files named, and those in the folders named (searched recursively)."""
    files = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            for folder, subfolders, names in os.walk(path):
                subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
                files += [os.path.join(folder, name) for name in sorted(names)
                          if name.lower().endswith(datasets.IMAGE_EXTENSIONS)]
        elif os.path.lexists(path):
            files.append(path)
        else:
            raise JobError(f"{path}: no such file or folder")
    return files


@_on_threads
def predict(model_path, inputs, top_k=3, batch_size=256, threads=None, skip_bad=False,
            reporter=None):
    """Class probabilities for image files, folders of images, or the ``x`` of an .npz.

    Images are decoded ``batch_size`` at a time, so memory holds one batch
    of them, however many files there are.
    """
    reporter = reporter or Reporter()
    _positive("--top-k", top_k)
    _positive("--batch-size", batch_size)
    model = open_model(model_path)
    if model.preprocessing is None:
        raise JobError(f"{model_path}: the model has no preprocessing; it cannot read images")
    classes = model.classes or [str(k) for k in range(model.output_shape[0])]
    inputs = [os.fspath(path) for path in inputs]
    if len(inputs) == 1 and inputs[0].endswith(".npz") and os.path.isfile(inputs[0]):
        try:
            splits = datasets.load_npz(inputs[0], skip_bad=True)
        except DataError as error:
            raise JobError(str(error)) from None
        dataset = splits.test or splits.train
        names = [f"{inputs[0]}[{index}]" for index in range(len(dataset))]
        probabilities = _probabilities(model, dataset.x, dataset.pixel_max, batch_size)
        return Prediction(names, classes, probabilities, top_k)
    preprocessing = model.preprocessing
    names, parts = [], []
    files = _image_files(inputs)
    for start in range(0, len(files), batch_size):
        batch, batch_names = [], []
        for path in files[start:start + batch_size]:
            try:
                batch.append(datasets.load_image(path, preprocessing.channels,
                                                 preprocessing.size))
            except DataError as error:
                if not skip_bad:
                    raise JobError(f"{error}; pass --skip-bad to leave bad files out") from None
                reporter.message(f"skipped {error}")
                continue
            batch_names.append(path)
        if batch:
            parts.append(_probabilities(model, np.stack(batch), 255, batch_size))
            names += batch_names
    if not names:
        raise JobError("no images to predict")
    return Prediction(names, classes, np.concatenate(parts), top_k)


# ---------------------------------------------------------------------------
# import
# ---------------------------------------------------------------------------


class ImportResult:
    def __init__(self, model, report, output):
        self.model = model
        self.report = report
        self.output = output


def _numbers(option, text, count):
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise JobError(f"{option}: expected {count} comma-separated numbers, got {text!r}")
    return values


def import_model(source, output=None, arch=None, classes=None, size=None, mean=None, std=None,
                 force=False):
    """Convert torchvision-format weights (``.pt``/``.pth`` or ``.safetensors``) into a cnncli
    model file; see ``cnncli.importer``.

    ``classes``: names, comma-separated, or a text file with one name per line
    (default: ImageNet's for a 1000-class head). ``size`` (height, width),
    ``mean`` and ``std`` (per channel, comma-separated) override ImageNet's
    preprocessing. ``output`` defaults to the source's name with ``.cnn``.
    """
    from cnncli import importer
    source = os.fspath(source)
    if arch is not None and arch not in ("resnet18", "resnet34", "resnet50"):
        raise JobError(f"--arch: expected resnet18, resnet34 or resnet50, got {arch!r}")
    if output is None:
        output = os.path.splitext(os.path.basename(source))[0] + ".cnn"
    output = _check_output(output, force)
    if isinstance(classes, str) and os.path.isfile(classes):
        with open(classes, encoding="utf-8") as handle:
            classes = [line.strip() for line in handle if line.strip()]
    classes = _class_list(classes)
    base = importer.IMAGENET_PREPROCESSING
    try:
        preprocessing = Preprocessing(
            base.channels, tuple(size) if size is not None else base.size,
            mean=_numbers("--mean", mean, base.channels) if mean is not None else base.mean,
            std=_numbers("--std", std, base.channels) if std is not None else base.std,
            scale=base.scale)
    except ValueError as error:
        raise JobError(str(error)) from None
    try:
        model, report = importer.import_weights(source, architecture=arch, classes=classes,
                                                preprocessing=preprocessing)
    except importer.WeightsImportError as error:
        raise JobError(str(error)) from None
    save_model(model, output, overwrite=True)
    return ImportResult(model, report, output)


# ---------------------------------------------------------------------------
# show: pictures of filters, feature maps, histories, confusion matrices
# ---------------------------------------------------------------------------


def _beside(model, suffix):
    """``<model>-<suffix>`` beside a model file, or in the current folder for a shipped
    model's name."""
    text = os.fspath(model)
    stem = os.path.splitext(os.path.basename(text))[0]
    return os.path.join(os.path.dirname(text) if os.path.exists(text) else "",
                        f"{stem}-{suffix}")


def _picture_path(model, suffix, output, force):
    """``output``, or the picture's default place beside the model, checked like any output."""
    return _check_output(_beside(model, suffix) if output is None else output, force)


def show_filters(model_path, layer=None, channel=None, output=None, force=False):
    """Draw a convolutional layer's kernels as a grid; returns (path written, Grid)."""
    from cnncli import visualize
    model = open_model(model_path)
    path = _picture_path(model_path, f"filters{'-' + layer if layer else ''}.png", output,
                         force)
    try:
        grid = visualize.filter_grid(model, layer, channel)
    except (KeyError, ValueError) as error:
        raise JobError(f"--layer: {error.args[0]}" if isinstance(error, KeyError)
                       else str(error)) from None
    atomic_write(path, grid.png())
    return path, grid


def show_features(model_path, image_path, layers=None, output=None, force=False,
                  max_maps=256):
    """Draw the feature maps of each convolutional and pooling layer (or of ``layers``) for
    one image, one PNG per layer in a folder; returns [(path, Grid)]."""
    from cnncli import visualize
    model = open_model(model_path)
    if model.preprocessing is None:
        raise JobError("the model file has no preprocessing; it cannot read raw images")
    image_path = os.fspath(image_path)
    if not os.path.isfile(image_path):
        raise JobError(f"{image_path}: no such image file")
    stem = os.path.splitext(os.path.basename(image_path))[0]
    folder = os.fspath(_beside(model_path, f"features-{stem}") if output is None else output)
    if os.path.exists(folder) and not (os.path.isdir(folder) and force):
        raise JobError(f"{folder}: already exists; pass --force to overwrite it"
                       if os.path.isdir(folder) else f"{folder}: is a file, not a folder")
    if not os.path.isdir(os.path.dirname(os.path.abspath(folder))):
        raise JobError(f"{os.path.dirname(os.path.abspath(folder))}: no such folder for the "
                       "output")
    preprocessing = model.preprocessing
    try:
        pixels = datasets.load_image(image_path, preprocessing.channels, preprocessing.size)
    except DataError as error:
        raise JobError(str(error)) from None
    x = preprocessing(pixels[None])[0]
    try:
        grids = visualize.feature_grids(model, x, layers, max_maps=max_maps)
    except KeyError as error:
        raise JobError(f"--layer: {error.args[0]}") from None
    except ValueError as error:
        raise JobError(str(error)) from None
    os.makedirs(folder, exist_ok=True)
    written = []
    for index, (name, grid) in enumerate(grids.items(), start=1):
        path = os.path.join(folder, f"{index:02d}-{name}.png")
        atomic_write(path, grid.png())
        written.append((path, grid))
    return written


def show_history(run, output=None, force=False):
    """Draw a run's loss and accuracy curves; returns (path, epochs)."""
    from cnncli import visualize
    epochs = read_history(run)
    text = os.fspath(run)
    base = text[:-len(".history.json")] if text.endswith(".history.json") else text
    path = _picture_path(base, "history.png", output, force)
    atomic_write(path, visualize.history_png(epochs, title=os.path.basename(base)))
    return path, epochs


def show_confusion(model_path, data, output=None, force=False, normalize=False, **options):
    """Evaluate (see ``evaluate``) and draw the confusion matrix; returns (path, Evaluation)."""
    from cnncli import visualize
    path = _picture_path(model_path, "confusion.png", output, force)
    result = evaluate(model_path, data, **options)
    title = f"{os.path.basename(os.fspath(model_path))} on {result.source}: accuracy " \
            f"{result.accuracy:.4f}"
    atomic_write(path, visualize.confusion_png(result.confusion, result.classes, title,
                                               normalise_rows=normalize))
    return path, result
