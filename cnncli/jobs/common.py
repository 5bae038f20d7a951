"""What the jobs share: their errors, option checks, data loading, optimizers and
schedules, the reporter, run locks, opening a model by name or path.
"""

import contextlib
import functools
import inspect
import os
import signal
import threading
import time

import numpy as np

from cnncli import data as datasets, distributed
from cnncli.data import DataError
from cnncli.imagefolder import ImageFiles, decode_files
from cnncli.files import OutputLocked, RunLock
from cnncli.functional import threads
from cnncli.layers import Dropout
from cnncli.loading import load_model, model_path
from cnncli.modelfile import ModelFileError
from cnncli.validation import positive_int
from cnncli.optimizers import Adam, AdamW, CosineLR, OneCycleLR, SGD, StepLR
from cnncli.training import Callback, Interrupted, fit
from cnncli.resources import zoo_models


OPTIMIZERS = ("adam", "adamw", "sgd")


SCHEDULES = ("constant", "step", "cosine", "onecycle")


class JobError(ValueError):
    """An expected failure of a job (bad argument, existing file, class mismatch...):
    the message is one line for the user."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(Exception):
    """Ctrl-C stopped training between two batches; a checkpoint of that point was saved."""


class CtrlC:
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


def check_output(path, force):
    path = os.fspath(path)
    if os.path.isdir(path):
        raise JobError(f"{path}: is a folder; give a file name for the model")
    if os.path.exists(path) and not force:
        raise JobError(f"{path}: already exists; pass --force to overwrite it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise JobError(f"{folder}: no such folder for the output")
    return path


def positive(name, value):
    try:
        positive_int(name, value)
    except ValueError as error:
        raise JobError(str(error)) from None


def on_threads(job):
    """Run ``job`` with the kernels on its ``threads`` argument's count (None: as they are),
    restoring the previous setting when it ends."""
    signature = inspect.signature(job)

    @functools.wraps(job)
    def run(*args, **kwargs):
        count = signature.bind(*args, **kwargs).arguments.get("threads")
        if count is None:
            return job(*args, **kwargs)
        positive("--threads", count)
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(threads(count))
            except ValueError as error:
                raise JobError(f"--threads: {error}") from None
            return job(*args, **kwargs)

    return run


def class_list(classes):
    """Class names from a list or a comma-separated string; None stays None."""
    if classes is None:
        return None
    names = classes.split(",") if isinstance(classes, str) else list(classes)
    names = [str(name).strip() for name in names]
    if not names or not all(names):
        raise JobError(f"--classes: expected comma-separated class names, got {classes!r}")
    return names


def model_image_format(model):
    """The channels and size a model's images load at, so a folder of photos of any size
    becomes what the model takes (None, None when the model does not say)."""
    if model.preprocessing is None:
        return {}
    return {"channels": model.preprocessing.channels, "size": model.preprocessing.size}


PARTS = ("train", "val", "test")
# What training reads: the test part is left to `eval`.
TRAINING_PARTS = ("train", "val")


def load_splits(data_source, skip_bad, channels=None, size=None, reporter=None,
                classes=None, per_class=None, seed=0, lazy=False, comm=None, parts=PARTS):
    """The dataset's ``parts`` (the others left out), restricted to ``classes`` and to
    ``per_class`` training images of each class (chosen by ``seed``) when given. An image
    folder's files are decoded once the images are chosen, so those left out are never
    read, or only when indexed with ``lazy``. In a data-parallel run (``comm``), the ranks
    of each machine decode an image folder together, once, into one memory map they all
    read."""
    try:
        splits = datasets.load_dataset(data_source, channels=channels, size=size,
                                       skip_bad=skip_bad, lazy=True)
        for name in PARTS:
            if name not in parts:
                setattr(splits, name, None)
        if classes is not None:
            for name in parts:
                if getattr(splits, name) is not None:
                    setattr(splits, name, datasets.select_classes(getattr(splits, name),
                                                                  classes))
        if per_class is not None:
            splits.train = datasets.sample_per_class(splits.train, per_class, seed)
        if not lazy:
            for name in parts:
                part = getattr(splits, name)
                if part is not None and isinstance(part.x, ImageFiles):
                    setattr(splits, name, _decoded(part, skip_bad) if comm is None else
                            _decoded_together(part, comm, skip_bad))
    except DataError as error:
        raise JobError(str(error)) from None
    # The parts of a folder share what its scan left out: each item is named once.
    _report_skipped(list(dict.fromkeys(item for part in (splits.train, splits.val, splits.test)
                                       if part is not None for item in part.skipped)),
                    reporter)
    return splits


def decoded_part(dataset, skip_bad, reporter=None):
    """A part of ``load_splits(..., lazy=True)`` with its images decoded, for a job that
    reads one part (``eval``): files that cannot be decoded are left out and named under
    ``skip_bad``."""
    if not isinstance(dataset.x, ImageFiles):
        return dataset
    try:
        decoded = _decoded(dataset, skip_bad)
    except DataError as error:
        raise JobError(str(error)) from None
    _report_skipped(decoded.skipped[len(dataset.skipped):], reporter)
    return decoded


def _report_skipped(skipped, reporter):
    if skipped and reporter is not None:
        # Every one is named: the user has to find and fix them.
        listed = "\n  ".join(skipped)
        reporter.message(f"skipped {len(skipped)} bad item(s):\n  {listed}")


def _decoded(dataset, skip_bad):
    """A lazily read image part, decoded; files that cannot be decoded are left out under
    ``skip_bad``."""
    pixels, labels, bad = decode_files(dataset.x, dataset.y, dataset.source, skip_bad)
    return datasets.Dataset(pixels, labels, dataset.classes, dataset.pixel_max,
                            dataset.source, dataset.skipped + bad)


def _decoded_together(dataset, comm, skip_bad):
    """A lazily read image part, decoded by the ranks of each machine together; files that
    cannot be decoded are left out (under ``skip_bad``) the same way on every rank."""
    pixels, bad = comm.decode_shared(dataset.x, skip_bad)
    decoded = datasets.Dataset(pixels, dataset.y, dataset.classes, dataset.pixel_max,
                               dataset.source, dataset.skipped + [message for _, message in bad])
    if not bad:
        return decoded
    return decoded.subset(np.setdiff1d(np.arange(len(decoded)), [row for row, _ in bad]))


def at_least_two_classes(dataset):
    """Training needs two classes to tell apart (and a sample to learn from)."""
    if len(dataset) == 0:
        raise JobError(f"{dataset.source}: no samples to train on")
    present = np.count_nonzero(dataset.class_counts())
    if present < 2:
        raise JobError(f"{dataset.source}: {present} class with images "
                       f"({', '.join(dataset.classes[:3])}); training needs at least 2")


def train_val(splits, val_split, seed):
    """The training and validation parts: the source's own, or a stratified split."""
    if splits.val is not None:
        return splits.train, splits.val
    if not val_split:
        return splits.train, None
    try:
        return datasets.stratified_split(splits.train, val_split, seed=seed)
    except (DataError, ValueError) as error:
        raise JobError(str(error)) from None


