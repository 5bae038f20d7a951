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

import numpy as np

from cnncli.functional import softmax
from cnncli.layers import Softmax
from cnncli.layers.base import channels_last_hint
from cnncli.losses import SoftmaxCrossEntropy
from cnncli.optimizers import Adam
from cnncli.validation import positive_int
from cnncli.callbacks import (Callback, EarlyStopping, History, Interrupted, ModelCheckpoint,
                              Monitor, StopTraining)

__all__ = ["fit", "evaluate", "predict", "predict_proba", "predict_outputs", "History", "Callback",
           "EarlyStopping", "ModelCheckpoint", "StopTraining", "Interrupted", "Monitor",
           "default_loss", "ends_in_softmax"]


def _check_data(x, y, model, transform=None):
    """x as an array (or a lazy array-like with shape and row indexing), y as an array.

    With a ``transform`` (applied to each batch), x holds raw data whose
    shape the transform adapts, so only the lengths are checked.
    """
    if not hasattr(x, "shape") or not hasattr(x, "__getitem__"):
        x = np.asarray(x)
    model._ready(x if transform is None else None)
    if transform is None and (len(x.shape) != len(model.input_shape) + 1
                              or tuple(x.shape[1:]) != model.input_shape):
        raise ValueError(f"x: expected shape (N, {', '.join(map(str, model.input_shape))}), "
                         f"got {x.shape}{channels_last_hint(x.shape[1:], model.input_shape)}")
    if y is not None:
        y = np.asarray(y)
        if len(y) != len(x):
            raise ValueError(f"y: expected {len(x)} labels (one per sample of x), got {len(y)}")
    return x, y


