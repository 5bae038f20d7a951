"""Pictures of a network: learned filters, feature maps, training curves, confusion matrices.

    grid = filter_grid(model, "conv2d_1")          # a Grid: .image (PIL), .cells, .title
    grids = feature_grids(model, pixels)           # one Grid per conv/pooling layer
    png = history_png(history)                     # bytes of a PNG
    png = confusion_png(matrix, class_names)

Grids are drawn pixel by pixel with Pillow, so what a cell shows is exactly
the values it stands for: each filter or feature map is normalised on its
own to the full 0-255 range (``(v - min) / (max - min)``; a constant map is
black), enlarged by a whole factor with nearest-neighbour sampling, and
placed in a grid under a title naming the layer and its shape. Curves and
heat maps, which need axes, ticks and legends, are drawn with matplotlib's
Agg canvas: it renders to memory and never opens a window, so it works on a
machine with no display.
"""

import io
import math

import numpy as np

from cnncli.layers import AvgPool2D, Conv2D, MaxPool2D

__all__ = ["Grid", "normalise", "filter_grid", "layer_outputs", "feature_grids",
           "history_png", "confusion_png", "conv_layers"]

CELL_TARGET = 48        # cells are enlarged to at least this many pixels a side
MAX_CELL_SCALE = 16
GAP = 2                 # pixels between cells and around the grid
TITLE_HEIGHT = 16
BACKGROUND = (255, 255, 255)
TITLE_COLOUR = (0, 0, 0)


class Grid:
    """A grid image and where each cell lies: ``cells[i]`` is (left, top, right, bottom)."""

    def __init__(self, image, cells, title, scale):
        self.image = image
        self.cells = cells
        self.title = title
        self.scale = scale

    def png(self):
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG")
        return buffer.getvalue()


def normalise(values):
    """``values`` scaled to [0, 1] by their own minimum and maximum (0 where constant)."""
    values = np.asarray(values, dtype=np.float64)
    low, high = values.min(), values.max()
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def _to_pixels(values):
    return np.round(normalise(values) * 255).astype(np.uint8)


def _grid(maps, title):
    """A Grid of ``maps``: (count, height, width) grayscale or (count, height, width, 3) RGB,
    each already 0-255."""
    from PIL import Image, ImageDraw
    count, height, width = maps.shape[:3]
    scale = max(1, min(MAX_CELL_SCALE, math.ceil(CELL_TARGET / max(height, width))))
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    cell_height, cell_width = height * scale, width * scale
    # Wide enough for the title too (Pillow's default font is about 6 pixels a character).
    canvas_width = max(GAP + columns * (cell_width + GAP), 6 * len(title) + 2 * GAP)
    canvas_height = TITLE_HEIGHT + GAP + rows * (cell_height + GAP)
    canvas = np.empty((canvas_height, canvas_width, 3), dtype=np.uint8)
    canvas[...] = BACKGROUND
    cells = []
    for index in range(count):
        row, column = divmod(index, columns)
        left = GAP + column * (cell_width + GAP)
        top = TITLE_HEIGHT + GAP + row * (cell_height + GAP)
        cell = maps[index].repeat(scale, axis=0).repeat(scale, axis=1)
        if cell.ndim == 2:
            cell = cell[..., None]
        canvas[top:top + cell_height, left:left + cell_width] = cell
        cells.append((left, top, left + cell_width, top + cell_height))
    image = Image.fromarray(canvas, mode="RGB")
    ImageDraw.Draw(image).text((GAP, 2), title, fill=TITLE_COLOUR)
    return Grid(image, cells, title, scale)


# ---------------------------------------------------------------------------
# Filters
# ---------------------------------------------------------------------------


def conv_layers(model):
    """Dotted names of the model's convolutional layers, blocks included, in order."""
    return [name for name, layer in model.named_layers() if isinstance(layer, Conv2D)]


def _find(model, name):
    for dotted, layer in model.named_layers():
        if dotted == name:
            return layer
    raise KeyError(f"no layer named {name!r}; layers: "
                   f"{', '.join(dotted for dotted, _ in model.named_layers())}"[:600])


def filter_grid(model, layer=None, channel=None):
    """The kernels of a convolutional layer (default: the first) as a Grid, one cell each.

    Kernels over 3 input channels are drawn in colour (the channels as RGB,
    normalised together); over one channel, in gray. Over any other number
    of channels a kernel is drawn as its input channel ``channel``, or by
    default as its mean over the input channels.
    """
    names = conv_layers(model)
    if not names:
        raise ValueError("the model has no convolutional layer")
    name = names[0] if layer is None else layer
    conv = _find(model, name)
    if not isinstance(conv, Conv2D):
        raise ValueError(f"{name} is a {type(conv).__name__}, not a convolutional layer; "
                         f"convolutional layers: {', '.join(names)}"[:600])
    weight = np.asarray(conv.weight.value, dtype=np.float64)
    filters, in_channels, height, width = weight.shape
    if channel is not None:
        if not 0 <= channel < in_channels:
            raise ValueError(f"channel: expected 0 to {in_channels - 1} for {name}, "
                             f"got {channel}")
        maps = np.stack([_to_pixels(kernel[channel]) for kernel in weight])
        shown = f"input channel {channel}"
    elif in_channels == 3:
        maps = np.stack([_to_pixels(kernel).transpose(1, 2, 0) for kernel in weight])
        shown = "RGB"
    elif in_channels == 1:
        maps = np.stack([_to_pixels(kernel[0]) for kernel in weight])
        shown = "gray"
    else:
        maps = np.stack([_to_pixels(kernel.mean(axis=0)) for kernel in weight])
        shown = f"mean of {in_channels} input channels"
    title = f"{name}: {filters} filters {height}x{width} ({shown})"
    return _grid(maps, title)


