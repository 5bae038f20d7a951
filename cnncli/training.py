"""Training loops: fit, evaluate, predict.

    history = fit(model, x_train, y_train, epochs=10, batch_size=32,
                  optimizer=Adam(model.named_parameters(), lr=1e-3),
                  validation_data=(x_val, y_val),
                  callbacks=[EarlyStopping(patience=3, restore_best=True)])
    history["val_accuracy"]        # one value per epoch

Training reports through callbacks (``Callback``: train, epoch and batch
hooks, which a command-line tool can drive) and returns result objects; it
never prints.
With the same seeds, a run gives the same weights whatever the thread
count: the kernels are deterministic and shuffling is seeded.
"""

import math
import os

import numpy as np

from cnncli.functional import softmax
from cnncli.layers import Softmax
from cnncli.losses import SoftmaxCrossEntropy
from cnncli.optimizers import Adam
from cnncli.validation import positive_int

__all__ = ["fit", "evaluate", "predict", "predict_proba", "predict_outputs", "History", "Callback",
           "EarlyStopping", "ModelCheckpoint", "StopTraining", "Interrupted", "Monitor"]


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


def _check_data(x, y, model, transform=None):
    """x as an array (or a lazy array-like with shape and row indexing), y as an array.

    With a ``transform`` (applied to each batch), x holds raw data whose
    shape the transform adapts, so only the lengths are checked.
    """
    if not hasattr(x, "shape") or not hasattr(x, "__getitem__"):
        x = np.asarray(x)
    if transform is None and (len(x.shape) != len(model.input_shape) + 1
                              or tuple(x.shape[1:]) != model.input_shape):
        raise ValueError(f"x: expected shape (N, {', '.join(map(str, model.input_shape))}), "
                         f"got {x.shape}")
    if y is not None:
        y = np.asarray(y)
        if len(y) != len(x):
            raise ValueError(f"y: expected {len(x)} labels (one per sample of x), got {len(y)}")
    return x, y


def _batches(count, batch_size, order=None):
    for start in range(0, count, batch_size):
        indices = slice(start, start + batch_size) if order is None else \
            order[start:start + batch_size]
        yield indices


def _accuracy_count(outputs, labels):
    if outputs.ndim == 2 and outputs.shape[1] > 1 and np.issubdtype(labels.dtype, np.integer):
        return int(np.sum(outputs.argmax(axis=1) == labels))
    return None


def fit(model, x, y, epochs=1, batch_size=32, optimizer=None, loss=None, validation_data=None,
        callbacks=(), shuffle=True, seed=0, transform=None,
        validation_transform=None, schedule=None, initial_epoch=0, initial_batch=0,
        initial_totals=None, interrupt=None):
    """Train ``model`` on (x, y) with mini-batch gradient descent; returns a ``History``.

    Parameters
    ----------
    model : Sequential
    x : ndarray, shape (N, ...) matching the model's input shape
    y : ndarray, shape (N,) of class indices (or targets for the loss)
    epochs, batch_size : int
    optimizer : Optimizer, optional
        Defaults to ``Adam(model.named_parameters(), lr=1e-3)``.
    loss : callable, optional
        ``loss(outputs, targets) -> (value, grad)``; defaults to softmax
        cross-entropy.
    validation_data : (x_val, y_val), optional
    callbacks : list of Callback
    shuffle : bool
        Reshuffle the samples every epoch; epoch e's order comes from
        ``(seed, e)``, so a run resumed at ``initial_epoch`` sees the same
        orders as an uninterrupted one.
    schedule : StepLR, CosineLR or OneCycleLR, optional
        Stepped after every epoch (one-cycle: after every batch).
    initial_epoch : int
        The number of epochs already done (when resuming); training runs
        epochs ``initial_epoch .. epochs - 1``.
    initial_batch, initial_totals : optional
        Resume inside epoch ``initial_epoch``: skip its first
        ``initial_batch`` batches, starting from the running totals an
        ``Interrupted`` exception carried.
    interrupt : callable, optional
        Checked after every batch; when it returns True, training stops
        there by raising ``Interrupted`` (a clean point to save a checkpoint).
    transform, validation_transform : callable, optional
        Applied to each batch of x (of the validation x) before the model:
        preprocessing of raw pixels and, for training, augmentation. x may
        then be any array-like with ``shape`` and row indexing (a memory map).
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        positive_int(name, value)
    x, y = _check_data(x, y, model, transform)
    if len(x) == 0:
        raise ValueError("x: expected at least one sample, got none")
    if validation_data is not None:
        x_val, y_val = _check_data(*validation_data, model, validation_transform)
    optimizer = Adam(model.named_parameters(), lr=1e-3) if optimizer is None else optimizer
    loss = SoftmaxCrossEntropy() if loss is None else loss
    history, batches = History(), math.ceil(len(x) / batch_size)
    for callback in callbacks:
        callback.on_train_begin(model)
    # A diverging run overflows before its loss turns non-finite; the check
    # in the epoch reports it once, so NumPy's warnings along the way are noise.
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            for epoch in range(int(initial_epoch), int(epochs)):
                order = np.random.default_rng([seed, epoch]).permutation(len(x)) \
                    if shuffle else None
                for callback in callbacks:
                    callback.on_epoch_begin(epoch, batches, model)
                resume = epoch == initial_epoch and initial_batch
                logs = _train_epoch(model, x, y, order, batch_size, epoch, optimizer, loss,
                                    schedule, transform, callbacks, interrupt,
                                    first=int(initial_batch) if resume else 0,
                                    totals=initial_totals if resume else (0.0, 0, 0))
                if schedule is not None and not schedule.per_batch:
                    schedule.step()
                if validation_data is not None:
                    logs.update(_validation_logs(model, x_val, y_val, loss,
                                                 validation_transform))
                history.append(logs)
                _end_epoch(callbacks, epoch, logs, model)
    except StopTraining:
        history.stopped_early = True
    finally:
        for callback in callbacks:
            callback.on_train_end(model)
    return history


def _train_epoch(model, x, y, order, batch_size, epoch, optimizer, loss, schedule, transform,
                 callbacks, interrupt, first, totals):
    """One epoch of ``fit`` from batch ``first`` on, starting from the running ``totals``
    (loss sum, correct, seen); returns the epoch's logs."""
    total_loss, correct, seen = totals
    batches = math.ceil(len(x) / batch_size)
    logs = {}
    for batch, indices in enumerate(_batches(len(x), batch_size, order)):
        if batch < first:
            continue
        inputs, targets = x[indices], y[indices]
        if transform is not None:
            inputs = transform(inputs)
        outputs = model.forward(inputs, training=True)
        value, grad = loss(outputs, targets)
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at epoch {epoch + 1}, "
                                     f"batch {batch + 1}; lower the learning rate")
        optimizer.zero_grad()
        model.backward(grad)
        # L1/L2 penalties count in the reported loss, as in Keras.
        value += model.regularize()
        optimizer.step()
        if schedule is not None and schedule.per_batch:
            schedule.step()
        total_loss += value * len(targets)
        seen += len(targets)
        hits = _accuracy_count(outputs, targets)
        correct = None if hits is None or correct is None else correct + hits
        logs = {"loss": total_loss / seen}
        if correct is not None:
            logs["accuracy"] = correct / seen
        for callback in callbacks:
            callback.on_batch_end(epoch, batch, batches, logs)
        if interrupt is not None and batch + 1 < batches and interrupt():
            raise Interrupted(epoch, batch + 1, (total_loss, correct, seen))
    return logs