def _split_off(x, y, fraction):
    """(x, y) without their last ``fraction``, and that part as validation data."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not 0 <= fraction < 1:
        raise ValueError(f"validation_split: expected a fraction in [0, 1), got {fraction!r}")
    held = int(len(x) * fraction)
    if held == 0 or held == len(x):
        raise ValueError(f"validation_split: {fraction} of {len(x)} samples leaves "
                         f"{'no' if held == 0 else 'every'} sample for validation")
    return x[:-held], y[:-held], (x[-held:], y[-held:])


def ends_in_softmax(model):
    """Whether the model's outputs are class probabilities: it ends in a Softmax over its
    outputs, or in a layer with ``activation="softmax"``."""
    if not len(model):
        return False
    last = model[-1]
    return (isinstance(last, Softmax) and len(last.output_shape or ()) == 1) or \
        getattr(last, "activation", None) == "softmax"


def default_loss(model, loss):
    """The loss ``fit`` and ``evaluate`` use: ``loss``, or softmax cross-entropy of the
    logits, or of the probabilities when the model ends in a softmax, so the softmax is
    never applied twice. A softmax cross-entropy of logits given for a model that ends in
    a softmax is refused."""
    probabilities = ends_in_softmax(model)
    if loss is None:
        return SoftmaxCrossEntropy(from_logits=not probabilities)
    if probabilities and isinstance(loss, SoftmaxCrossEntropy) and loss.from_logits:
        raise ValueError("loss: the model ends in a softmax, so its outputs are already "
                         "probabilities; SoftmaxCrossEntropy() would apply softmax twice. "
                         "Pass SoftmaxCrossEntropy(from_logits=False), or leave loss unset")
    return loss


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
        callbacks=(), shuffle=True, seed=0, transform=None, validation_transform=None,
        schedule=None, initial_epoch=0, initial_batch=0, initial_totals=None, interrupt=None,
        validation_split=0.0, verbose=0, comm=None, sync_batchnorm=False):
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
        ``loss(outputs, targets) -> (value, grad)``; by default ``default_loss``:
        softmax cross-entropy (of probabilities when the model ends in a softmax).
    validation_data : (x_val, y_val), optional
    validation_split : float
        As Keras: the last samples of (x, y), before shuffling, for validation.
    verbose : 0, 1 or 2
        As Keras: silent, a progress line, or one line per epoch.
    comm : cnncli.distributed.Communicator, optional
        Data-parallel over MPI: every rank calls ``fit`` alike (``cnncli.distributed``);
        ``sync_batchnorm`` gives BatchNorm the global batch's statistics.
    callbacks : list of Callback
    shuffle : bool
        Reshuffle every epoch; epoch e's order comes from ``(seed, e)``, so a
        resumed run sees the same orders as an uninterrupted one.
    schedule : StepLR, CosineLR or OneCycleLR, optional (stepped every epoch or batch)
    initial_epoch, initial_batch, initial_totals : optional
        Resume after ``initial_epoch`` epochs and ``initial_batch`` batches of the next,
        from the running totals an ``Interrupted`` exception carried.
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
    x, y, validation_data, validation_transform = _training_data(
        model, x, y, transform, validation_data, validation_split, validation_transform)
    optimizer = Adam(model.named_parameters(), lr=1e-3) if optimizer is None else optimizer
    loss = default_loss(model, loss)
    history, batches = History(), math.ceil(len(x) / batch_size)
    callbacks = _all_callbacks(callbacks, epochs, verbose,
                               (comm, len(x), batch_size) if sync_batchnorm else None)
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
                                    totals=initial_totals if resume else (0.0, 0, 0),
                                    comm=comm)
                if schedule is not None and not schedule.per_batch:
                    schedule.step()
                if validation_data is not None:
                    logs.update(_validation_logs(model, *validation_data, loss,
                                                 validation_transform, comm))
                history.append(logs)
                _end_epoch(callbacks, epoch, logs, model)
    except StopTraining:
        history.stopped_early = True
    finally:
        for callback in callbacks:
            callback.on_train_end(model)
    return history


def _training_data(model, x, y, transform, validation_data, validation_split,
                   validation_transform):
    """(x, y, validation data, its transform), checked, validation split off if asked."""
    x, y = _check_data(x, y, model, transform)
    if len(x) == 0:
        raise ValueError("x: expected at least one sample, got none")
    if validation_data is None and validation_split:
        x, y, validation_data = _split_off(x, y, validation_split)
        validation_transform = validation_transform or transform
    if validation_data is not None:
        validation_data = _check_data(*validation_data, model, validation_transform)
    return x, y, validation_data, validation_transform


def _all_callbacks(callbacks, epochs, verbose, synchronized):
    """The callbacks, a printer of progress for ``verbose`` 1 or 2, and the synchronized
    BatchNorm of ``synchronized`` (comm, samples, batch size) when asked."""
    if verbose not in (0, 1, 2, False, True):
        raise ValueError(f"verbose: expected 0, 1 or 2, got {verbose!r}")
    callbacks = list(callbacks)
    if verbose:
        from cnncli.progress import ProgressPrinter
        callbacks.append(ProgressPrinter(epochs, int(verbose)))
    if synchronized is not None and synchronized[0] is not None:
        from cnncli.distributed import SynchronizedBatchNorm
        callbacks.append(SynchronizedBatchNorm(*synchronized))
    return callbacks


def _train_epoch(model, x, y, order, batch_size, epoch, optimizer, loss, schedule, transform,
                 callbacks, interrupt, first, totals, comm=None):
    """One epoch of ``fit`` from batch ``first`` on, starting from the running ``totals``
    (loss sum, correct, seen); returns the epoch's logs."""
    total_loss, correct, seen = totals
    batches = math.ceil(len(x) / batch_size)
    logs = {}
    for batch, indices in enumerate(_batches(len(x), batch_size, order)):
        if batch < first:
            continue
        asked = interrupt is not None and batch + 1 < batches and interrupt()
        value, count, hits, asked = _step(model, x, y, indices, loss, transform, optimizer,
                                          comm, asked)
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at epoch {epoch + 1}, "
                                     f"batch {batch + 1}; lower the learning rate")
        # L1/L2 penalties count in the reported loss, as in Keras.
        value += model.regularize()
        optimizer.step()
        if comm is not None:
            comm.average_buffers(model)
        if schedule is not None and schedule.per_batch:
            schedule.step()
        total_loss += value * count
        seen += count
        correct = None if hits is None or correct is None else correct + hits
        logs = {"loss": total_loss / seen}
        if correct is not None:
            logs["accuracy"] = correct / seen
        for callback in callbacks:
            callback.on_batch_end(epoch, batch, batches, logs)
        if asked:
            raise Interrupted(epoch, batch + 1, (total_loss, correct, seen))
    return logs


