"""Checkpoints of ``train``: ``last.cnn`` (with the training state) and ``best.cnn``
after every epoch, and restoring a run from ``last.cnn`` for ``--resume``.
"""

import os

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
            "dropout": [layer.rng.bit_generator.state for layer in random_layers(model)],
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


def restore_training_state(path, model, optimizer, schedule, augmentation, settings,
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
    dropout = random_layers(model)
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
