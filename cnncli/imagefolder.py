"""Datasets stored as folders of images: ``root/<class>/<image>``, or
``root/train|val|test/<class>/<image>``.

Headers are read first (sizes, colour), then each image is decoded and
converted on its own (``cnncli.images``), so memory holds the dataset at its
final size and one decoded image at a time. FIFOs, sockets and devices in a
class folder are left out and noted; entries that cannot be examined (broken
links, link loops) are bad items like corrupt images.
"""

import os
import stat

import numpy as np

from cnncli.dataset import Dataset, Splits, class_name
from cnncli.images import DataError, image_header, load_image
from cnncli.limits import MAX_ARRAY_BYTES, cut

__all__ = ["load_image_folder", "ImageFiles", "decode_files"]


class ImageFiles:
    """Image files read only when indexed: ``x`` of a lazily loaded image folder.

    Indexing with a slice or an array of rows decodes those files (converted to
    ``channels`` and ``size``) into a (rows, channels, height, width) uint8
    array; a file that cannot be decoded raises DataError then. A process
    working on a shard (a Dask worker) reads only the shard's files.
    """

    def __init__(self, paths, channels, size):
        self.paths = list(paths)
        self.channels, self.size = channels, tuple(size)

    def __len__(self):
        return len(self.paths)

    @property
    def shape(self):
        return (len(self.paths), self.channels) + self.size

    ndim = 4
    dtype = np.dtype(np.uint8)

    def subset(self, rows):
        return ImageFiles(np.asarray(self.paths, dtype=object)[rows].tolist(), self.channels,
                          self.size)

    def __getitem__(self, index):
        if np.ndim(index) == 0 and not isinstance(index, slice):
            return load_image(self.paths[int(index)], self.channels, self.size)
        paths = np.asarray(self.paths, dtype=object)[index]
        out = np.empty((len(paths), self.channels) + self.size, dtype=np.uint8)
        for row, path in enumerate(paths):
            out[row] = load_image(path, self.channels, self.size)
        return out

    def __array__(self, dtype=None, copy=None):
        array = self[:]
        return array if dtype is None else array.astype(dtype)


def _visible(entries):
    return sorted((entry for entry in entries if not entry.name.startswith(".")),
                  key=lambda entry: entry.name)


def _bad_item(error, skip_bad, skipped):
    """Stop at a bad file, or note it and go on under ``skip_bad``."""
    if not skip_bad:
        raise DataError(f"{error}; pass --skip-bad to leave bad files out") from None
    skipped.append(str(error))


def _entries(folder, skip_bad, skipped):
    """(sub-folders, regular files) of a folder, sorted, hidden names left out.

    An entry that cannot be examined (a broken link, a link loop) is a bad
    item; a FIFO, socket or device is left out and noted.
    """
    folders, files = [], []
    try:
        with os.scandir(folder) as scan:
            entries = _visible(scan)
    except OSError as error:
        raise DataError(f"{folder}: cannot be read ({error.strerror or error})") from None
    for entry in entries:
        try:
            mode = os.stat(entry.path).st_mode
        except OSError as error:
            _bad_item(DataError(f"{entry.path}: cannot be read ({error.strerror or error})"),
                      skip_bad, skipped)
            continue
        if stat.S_ISDIR(mode):
            folders.append(entry)
        elif stat.S_ISREG(mode):
            files.append(entry.path)
        else:
            skipped.append(f"{entry.path}: not a regular file (a pipe, socket or device), "
                           "left out")
    return folders, files


def _scan(root, skip_bad, skipped):
    """[(path, label)], class names of a root/<class>/<image> tree."""
    folders, _ = _entries(root, skip_bad, skipped)
    if not folders:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/<image files>)")
    samples, classes = [], []
    for folder in folders:
        try:
            name = class_name(folder.name, root)
        except DataError as error:
            _bad_item(DataError(f"{error}; folder {ascii(folder.name)}"), skip_bad, skipped)
            continue
        _, files = _entries(folder.path, skip_bad, skipped)
        if not files:
            if not skip_bad:
                raise DataError(f"{folder.path}: the class folder has no images")
            skipped.append(f"{folder.path}: empty class folder, class left out")
            continue
        label = len(classes)
        classes.append(name)
        samples.extend((path, label) for path in files)
    if not classes:
        raise DataError(f"{root}: every class folder is empty")
    return samples, classes


def _read_headers(samples, colour, verify, skip_bad, skipped):
    """(samples whose header reads, their (height, width), whether all are grayscale)."""
    kept, shapes, gray = [], [], True
    for path, label in samples:
        try:
            height, width, grayscale = image_header(path, colour, verify)
        except DataError as error:
            _bad_item(error, skip_bad, skipped)
            continue
        kept.append((path, label))
        shapes.append((height, width))
        gray = gray and bool(grayscale)
    return kept, shapes, gray


