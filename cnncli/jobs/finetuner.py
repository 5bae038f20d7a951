"""The ``finetune`` job: transfer learning. The head of a pretrained model is replaced
for the new classes, the backbone frozen, the head trained (on cached backbone
features when nothing above the backbone changes them), then optionally all layers
at a lower rate for the backbone.
"""

import os

import numpy as np

from cnncli import data as datasets
from cnncli.layers import Dense
from cnncli.modelfile import save_model
from cnncli.preprocessing import Preprocessing
from cnncli.training import predict_outputs
from cnncli.jobs.common import (JobError, OPTIMIZERS, Reporter, TrainResult, at_least_two_classes,
                                check_output, class_list, load_splits, locked, model_image_format,
                                on_threads, open_model, positive, run_phase, train_val)
from cnncli.jobs.history import write_history


def _lowest_trainable(model):
    for position, layer in enumerate(model):
        if layer.parameters() and layer.trainable:
            return position
    return len(model)


@on_threads
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
        positive(name, value)
    if isinstance(unfreeze_epochs, bool) or not isinstance(unfreeze_epochs, int) \
            or unfreeze_epochs < 0:
        raise JobError(f"--unfreeze-epochs: expected an integer >= 0, got {unfreeze_epochs!r}")
    if optimizer not in OPTIMIZERS:
        raise JobError(f"--optimizer: expected one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    classes = class_list(classes)
    if per_class is not None:
        positive("--per-class", per_class)
    with locked(os.fspath(output)):
        output = check_output(output, force)
        return _finetune_run(pretrained, data, output, epochs, batch_size, lr, freeze,
                             unfreeze_epochs, backbone_lr_factor, optimizer, seed, val_split,
                             shift, flip, skip_bad, cache_features, classes, per_class,
                             reporter)


def _finetune_run(pretrained, data, output, epochs, batch_size, lr, freeze, unfreeze_epochs,
                  backbone_lr_factor, optimizer, seed, val_split, shift, flip, skip_bad,
                  cache_features, classes, per_class, reporter):
    model = open_model(pretrained)
    source = os.fspath(pretrained)
    splits = load_splits(data, skip_bad, reporter=reporter, classes=classes,
                         per_class=per_class, seed=seed, **model_image_format(model))
    train_part, val_part = train_val(splits, val_split, seed)
    at_least_two_classes(train_part)

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
        history += run_phase(top, features, train_part.y, val_features, None, None,
                             phase_epochs, batch_size, lr, optimizer, seed, reporter,
                             "head")
    else:
        history += run_phase(model, train_part.x, train_part.y, validation, train_transform,
                             transform, phase_epochs, batch_size, lr, optimizer, seed,
                             reporter, "head")
    phases = ["head"] * len(history)
    if unfreeze_epochs:
        model.unfreeze()
        groups = [{"params": model[:position].parameters(), "lr": lr * backbone_lr_factor},
                  {"params": model[position:].parameters()}]
        history += run_phase(model, train_part.x, train_part.y, validation, train_transform,
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
