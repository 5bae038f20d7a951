"""The ``finetune`` job: transfer learning, in up to three phases.

1. **probe** (``head="lbfgs"``, the default): the pretrained head is replaced for
   the new classes and fitted to convergence on the frozen network's features
   (``cnncli.linear_probe``: a regularised multinomial logistic regression,
   its strength chosen on held-out data), then loaded into the Dense head.
2. **top** (``epochs``): the layers above the frozen backbone train on its
   features, computed once. With the default ``--head lbfgs`` the backbone
   is everything below the classifier block (the trailing Dense layers with
   their activations and Dropout), the block starts from the probed head,
   and the rate warms up and decays along a cosine (one cycle); a block that
   is the head alone is already at its optimum, so the phase is skipped.
   With scarce labels (under ``SCARCE_IMAGES``) it trains by default on
   randomly shifted copies, the frozen layers then running at every step.
   ``head="sgd"`` is the epoch-by-epoch head training of earlier versions:
   everything but the head frozen, a random head, a constant rate.
3. **all layers** (``unfreeze_epochs``): everything trains, the pretrained
   layers at ``backbone_lr_factor`` times the rate (discriminative rates),
   with a warm-up and cosine decay, as fastai's ``fine_tune`` does.

With validation data the saved model is the best epoch of the run by
validation loss (the probe counts as one; the loss tells apart epochs that a
small validation part gives the same accuracy); without, the last.
Checkpoints, ``--resume`` and Ctrl-C work as for ``train`` (see
``cnncli.jobs``): the epochs are counted over the whole run, the probe being
the first, and the files are written at most every ``CHECKPOINT_INTERVAL``
seconds and at the end of every phase.
"""

import math
import os

import numpy as np

from cnncli import data as datasets
from cnncli.layers import Dense, Dropout, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from cnncli.linear_probe import fit_linear_head
from cnncli.loading import load_model
from cnncli.modelfile import ModelFileError, read_training_state, save_model
from cnncli.optimizers import OneCycleLR
from cnncli.preprocessing import Preprocessing
from cnncli.training import evaluate, predict_outputs
from cnncli.jobs.checkpoints import Checkpointer, restore_training_state
from cnncli.jobs.common import (JobError, OPTIMIZERS, Reporter, TrainResult, agreed,
                                at_least_two_classes, check_run_outputs, class_list,
                                data_parallel, is_writer, load_splits, locked, make_optimizer,
                                model_image_format, on_threads, open_model, positive,
                                run_checkpointed, TRAINING_PARTS, train_val)
from cnncli.jobs.history import write_history

HEADS = ("lbfgs", "sgd")

# Settings that must match for --resume to continue a fine-tuning run exactly.
FINETUNE_SETTINGS = ("pretrained", "data", "head", "epochs", "unfreeze_epochs", "batch_size",
                     "lr", "backbone_lr_factor", "freeze", "optimizer", "seed", "val_split",
                     "shift", "flip", "classes", "per_class")

# The fraction of a phase's steps over which the rate warms up (one cycle).
WARMUP = 0.1

# Checkpoints are written after an epoch once this many seconds have passed since the
# last write, and at the end of every phase: the top phase's epochs on cached features
# take milliseconds.
CHECKPOINT_INTERVAL = 5.0

# The default length of the top phase, in optimizer steps: one epoch of a large
# dataset, several of a small one (a hundred images give four steps an epoch).
AUTO_STEPS = 200
MAX_AUTO_EPOCHS = 100

# The default validation split is skipped where it would hold fewer images than this.
AUTO_VAL_SPLIT = 0.1
MIN_AUTO_VALIDATION = 100

# Scarce labels: a training part under this many images (too few for a validation part
# at AUTO_VAL_SPLIT) trains, by default, on randomly shifted copies of its images, by up
# to this fraction of the image's side (a tenth: the usual translation augmentation).
SCARCE_IMAGES = round(MIN_AUTO_VALIDATION / AUTO_VAL_SPLIT)
AUTO_SHIFT = 0.1

# Layers that belong to a classifier block on top of a backbone.
CLASSIFIER_LAYERS = (Dense, ReLU, LeakyReLU, Sigmoid, Tanh, Softmax, Dropout)


