"""Evaluation, prediction and feature extraction over a Dask cluster (dask.distributed).

    cnncli eval model.cnn mnist --dask local:2               # a LocalCluster of 2 workers
    cnncli eval model.cnn big.npz --dask tcp://scheduler:8786

The model file's bytes go to every worker once (scattered, then loaded and
kept by each worker). The data does not travel: each task names its shard
(a recipe that rebuilds the dataset, as the command itself does, and a range
of rows) and the worker reads those rows itself, from a memory-mapped .npz
or image files. Shards are whole inference batches, so every row is computed
in the batch it would be in locally: the results are the local run's, bit for
bit. They come back in order. A worker that dies has its shards recomputed
elsewhere by the scheduler; the result is unchanged.

dask and distributed are an optional dependency (``pip install "cnncli[dask]"``).
"""

import contextlib
import hashlib
import logging
import mmap
import os
import tempfile

import numpy as np

from cnncli.dataset import Rows
from cnncli.loading import load_model
from cnncli.training import inference_batch_size, predict_outputs, predict_proba

__all__ = ["DASK_MISSING", "connect", "shard_results", "DatasetRecipe", "FilesRecipe"]

DASK_MISSING = ('--dask needs the Dask extra: pip install "cnncli[dask]" (dask and '
                "distributed)")

# Rows a shard holds, in inference batches: enough work per task to hide the
# scheduling, small enough that a worker holds little and a lost one costs little.
BATCHES_PER_SHARD = 8

# What each worker keeps between its tasks: models by digest, datasets by recipe.
_WORKER_CACHE = {}


@contextlib.contextmanager
def connect(address):
    """A dask.distributed Client for ``address``: a scheduler's address, or ``local:N`` for
    a LocalCluster of N worker processes on this machine, closed at the end."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ImportError(DASK_MISSING) from None
    with contextlib.ExitStack() as stack:
        if address.startswith("local:"):
            count = address[len("local:"):]
            if not count.isdigit() or not 1 <= int(count) <= 256:
                raise ValueError(f"--dask: expected local:N with N workers (1 to 256), got "
                                 f"{address!r}")
            cluster = stack.enter_context(LocalCluster(
                n_workers=int(count), threads_per_worker=1, processes=True,
                dashboard_address=None, silence_logs=logging.CRITICAL))
            client = stack.enter_context(Client(cluster))
            # The workers share this machine's cores, as the ranks of mpirun do.
            client.run(_share_cores, int(count))
        else:
            try:
                client = stack.enter_context(Client(address, timeout=30))
            except (OSError, TimeoutError, ValueError) as error:
                raise ValueError(f"--dask: cannot reach the scheduler at {address} "
                                 f"({error})") from None
        yield client


class DatasetRecipe:
    """How a worker rebuilds the part of a dataset a command evaluates: the same loader
    and selection, called with the same arguments (``rebuild(model, *arguments)``
    returns the dataset, or a tuple that starts with it)."""

    def __init__(self, rebuild, *arguments):
        self.rebuild, self.arguments = rebuild, arguments

    def key(self):
        return repr((self.rebuild.__module__, self.rebuild.__qualname__, self.arguments))

    def rows(self, model, start, stop):
        """(raw pixels of rows start..stop, their white level)."""
        dataset = _cached(("data", self.key()), lambda: self.rebuild(model, *self.arguments))
        if isinstance(dataset, tuple):
            dataset = dataset[0]
        rows = np.array(dataset.x[start:stop])
        _release_pages(dataset.x)
        return rows, dataset.pixel_max


class FilesRecipe:
    """Image files named by path: a worker decodes only those of its shard."""

    def __init__(self, paths):
        self.paths = list(paths)

    def rows(self, model, start, stop):
        from cnncli.data import load_image
        preprocessing = model.preprocessing
        images = [load_image(path, preprocessing.channels, preprocessing.size)
                  for path in self.paths[start:stop]]
        return np.stack(images), 255


def _share_cores(workers):
    import cnncli
    if not (os.environ.get("CNNCLI_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")):
        cnncli.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers)
                               if hasattr(os, "sched_getaffinity") else 1)


def _release_pages(x):
    """Give the pages of a memory-mapped dataset back once a shard is read: they count in
    the worker's resident memory, which the worker keeps under its limit, and a dataset
    larger than that limit would otherwise pause the worker."""
    memory_map = getattr(getattr(x, "base", None) if isinstance(x, Rows) else x, "_mmap", None)
    if memory_map is not None and hasattr(mmap, "MADV_DONTNEED"):
        memory_map.madvise(mmap.MADV_DONTNEED)


def _cached(key, make):
    if key not in _WORKER_CACHE:
        _WORKER_CACHE[key] = make()
    return _WORKER_CACHE[key]


def _model_from(data):
    """The model in a file's bytes, loaded once per worker."""
    def load():
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "model.cnn")
            with open(path, "wb") as handle:
                handle.write(data)
            return load_model(path)
    return _cached(("model", hashlib.sha256(data).hexdigest()), load)


class ShardFailure:
    """What a task returns for bad data (a corrupt image...): the one-line message. An
    expected failure is an answer, not a crash to retry and log on the worker."""

    def __init__(self, message):
        self.message = message


def _shard(model_bytes, recipe, start, stop, batch_size, kind, upto):
    """A task: the probabilities (or features up to layer ``upto``) of rows start..stop."""
    from cnncli.data import DataError
    try:
        return _shard_outputs(model_bytes, recipe, start, stop, batch_size, kind, upto)
    except DataError as error:
        return ShardFailure(str(error))


def _shard_outputs(model_bytes, recipe, start, stop, batch_size, kind, upto):
    from cnncli.data import batch_transform
    model = _model_from(model_bytes)
    x, pixel_max = recipe.rows(model, start, stop)
    transform = batch_transform(model.preprocessing, pixel_max)
    if kind == "features":
        part = model[:model.index(upto) + 1]
        outputs = predict_outputs(part, x, batch_size=batch_size, transform=transform)
        return outputs.reshape(len(outputs), -1)
    return predict_proba(model, x, batch_size=batch_size, transform=transform)


def shard_results(client, model_path, recipe, count, batch_size, kind="probabilities",
                  upto=None, model=None):
    """The probabilities (N, classes) or features (N, F) of the ``count`` rows of
    ``recipe``, computed in shards on the cluster of ``client``, in row order.
    ``model`` is the file's model when the caller has it open already."""
    with open(model_path, "rb") as handle:
        model_bytes = handle.read()
    model = load_model(model_path) if model is None else model
    part = model if kind != "features" else model[:model.index(upto) + 1]
    step = inference_batch_size(part, batch_size) * BATCHES_PER_SHARD
    model_future = client.scatter(model_bytes, broadcast=True, hash=True)
    bounds = [(start, min(start + step, count)) for start in range(0, count, step)]
    futures = [client.submit(_shard, model_future, recipe, start, stop, batch_size, kind,
                             upto, key=f"cnncli-shard-{kind}-{start}-{id(recipe)}",
                             retries=2)
               for start, stop in bounds]
    results = []
    for future in futures:                  # in order, as each one is ready
        result = future.result()
        if isinstance(result, ShardFailure):
            raise ValueError(result.message)
        results.append(result)
    return np.concatenate(results)
