"""Datasets: image folders, .npz arrays, scikit-learn's digits and MNIST, as raw pixels.

    splits = load_dataset("photos/")          # root/<class>/<image> or root/train|val/...
    splits.train.x                            # (N, C, H, W) uint8 pixels
    splits.train.y, splits.train.classes

A dataset keeps raw pixel values (0..``pixel_max``); the model's
``Preprocessing`` turns batches of them into inputs, so the same
transformation runs at training, evaluation and prediction time. Arrays from
uncompressed ``.npz`` files are memory-mapped, and every consumer reads them
a batch at a time, so a dataset larger than memory can be evaluated.

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
import io
import os
import urllib.error
import urllib.request
import zipfile

import numpy as np

__all__ = ["Dataset", "Splits", "DataError", "load_dataset", "load_image_folder", "load_npz",
           "load_digits", "load_mnist", "shipped_datasets", "Rows", "stratified_split", "select_classes",
           "sample_per_class", "channel_statistics",
           "Augmentation", "adapt_images", "batch_transform", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"

# Images above this many pixels are refused rather than decoded (decompression bombs).
MAX_IMAGE_PIXELS = 64_000_000


class DataError(ValueError):
    """A problem with input data; the message names the file (or array) and the problem."""


# ---------------------------------------------------------------------------
# Containers
# ---------------------------------------------------------------------------


class Rows:
    """Selected rows of an array, read only when indexed: a lazy subset of a memory map.

    Supports what training and evaluation need: ``len``, ``shape``, ``dtype``
    and indexing with a slice or an array of row numbers.
    """

    def __init__(self, base, rows):
        self.base = base
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self):
        return len(self.rows)

    @property
    def shape(self):
        return (len(self.rows),) + tuple(self.base.shape[1:])

    @property
    def ndim(self):
        return self.base.ndim

    @property
    def dtype(self):
        return self.base.dtype

    def __getitem__(self, index):
        rows = self.rows[index]
        if np.ndim(rows) == 0:
            return np.asarray(self.base[int(rows)])
        # Reading rows in file order keeps a memory map's reads sequential.
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows),) + self.shape[1:], dtype=self.dtype)
        out[order] = self.base[rows[order]]
        return out

    def __array__(self, dtype=None, copy=None):
        array = self[:]
        return array if dtype is None else array.astype(dtype)


class Dataset:
    """Images and labels.

    Attributes
    ----------
    x : array-like, (N, C, H, W)
        Raw pixel values in 0..pixel_max (uint8 for images; may be a memory map).
    y : ndarray of int64, (N,)
    classes : list of str
        ``classes[k]`` names label k.
    pixel_max : float
        The value of a white pixel (255 for 8-bit images, 16 for digits).
    source : str
        Where the data came from, for messages and provenance.
    skipped : list of str
        ``"path: reason"`` for each file left out under ``skip_bad``.
    """

    def __init__(self, x, y, classes, pixel_max=255, source="", skipped=()):
        self.x = x
        self.y = np.asarray(y, dtype=np.int64)
        self.classes = list(classes)
        self.pixel_max = float(pixel_max)
        self.source = source
        self.skipped = list(skipped)

    def __len__(self):
        return len(self.y)

    @property
    def image_shape(self):
        """(C, H, W) of one image."""
        return tuple(self.x.shape[1:])

    def subset(self, rows, source=None):
        if isinstance(self.x, Rows):
            x = Rows(self.x.base, self.x.rows[rows])
        elif isinstance(self.x, np.memmap):
            x = Rows(self.x, rows)
        else:
            x = self.x[rows]
        return Dataset(x, self.y[rows], self.classes, self.pixel_max,
                       source or self.source, self.skipped)

    def class_counts(self):
        return np.bincount(self.y, minlength=len(self.classes))

    def __repr__(self):
        return (f"Dataset({self.source!r}: {len(self)} images of {self.image_shape}, "
                f"{len(self.classes)} classes)")


class Splits:
    """A dataset's parts: ``train``, and ``val`` / ``test`` where the source has them."""

    def __init__(self, train, val=None, test=None):
        self.train, self.val, self.test = train, val, test


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def load_dataset(source, channels=None, size=None, skip_bad=False, cache_dir=None):
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
        return load_image_folder(text, channels=channels, size=size, skip_bad=skip_bad)
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


def shipped_datasets():
    """{name: folder} of the image-folder datasets installed with cnncli (data/)."""
    from importlib import resources
    try:
        root = str(resources.files("cnncli.sample_data"))
    except ModuleNotFoundError:
        return {}
    if not os.path.isdir(root):
        return {}
    return {name: os.path.join(root, name) for name in sorted(os.listdir(root))
            if not name.startswith((".", "_")) and os.path.isdir(os.path.join(root, name))}


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
    from cnncli.modelfile import atomic_write
    os.makedirs(folder, exist_ok=True)
    atomic_write(path, data)
    return path


