"""The ``show`` jobs: pictures of filters, feature maps, training histories and
confusion matrices, written as PNG files beside the model.
"""

import os


from cnncli import data as datasets
from cnncli.data import DataError
from cnncli.files import atomic_write
from cnncli.jobs.common import JobError, check_output, open_model
from cnncli.jobs.history import read_history
from cnncli.jobs.evaluator import evaluate


def _beside(model, suffix):
    """``<model>-<suffix>`` beside a model file, or in the current folder for a shipped
    model's name."""
    text = os.fspath(model)
    stem = os.path.splitext(os.path.basename(text))[0]
    return os.path.join(os.path.dirname(text) if os.path.exists(text) else "",
                        f"{stem}-{suffix}")


def _picture_path(model, suffix, output, force):
    """``output``, or the picture's default place beside the model, checked like any output."""
    return check_output(_beside(model, suffix) if output is None else output, force)


def show_filters(model_path, layer=None, channel=None, output=None, force=False):
    """Draw a convolutional layer's kernels as a grid; returns (path written, Grid)."""
    from cnncli import visualize
    model = open_model(model_path)
    path = _picture_path(model_path, f"filters{'-' + layer if layer else ''}.png", output,
                         force)
    try:
        grid = visualize.filter_grid(model, layer, channel)
    except (KeyError, ValueError) as error:
        raise JobError(f"--layer: {error.args[0]}" if isinstance(error, KeyError)
                       else str(error)) from None
    atomic_write(path, grid.png())
    return path, grid


def show_features(model_path, image_path, layers=None, output=None, force=False,
                  max_maps=256):
    """Draw the feature maps of each convolutional and pooling layer (or of ``layers``) for
    one image, one PNG per layer in a folder; returns [(path, Grid)]."""
    from cnncli import visualize
    model = open_model(model_path)
    if model.preprocessing is None:
        raise JobError("the model file has no preprocessing; it cannot read raw images")
    image_path = os.fspath(image_path)
    if not os.path.isfile(image_path):
        raise JobError(f"{image_path}: no such image file")
    stem = os.path.splitext(os.path.basename(image_path))[0]
    folder = os.fspath(_beside(model_path, f"features-{stem}") if output is None else output)
    if os.path.exists(folder) and not (os.path.isdir(folder) and force):
        raise JobError(f"{folder}: already exists; pass --force to overwrite it"
                       if os.path.isdir(folder) else f"{folder}: is a file, not a folder")
    if not os.path.isdir(os.path.dirname(os.path.abspath(folder))):
        raise JobError(f"{os.path.dirname(os.path.abspath(folder))}: no such folder for the "
                       "output")
    preprocessing = model.preprocessing
    try:
        pixels = datasets.load_image(image_path, preprocessing.channels, preprocessing.size)
    except DataError as error:
        raise JobError(str(error)) from None
    x = preprocessing(pixels[None])[0]
    try:
        grids = visualize.feature_grids(model, x, layers, max_maps=max_maps)
    except KeyError as error:
        raise JobError(f"--layer: {error.args[0]}") from None
    except ValueError as error:
        raise JobError(str(error)) from None
    os.makedirs(folder, exist_ok=True)
    written = []
    for index, (name, grid) in enumerate(grids.items(), start=1):
        path = os.path.join(folder, f"{index:02d}-{name}.png")
        atomic_write(path, grid.png())
        written.append((path, grid))
    return written


def show_history(run, output=None, force=False):
    """Draw a run's loss and accuracy curves; returns (path, epochs)."""
    from cnncli import visualize
    epochs = read_history(run)
    text = os.fspath(run)
    base = text[:-len(".history.json")] if text.endswith(".history.json") else text
    path = _picture_path(base, "history.png", output, force)
    atomic_write(path, visualize.history_png(epochs, title=os.path.basename(base)))
    return path, epochs


def show_confusion(model_path, data, output=None, force=False, normalize=False, **options):
    """Evaluate (see ``evaluate``) and draw the confusion matrix; returns (path, Evaluation)."""
    from cnncli import visualize
    path = _picture_path(model_path, "confusion.png", output, force)
    result = evaluate(model_path, data, **options)
    title = f"{os.path.basename(os.fspath(model_path))} on {result.source}: accuracy " \
            f"{result.accuracy:.4f}"
    atomic_write(path, visualize.confusion_png(result.confusion, result.classes, title,
                                               normalise_rows=normalize))
    return path, result