@on_threads
def finetune(pretrained, data, output="finetuned.cnn", epochs=None, batch_size=32, lr=1e-3,
             freeze=None, unfreeze_epochs=0, backbone_lr_factor=0.1, optimizer="adam",
             head="lbfgs", seed=0, threads=None, val_split=None, shift=None, flip=False,
             skip_bad=False, force=False, classes=None, per_class=None, checkpoints=None,
             resume=False, cache_features=True, sync_batchnorm=False, reporter=None):
    """Transfer learning: replace the head of ``pretrained`` for the classes of ``data``,
    fit it, then train the layers above the frozen backbone and optionally everything
    (see the module notes). ``freeze`` names the last frozen layer ('none': nothing
    frozen). ``cache_features=False`` runs the frozen layers at every step instead of
    once (the same result, slower: for checking). ``epochs`` None: enough epochs of the
    top phase for ``AUTO_STEPS`` steps (at least one; with ``head="sgd"``, 5).
    ``val_split`` None: 0.1, or no validation part where it would hold fewer than
    ``MIN_AUTO_VALIDATION`` images (too few to choose an epoch by, and a tenth of scarce
    labels). ``shift`` None: with fewer than ``SCARCE_IMAGES`` training images and layers
    above the backbone to train, random shifts of up to a tenth of the image's side
    (``AUTO_SHIFT``), else none. ``classes``, ``per_class``, ``checkpoints``, ``resume`` and
    ``sync_batchnorm`` as in ``train``. Raises JobError for expected failures,
    TrainingDiverged when the loss is no longer finite, TrainingInterrupted on Ctrl-C.
    """
    reporter = reporter or Reporter()
    positive("--batch-size", batch_size)
    for name, value in (("--epochs", epochs), ("--unfreeze-epochs", unfreeze_epochs)):
        if value is None and name == "--epochs":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise JobError(f"{name}: expected an integer >= 0, got {value!r}")
    if optimizer not in OPTIMIZERS:
        raise JobError(f"--optimizer: expected one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if head not in HEADS:
        raise JobError(f"--head: expected one of {', '.join(HEADS)}, got {head!r}")
    if head == "sgd" and epochs == 0:
        raise JobError("--epochs: --head sgd trains the head for --epochs epochs; expected at "
                       "least 1")
    for name, value in (("--lr", lr), ("--backbone-lr-factor", backbone_lr_factor)):
        if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
            raise JobError(f"{name}: expected a positive number, got {value!r}")
    if shift is not None and (isinstance(shift, bool) or not isinstance(shift, int)
                              or shift < 0):
        raise JobError(f"--shift: expected pixels >= 0, got {shift!r}")
    if val_split is not None and not 0 <= val_split < 1:
        raise JobError(f"--val-split: expected a fraction in [0, 1), got {val_split!r}")
    classes = class_list(classes)
    if per_class is not None:
        positive("--per-class", per_class)
    output = os.fspath(output)
    folder = os.fspath(checkpoints) if checkpoints else \
        os.path.splitext(output)[0] + "-checkpoints"
    settings = {"pretrained": os.fspath(pretrained), "data": os.fspath(data), "head": head,
                "epochs": epochs, "unfreeze_epochs": unfreeze_epochs,
                "batch_size": batch_size, "lr": lr, "backbone_lr_factor": backbone_lr_factor,
                "freeze": freeze, "optimizer": optimizer, "seed": seed,
                "val_split": val_split, "shift": shift, "flip": bool(flip), "classes": classes,
                "per_class": per_class, "schedule": "onecycle",
                "sync_batchnorm": bool(sync_batchnorm)}
    comm = data_parallel()
    with locked(output, folder, comm=comm):
        agreed(comm, lambda: check_run_outputs(output, folder, resume, force))
        run = _FineTuning(settings, skip_bad, reporter if is_writer(comm) else Reporter(),
                          cache_features, comm)
        return run.run(output, folder, resume)


def classifier_start(model, head_position):
    """The position of the first layer of the classifier block that ends at the head:
    the Dense layers, activations and Dropout right below it."""
    start = head_position
    while start > 0 and type(model[start - 1]) in CLASSIFIER_LAYERS:
        start -= 1
    return start


def _lowest_trainable(model):
    for position, layer in enumerate(model):
        if layer.parameters() and layer.trainable:
            return position
    return len(model)


class _FineTuning:
    """One fine-tuning run: the model prepared, then its phases, checkpointed."""

    def __init__(self, settings, skip_bad, reporter, cache_features=True, comm=None):
        self.settings, self.reporter, self.comm = settings, reporter, comm
        self.model = open_model(settings["pretrained"])
        splits = load_splits(settings["data"], skip_bad, reporter=reporter,
                             classes=settings["classes"], per_class=settings["per_class"],
                             seed=settings["seed"], comm=comm, parts=TRAINING_PARTS,
                             **model_image_format(self.model))
        if settings["val_split"] is None:
            held = AUTO_VAL_SPLIT * len(splits.train)
            settings["val_split"] = AUTO_VAL_SPLIT if held >= MIN_AUTO_VALIDATION else 0.0
            if splits.val is None and not settings["val_split"]:
                reporter.message(f"no validation part: {AUTO_VAL_SPLIT:.0%} of "
                                 f"{len(splits.train)} images would be too few to judge by")
        self.train_part, self.val_part = train_val(splits, settings["val_split"],
                                                   settings["seed"])
        at_least_two_classes(self.train_part)
        if settings["epochs"] is None:
            batches = math.ceil(len(self.train_part) / settings["batch_size"])
            settings["epochs"] = 5 if settings["head"] == "sgd" else \
                min(MAX_AUTO_EPOCHS, math.ceil(AUTO_STEPS / batches))
        self._prepare_model()
        self.cut = _lowest_trainable(self.model)
        if settings["shift"] is None:
            settings["shift"] = self._auto_shift()
        shift, flip = settings["shift"], settings["flip"]
        self.augmentation = datasets.Augmentation(shift=shift, flip=flip, seed=settings["seed"]) \
            if shift or flip else None
        pixel_max = self.train_part.pixel_max
        self.transform = datasets.batch_transform(self.model.preprocessing, pixel_max)
        self.train_transform = datasets.batch_transform(self.model.preprocessing, pixel_max,
                                                        self.augmentation)
        # Features computed once must be what every epoch would compute: no augmentation,
        # and no Dropout that drops among the frozen layers.
        dropping = any(isinstance(layer, Dropout) and layer.rate > 0
                       for _, layer in self.model[:self.cut].named_layers())
        self.cached = cache_features and self.augmentation is None and not dropping and \
            0 < self.cut < len(self.model)
        self.features = None

    def _prepare_model(self):
        model, source, train_part = self.model, self.settings["pretrained"], self.train_part
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
        self.head_position = position = model.index(head)
        model[position] = Dense(len(train_part.classes), name=head.name)
        model.classes = list(train_part.classes)
        model.unfreeze()
        freeze = self.settings["freeze"]
        try:
            if freeze is None:
                last_frozen = position - 1 if self.settings["head"] == "sgd" else \
                    classifier_start(model, position) - 1
                if last_frozen >= 0:
                    model.freeze(upto=last_frozen)
            elif freeze != "none":
                model.freeze(upto=freeze)
        except KeyError as error:
            raise JobError(f"--freeze: {error.args[0]}") from None
        self.reporter.message(f"{source}: head replaced by {len(train_part.classes)} classes; "
                              f"{model.count_parameters()[1]:,} parameters frozen")

    def _auto_shift(self):
        """The default shift: a tenth of the image's side for scarce labels, where the layers
        above the backbone train (their features then change at every step, so the frozen
        layers run at every step: cheap for few images and a LeNet, not worth it to train
        a head alone above a large backbone, which the probe has already fitted)."""
        count, side = len(self.train_part), min(self.model.input_shape[1:])
        if count >= SCARCE_IMAGES or self.cut >= self.head_position or \
                not self.settings["epochs"]:
            return 0
        shift = max(1, round(AUTO_SHIFT * side))
        self.reporter.message(f"few labelled images ({count}): training on copies shifted by "
                              f"up to {shift} pixels (--shift 0: none)")
        return shift

    # -- the phases ------------------------------------------------------------------------
    def phases(self):
        """(name, epochs) of the run, in order."""
        settings, trainable_top = self.settings, self.cut < self.head_position
        phases = []
        if settings["head"] == "lbfgs":
            phases.append(("probe", 1))
            if settings["epochs"] and (trainable_top or self.augmentation is not None):
                phases.append(("top", settings["epochs"]))
        elif settings["epochs"]:
            phases.append(("head", settings["epochs"]))
        if settings["unfreeze_epochs"]:
            phases.append(("all layers", settings["unfreeze_epochs"]))
        return phases

    def _cached_features(self):
        """The frozen backbone's outputs for the training and validation parts, once."""
        if self.features is None:
            backbone = self.model[:self.cut]
            self.reporter.message(f"computing the frozen backbone's features once "
                                  f"({self.cut} layers)")
            self.features = [self._features_of(backbone, part.x)
                             for part in (self.train_part, self.val_part) if part is not None]
        return self.features

    def _features_of(self, backbone, x):
        if self.comm is None:
            return predict_outputs(backbone, x, batch_size=256, transform=self.transform)
        # Each rank computes its share; every rank then holds them all (any rank may
        # train on any sample's features).
        start, stop = self.comm.bounds(len(x))
        return self.comm.gather_rows(predict_outputs(
            backbone, x[start:stop], batch_size=256, transform=self.transform), len(x))

    def _phase_data(self, name):
        """(model part, x, validation, transform, validation transform) a phase trains on."""
        validation = None if self.val_part is None else (self.val_part.x, self.val_part.y)
        if name != "all layers" and self.cached:
            features = self._cached_features()
            validation = None if self.val_part is None else (features[1], self.val_part.y)
            return self.model[self.cut:], features[0], validation, None, None
        return self.model, self.train_part.x, validation, self.train_transform, self.transform

    def _probe(self):
        """Fit the new head to the features at its input; its metrics, as an epoch's."""
        part, x, validation, _, transform = self._phase_data("probe")
        below_head = part[:self.head_position - (self.cut if part is not self.model else 0)]
        self.reporter.message("fitting the new head to convergence on the frozen features "
                              "(L-BFGS)")

        def head_inputs(inputs, inputs_transform):
            if not len(below_head):
                return inputs if inputs_transform is None else np.concatenate(
                    [inputs_transform(inputs[i:i + 256]) for i in range(0, len(inputs), 256)])
            return predict_outputs(below_head, inputs, batch_size=256, transform=inputs_transform)

        inputs = head_inputs(x, transform)
        held_out = None if validation is None else (head_inputs(validation[0], transform),
                                                    validation[1])
        try:
            fitted = fit_linear_head(inputs, self.train_part.y, len(self.model.classes),
                                     held_out, seed=self.settings["seed"])
        except ValueError as error:
            raise JobError(f"the head could not be fitted: {error}") from None
        head = self.model[self.head_position]
        head.weight.value[...] = fitted.weight
        head.bias.value[...] = fitted.bias
        self.reporter.message(f"head fitted: L2 strength C={fitted.C:g}, chosen by "
                              f"{fitted.method}")
        # The metrics of the model as it now is, from the head's inputs already at hand.
        top = self.model[self.head_position:]
        logs = evaluate(top, inputs, self.train_part.y)
        if validation is not None:
            logs.update({f"val_{key}": value for key, value in evaluate(top, *held_out).items()})
        return {key: float(value) for key, value in logs.items()}

    def _optimizer(self, name):
        settings, model, lr = self.settings, self.model, self.settings["lr"]
        if name == "all layers":
            # The pretrained layers that were frozen (or, with nothing frozen, all but the
            # head) train at the lower rate.
            boundary = self.cut or self.head_position
            groups = [{"params": model[:boundary].named_parameters(),
                       "lr": lr * settings["backbone_lr_factor"]},
                      {"params": model[boundary:].named_parameters()}]
        else:
            groups = model.named_parameters(trainable_only=True)
        return make_optimizer(settings["optimizer"], groups, lr, 0.9, 0.0)

    def _schedule(self, name, optimizer, epochs, batches):
        if name in ("probe", "head"):
            return None
        return OneCycleLR(optimizer, total=max(2, epochs * batches), warmup=WARMUP)

    # -- the run ---------------------------------------------------------------------------
    def run(self, output, folder, resume):
        settings, model = self.settings, self.model
        phases = self.phases()
        total = sum(epochs for _, epochs in phases)
        last = os.path.join(folder, "last.cnn")
        monitor = "val_loss" if self.val_part is not None else "loss"
        history = []
        checkpointer = Checkpointer(folder, settings, None, None, self.augmentation, history,
                                    monitor, model=model, min_interval=CHECKPOINT_INTERVAL,
                                    writes=is_writer(self.comm))
        resumed = self._resume_point(last, total) if resume else None
        os.makedirs(folder, exist_ok=True)
        batches = math.ceil(len(self.train_part) / settings["batch_size"])
        start = 0
        for index, (name, epochs) in enumerate(phases):
            end = start + epochs
            # A checkpoint at a phase's end resumes at the next phase's start.
            if resumed is not None and (resumed[0] > end or resumed[0] == end < total):
                start = end
                continue
            if name == "all layers":
                model.unfreeze()
            # The probe's checkpoint carries the next phase's fresh optimizer.
            following = phases[index + 1][0] if name == "probe" and index + 1 < len(phases) \
                else name
            optimizer = self._optimizer(following)
            schedule = self._schedule(name, optimizer, epochs, batches)
            checkpointer.optimizer, checkpointer.schedule = optimizer, schedule
            checkpointer.offset = start
            first, position = 0, None
            if resumed is not None:
                # At a phase's start the optimizer is fresh, whatever the checkpoint holds.
                mid_phase = resumed[0] > start or resumed[1]
                done, position, old_history, best = restore_training_state(
                    last, model, optimizer if mid_phase else None, schedule, self.augmentation,
                    settings, batches, keys=FINETUNE_SETTINGS, epochs=total)
                history[:] = old_history
                checkpointer.restore_best(best)
                first, resumed = done - start, None
                self.reporter.message(f"resuming from {last} after epoch {done} of {total}")
                if done == total:
                    self.reporter.message(f"{last} has finished all {total} epochs; writing "
                                          "the final model")
                    break
            if name == "probe":
                checkpointer.on_epoch_end(0, self._probe(), model)
                checkpointer.flush()
                start = end
                continue
            if not first and position is None:
                checkpointer.save_last(model, start)
            part, x, validation, transform, validation_transform = self._phase_data(name)
            run_checkpointed(part, x, self.train_part.y, validation, transform,
                             validation_transform, epochs, settings["batch_size"], optimizer,
                             schedule, settings["seed"] + index, checkpointer, self.reporter,
                             name, first, position, self.comm, settings["sync_batchnorm"])
            checkpointer.flush()
            start = end
        self._keep_best(checkpointer, len(history))
        if not is_writer(self.comm):
            return TrainResult(model, history, output, checkpoints=folder,
                               best=checkpointer.best, cached_features=self.cached)
        model.provenance = {**model.provenance, "command": "finetune",
                            **{key: settings[key] for key in FINETUNE_SETTINGS},
                            "metrics": history[-1] if history else {}}
        save_model(model, output, overwrite=True)
        phase_names = [name for name, epochs in phases for _ in range(epochs)]
        write_history(output, "finetune", history, phase_names[:len(history)])
        return TrainResult(model, history, output, checkpoints=folder, best=checkpointer.best,
                           resumed_from=last if resume else None,
                           skipped=self.train_part.skipped, cached_features=self.cached)

    def _resume_point(self, last, total):
        """(epochs the checkpoint has done, whether it stopped inside an epoch); its weights
        loaded into the model. The training state is checked in full by the phase it
        resumes."""
        try:
            saved = load_model(last)
            loaded = read_training_state(last)
        except ModelFileError as error:
            raise JobError(str(error)) from None
        if loaded is None:
            raise JobError(f"{last}: holds no training state to resume from")
        state = loaded[0] if isinstance(loaded[0], dict) else {}
        done = state.get("epochs_done")
        if isinstance(done, bool) or not isinstance(done, int) or not 0 <= done <= total:
            raise JobError(f"{last}: the training state has epochs_done {str(done)[:40]}, "
                           f"expected 0 to {total}; it cannot be resumed")
        try:
            self.model.load_state_dict(saved.state_dict())
        except ValueError as error:
            raise JobError(f"{last}: does not fit this run's model ({error})") from None
        return done, state.get("position") is not None

    def _keep_best(self, checkpointer, epochs_done):
        """Load the best validation epoch's weights, if it is not the last."""
        best = checkpointer.best
        if self.val_part is None or best is None or best["epoch"] == epochs_done:
            return
        if checkpointer.best_weights is not None:
            self.model.load_state_dict(checkpointer.best_weights)
        else:
            # The best epoch came before a resumed run started: its file holds it.
            try:
                self.model.load_state_dict(load_model(os.path.join(
                    checkpointer.folder, "best.cnn")).state_dict())
            except (ModelFileError, ValueError) as error:
                raise JobError(f"the best epoch's checkpoint cannot be read ({error})") \
                    from None
        self.reporter.message(f"keeping epoch {best['epoch']} of {epochs_done}, the best by "
                              f"validation loss ({best['value']:.4f})")

