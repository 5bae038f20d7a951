"""Datasets: image folders, .npz arrays, scikit-learn's digits and MNIST, as raw pixels.

    splits = load_dataset("photos/")          # root/<class>/<image> or root/train|val/...
    splits.train.x                            # (N, C, H, W) uint8 pixels
    splits.train.y, splits.train.classes

A dataset keeps raw pixel values (0..``pixel_max``); the model's
``Preprocessing`` turns batches of them into inputs, so the same
transformation runs at training, evaluation and prediction time. Arrays from
uncompressed ``.npz`` files are memory-mapped, and every consumer reads them
a batch at a time, so a dataset larger than memory can be evaluated.

Where each kind lives: ``cnncli.npzdata`` (arrays), ``cnncli.imagefolder``
(folders of images), ``cnncli.images`` (decoding one image file, and what it
trusts), ``cnncli.dataset`` (the containers).

Bad data. By default the first problem stops loading with a ``DataError``
naming the file and what is wrong: a corrupt or unreadable image, a
non-image file, an empty class folder, labels out of range, ``x``/``y`` of
different lengths. With ``skip_bad=True`` bad files (and labels out of
range) are left out and listed in ``Dataset.skipped`` instead; a structural
problem (no classes at all, ``x``/``y`` mismatch) still stops. Images of
mixed kinds (grayscale, RGB, RGBA, palette) are not an error: every image is
converted to the channels the model needs (alpha is dropped) and resized to
its size.
"""

import hashlib
import os
import urllib.error
import urllib.request

import numpy as np

from cnncli.dataset import Dataset, Rows, Splits
from cnncli.files import atomic_write
from cnncli.imagefolder import load_image_folder
from cnncli.images import DataError, IMAGE_EXTENSIONS, image_to_array, load_image
from cnncli.npzdata import load_npz
from cnncli.resources import shipped_datasets

__all__ = ["Dataset", "Splits", "DataError", "load_dataset", "load_image_folder", "load_npz",
           "load_digits", "load_mnist", "shipped_datasets", "Rows", "stratified_split",
           "select_classes", "sample_per_class", "channel_statistics", "Augmentation",
           "adapt_images", "batch_transform", "IMAGE_EXTENSIONS", "image_to_array", "load_image"]

MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def load_dataset(source, channels=None, size=None, skip_bad=False, cache_dir=None, lazy=False):
    """Load a dataset by name or path.

    Parameters
    ----------
    source : str or path
        ``"digits"`` (scikit-learn's bundled 8x8 digits), ``"mnist"``
        (downloaded once and cached, or a local file: see ``load_mnist``), a
        folder of images, an ``.npz`` file, or the name of a dataset shipped
        with cnncli (``shipped_datasets()``, e.g. ``"optdigits"``).
    channels, size : optional
        Convert images to this many channels and (height, width); by
        default the data's own (image folders: 1 channel if every image is
        grayscale, else 3).
    skip_bad : bool
        Leave out bad files and labels instead of stopping at the first.
    lazy : bool
        Image folders: decode each image only when its rows are read
        (``imagefolder.ImageFiles``), for a process that reads a shard.
    """
    text = os.fspath(source)
    if text == "digits":
        return Splits(load_digits())
    if text == "mnist":
        return load_npz(load_mnist(cache_dir), skip_bad=skip_bad,
                        classes=[str(d) for d in range(10)])
    if not os.path.exists(text) and text in shipped_datasets():
        text = shipped_datasets()[text]
    if os.path.isdir(text):
        return load_image_folder(text, channels=channels, size=size, skip_bad=skip_bad,
                                 lazy=lazy)
    if not os.path.exists(text):
        shipped = "".join(f", '{name}'" for name in shipped_datasets())
        raise DataError(f"{text}: no such file or folder (expected a folder of images, an .npz "
                        f"file, 'digits', 'mnist'{shipped})")
    if text.endswith(".npz"):
        return load_npz(text, skip_bad=skip_bad)
    raise DataError(f"{text}: not a dataset (expected a folder of images, an .npz file, "
                    "'digits' or 'mnist')")


# ---------------------------------------------------------------------------
# Built-in datasets
# ---------------------------------------------------------------------------


def load_digits():
    """scikit-learn's 1797 8x8 digits (pixel values 0..16): no download needed."""
    from sklearn.datasets import load_digits as sklearn_digits
    data = sklearn_digits()
    x = data.images.astype(np.uint8)[:, None]
    return Dataset(x, data.target, [str(d) for d in range(10)], pixel_max=16,
                   source="digits")