# ---------------------------------------------------------------------------
# Feature maps
# ---------------------------------------------------------------------------


def layer_outputs(model, x, wanted=None):
    """{dotted name: output} of the layers named in ``wanted`` (default: every convolutional
    and pooling layer), for a batch ``x``, in inference mode, layer by layer.

    Blocks are entered, so a ResNet's inner convolutions are recorded as
    ``layer1_0.body.conv1``; each layer runs exactly as in ``model.forward``
    (which only fuses some pairs for speed, to the same values).
    """
    recorded = {}

    def keep(name, layer, output):
        if (isinstance(layer, (Conv2D, MaxPool2D, AvgPool2D)) if wanted is None
                else name in wanted):
            recorded[name] = output

    model.forward_layer_by_layer(np.asarray(x, dtype=model.dtype), keep)
    if wanted is not None:
        missing = [name for name in wanted if name not in recorded]
        if missing:
            names = ", ".join(name for name, _ in model.named_layers())
            raise KeyError(f"no layer named {missing[0]!r}; layers: {names}"[:600])
    return recorded


def feature_grids(model, image, layers=None, max_maps=256):
    """One Grid per recorded layer (see ``layer_outputs``) for one preprocessed image
    (C, H, W): each channel of the layer's output a cell, normalised on its own.

    Layers with more than ``max_maps`` channels show their first ``max_maps``.
    Layers whose output is not a stack of maps (a Dense, a global pool) are
    refused when named.
    """
    image = np.asarray(image)
    if image.shape != tuple(model.input_shape):
        raise ValueError(f"image: expected shape {tuple(model.input_shape)}, got {image.shape}")
    outputs = layer_outputs(model, image[None], layers)
    grids = {}
    for name, output in outputs.items():
        maps = output[0]
        if maps.ndim != 3:
            raise ValueError(f"{name} outputs {maps.shape}, not feature maps (channels, "
                             "height, width)")
        channels = maps.shape[0]
        shown = maps[:max_maps]
        title = f"{name}: {channels}x{maps.shape[1]}x{maps.shape[2]}" + \
            (f" (first {max_maps} maps)" if channels > max_maps else "")
        grids[name] = _grid(np.stack([_to_pixels(m) for m in shown]), title)
    return grids


# ---------------------------------------------------------------------------
# Curves and heat maps (matplotlib, drawn in memory)
# ---------------------------------------------------------------------------


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _png(figure):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def history_png(epochs, title=""):
    """Loss and accuracy per epoch, training and validation, as PNG bytes.

    ``epochs`` is a list of dicts with ``loss``, ``accuracy`` and optionally
    ``val_loss``, ``val_accuracy`` and ``phase`` (a fine-tuning run's "head"
    then "all layers"; the change of phase is marked).
    """
    if not epochs:
        raise ValueError("the history has no epochs")
    figure = _figure(10, 4)
    numbers = np.arange(1, len(epochs) + 1)
    for index, metric in enumerate(("loss", "accuracy")):
        axes = figure.add_subplot(1, 2, index + 1)
        for key, label, style in ((metric, "training", "-o"),
                                  (f"val_{metric}", "validation", "-s")):
            values = [epoch.get(key) for epoch in epochs]
            if any(value is not None for value in values):
                axes.plot(numbers, [np.nan if v is None else v for v in values], style,
                          label=label, markersize=3)
        phases = [epoch.get("phase") for epoch in epochs]
        for position in range(1, len(phases)):
            if phases[position] != phases[position - 1]:
                axes.axvline(position + 0.5, color="gray", linestyle="--", linewidth=1)
                axes.annotate(str(phases[position]), (position + 0.6, 0.02),
                              xycoords=("data", "axes fraction"), color="gray", fontsize=8)
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.set_title(metric)
        axes.grid(True, alpha=0.3)
        axes.legend()
        if len(numbers) <= 20:
            axes.set_xticks(numbers)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return _png(figure)


def confusion_png(matrix, classes, title="", normalise_rows=False):
    """The confusion matrix (rows: true class, columns: predicted) as a labelled heat map.

    Each cell shows its count (or, with ``normalise_rows``, the fraction of
    its true class) where there is room for the text (up to 30 classes).
    """
    matrix = np.asarray(matrix)
    count = len(classes)
    if matrix.shape != (count, count):
        raise ValueError(f"matrix: expected ({count}, {count}) for {count} classes, got "
                         f"{matrix.shape}")
    shown = matrix.astype(np.float64)
    if normalise_rows:
        totals = shown.sum(axis=1, keepdims=True)
        shown = np.divide(shown, totals, out=np.zeros_like(shown), where=totals > 0)
    side = min(20, max(5, 0.45 * count + 2))
    figure = _figure(side + 1.5, side)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(shown, cmap="Blues", interpolation="nearest")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04,
                    label="fraction of the true class" if normalise_rows else "images")
    axes.set_xticks(range(count))
    axes.set_yticks(range(count))
    axes.set_xticklabels([str(name) for name in classes], rotation=90 if count > 10 else 0)
    axes.set_yticklabels([str(name) for name in classes])
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if count <= 30:
        threshold = shown.max() / 2 if shown.max() > 0 else 1
        for row in range(count):
            for column in range(count):
                text = f"{shown[row, column]:.2f}" if normalise_rows else \
                    str(int(matrix[row, column]))
                axes.text(column, row, text, ha="center", va="center", fontsize=8,
                          color="white" if shown[row, column] > threshold else "black")
    if title:
        axes.set_title(title)
    figure.tight_layout()
    return _png(figure)