def make_optimizer(name, groups, lr, momentum, weight_decay):
    if name == "sgd":
        return SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return AdamW(groups, lr=lr, weight_decay=weight_decay)
    return Adam(groups, lr=lr, weight_decay=weight_decay)


def make_schedule(name, optimizer, epochs, batches):
    if name == "step":
        return StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1)
    if name == "cosine":
        return CosineLR(optimizer, total=epochs)
    if name == "onecycle":
        return OneCycleLR(optimizer, total=max(2, epochs * batches))
    return None


def random_layers(model):
    """Every Dropout layer, nested blocks included, in a fixed order."""
    return [layer for _, layer in model.named_layers() if isinstance(layer, Dropout)]


class EpochReporter(Callback):
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


def data_parallel():
    """The MPI communicator of a run started by mpirun with several ranks, else None."""
    try:
        return distributed.world()
    except ImportError as error:
        raise JobError(str(error)) from None


def agreed(comm, check):
    """Run ``check`` (which raises JobError or returns) on rank 0 only, and raise its
    JobError on every rank: checks of files that rank 0 is about to write must not give
    other ranks a different answer a moment later."""
    if comm is None:
        return check()
    message = None
    if comm.rank == 0:
        try:
            check()
        except JobError as error:
            message = str(error)
    message = comm.comm.bcast(message, root=0)
    if message is not None:
        raise JobError(message)