def _step(model, x, y, indices, loss, transform, optimizer, comm, asked):
    """Forward and backward of one batch, leaving the gradients of its mean loss in the
    parameters; returns (mean loss, samples, correct or None, interrupt asked). With a
    communicator, this rank takes its shard and everything is summed over the ranks."""
    if comm is not None and isinstance(indices, slice):
        indices = np.arange(*indices.indices(len(x)))
    local = indices if comm is None else comm.shard(indices)
    # A batch split over ranks goes through a transform that takes its place in the whole
    # batch (data.batch_transform's): random augmentation is drawn for the whole batch, as
    # one process draws it, even by a rank left no rows, so the next batches stay in step.
    shard = (comm.bounds(len(indices))[0], len(indices)) if comm is not None and \
        transform is not None and getattr(transform, "shards", False) else None
    optimizer.zero_grad()
    value, count, hits = 0.0, 0, 0
    if comm is None or len(local):
        inputs, targets = x[local], y[local]
        if shard is not None:
            inputs = transform(inputs, shard=shard)
        elif transform is not None:
            inputs = transform(inputs)
        outputs = model.forward(inputs, training=True)
        value, grad = loss(outputs, targets)
        count, hits = len(targets), _accuracy_count(outputs, targets)
        if comm is not None:
            # Scaled by this rank's share, the ranks' gradients add up to the gradient of
            # the whole batch's mean loss.
            grad = grad * grad.dtype.type(count / len(indices))
        if math.isfinite(value):
            model.backward(grad)
    elif shard is not None:
        transform(x[local], shard=shard)
    if comm is None:
        return value, count, hits, asked
    totals = comm.sum(np.array([value * count, count, hits or 0, hits is None, asked],
                               dtype=np.float64))
    comm.sum_gradients(model)
    count = int(totals[1])
    return float(totals[0] / count), count, None if totals[3] else int(totals[2]), \
        bool(totals[4])


def _validation_logs(model, x_val, y_val, loss, transform, comm=None):
    metrics = evaluate(model, x_val, y_val, loss=loss, transform=transform, comm=comm)
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


def evaluate(model, x, y, batch_size=256, loss=None, transform=None, comm=None):
    """Mean loss (and accuracy, for class labels) of ``model`` on (x, y), in inference mode.

    ``transform`` is applied to each batch of x first (see ``fit``). With a
    communicator, each rank evaluates its share and the totals are summed.
    """
    x, y = _check_data(x, y, model, transform)
    if len(x) == 0:
        raise ValueError("x: expected at least one sample, got none")
    loss = default_loss(model, loss)
    low, high = (0, len(x)) if comm is None else comm.bounds(len(x))
    total_loss, correct = 0.0, 0
    for start in range(low, high, batch_size):
        indices = slice(start, min(start + batch_size, high))
        outputs = model.forward(_batch_inputs(x, indices, transform))
        total_loss += loss(outputs, y[indices])[0] * len(outputs)
        hits = _accuracy_count(outputs, y[indices])
        correct = None if hits is None or correct is None else correct + hits
    if comm is not None:
        totals = comm.sum(np.array([total_loss, correct or 0, correct is None]))
        total_loss, correct = float(totals[0]), None if totals[2] else int(totals[1])
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
    if ends_in_softmax(model):
        return outputs
    # Infinite logits give NaN probabilities, which callers check for; NumPy's
    # warnings about them would only be noise.
    with np.errstate(invalid="ignore", over="ignore"):
        return softmax(outputs, dim=1, out=outputs)


def predict(model, x, batch_size=256, transform=None):
    """Predicted class indices, (N,)."""
    return predict_proba(model, x, batch_size, transform).argmax(axis=1)
