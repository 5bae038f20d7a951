"""Importing torchvision-format weights (ResNet-18/34/50) into cnncli models, without torch.

    model, report = import_weights("resnet18-f37072fd.pth")
    model.save("resnet18.cnn")
    print(report)

The source is a state dict in PyTorch's own ``.pt``/``.pth`` format (read by
``cnncli.torchfile``, which never runs anything from the file) or in
``.safetensors``. The architecture is recognised from the names and shapes
(blocks per stage, basic or bottleneck blocks, the stem's width, the number
of classes), the cnncli ResNet of that shape is built, and each tensor is
placed under its cnncli name:

    conv1.weight                   -> conv1.weight
    bn1.weight / bias              -> bn1.gamma / beta
    bn1.running_mean / running_var -> bn1.running_mean / running_var
    layer2.0.conv1.weight          -> layer2_0.body.conv1.weight
    layer2.0.downsample.0.weight   -> layer2_0.shortcut.conv.weight
    layer2.0.downsample.1.*        -> layer2_0.shortcut.bn.*
    fc.weight / bias               -> fc.weight / bias

Layouts need no change: both use (out, in, kh, kw) convolution weights and
(out, in) dense weights. ``num_batches_tracked`` only matters to PyTorch's
BatchNorm with ``momentum=None`` (a cumulative average); cnncli's BatchNorm
uses a fixed momentum, so these counters are checked and set aside, and the
report lists them. A tensor the model needs that is missing or mis-shaped
stops the import; a tensor left over is reported as not placed.
"""

import importlib.resources
import math
import os
import re

import numpy as np

from cnncli import architectures
from cnncli.limits import MAX_ARRAY_BYTES
from cnncli.model import plan
from cnncli.modelfile import ModelFileError, check_file, read_tensors
from cnncli.preprocessing import Preprocessing
from cnncli.torchfile import read_torch_file

__all__ = ["import_weights", "read_state_dict", "ImportReport", "WeightsImportError",
           "IMAGENET_PREPROCESSING", "imagenet_classes"]

# How torchvision's ImageNet models expect their input: RGB at 224x224, scaled
# to [0, 1], then normalised with the ImageNet training set's channel statistics.
IMAGENET_PREPROCESSING = Preprocessing(3, (224, 224), mean=(0.485, 0.456, 0.406),
                                       std=(0.229, 0.224, 0.225), scale=1 / 255)

BATCHNORM_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "running_mean",
                   "running_var": "running_var"}
BLOCK_KEY = re.compile(r"layer([1-4])\.(\d+)\.")


class WeightsImportError(ValueError):
    """Weights that cannot become a cnncli model: the message says which tensor and why."""


def imagenet_classes():
    """The 1000 ILSVRC-2012 class names in the index order of torchvision's weights."""
    text = importlib.resources.files("cnncli").joinpath("imagenet_classes.txt").read_text(
        encoding="utf-8")
    return text.splitlines()


class ImportReport:
    """What an import did: the architecture found, tensors placed, set aside, not placed."""

    def __init__(self, architecture, source):
        self.architecture = architecture
        self.source = source
        self.placed = {}            # cnncli name -> source name
        self.set_aside = []         # num_batches_tracked counters
        self.not_placed = []        # source tensors the model has no place for

    def __str__(self):
        lines = [f"{self.source}: {self.architecture}, {len(self.placed)} tensors placed"]
        if self.set_aside:
            lines.append(f"set aside {len(self.set_aside)} BatchNorm num_batches_tracked "
                         "counters (cnncli's BatchNorm uses a fixed momentum)")
        if self.not_placed:
            lines.append(f"not placed ({len(self.not_placed)}): "
                         + ", ".join(self.not_placed[:20])
                         + (" ..." if len(self.not_placed) > 20 else ""))
        return "\n".join(lines)


def read_state_dict(path):
    """{name: ndarray} from a ``.safetensors`` file or a PyTorch ``.pt``/``.pth`` archive.

    The format is recognised from the file's first bytes, not its name.
    """
    path = check_file(path, "weights file")
    with open(path, "rb") as handle:
        start = handle.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header.
    # Checked first: the length's first byte may be anything, 0x80 included.
    if len(start) == 9 and start[8:9] == b"{":
        return read_tensors(path)
    # PyTorch: a zip archive (since 1.6), or a bare pickle (the legacy format,
    # which the reader names in its error).
    if start[:2] == b"PK" or start[:1] == b"\x80":
        return read_torch_file(path)
    raise ModelFileError(f"{path}: neither a PyTorch archive (.pt/.pth) nor a .safetensors "
                         "file")


def _torchvision_name(name):
    """The torchvision name of the cnncli ResNet tensor ``name``."""
    name = re.sub(r"^(layer[1-4])_(\d+)\.body\.", r"\1.\2.", name)
    name = re.sub(r"^(layer[1-4])_(\d+)\.shortcut\.conv\.", r"\1.\2.downsample.0.", name)
    name = re.sub(r"^(layer[1-4])_(\d+)\.shortcut\.bn\.", r"\1.\2.downsample.1.", name)
    prefix, _, leaf = name.rpartition(".")
    if re.search(r"(^|\.)(bn\d*|downsample\.1)$", prefix):
        leaf = {ours: theirs for theirs, ours in BATCHNORM_NAMES.items()}[leaf]
    return f"{prefix}.{leaf}"


