"""The table of ``Sequential.summary()``, laid out as Keras prints it.

    Model: "lenet"
    _________________________________________________________________
     Layer (type)                  Output Shape              Param #
    =================================================================
     conv2d_1 (Conv2D)             (None, 32, 28, 28)            832
     ...
    =================================================================
    Total params: 454,922 (1.74 MB)
    Trainable params: 1,290 (5.04 KB)
    Non-trainable params: 453,632 (1.73 MB)
    _________________________________________________________________

Output shapes are channels first (NCHW); a layer's own activation shows after
its type (``dense_1 (Dense, relu)``); frozen layers are marked.
"""

__all__ = ["summary_text", "SummaryText"]


class SummaryText(str):
    """The summary as text; its repr is one line, so an interactive session that has just
    printed the table does not echo it a second time."""

    def __repr__(self):
        return f"<summary of {self.count('(None')} layers: print it to see the table>"


def _size(count, itemsize):
    size = float(count * itemsize)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} GB"


def _row(layer):
    kind = type(layer).__name__
    activation = getattr(layer, "activation", None)
    if activation:
        kind += f", {activation}"
    frozen = "" if layer.trainable or not layer.parameters() else " (frozen)"
    shape = ("None",) + tuple(layer.output_shape) if layer.built else ("?",)
    count = sum(parameter.size for parameter in layer.parameters().values())
    return f"{layer.name} ({kind}){frozen}", "(" + ", ".join(map(str, shape)) + ")", \
        f"{count:,}"


def summary_text(model):
    """The summary table of ``model`` (a Sequential) as one string."""
    header = ("Layer (type)", "Output Shape", "Param #")
    rows = [_row(layer) for layer in model]
    widths = [max(len(row[column]) for row in rows + [header]) + 4 for column in range(3)]
    width = sum(widths) + 1

    def line(row):
        return f" {row[0]:<{widths[0]}}{row[1]:<{widths[1]}}{row[2]:>{widths[2] - 4}}"

    itemsize = model.dtype.itemsize
    trainable, frozen = model.count_parameters()
    lines = [f'Model: "{model.name or "sequential"}"', "_" * width, line(header), "=" * width]
    lines += [line(row) for row in rows]
    lines += ["=" * width,
              f"Total params: {trainable + frozen:,} ({_size(trainable + frozen, itemsize)})",
              f"Trainable params: {trainable:,} ({_size(trainable, itemsize)})",
              f"Non-trainable params: {frozen:,} ({_size(frozen, itemsize)})",
              "_" * width]
    return SummaryText("\n".join(lines))
