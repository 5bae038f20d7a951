"""The ``features`` job: the activations of a model's layer for a dataset, written to an
.npz (``features``, ``labels``, ``classes``, ``layer``), for scikit-learn and the like."""

import io
import os

import numpy as np

from cnncli.files import atomic_write
from cnncli.jobs.cluster import DatasetRecipe
from cnncli.jobs.common import (JobError, Reporter, check_output, class_list, on_threads,
                                open_model, positive, resolve_model)
from cnncli.jobs.evaluator import evaluation_part, on_cluster
from cnncli.training import predict_outputs


class FeatureResult:
    """What ``features`` wrote: the path, the layer, and the array's shape."""

    def __init__(self, output, layer, shape):
        self.output, self.layer, self.shape = output, layer, shape


@on_threads
def features(model_path, data, output="features.npz", upto=None, split="all", batch_size=256,
             threads=None, skip_bad=False, val_split=0.1, seed=0, classes=None, force=False,
             dask=None, reporter=None):
    """Write the flattened outputs of layer ``upto`` (default: the layer below the head)
    for a part of ``data`` (``split`` as for ``evaluate``; "all" by default) to
    ``output``. ``dask`` computes them on a Dask cluster, the same bits as here."""
    reporter = reporter or Reporter()
    positive("--batch-size", batch_size)
    output = check_output(output, force)
    model = open_model(model_path)
    try:
        part = model.feature_part(upto)
    except KeyError as error:
        raise JobError(f"--upto: {error.args[0]}") from None
    except ValueError as error:
        raise JobError(f"{model_path}: {error}; name the layer with --upto") from None
    upto = part[-1].name
    selected = class_list(classes)
    dataset, split = evaluation_part(model, data, split, skip_bad, val_split, seed, selected,
                                     reporter, lazy=dask is not None and not skip_bad)
    if dask is None:
        from cnncli.data import batch_transform
        values = predict_outputs(part, dataset.x, batch_size=batch_size,
                                 transform=batch_transform(model.preprocessing,
                                                           dataset.pixel_max))
        values = values.reshape(len(values), -1)
    else:
        recipe = DatasetRecipe(evaluation_part, os.fspath(data), split, skip_bad,
                               val_split, seed, selected, None, not skip_bad)
        values = on_cluster(dask, resolve_model(model_path), recipe, len(dataset), batch_size,
                            kind="features", upto=upto, model=model)
    buffer = io.BytesIO()
    np.savez(buffer, features=values, labels=np.asarray(dataset.y),
             classes=np.array(dataset.classes), layer=np.array(upto))
    atomic_write(output, buffer.getvalue())
    reporter.message(f"{len(values)} samples of {os.fspath(data)} ({split}), "
                     f"{values.shape[1]} features from {upto}")
    return FeatureResult(output, upto, values.shape)
