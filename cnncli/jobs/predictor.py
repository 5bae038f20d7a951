"""The ``predict`` job: class probabilities for image files, folders or an ``.npz``;
images are decoded a batch at a time.
"""

import os

import numpy as np

from cnncli import data as datasets
from cnncli.data import DataError
from cnncli.jobs.cluster import DatasetRecipe, FilesRecipe
from cnncli.jobs.common import (JobError, Reporter, class_probabilities, on_threads, open_model,
                                positive, resolve_model)
from cnncli.jobs.evaluator import on_cluster


class Prediction:
    """Top-k classes and probabilities for each input."""

    def __init__(self, names, classes, probabilities, top_k):
        self.names = names
        self.classes = classes
        self.probabilities = probabilities
        ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :min(top_k, len(classes))]
        self.top = [[(classes[k], float(row[k])) for k in order]
                    for order, row in zip(ranked, probabilities)]


def _image_files(paths):
    """The image files named, and those in the folders named (searched recursively)."""
    files = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            for folder, subfolders, names in os.walk(path):
                subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
                files += [os.path.join(folder, name) for name in sorted(names)
                          if name.lower().endswith(datasets.IMAGE_EXTENSIONS)]
        elif os.path.lexists(path):
            files.append(path)
        else:
            raise JobError(f"{path}: no such file or folder")
    return files


def npz_rows(model, path):
    """The part of an .npz that ``predict`` reads (its test part, else its only one)."""
    splits = datasets.load_npz(path, skip_bad=True)
    return splits.test or splits.train


@on_threads
def predict(model_path, inputs, top_k=3, batch_size=256, threads=None, skip_bad=False,
            dask=None, reporter=None):
    """Class probabilities for image files, folders of images, or the ``x`` of an .npz.

    Images are decoded ``batch_size`` at a time, so memory holds one batch
    of them, however many files there are. ``dask`` computes them on a Dask
    cluster (each worker reads its own files or rows), the same bits as here.
    """
    reporter = reporter or Reporter()
    positive("--top-k", top_k)
    positive("--batch-size", batch_size)
    model = open_model(model_path)
    if model.preprocessing is None:
        raise JobError(f"{model_path}: the model has no preprocessing; it cannot read images")
    classes = model.classes or [str(k) for k in range(model.output_shape[0])]
    inputs = [os.fspath(path) for path in inputs]
    if len(inputs) == 1 and inputs[0].endswith(".npz") and os.path.isfile(inputs[0]):
        try:
            splits = datasets.load_npz(inputs[0], skip_bad=True)
        except DataError as error:
            raise JobError(str(error)) from None
        dataset = splits.test or splits.train
        names = [f"{inputs[0]}[{index}]" for index in range(len(dataset))]
        if dask is not None:
            recipe = DatasetRecipe(npz_rows, inputs[0])
            probabilities = on_cluster(dask, resolve_model(model_path), recipe, len(dataset),
                                       batch_size, model=model)
        else:
            probabilities = class_probabilities(model, dataset.x, dataset.pixel_max,
                                                batch_size)
        return Prediction(names, classes, probabilities, top_k)
    preprocessing = model.preprocessing
    names, parts = [], []
    files = _image_files(inputs)
    if dask is not None:
        if skip_bad:
            raise JobError("--skip-bad: not with --dask; every file must be readable there")
        probabilities = on_cluster(dask, resolve_model(model_path), FilesRecipe(files),
                                   len(files), batch_size, model=model)
        return Prediction(files, classes, probabilities, top_k)
    for start in range(0, len(files), batch_size):
        batch, batch_names = [], []
        for path in files[start:start + batch_size]:
            try:
                batch.append(datasets.load_image(path, preprocessing.channels,
                                                 preprocessing.size))
            except DataError as error:
                if not skip_bad:
                    raise JobError(f"{error}; pass --skip-bad to leave bad files out") from None
                reporter.message(f"skipped {error}")
                continue
            batch_names.append(path)
        if batch:
            parts.append(class_probabilities(model, np.stack(batch), 255, batch_size))
            names += batch_names
    if not names:
        raise JobError("no images to predict")
    return Prediction(names, classes, np.concatenate(parts), top_k)