def _decode(samples, channels, size, where, skip_bad, skipped):
    """(N, channels, *size) uint8 pixels and labels of ``samples``, one image decoded at a
    time; images that fail to decode are left out under ``skip_bad``."""
    too_large = MAX_ARRAY_BYTES.exceeded(len(samples) * channels * size[0] * size[1],
                                         f"{where}: {len(samples)} images of {channels}x"
                                         f"{size[0]}x{size[1]}")
    if too_large:
        raise DataError(f"{too_large}, or give a smaller --size")
    x = np.empty((len(samples), channels) + tuple(size), dtype=np.uint8)
    good = np.ones(len(samples), dtype=bool)
    for index, (path, _) in enumerate(samples):
        try:
            x[index] = load_image(path, channels, size)
        except DataError as error:
            _bad_item(error, skip_bad, skipped)
            good[index] = False
    labels = np.array([label for _, label in samples], dtype=np.int64)
    if not good.all():
        x, labels = x[good], labels[good]
    return x, labels


def decode_files(files, labels, where, skip_bad=False):
    """(pixels, labels, skipped) of lazily read ``files`` decoded now, one image at a
    time: images that fail to decode are left out (and named in ``skipped``) under
    ``skip_bad``, else the first one is a DataError."""
    skipped = []
    x, labels = _decode(list(zip(files.paths, labels)), files.channels, files.size, where,
                        skip_bad, skipped)
    return x, labels, skipped


def _drop_empty_classes(labels, classes, root, skipped):
    """Leave out the classes none of whose images could be read, renumbering the rest."""
    present = np.unique(labels)
    if len(present) == len(classes):
        return labels, classes
    for label in sorted(set(range(len(classes))) - set(present.tolist())):
        skipped.append(f"{os.path.join(root, classes[label])}: no readable images, class "
                       "left out")
    renumber = np.full(len(classes), -1, dtype=np.int64)
    renumber[present] = np.arange(len(present))
    return renumber[labels], [classes[label] for label in present]


def _target_size(shapes, size, root):
    if size is not None:
        return tuple(size)
    distinct = sorted(set(shapes))
    if len(distinct) > 1:
        raise DataError(f"{root}: images have different sizes ({distinct[0][0]}x"
                        f"{distinct[0][1]}, {distinct[-1][0]}x{distinct[-1][1]}, ...); "
                        "give the size to use (--size)")
    return distinct[0]


def _folder_layout(root):
    """{part: folder}: root/train with val (or validation) and test beside it, or root."""
    parts = {name: os.path.join(root, name) for name in ("train", "val", "validation", "test")
             if os.path.isdir(os.path.join(root, name))}
    if "train" not in parts:
        return {"train": root}
    layout = {"train": parts["train"]}
    if "val" in parts or "validation" in parts:
        layout["val"] = parts.get("val") or parts["validation"]
    if "test" in parts:
        layout["test"] = parts["test"]
    return layout


def load_image_folder(root, channels=None, size=None, skip_bad=False, lazy=False):
    """Images from ``root/<class>/<file>``, or ``root/train/<class>/...`` with ``root/val/``
    (or ``validation/``) and ``root/test/`` beside it.

    Class names are the folder names (sorted); validation and test parts
    must use the training classes. Headers are read first (sizes, colour),
    then each image is decoded and converted on its own, so memory holds
    the dataset at its final size and one decoded image at a time. With
    ``lazy``, nothing is decoded here: ``x`` is ``ImageFiles``, read when indexed (and
    with ``channels`` and ``size`` given, no file is opened here).
    """
    root = os.fspath(root)
    layout = _folder_layout(root)
    skipped = []
    scanned = {}
    for part, folder in layout.items():
        samples, classes = _scan(folder, skip_bad, skipped)
        if lazy and channels is not None and size is not None:
            # Nothing to learn from the headers: each file is first opened when its
            # rows are read (most never are, in a sample of a few images per class).
            scanned[part] = (samples, [], True, classes)
            continue
        # Without a size to resize to, every image must be readable before the
        # sizes are compared: a damaged file is named as such, not as a misfit.
        scanned[part] = (*_read_headers(samples, channels is None, size is None, skip_bad,
                                        skipped), classes)
    if not any(samples for samples, _, _, _ in scanned.values()):
        raise DataError(f"{root}: no readable images")
    all_shapes = [shape for _, shapes, _, _ in scanned.values() for shape in shapes]
    if channels is None:
        channels = 1 if all(gray for _, _, gray, _ in scanned.values()) else 3
    size = _target_size(all_shapes, size, root)
    decoded = {}
    for part, (samples, _, _, classes) in scanned.items():
        if lazy:
            x = ImageFiles([path for path, _ in samples], channels, size)
            labels = np.array([label for _, label in samples], dtype=np.int64)
        else:
            x, labels = _decode(samples, channels, size, layout[part], skip_bad, skipped)
        decoded[part] = (x, *_drop_empty_classes(labels, classes, layout[part], skipped))
    classes = decoded["train"][2]
    datasets = {}
    for part, (x, labels, part_classes) in decoded.items():
        unknown = sorted(set(part_classes) - set(classes))
        if unknown:
            raise DataError(f"{layout[part]}: classes {cut(unknown, 100)} are not among the "
                            f"training classes {cut(classes, 100)}")
        remap = np.array([classes.index(name) for name in part_classes], dtype=np.int64)
        y = remap[labels] if len(labels) else np.empty(0, np.int64)
        datasets[part] = Dataset(x, y, classes, 255, source=f"{layout[part]}", skipped=skipped)
    return Splits(**datasets)
