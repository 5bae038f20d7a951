"""Callbacks of ``fit`` and what training returns: ``History``, ``EarlyStopping``,
``ModelCheckpoint``, ``Monitor``, and the ``StopTraining`` and ``Interrupted``
signals. ``cnncli.training`` re-exports them.
"""

import math
import os

__all__ = ["Callback", "History", "Monitor", "EarlyStopping", "ModelCheckpoint", "StopTraining",
           "Interrupted"]


class StopTraining(Exception):
    """Raised by a callback to end training after the current epoch."""


class Interrupted(Exception):
    """Training stopped between two batches because ``interrupt()`` asked it to.

    ``epoch`` is the epoch under way (from 0), ``batch`` the number of its
    batches done, and ``totals`` the epoch's running (loss sum, correct,
    seen): what ``fit(initial_epoch=epoch, initial_batch=batch,
    initial_totals=totals)`` needs to carry on exactly.
    """

    def __init__(self, epoch, batch, totals):
        super().__init__(f"interrupted in epoch {epoch + 1} after batch {batch}")
        self.epoch, self.batch, self.totals = epoch, batch, totals


class History:
    """Per-epoch metrics of a fit: ``history["loss"]`` is a list, one value per epoch."""

    def __init__(self):
        self.epochs = []
        self.stopped_early = False      # a callback ended training before the last epoch

    def append(self, logs):
        self.epochs.append(dict(logs))

    def __getitem__(self, key):
        return [logs[key] for logs in self.epochs if key in logs]

    def __len__(self):
        return len(self.epochs)

    def __repr__(self):
        return f"History({len(self.epochs)} epochs, last: {self.epochs[-1] if self.epochs else {}})"


class Callback:
    """Hooks called by ``fit``; override what you need."""

    def on_train_begin(self, model):
        """Called once before the first epoch."""

    def on_epoch_begin(self, epoch, batches, model):
        """Called before epoch ``epoch`` (from 0) of ``batches`` batches."""

    def on_batch_end(self, epoch, batch, batches, logs):
        """Called after every batch with the epoch's running ``loss`` (and ``accuracy``)."""

    def on_epoch_end(self, epoch, logs, model):
        """Called with the epoch's metrics; raise StopTraining to stop."""

    def on_train_end(self, model):
        """Called once after the last epoch, also when training stopped early or failed."""


class Monitor:
    """Tracks the best value of one metric; ``accuracy`` metrics improve upwards, others down."""

    def __init__(self, monitor, min_delta):
        self.monitor = monitor
        self.min_delta = float(min_delta)
        self.higher_is_better = "accuracy" in monitor
        self.reset()

    def reset(self):
        self.best = -math.inf if self.higher_is_better else math.inf
        self.best_epoch = None

    def improved(self, epoch, logs):
        """Whether this epoch's value beats the best so far (and record it if so)."""
        if self.monitor not in logs:
            raise ValueError(f"monitor: {self.monitor!r} is not among the metrics "
                             f"{sorted(logs)}; pass validation_data for val_* metrics")
        value = logs[self.monitor]
        better = (value > self.best + self.min_delta if self.higher_is_better
                  else value < self.best - self.min_delta)
        if better:
            self.best, self.best_epoch = value, epoch
        return better


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs.

    With ``restore_best=True`` the weights of the best epoch are put back at
    the end, so the model is the best one seen, not the last.
    """

    def __init__(self, monitor="val_loss", patience=3, min_delta=0.0, restore_best=False):
        self.tracker = Monitor(monitor, min_delta)
        self.patience = int(patience)
        self.restore_best = bool(restore_best)

    @property
    def best(self):
        return self.tracker.best

    @property
    def best_epoch(self):
        return self.tracker.best_epoch

    def on_train_begin(self, model):
        self.tracker.reset()
        self.best_state = None
        self.waited = 0

    def on_epoch_end(self, epoch, logs, model):
        if self.tracker.improved(epoch, logs):
            self.waited = 0
            if self.restore_best:
                self.best_state = _snapshot(model)
            return
        self.waited += 1
        if self.waited >= self.patience:
            raise StopTraining

    def on_train_end(self, model):
        if self.restore_best and self.best_state is not None:
            _restore(model, self.best_state)


class ModelCheckpoint(Callback):
    """Save the model file after each epoch, atomically.

    With ``save_best_only`` (the default) the file is written only when
    ``monitor`` improves, so it always holds the best model seen so far,
    even if the run is interrupted. ``path`` may contain ``{epoch}`` (counted
    from 1), e.g. ``"model-{epoch:03d}.cnn"``, to keep one file per epoch.
    The file's provenance records the epoch and its metrics.
    """

    def __init__(self, path, monitor="val_loss", save_best_only=True, min_delta=0.0):
        self.path = os.fspath(path)
        self.tracker = Monitor(monitor, min_delta)
        self.save_best_only = bool(save_best_only)
        self.saved = []         # paths written, in order

    def on_train_begin(self, model):
        self.tracker.reset()
        self.saved = []

    def on_epoch_end(self, epoch, logs, model):
        improved = self.tracker.improved(epoch, logs)
        if self.save_best_only and not improved:
            return
        from cnncli.modelfile import save_model
        path = self.path.format(epoch=epoch + 1)
        save_model(model, path, provenance={"epoch": epoch + 1,
                                            "metrics": {k: float(v) for k, v in logs.items()}})
        self.saved.append(path)


def _snapshot(model):
    return ({name: p.value.copy() for name, p in model.named_parameters()},
            {name: b.copy() for name, b in model.buffers().items()})


def _restore(model, state):
    values, buffers = state
    for name, parameter in model.named_parameters():
        parameter.value[...] = values[name]
    for name, buffer in model.buffers().items():
        buffer[...] = buffers[name]
