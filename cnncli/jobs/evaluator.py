"""The ``eval`` job: a model file on a part of a dataset, with its metrics.
"""

import json
import os

import numpy as np

from cnncli.files import atomic_write
from cnncli.jobs.cluster import DatasetRecipe, connect, shard_results
from cnncli.jobs.common import (JobError, Reporter, check_output, class_list, class_probabilities,
                                decoded_part, finite_outputs, load_splits, model_image_format,
                                on_threads, open_model, positive, resolve_model, train_val)


class Evaluation:
    """Metrics of a model on a labelled dataset (see ``as_dict`` for the JSON form)."""

    def __init__(self, classes, labels, probabilities, top_k, source):
        self.classes = list(classes)
        self.source = source
        self.count = len(labels)
        predicted = probabilities.argmax(axis=1)
        everything = np.arange(len(self.classes))
        self.accuracy = float(np.mean(predicted == labels)) if len(labels) else 0.0
        self.top_k = min(top_k, len(self.classes))
        ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :self.top_k]
        self.top_k_accuracy = float(np.mean((ranked == labels[:, None]).any(axis=1)))
        self.confusion = confusion_matrix(labels, predicted, len(everything))
        self.per_class = [{"class": name, "precision": float(p), "recall": float(r),
                           "f1": float(f), "support": int(s)}
                          for name, p, r, f, s in zip(self.classes,
                                                      *precision_recall_f1(self.confusion))]
        off = self.confusion.copy()
        np.fill_diagonal(off, 0)
        pairs = np.dstack(np.unravel_index(np.argsort(-off, axis=None, kind="stable"),
                                           off.shape))[0]
        self.confused = [{"true": self.classes[t], "predicted": self.classes[p],
                          "count": int(off[t, p])} for t, p in pairs[:5] if off[t, p] > 0]
        self.predicted = predicted
        self.probabilities = probabilities

    def as_dict(self):
        return {"source": self.source, "samples": self.count, "accuracy": self.accuracy,
                f"top_{self.top_k}_accuracy": self.top_k_accuracy, "top_k": self.top_k,
                "per_class": self.per_class, "classes": self.classes,
                "confusion_matrix": self.confusion.tolist(), "most_confused": self.confused}


def confusion_matrix(labels, predicted, classes):
    """counts[t, p]: the samples of class t predicted as p (scikit-learn's layout). Computed
    here: importing scikit-learn's metrics took about a second of every ``eval``."""
    return np.bincount(labels * classes + predicted, minlength=classes * classes) \
        .reshape(classes, classes)


def precision_recall_f1(confusion):
    """Per class: precision, recall, F1 and support from a confusion matrix, 0 where a
    ratio has nothing to divide by (scikit-learn's ``zero_division=0``)."""
    hits = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)

    def ratio(top, bottom):
        return np.divide(top, bottom, out=np.zeros_like(top), where=bottom > 0)

    precision, recall = ratio(hits, predicted), ratio(hits, support)
    f1 = ratio(2 * precision * recall, precision + recall)
    return precision, recall, f1, support


def _label_map(model, dataset, source):
    """Data labels -> model output indices, by class name."""
    if model.classes is None:
        if len(dataset.classes) > model.output_shape[0]:
            raise JobError(f"{source}: {len(dataset.classes)} classes, but the model has "
                           f"{model.output_shape[0]} outputs")
        return np.arange(len(dataset.classes)), [str(k) for k in range(model.output_shape[0])]
    unknown = [name for name in dataset.classes if name not in model.classes]
    if unknown:
        raise JobError(f"{source}: classes {unknown[:5]} are not among the model's classes "
                       f"{model.classes[:10]}")
    return np.array([model.classes.index(name) for name in dataset.classes]), model.classes


@on_threads
def evaluate(model_path, data, split=None, top_k=5, batch_size=256, threads=None,
             skip_bad=False, val_split=0.1, seed=0, classes=None, json_path=None, force=False,
             dask=None, reporter=None):
    """Evaluate a model file on a part of a dataset (of its ``classes`` only, when given).

    ``split``: "test", "val", "train" or "all". By default the test part,
    else the validation part; data with neither is split as ``train`` splits
    it (``val_split``, ``seed``), so the default evaluates on the images that
    training held out. ``json_path`` also writes the metrics there as JSON
    (an existing file only with ``force``). ``dask`` (a scheduler address or
    ``local:N``) computes the outputs on a Dask cluster (``cnncli.jobs.cluster``).
    """
    reporter = reporter or Reporter()
    if json_path is not None:
        check_output(json_path, force)
    positive("--top-k", top_k)
    positive("--batch-size", batch_size)
    selected = class_list(classes)
    model = open_model(model_path)
    # With a cluster, this process decodes no image: the workers decode their shards
    # (unless bad files are to be skipped: which ones, only decoding tells).
    dataset, split = evaluation_part(model, data, split, skip_bad, val_split, seed, selected,
                                     reporter, lazy=dask is not None and not skip_bad)
    remap, classes = _label_map(model, dataset, os.fspath(data))
    if dask is None:
        probabilities = class_probabilities(model, dataset.x, dataset.pixel_max, batch_size)
    else:
        recipe = DatasetRecipe(evaluation_part, os.fspath(data), split, skip_bad,
                               val_split, seed, selected, None, not skip_bad)
        probabilities = on_cluster(dask, resolve_model(model_path), recipe, len(dataset),
                                   batch_size, model=model)
    result = Evaluation(classes, remap[dataset.y], probabilities, top_k,
                        f"{os.fspath(data)} ({split})")
    if json_path is not None:
        atomic_write(json_path, (json.dumps(result.as_dict(), indent=2) + "\n").encode())
    return result


def evaluation_part(model, data, split, skip_bad, val_split, seed, classes, reporter=None,
                    lazy=False):
    """(dataset, split name) of the part of ``data`` that ``evaluate`` uses; the same on a
    Dask worker that rebuilds it (``lazy``: image folders decoded as rows are read). Of
    an image folder only that part is decoded: a damaged training image does not stop
    the evaluation of the test part."""
    splits = load_splits(data, skip_bad, reporter=reporter, classes=classes, lazy=True,
                         **model_image_format(model))
    if split is None:
        split = "test" if splits.test is not None else "val"
    if split not in ("train", "val", "test", "all"):
        raise JobError(f"--split: expected train, val, test or all, got {split!r}")
    if split in ("train", "val") and splits.val is None:
        held_out = train_val(splits, val_split, seed)
        dataset = held_out[0 if split == "train" else 1]
    else:
        dataset = splits.train if split == "all" else getattr(splits, split)
    if dataset is None:
        raise JobError(f"--split: {data} has no {split!r} part")
    if not lazy:
        dataset = decoded_part(dataset, skip_bad, reporter)
    if len(dataset) == 0:
        raise JobError(f"{dataset.source}: no samples to evaluate ({split} part)")
    return dataset, split


def on_cluster(address, model_path, recipe, count, batch_size, kind="probabilities",
               upto=None, model=None):
    """``cluster.shard_results`` on the cluster at ``address``, its failures as JobError."""
    try:
        with connect(address) as client:
            outputs = shard_results(client, model_path, recipe, count, batch_size, kind,
                                    upto, model)
    except (ImportError, ValueError) as error:
        raise JobError(str(error)) from None
    return finite_outputs(outputs) if kind == "probabilities" else outputs