# ---------------------------------------------------------------------------
# .npz files
# ---------------------------------------------------------------------------


def _npz_member(path, archive, key):
    """The array ``key`` of an .npz: memory-mapped when stored uncompressed, else read."""
    name = key + ".npy"
    info = archive.getinfo(name)
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as handle:
            handle.seek(info.header_offset)
            local = handle.read(30)
            if local[:4] == b"PK\x03\x04":
                name_length = int.from_bytes(local[26:28], "little")
                extra_length = int.from_bytes(local[28:30], "little")
                start = info.header_offset + 30 + name_length + extra_length
                handle.seek(start)
                version = np.lib.format.read_magic(handle)
                reader = {(1, 0): np.lib.format.read_array_header_1_0,
                          (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if reader is not None:
                    shape, fortran, dtype = reader(handle)
                    if not dtype.hasobject and not fortran:
                        return np.memmap(path, dtype=dtype, mode="r", offset=handle.tell(),
                                         shape=shape)
    with archive.open(name) as member:
        return np.lib.format.read_array(io.BufferedReader(member), allow_pickle=False)


def _pixel_max(x):
    """The white level of stored pixels: 255 for bytes; 1, 255 or 65535 from the values."""
    if x.dtype == np.uint8 or len(x) == 0:
        return 255.0
    top = float(np.max(np.asarray(x[:1000])))
    for level in (1.0, 255.0, 65535.0):
        if top <= level:
            return level
    return top


def _as_images(x, where):
    """(N, C, H, W) from (N, H, W), (N, H, W, C) or (N, C, H, W)."""
    if x.ndim == 3:
        return x.reshape(x.shape[0], 1, x.shape[1], x.shape[2])
    if x.ndim == 4:
        if x.shape[1] not in (1, 3, 4) and x.shape[3] in (1, 3, 4):
            return x.transpose(0, 3, 1, 2)
        return x
    raise DataError(f"{where}: expected images of shape (N, H, W), (N, H, W, C) or "
                    f"(N, C, H, W), got {x.shape}")


def _check_labels(y, count, classes, where, skip_bad):
    """Integer labels in 0..classes-1; returns (labels, rows kept, skipped notes)."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{where}: expected labels of shape (N,), got {y.shape}")
    if len(y) != count:
        raise DataError(f"{where}: {count} images but {len(y)} labels")
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating)
                                                    and np.all(np.mod(y, 1) == 0))):
        raise DataError(f"{where}: labels must be class numbers (integers), got {y.dtype}")
    limit = len(classes) if classes is not None else None
    bad = y < 0 if limit is None else (y < 0) | (y >= limit)
    skipped = []
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        y_list = y.tolist()
        allowed = "0 or more" if limit is None else f"0..{limit - 1}"
        if not skip_bad:
            raise DataError(f"{where}: label {y_list[first]!r} of sample {first} is outside "
                            f"{allowed} ({int(bad.sum())} such labels); fix the labels or pass "
                            "--skip-bad")
        skipped = [f"{where}: sample {i}: label {y_list[i]!r} outside {allowed}"
                   for i in np.flatnonzero(bad)]
    return y.astype(np.int64), np.flatnonzero(~bad), skipped


def load_npz(path, skip_bad=False, classes=None):
    """Arrays from an .npz: ``x``/``y`` (one part) or ``x_train``, ``y_train``, ``x_test``,
    ``y_test`` (and optionally ``x_val``, ``y_val``); class names from ``classes`` if present.
    """
    path = os.fspath(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"{path}: not a readable .npz file ({error})") from None
    with archive:
        keys = {name[:-4] for name in archive.namelist() if name.endswith(".npy")}
        try:
            if "classes" in keys and classes is None:
                classes = [str(c) for c in _npz_member(path, archive, "classes").tolist()]
            parts = {}
            for part, (x_key, y_key) in {"train": ("x_train", "y_train"), "val": ("x_val", "y_val"),
                                         "test": ("x_test", "y_test")}.items():
                if x_key in keys and y_key in keys:
                    parts[part] = (_npz_member(path, archive, x_key),
                                   _npz_member(path, archive, y_key), x_key)
            if not parts and {"x", "y"} <= keys:
                parts["train"] = (_npz_member(path, archive, "x"),
                                  _npz_member(path, archive, "y"), "x")
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
            raise DataError(f"{path}: cannot read its arrays ({error})") from None
    if "train" not in parts:
        raise DataError(f"{path}: expected arrays 'x' and 'y', or 'x_train' and 'y_train', "
                        f"found {sorted(keys)}")
    if classes is None:
        labels = [np.asarray(y) for _, y, _ in parts.values()]
        top = max(int(np.max(y)) if len(y) and np.issubdtype(y.dtype, np.number) else 0
                  for y in labels)
        classes = [str(k) for k in range(top + 1)]
    datasets = {}
    for part, (x, y, x_key) in parts.items():
        where = f"{path} [{x_key}]"
        x = _as_images(x, where)
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
            raise DataError(f"{where}: expected numeric pixels, got {x.dtype}")
        y, keep, skipped = _check_labels(y, len(x), classes, where, skip_bad)
        dataset = Dataset(x, y, classes, _pixel_max(x), source=f"{path} ({part})",
                          skipped=skipped)
        datasets[part] = dataset if len(keep) == len(y) else dataset.subset(keep)
    return Splits(**datasets)


# ---------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------


def _visible(entries):
    return sorted((entry for entry in entries if not entry.name.startswith(".")),
                  key=lambda entry: entry.name)


def _class_folders(root):
    with os.scandir(root) as entries:
        return [entry for entry in _visible(entries) if entry.is_dir()]


def _scan(root, skip_bad, skipped):
    """[(path, label)], class names of a root/<class>/<image> tree."""
    folders = _class_folders(root)
    if not folders:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/<image files>)")
    samples, classes = [], []
    for folder in folders:
        with os.scandir(folder.path) as entries:
            files = [entry.path for entry in _visible(entries) if entry.is_file()]
        if not files:
            if not skip_bad:
                raise DataError(f"{folder.path}: the class folder has no images")
            skipped.append(f"{folder.path}: empty class folder, class left out")
            continue
        label = len(classes)
        classes.append(folder.name)
        samples.extend((path, label) for path in files)
    if not classes:
        raise DataError(f"{root}: every class folder is empty")
    return samples, classes


def _open_image(path):
    """A loaded PIL image, or a DataError naming the file."""
    from PIL import Image, UnidentifiedImageError
    if not path.lower().endswith(IMAGE_EXTENSIONS):
        raise DataError(f"{path}: not an image file (expected {', '.join(IMAGE_EXTENSIONS)})")
    try:
        image = Image.open(path)
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: corrupt or unreadable image ({error})") from None
    if image.width * image.height > MAX_IMAGE_PIXELS:
        image.close()
        raise DataError(f"{path}: the image is too large ({image.width}x{image.height})")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        image.close()
        raise DataError(f"{path}: corrupt or unreadable image ({error})") from None
    return image


GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _is_grayscale(image):
    """Whether an image has no colour: a grayscale mode, or a palette of grays only."""
    if image.mode in ("P", "PA"):
        pixels = np.asarray(image.convert("RGB"))
        return bool(np.all(pixels[..., 0] == pixels[..., 1])
                    and np.all(pixels[..., 1] == pixels[..., 2]))
    return image.mode in GRAYSCALE_MODES


def image_to_array(image, channels, size):
    """(channels, height, width) uint8 pixels of a PIL image, converted and resized."""
    from PIL import Image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit and float grayscale: scale to 8 bits rather than clip.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / top * 255 + 0.5, 0, 255).astype(np.uint8))
    if image.mode in ("P", "PA") or (image.mode == "LA" and channels == 3):
        image = image.convert("RGBA")
    image = image.convert("L" if channels == 1 else "RGB")
    if (image.height, image.width) != tuple(size):
        image = image.resize((size[1], size[0]), Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def _decode_folder(root, skip_bad, skipped):
    samples, classes = _scan(root, skip_bad, skipped)
    images, labels, shapes, gray = [], [], [], True
    for path, label in samples:
        try:
            image = _open_image(path)
        except DataError as error:
            if not skip_bad:
                raise DataError(f"{error}; pass --skip-bad to leave bad files out") from None
            skipped.append(str(error))
            continue
        images.append(image)
        labels.append(label)
        shapes.append((image.height, image.width))
        gray = gray and _is_grayscale(image)
    # A class whose every file was bad (and skipped) is left out like an empty folder.
    present = sorted(set(labels))
    if len(present) < len(classes):
        for label in sorted(set(range(len(classes))) - set(present)):
            skipped.append(f"{os.path.join(root, classes[label])}: no readable images, class "
                           "left out")
        renumber = {old: new for new, old in enumerate(present)}
        labels = [renumber[label] for label in labels]
        classes = [classes[label] for label in present]
    return images, labels, shapes, gray, classes


def _target_size(shapes, size, root):
    if size is not None:
        return tuple(size)
    distinct = sorted(set(shapes))
    if len(distinct) > 1:
        raise DataError(f"{root}: images have different sizes ({distinct[0][0]}x"
                        f"{distinct[0][1]}, {distinct[-1][0]}x{distinct[-1][1]}, ...); "
                        "give the size to use (--size)")
    return distinct[0]


def load_image_folder(root, channels=None, size=None, skip_bad=False):
    """Images from ``root/<class>/<file>``, or ``root/train/<class>/...`` with ``root/val/``
    (or ``validation/``) and ``root/test/`` beside it.

    Class names are the folder names (sorted); validation and test parts
    must use the training classes.
    """
    root = os.fspath(root)
    parts = {name: os.path.join(root, name) for name in ("train", "val", "validation", "test")
             if os.path.isdir(os.path.join(root, name))}
    layout = {"train": parts["train"]} if "train" in parts else {"train": root}
    if "train" in parts:
        if "val" in parts or "validation" in parts:
            layout["val"] = parts.get("val") or parts["validation"]
        if "test" in parts:
            layout["test"] = parts["test"]
    skipped = []
    decoded = {part: _decode_folder(folder, skip_bad, skipped)
               for part, folder in layout.items()}
    classes = decoded["train"][4]
    for part, (_, _, _, _, part_classes) in decoded.items():
        unknown = sorted(set(part_classes) - set(classes))
        if unknown:
            raise DataError(f"{layout[part]}: classes {unknown} are not among the training "
                            f"classes {classes}")
    all_shapes = [shape for part in decoded.values() for shape in part[2]]
    if not all_shapes:
        raise DataError(f"{root}: no readable images")
    if channels is None:
        channels = 1 if all(part[3] for part in decoded.values()) else 3
    size = _target_size(all_shapes, size, root)
    datasets = {}
    for part, (images, labels, _, _, part_classes) in decoded.items():
        x = np.empty((len(images), channels) + tuple(size), dtype=np.uint8)
        for index, image in enumerate(images):
            x[index] = image_to_array(image, channels, size)
            image.close()
        remap = np.array([classes.index(name) for name in part_classes], dtype=np.int64)
        y = remap[np.asarray(labels, dtype=np.int64)] if labels else np.empty(0, np.int64)
        datasets[part] = Dataset(x, y, classes, 255, source=f"{layout[part]}", skipped=skipped)
    return Splits(**datasets)


# ---------------------------------------------------------------------------
# Splitting, statistics, conversion and augmentation
# ---------------------------------------------------------------------------


def stratified_split(dataset, fraction, seed=0):
    """(train, validation): ``fraction`` of each class held out, chosen by ``seed``."""
    from sklearn.model_selection import train_test_split
    if not 0 < fraction < 1:
        raise ValueError(f"fraction: expected a value between 0 and 1, got {fraction!r}")
    counts = dataset.class_counts()
    rows = np.arange(len(dataset))
    stratify = dataset.y if counts[counts > 0].min() >= 2 else None
    held = max(1, int(round(fraction * len(dataset))))
    if stratify is not None and held < np.count_nonzero(counts):
        held = np.count_nonzero(counts)
    if held >= len(dataset):
        raise DataError(f"{dataset.source}: {len(dataset)} images are too few to hold out "
                        f"{fraction:.0%} for validation")
    train_rows, val_rows = train_test_split(rows, test_size=held, random_state=seed,
                                            stratify=stratify)
    return (dataset.subset(np.sort(train_rows), f"{dataset.source} (train split)"),
            dataset.subset(np.sort(val_rows), f"{dataset.source} (validation split)"))


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

    def __call__(self, batch):
        if not self.active:
            return batch
        count, _, height, width = batch.shape
        out = batch
        if self.shift:
            s = self.shift
            padded = np.pad(batch, ((0, 0), (0, 0), (s, s), (s, s)))
            offsets = self.rng.integers(0, 2 * s + 1, size=(count, 2))
            out = np.empty_like(batch)
            for index, (top, left) in enumerate(offsets):
                out[index] = padded[index, :, top:top + height, left:left + width]
        if self.flip:
            flips = self.rng.random(count) < 0.5
            out = out.copy() if out is batch else out
            out[flips] = out[flips, :, :, ::-1]
        return out


def batch_transform(preprocessing, pixel_max=None, augmentation=None):
    """The function that turns a batch of a dataset's raw pixels into model inputs.

    Converts channels and size to the model's, rescales pixels whose white
    level (``pixel_max``) differs from the one the model was trained with,
    applies the model's preprocessing, then ``augmentation`` if given.
    """
    factor = 1.0 if pixel_max is None else 1.0 / (pixel_max * preprocessing.scale)

    def transform(batch):
        batch = adapt_images(batch, preprocessing.channels, preprocessing.size)
        if factor != 1.0:
            batch = np.asarray(batch, dtype=np.float32) * np.float32(factor)
        out = preprocessing(batch)
        return augmentation(out) if augmentation is not None else out

    return transform