def check_run_outputs(output, folder, resume, force):
    """Refuse a run whose output exists (without ``force``), whose ``--resume`` has no
    checkpoint, or whose checkpoint folder holds an earlier run (without ``resume`` or
    ``force``)."""
    last = os.path.join(folder, "last.cnn")
    if not resume:
        check_output(output, force)
    if resume and not os.path.exists(last):
        raise JobError(f"--resume: no checkpoint at {last}")
    if not resume and os.path.exists(last) and not force:
        raise JobError(f"{folder}: holds checkpoints of an earlier run; pass --resume to "
                       "continue it or --force to start over")


def is_writer(comm):
    """Whether this process writes files and prints progress: rank 0 of a data-parallel
    run, or the only process."""
    return comm is None or comm.rank == 0


def locked(*targets, comm=None):
    """The run locks of every file and folder a run writes (see ``cnncli.files.RunLock``);
    in a data-parallel run, rank 0 holds them."""
    stack = contextlib.ExitStack()
    if not is_writer(comm):
        return stack
    try:
        for target in targets:
            stack.enter_context(RunLock(target))
    except OutputLocked as error:
        stack.close()
        raise JobError(str(error)) from None
    return stack


def resolve_model(name_or_path):
    """A model file's path from a path or the name of a shipped pretrained model."""
    path = model_path(name_or_path)
    if os.path.lexists(path):
        return path
    known = ", ".join(name for name, _, _ in zoo_models()) or "none installed"
    raise JobError(f"{path}: no such model file or pretrained model (pretrained: {known})")


def open_model(name_or_path):
    try:
        return load_model(resolve_model(name_or_path))
    except ModelFileError as error:
        raise JobError(str(error)) from None


def model_transform(model, pixel_max):
    if model.preprocessing is None:
        raise JobError("the model file has no preprocessing; it cannot read raw images")
    return datasets.batch_transform(model.preprocessing, pixel_max)


def class_probabilities(model, x, pixel_max, batch_size):
    from cnncli.training import predict_proba
    try:
        probabilities = predict_proba(model, x, batch_size=batch_size,
                                      transform=model_transform(model, pixel_max))
    except DataError as error:
        raise JobError(str(error)) from None
    return finite_outputs(probabilities)


def finite_outputs(outputs):
    """``outputs``, unless some rows hold NaN or infinite values (JobError)."""
    broken = np.count_nonzero(~np.isfinite(outputs).all(axis=1))
    if broken:
        raise JobError(f"the model gives NaN or infinite outputs for {broken} of "
                       f"{len(outputs)} inputs; its weights or preprocessing are broken")
    return outputs


def run_checkpointed(model, x, y, validation, transform, validation_transform, epochs,
                     batch_size, optimizer, schedule, seed, checkpointer, reporter, phase="",
                     first_epoch=0, position=None, comm=None, sync_batchnorm=False):
    """``fit`` for ``epochs`` epochs from epoch ``first_epoch`` (and ``position`` inside it,
    when resuming), writing checkpoints through ``checkpointer``. Ctrl-C saves last.cnn
    where training stopped and raises TrainingInterrupted; a loss that stops being finite
    raises TrainingDiverged naming the last good checkpoint."""
    last = os.path.join(checkpointer.folder, "last.cnn")
    epoch_reporter = EpochReporter(reporter, epochs, phase)
    try:
        with CtrlC() as ctrl_c:
            fit(model, x, y, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                schedule=schedule, seed=seed, initial_epoch=first_epoch,
                initial_batch=position["batch"] if position else 0,
                initial_totals=tuple(position["totals"]) if position else None,
                interrupt=ctrl_c, validation_data=validation, transform=transform,
                validation_transform=validation_transform,
                callbacks=[checkpointer, epoch_reporter], comm=comm,
                sync_batchnorm=sync_batchnorm)
    except FloatingPointError as error:
        raise TrainingDiverged(f"{error}; the last good checkpoint is {last}") from None
    except Interrupted as stop:
        checkpointer.save_last(model, checkpointer.offset + stop.epoch,
                               {"batch": stop.batch, "totals": list(stop.totals)})
        raise TrainingInterrupted(f"interrupted in epoch {checkpointer.offset + stop.epoch + 1}"
                                  f" after batch {stop.batch}; saved {last}; continue with "
                                  "--resume") from None