def _recognise_resnet(state, source):
    """(depth, width, classes, input channels) of the torchvision ResNet ``state`` holds."""
    for name in ("conv1.weight", "fc.weight"):
        if name not in state:
            raise WeightsImportError(f"{source}: not a torchvision ResNet state dict (no {name!r}; "
                                     f"first names: {', '.join(list(state)[:5])})")
    blocks = {stage: set() for stage in "1234"}
    for name in state:
        match = BLOCK_KEY.match(name)
        if match:
            blocks[match.group(1)].add(int(match.group(2)))
    counts = tuple(len(blocks[stage]) for stage in "1234")
    kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    depth = next((depth for depth, shape in architectures.RESNET_DEPTHS.items()
                  if shape == (kind, counts)), None)
    if depth is None:
        raise WeightsImportError(f"{source}: a ResNet with {kind} blocks {counts} per stage, which "
                                 "is none of ResNet-18, -34 or -50")
    stem, head = state["conv1.weight"], state["fc.weight"]
    if stem.ndim != 4 or head.ndim != 2:
        raise WeightsImportError(f"{source}: conv1.weight has shape {stem.shape} and fc.weight "
                                 f"{head.shape}; expected 4 and 2 dimensions")
    return depth, int(stem.shape[0]), int(head.shape[0]), int(stem.shape[1])


def _check_size(source, depth, width, outputs, preprocessing):
    """Refuse, before building it, a network too large for memory: tensors sharing one
    storage can make a small file declare a very wide one."""
    try:
        shapes, _ = plan(architectures.resnet_layers(depth, outputs, width),
                         preprocessing.input_shape)
    except ValueError as error:
        raise WeightsImportError(f"{source}: {error}") from None
    too_large = MAX_ARRAY_BYTES.exceeded(4 * sum(math.prod(shape) for shape in shapes.values()),
                                         f"{source}: a resnet{depth} of width {width} with "
                                         f"{outputs} classes")
    if too_large:
        raise WeightsImportError(too_large)


def import_weights(path, architecture=None, classes=None, preprocessing=None):
    """A cnncli ResNet holding the torchvision-format weights of ``path``, and a report.

    Parameters
    ----------
    path : str or Path
        ``.pt``/``.pth`` (read without torch, nothing executed) or ``.safetensors``.
    architecture : 'resnet18', 'resnet34' or 'resnet50', optional
        Checked against what the weights hold; by default recognised from them.
    classes : list of str, optional
        A name per output. By default the ImageNet class names for a 1000-class
        head, none otherwise.
    preprocessing : Preprocessing, optional
        By default ImageNet's: RGB 224x224 scaled to [0, 1], normalised with the
        ImageNet mean and standard deviation.

    Raises FileNotFoundError, ModelFileError for a file that cannot be read
    safely, and WeightsImportError for weights that do not make a ResNet.
    """
    source = os.fspath(path)
    state = read_state_dict(path)
    # Weights saved from a DataParallel model carry a "module." prefix.
    if state and all(name.startswith("module.") for name in state):
        state = {name[len("module."):]: value for name, value in state.items()}
    depth, width, outputs, channels = _recognise_resnet(state, source)
    found = f"resnet{depth}"
    if architecture is not None and architecture != found:
        raise WeightsImportError(f"{source}: --arch is {architecture} but the weights are a {found}")
    preprocessing = preprocessing or IMAGENET_PREPROCESSING
    if preprocessing.channels != channels:
        raise WeightsImportError(f"{source}: the weights take {channels}-channel images but the "
                                 f"preprocessing gives {preprocessing.channels}")
    if classes is None and outputs == 1000:
        classes = imagenet_classes()
    if classes is not None and len(classes) != outputs:
        raise WeightsImportError(f"{source}: {len(classes)} class names for a head with {outputs} "
                                 "outputs")
    _check_size(source, depth, width, outputs, preprocessing)
    try:
        model = architectures.resnet(depth, input_shape=preprocessing.input_shape,
                                     classes=outputs, width=width)
    except ValueError as error:
        raise WeightsImportError(f"{source}: {error}") from None

    report = ImportReport(found + ("" if width == 64 else f" (width {width})"), source)
    targets = model.state_arrays()
    problems = []
    for name, target in targets.items():
        theirs = _torchvision_name(name)
        value = state.get(theirs)
        if value is None:
            problems.append(f"missing {theirs}")
        elif value.shape != target.shape:
            problems.append(f"{theirs} has shape {value.shape}, {found} needs {target.shape}")
        elif not np.issubdtype(value.dtype, np.floating):
            problems.append(f"{theirs} holds {value.dtype}, not floating-point numbers")
        elif not np.isfinite(value).all():
            problems.append(f"{theirs} holds NaN or infinite values")
        else:
            target[...] = value
            report.placed[name] = theirs
    if problems:
        raise WeightsImportError(f"{source}: cannot place the weights: " + "; ".join(problems[:10])
                                 + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""))
    used = set(report.placed.values())
    for name, value in state.items():
        if name in used:
            continue
        if name.endswith(".num_batches_tracked") and value.size == 1 \
                and np.issubdtype(value.dtype, np.integer):
            report.set_aside.append(name)
        else:
            report.not_placed.append(name)
    model.classes = None if classes is None else [str(name) for name in classes]
    model.preprocessing = preprocessing
    model.provenance = {"imported_from": os.path.basename(source),
                        "architecture": report.architecture, "format": "torchvision state dict"}
    return model, report