def _validation_logs(model, x_val, y_val, loss, transform):
    metrics = evaluate(model, x_val, y_val, loss=loss, transform=transform)
    return {f"val_{key}": value for key, value in metrics.items()}


def _end_epoch(callbacks, epoch, logs, model):
    """Every callback sees the epoch, even after one asked to stop; then stop if one did."""
    stop = False
    for callback in callbacks:
        try:
            callback.on_epoch_end(epoch, logs, model)
        except StopTraining:
            stop = True
    if stop:
        raise StopTraining


def _batch_inputs(x, indices, transform):
    inputs = x[indices]
    return np.asarray(inputs) if transform is None else transform(inputs)


def evaluate(model, x, y, batch_size=256, loss=None, transform=None):
    """Mean loss (and accuracy, for class labels) of ``model`` on (x, y), in inference mode.

    ``transform`` is applied to each batch of x first (see ``fit``).
    """
    x, y = _check_data(x, y, model, transform)
    if len(x) == 0:
        raise ValueError("x: expected at least one sample, got none")
    loss = SoftmaxCrossEntropy() if loss is None else loss
    total_loss, correct = 0.0, 0
    for indices in _batches(len(x), batch_size):
        outputs = model.forward(_batch_inputs(x, indices, transform))
        total_loss += loss(outputs, y[indices])[0] * len(outputs)
        hits = _accuracy_count(outputs, y[indices])
        correct = None if hits is None or correct is None else correct + hits
    metrics = {"loss": total_loss / len(x)}
    if correct is not None:
        metrics["accuracy"] = correct / len(x)
    return metrics


# Inference batches are made smaller where needed to keep the largest
# activation of one batch under this size: a ResNet at 224x224 has 3 MiB of
# activations per image in its first layers, so 256 images would take
# gigabytes, while about 40 keep the kernels just as busy.
INFERENCE_ACTIVATION_BYTES = 128 << 20


def inference_batch_size(model, batch_size):
    """``batch_size``, or fewer where the model's activations would not fit the budget."""
    shapes = [model.input_shape] + [layer.output_shape for layer in model]
    per_sample = max(math.prod(shape) for shape in shapes) * model.dtype.itemsize
    return max(1, min(batch_size, INFERENCE_ACTIVATION_BYTES // per_sample))


def predict_outputs(model, x, batch_size=256, transform=None):
    """The model's outputs for x, (N,) + model.output_shape, computed in batches in inference
    mode; ``transform`` is applied to each batch of x first (see ``fit``). Batches are cut
    to ``inference_batch_size`` so large inputs do not take gigabytes."""
    x, _ = _check_data(x, None, model, transform)
    outputs = np.empty((len(x),) + tuple(model.output_shape), dtype=model.dtype)
    for indices in _batches(len(x), inference_batch_size(model, batch_size)):
        outputs[indices] = model.forward(_batch_inputs(x, indices, transform))
    return outputs


def predict_proba(model, x, batch_size=256, transform=None):
    """Class probabilities, (N, classes): the softmax of the model's logits.

    A model that ends in a Softmax layer already outputs probabilities.
    """
    outputs = predict_outputs(model, x, batch_size, transform)
    if isinstance(model[-1], Softmax):
        return outputs
    # Infinite logits give NaN probabilities, which callers check for; NumPy's
    # warnings about them would only be noise.
    with np.errstate(invalid="ignore", over="ignore"):
        return softmax(outputs, dim=1, out=outputs)


def predict(model, x, batch_size=256, transform=None):
    """Predicted class indices, (N,)."""
    return predict_proba(model, x, batch_size, transform).argmax(axis=1)
