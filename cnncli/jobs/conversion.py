"""The ``import`` job: torchvision-format weights to a cnncli model file.
"""

import os


from cnncli.modelfile import save_model
from cnncli.preprocessing import Preprocessing
from cnncli.jobs.common import JobError, check_output, class_list


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
    output = check_output(output, force)
    if isinstance(classes, str) and os.path.isfile(classes):
        with open(classes, encoding="utf-8") as handle:
            classes = [line.strip() for line in handle if line.strip()]
    classes = class_list(classes)
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