def _cache_dir(cache_dir):
    if cache_dir is not None:
        return os.fspath(cache_dir)
    return os.environ.get("CNNCLI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cnncli")


def load_mnist(cache_dir=None):
    """The path of MNIST's ``mnist.npz``: from the cache, or downloaded once and checked.

    The cache folder is ``$CNNCLI_CACHE``, else ``~/.cache/cnncli``. The
    download is checked against its SHA-256 before it is kept. Without a
    network, put the file in the cache folder yourself, or pass its path as
    the dataset.
    """
    folder = _cache_dir(cache_dir)
    path = os.path.join(folder, "mnist.npz")
    if os.path.exists(path):
        return path
    try:
        with urllib.request.urlopen(MNIST_URL, timeout=30) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DataError(f"MNIST is not in {folder} and cannot be downloaded ({reason}); "
                        f"download {MNIST_URL} and save it as {path}, or pass the path of "
                        "an mnist.npz as the dataset") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != MNIST_SHA256:
        raise DataError(f"the MNIST download from {MNIST_URL} has SHA-256 {digest}, expected "
                        f"{MNIST_SHA256}; it was not kept")
    os.makedirs(folder, exist_ok=True)
    atomic_write(path, data)
    return path


# ---------------------------------------------------------------------------
# Splitting, statistics, conversion and augmentation
# ---------------------------------------------------------------------------


def stratified_split(dataset, fraction, seed=0):
    """(train, validation): ``fraction`` of each class held out, chosen by ``seed``.

    Written here rather than taken from scikit-learn's train_test_split: importing
    scikit-learn's model selection took about a second of every train and finetune."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction: expected a value between 0 and 1, got {fraction!r}")
    counts = dataset.class_counts()
    rows = np.arange(len(dataset))
    stratified = counts[counts > 0].min() >= 2
    held = max(1, int(round(fraction * len(dataset))))
    if stratified and held < np.count_nonzero(counts):
        held = np.count_nonzero(counts)
    if held >= len(dataset):
        raise DataError(f"{dataset.source}: {len(dataset)} images are too few to hold out "
                        f"{fraction:.0%} for validation")
    rng = np.random.default_rng(seed)
    if not stratified:
        val_rows = rng.permutation(rows)[:held]
    else:
        per_class = _held_per_class(counts, held)
        val_rows = np.concatenate([rng.permutation(np.flatnonzero(dataset.y == label))[:count]
                                   for label, count in enumerate(per_class) if count])
    train_rows = np.setdiff1d(rows, val_rows)
    return (dataset.subset(np.sort(train_rows), f"{dataset.source} (train split)"),
            dataset.subset(np.sort(val_rows), f"{dataset.source} (validation split)"))


def _held_per_class(counts, held):
    """How many of each class's ``counts`` to hold out, ``held`` in all: each class its
    share rounded down, the rest to the largest remainders; at least one of every class
    stays for training."""
    share = held * counts / counts.sum()
    per_class = np.minimum(np.floor(share).astype(np.int64), np.maximum(counts - 1, 0))
    remainder = share - per_class
    for label in np.argsort(-remainder, kind="stable"):
        if per_class.sum() >= held:
            break
        if per_class[label] < counts[label] - 1:
            per_class[label] += 1
    return per_class


def select_classes(dataset, names):
    """The images of the classes ``names`` only, relabelled 0..k-1 in the order given."""
    names = [str(name) for name in names]
    unknown = [name for name in names if name not in dataset.classes]
    if unknown:
        raise DataError(f"{dataset.source}: no class {unknown[0]!r} (classes: "
                        f"{', '.join(dataset.classes[:20])})")
    if len(set(names)) != len(names):
        raise DataError(f"classes: {', '.join(names)} names a class twice")
    labels = np.full(len(dataset.classes), -1, dtype=np.int64)
    labels[[dataset.classes.index(name) for name in names]] = np.arange(len(names))
    rows = np.flatnonzero(labels[dataset.y] >= 0)
    subset = dataset.subset(rows)
    subset.y = labels[subset.y]
    subset.classes = names
    return subset


def sample_per_class(dataset, count, seed=0):
    """At most ``count`` images of each class, chosen by ``seed``, in their original order."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in range(len(dataset.classes)):
        rows = np.flatnonzero(dataset.y == label)
        chosen.append(rng.permutation(rows)[:count] if len(rows) > count else rows)
    rows = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
    return dataset.subset(rows, f"{dataset.source} ({count} per class)")


