"""Checkpoints of ``train``: ``last.cnn`` (with the training state) and ``best.cnn``
after every epoch, and restoring a run from ``last.cnn`` for ``--resume``.
"""

import os
import time

import numpy as np

from cnncli.modelfile import ModelFileError, read_training_state, save_model
from cnncli.trainstate import TrainingStateError, check_training_state
from cnncli.training import Callback, Monitor
from cnncli.jobs.common import JobError, random_layers


# Settings that must match for --resume to continue a run exactly.
RESUME_SETTINGS = ("data", "arch", "batch_size", "lr", "optimizer", "schedule", "seed",
                   "val_split", "shift", "flip", "size", "channels", "weight_decay",
                   "momentum", "classes", "per_class")


class Checkpointer(Callback):
    """Writes last.cnn (with training state) and best.cnn after every epoch.

    ``model``, when given, is what the files hold, whatever part of it ``fit``
    trains (fine-tuning trains the top of a model on cached features);
    ``offset`` is the number of epochs done before the current ``fit``.
    With ``min_interval`` (seconds), an epoch's files are written only when
    that long has passed since the last write (epochs of a fraction of a
    second would spend most of their time writing), and always by
    ``flush()`` and ``save_last()``; the best weights wait in memory. A run
    resumed from an older checkpoint replays the same epochs exactly.
    """

    def __init__(self, folder, settings, optimizer, schedule, augmentation, history, monitor,
                 model=None, min_interval=0.0, writes=True):
        self.folder = folder
        # Only one process of a data-parallel run writes (the others keep the same state).
        self.writes = writes
        self.model = model
        self.offset = 0
        self.min_interval = float(min_interval)
        self.written = time.monotonic()
        self.unsaved = None             # epochs done when an epoch ended unwritten
        self.pending_best = None        # (weights, provenance) of a best epoch not yet written
        self.best_weights = None        # the best epoch's weights, when it came in this run
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
            "dropout": [layer.rng.bit_generator.state for layer in random_layers(model)],
        }
        return state, arrays

    def save_last(self, model, epochs_done, position=None):
        """Write last.cnn (after a best.cnn still to write); ``position`` ({"batch",
        "totals"}) marks a point inside an epoch."""
        model = self.model or model
        if not self.writes:
            self.pending_best, self.unsaved = None, None
            return
        self._write_best(model)
        save_model(model, os.path.join(self.folder, "last.cnn"),
                   provenance={"epochs": epochs_done},
                   training_state=self.training_state(model, epochs_done, position))
        self.written, self.unsaved = time.monotonic(), None

    def flush(self, model=None):
        """Write the files of the last epoch if they are not yet on disk."""
        if self.unsaved is not None:
            self.save_last(model, self.unsaved)

    def _write_best(self, model):
        if self.pending_best is None:
            return
        weights, provenance = self.pending_best
        current = model.state_dict()
        model.load_state_dict(weights)
        save_model(model, os.path.join(self.folder, "best.cnn"), provenance=provenance)
        model.load_state_dict(current)
        self.pending_best = None

    def on_epoch_end(self, epoch, logs, model):
        model = self.model or model
        epoch += self.offset
        self.history.append({key: float(value) for key, value in logs.items()})
        if self.tracker.improved(epoch, logs):
            self.best = {"epoch": epoch + 1, "value": float(self.tracker.best),
                         "metrics": self.history[-1]}
            self.best_weights = model.state_dict()
            self.pending_best = (self.best_weights,
                                 {"epochs": epoch + 1, "metrics": self.history[-1]})
        self.unsaved = epoch + 1
        if time.monotonic() - self.written >= self.min_interval:
            self.flush(model)


def restore_training_state(path, model, optimizer, schedule, augmentation, settings,
                           batches, keys=None, epochs=None):
    """Check the training state of checkpoint ``path`` against this run and load it into
    ``optimizer``, ``schedule``, ``augmentation`` and the model's Dropout layers; returns
    (epochs done, position inside an epoch, history, best epoch).

    ``keys`` are the settings that must match (``RESUME_SETTINGS`` and, with a schedule,
    the epochs); ``epochs`` the run's total. With ``optimizer`` None the optimizer and
    schedule start fresh (a run resumed at the start of a new phase).
    """
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
        if keys is None:
            keys = RESUME_SETTINGS + (("epochs",) if settings["schedule"] != "constant" else ())
        different = [key for key in keys if saved.get(key) != settings.get(key)]
        if different:
            key = different[0]
            raise JobError(f"--resume: the checkpoint was made with {key}="
                           f"{str(saved.get(key))[:80]}, this run has {key}="
                           f"{settings.get(key)!r}; use the same settings")
    parameters = dict(model.named_parameters())
    dropout = random_layers(model)
    if epochs is None:
        epochs = max(settings["epochs"], _int_or_zero(state.get("epochs_done")))
    try:
        check_training_state(state, arrays, epochs=epochs, batches=batches,
                             optimizer_name=settings["optimizer"],
                             parameters={name: p.value for name, p in parameters.items()},
                             groups=None if optimizer is None else len(optimizer.groups),
                             schedule=schedule, augmentation=augmentation,
                             dropout_layers=dropout)
    except TrainingStateError as error:
        raise JobError(f"{path}: {error}; it cannot be resumed") from None
    _restore_generators(state, augmentation, dropout)
    if optimizer is None:
        return _resumed(state)
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
    return _resumed(state)


def _restore_generators(state, augmentation, dropout):
    if augmentation is not None:
        augmentation.rng.bit_generator.state = state["augmentation"]
    for layer, generator in zip(dropout, state["dropout"]):
        layer.rng.bit_generator.state = generator


def _resumed(state):
    return int(state["epochs_done"]), state["position"], list(state["history"]), state["best"]


def _int_or_zero(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
