"""The containers of data: a ``Dataset`` (images, labels, class names), the ``Splits`` of
a source, and ``Rows``, a lazy subset of a memory-mapped array."""

import numpy as np

from cnncli.images import DataError

__all__ = ["Dataset", "Splits", "Rows", "class_name", "MAX_NOTES"]

# Under skip_bad, at most this many skipped items are named one by one.
MAX_NOTES = 1000


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
        if hasattr(self.x, "subset"):
            x = self.x.subset(rows)
        elif isinstance(self.x, Rows):
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


def class_name(name, where):
    """A class name read from a file, as text that prints and saves: DataError otherwise."""
    if isinstance(name, bytes):
        try:
            name = name.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{where}: a class name is not UTF-8 text ({name[:40]!r})") from None
    name = str(name)
    if not 0 < len(name) <= 1000:
        raise DataError(f"{where}: class names must be 1 to 1000 characters, got {len(name)}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{where}: the class name {ascii(name[:40])} is not valid text (it "
                        "holds a lone surrogate, e.g. from a name in another encoding)") from None
    return name