def channel_statistics(x, pixel_max, batch_size=4096):
    """Per-channel mean and standard deviation of ``x / pixel_max``, read a batch at a time."""
    channels = x.shape[1]
    total = np.zeros(channels)
    total_squares = np.zeros(channels)
    count = 0
    for start in range(0, len(x), batch_size):
        batch = np.asarray(x[start:start + batch_size], dtype=np.float64) / pixel_max
        total += batch.sum(axis=(0, 2, 3))
        total_squares += np.square(batch).sum(axis=(0, 2, 3))
        count += batch.shape[0] * batch.shape[2] * batch.shape[3]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_squares / max(count, 1) - mean ** 2, 0))
    return mean.tolist(), np.where(std > 1e-6, std, 1.0).tolist()


def adapt_images(batch, channels, size):
    """Convert a batch of raw pixels (N, C, H, W) to ``channels`` and ``size`` (height, width).

    Grayscale becomes RGB by repeating the channel, RGB becomes grayscale by
    luminance (ITU-R 601), an alpha channel is dropped; sizes change by
    bilinear resampling.
    """
    batch = np.asarray(batch)
    have = batch.shape[1]
    if have == 4:
        batch, have = batch[:, :3], 3
    if have != channels:
        if have == 1 and channels == 3:
            batch = np.repeat(batch, 3, axis=1)
        elif have == 3 and channels == 1:
            weights = np.array([0.299, 0.587, 0.114]).reshape(1, 3, 1, 1)
            batch = (batch * weights).sum(axis=1, keepdims=True).astype(batch.dtype)
        else:
            raise DataError(f"images have {have} channels; cannot convert them to {channels}")
    if tuple(batch.shape[2:]) != tuple(size):
        from PIL import Image
        out = np.empty(batch.shape[:2] + tuple(size), dtype=np.float32)
        for index in range(batch.shape[0]):
            for channel in range(batch.shape[1]):
                plane = Image.fromarray(batch[index, channel].astype(np.float32), mode="F")
                out[index, channel] = np.asarray(plane.resize((size[1], size[0]),
                                                              Image.BILINEAR))
        batch = out
    return batch


class Augmentation:
    """Random shifts (up to ``shift`` pixels each way, zero-filled) and optional horizontal
    flips of preprocessed batches, from a seeded generator."""

    def __init__(self, shift=0, flip=False, seed=0):
        if isinstance(shift, bool) or not isinstance(shift, int) or shift < 0:
            raise ValueError(f"shift: expected pixels >= 0, got {shift!r}")
        self.shift = shift
        self.flip = bool(flip)
        self.rng = np.random.default_rng(seed)

    @property
    def active(self):
        return self.shift > 0 or self.flip

    def __call__(self, batch, shard=None):
        """``batch`` augmented. ``shard`` (first row, rows in all): the batch is those rows
        of a larger one split over processes; the draws are made for all of it, as one
        process would make them, and this batch's rows taken."""
        if not self.active:
            return batch
        count, _, height, width = batch.shape
        first, total = shard if shard is not None else (0, count)
        rows = slice(first, first + count)
        out = batch
        if self.shift:
            s = self.shift
            padded = np.pad(batch, ((0, 0), (0, 0), (s, s), (s, s)))
            offsets = self.rng.integers(0, 2 * s + 1, size=(total, 2))[rows]
            out = np.empty_like(batch)
            for index, (top, left) in enumerate(offsets):
                out[index] = padded[index, :, top:top + height, left:left + width]
        if self.flip:
            flips = (self.rng.random(total) < 0.5)[rows]
            out = out.copy() if out is batch else out
            out[flips] = out[flips, :, :, ::-1]
        return out


def batch_transform(preprocessing, pixel_max=None, augmentation=None):
    """The function that turns a batch of a dataset's raw pixels into model inputs.

    Converts channels and size to the model's, rescales pixels whose white
    level (``pixel_max``) differs from the one the model was trained with,
    applies the model's preprocessing, then ``augmentation`` if given. The
    function takes ``shard`` as ``Augmentation`` does (its ``shards`` attribute
    says so to ``fit``), so a batch split over processes is augmented as in one.
    """
    factor = 1.0 if pixel_max is None else 1.0 / (pixel_max * preprocessing.scale)

    def transform(batch, shard=None):
        batch = adapt_images(batch, preprocessing.channels, preprocessing.size)
        if factor != 1.0:
            batch = np.asarray(batch, dtype=np.float32) * np.float32(factor)
        out = preprocessing(batch)
        return augmentation(out, shard) if augmentation is not None else out

    transform.shards = True
    return transform
