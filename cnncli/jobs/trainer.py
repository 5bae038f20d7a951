"""The ``train`` job: an architecture trained from scratch, with checkpoints and exact resume.
"""

import math
import os

import numpy as np

from cnncli import architectures, data as datasets
from cnncli.loading import load_model
from cnncli.modelfile import ModelFileError, save_model
from cnncli.preprocessing import Preprocessing
from cnncli.jobs.common import (JobError, OPTIMIZERS, Reporter, SCHEDULES, TrainResult, agreed,
                                at_least_two_classes, check_run_outputs, class_list,
                                data_parallel, is_writer, load_splits, locked, make_optimizer,
                                make_schedule, on_threads, positive, run_checkpointed,
                                TRAINING_PARTS, train_val)
from cnncli.jobs.history import write_history
from cnncli.jobs.checkpoints import Checkpointer, restore_training_state


@on_threads
def train(data, arch="lenet", output="model.cnn", epochs=10, batch_size=32, lr=1e-3,
          optimizer="adam", schedule="constant", momentum=0.9, weight_decay=0.0, seed=0,
          threads=None, val_split=0.1, shift=0, flip=False, size=None, channels=None,
          skip_bad=False, checkpoints=None, resume=False, force=False, classes=None,
          per_class=None, sync_batchnorm=False, reporter=None):
    """Train architecture ``arch`` from scratch on ``data`` and save it to ``output``.

    ``classes`` keeps only the named classes of the data (a list, or names
    separated by commas), ``per_class`` at most that many training images of
    each. See the module notes for checkpoints and ``resume``. Raises JobError for
    expected failures, TrainingDiverged when the loss is no longer finite, and
    lets KeyboardInterrupt through after making sure a checkpoint exists.

    Started by mpirun with several ranks, the run is data-parallel
    (``cnncli.distributed``): every rank trains its shard of each batch, and
    rank 0 alone checks and writes the files and reports progress;
    ``sync_batchnorm`` gives BatchNorm the global batch's statistics.
    """
    comm = data_parallel()
    reporter = (reporter or Reporter()) if is_writer(comm) else Reporter()
    if arch not in architectures.ARCHITECTURES:
        raise JobError(f"--arch: expected one of {', '.join(architectures.ARCHITECTURES)}, "
                       f"got {arch!r}")
    if optimizer not in OPTIMIZERS:
        raise JobError(f"--optimizer: expected one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if schedule not in SCHEDULES:
        raise JobError(f"--schedule: expected one of {', '.join(SCHEDULES)}, got {schedule!r}")
    for name, value in (("--epochs", epochs), ("--batch-size", batch_size)):
        positive(name, value)
    classes = class_list(classes)
    if per_class is not None:
        positive("--per-class", per_class)
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
                "classes": classes, "per_class": per_class,
                "sync_batchnorm": bool(sync_batchnorm)}
    # Checked under the locks, so two runs cannot both find the output free.
    with locked(output, folder, comm=comm):
        agreed(comm, lambda: check_run_outputs(output, folder, resume, force))
        splits = load_splits(data, skip_bad, channels, size, reporter, classes, per_class,
                             seed, comm=comm, parts=TRAINING_PARTS)
        train_part, val_part = train_val(splits, val_split, seed)
        at_least_two_classes(train_part)
        return _train_run(settings, train_part, val_part, output, folder, resume, reporter,
                          comm)


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


def _train_run(settings, train_part, val_part, output, folder, resume, reporter, comm=None):
    """The run of ``train`` once its options are checked and its outputs locked."""
    epochs, batch_size, seed = settings["epochs"], settings["batch_size"], settings["seed"]
    model = _new_model(settings, train_part)
    last = os.path.join(folder, "last.cnn")
    batches = math.ceil(len(train_part) / batch_size)
    opt = make_optimizer(settings["optimizer"], model.named_parameters(), settings["lr"],
                         settings["momentum"], settings["weight_decay"])
    sched = make_schedule(settings["schedule"], opt, epochs, batches)
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
        start, position, history, best = restore_training_state(last, model, opt, sched,
                                                                augmentation, settings,
                                                                batches)
        where = f"epoch {start}" if not position else \
            f"batch {position['batch']} of epoch {start + 1}"
        reporter.message(f"resuming from {last} after {where}")
        if start > epochs or (start == epochs and position):
            raise JobError(f"--resume: the checkpoint has done {start} epochs already; ask "
                           f"for more with --epochs")
    writer = is_writer(comm)
    if writer:
        os.makedirs(folder, exist_ok=True)
    monitor = "val_accuracy" if val_part is not None else "loss"
    checkpointer = Checkpointer(folder, settings, opt, sched, augmentation, history, monitor,
                                writes=writer)
    checkpointer.restore_best(best)
    if not resume:
        checkpointer.save_last(model, 0)
    if start < epochs:
        _fit_with_checkpoints(model, train_part, val_part, settings, opt, sched, augmentation,
                              checkpointer, start, position, batches, reporter, comm)
    else:
        # Every epoch was done, but the final model was never written (say,
        # the disk was full): the checkpoint holds the finished weights.
        reporter.message(f"{last} has finished all {epochs} epochs; writing the final model")
    if writer:
        save_model(model, output, overwrite=True,
                   provenance={"epochs": epochs, "metrics": history[-1] if history else {}})
        write_history(output, "train", history, ["train"] * len(history))
    return TrainResult(model, history, output, checkpoints=folder,
                       best=checkpointer.best, resumed_from=last if resume else None,
                       skipped=train_part.skipped)


def _fit_with_checkpoints(model, train_part, val_part, settings, optimizer, schedule,
                          augmentation, checkpointer, start, position, batches, reporter,
                          comm=None):
    transform = datasets.batch_transform(model.preprocessing, train_part.pixel_max, augmentation)
    val_transform = datasets.batch_transform(model.preprocessing, train_part.pixel_max)
    run_checkpointed(model, train_part.x, train_part.y,
                     None if val_part is None else (val_part.x, val_part.y), transform,
                     val_transform, settings["epochs"], settings["batch_size"], optimizer,
                     schedule, settings["seed"], checkpointer, reporter, "", start, position,
                     comm, settings["sync_batchnorm"])
