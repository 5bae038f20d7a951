"""Datasets stored as NumPy ``.npz`` archives: ``x``/``y`` or ``x_train``, ``y_train``,
``x_test``, ``y_test`` (and ``x_val``, ``y_val``), with optional ``classes``.

Arrays stored uncompressed are memory-mapped; compressed ones are read only
after their declared size has been checked against ``limits.MAX_ARRAY_BYTES``
(a few kilobytes can declare gigabytes). Object arrays are never loaded.
"""

import io
import math
import tokenize
import zipfile

import numpy as np

from cnncli.dataset import MAX_NOTES, Dataset, Splits, class_name
from cnncli.files import check_file
from cnncli.images import DataError
from cnncli.limits import MAX_ARRAY_BYTES, MAX_CLASSES, cut

__all__ = ["load_npz"]


NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}


def _npy_header(stream, where):
    """(shape, fortran order, dtype) from the start of a .npy member, checked for size."""
    version = np.lib.format.read_magic(stream)
    reader = NPY_HEADER_READERS.get(version)
    if reader is None:
        raise DataError(f"{where}: unsupported .npy format version {version}")
    shape, fortran, dtype = reader(stream)
    if dtype.hasobject:
        raise DataError(f"{where}: holds Python objects, which cnncli does not load")
    too_large = MAX_ARRAY_BYTES.exceeded(math.prod(shape) * dtype.itemsize,
                                         f"{where} (shape {cut(shape, 60)}, {dtype})")
    if too_large:
        raise DataError(too_large)
    return shape, fortran, dtype


def _npz_member(path, archive, key):
    """The array ``key`` of an .npz: memory-mapped when stored uncompressed, else read once
    its declared size has been checked against ``limits.MAX_ARRAY_BYTES``."""
    name = key + ".npy"
    where = f"{path} [{key}]"
    info = archive.getinfo(name)
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as handle:
            handle.seek(info.header_offset)
            local = handle.read(30)
            if local[:4] == b"PK\x03\x04":
                name_length = int.from_bytes(local[26:28], "little")
                extra_length = int.from_bytes(local[28:30], "little")
                handle.seek(info.header_offset + 30 + name_length + extra_length)
                version = np.lib.format.read_magic(handle)
                reader = NPY_HEADER_READERS.get(version)
                if reader is not None:
                    shape, fortran, dtype = reader(handle)
                    if not dtype.hasobject and not fortran:
                        return np.memmap(path, dtype=dtype, mode="r", offset=handle.tell(),
                                         shape=shape)
    with archive.open(name) as member:
        _npy_header(member, where)
    with archive.open(name) as member:
        return np.lib.format.read_array(io.BufferedReader(member), allow_pickle=False)


def _pixel_max(x, rows):
    """The white level of stored pixels: 255 for bytes; 1, 255 or 65535 from the values of
    (the first thousand of) ``rows``."""
    if x.dtype == np.uint8 or len(rows) == 0:
        return 255.0
    top = float(np.max(np.asarray(x[np.sort(rows[:1000])])))
    for level in (1.0, 255.0, 65535.0):
        if top <= level:
            return level
    return top


def _as_images(x, where):
    """(N, C, H, W) from (N, H, W), (N, H, W, C) or (N, C, H, W) numbers."""
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where}: expected numeric pixels, got {x.dtype}")
    if x.ndim == 3:
        return x.reshape(x.shape[0], 1, x.shape[1], x.shape[2])
    if x.ndim == 4:
        if x.shape[1] not in (1, 3, 4) and x.shape[3] in (1, 3, 4):
            return x.transpose(0, 3, 1, 2)
        return x
    raise DataError(f"{where}: expected images of shape (N, H, W), (N, H, W, C) or "
                    f"(N, C, H, W), got {x.shape}")


def _rows_in_blocks(x, block_bytes=64 << 20):
    """(start, rows as an array) blocks of ``x``, of about ``block_bytes`` each."""
    row_bytes = max(1, math.prod(x.shape[1:]) * x.dtype.itemsize)
    step = max(1, block_bytes // row_bytes)
    for start in range(0, len(x), step):
        yield start, np.asarray(x[start:start + step])


def _non_finite_rows(x):
    """Row numbers of the images of ``x`` with a NaN or infinite pixel (float data only)."""
    if x.dtype.kind != "f":
        return np.zeros(0, dtype=np.int64)
    bad = [start + np.flatnonzero(~np.isfinite(block.reshape(len(block), -1)).all(axis=1))
           for start, block in _rows_in_blocks(x)]
    return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)


def _label_values(y, count, where):
    """The labels as an array, with a mask of those that are class numbers (finite whole
    numbers >= 0), after the checks that stop loading whatever ``skip_bad`` says."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{where}: expected labels of shape (N,), got {y.shape}")
    if len(y) != count:
        raise DataError(f"{where}: {count} images but {len(y)} labels")
    if y.dtype.kind in "iu":
        return y, y >= 0
    if y.dtype.kind != "f":
        raise DataError(f"{where}: labels must be class numbers (integers), got {y.dtype}")
    with np.errstate(invalid="ignore"):
        return y, np.isfinite(y) & (np.mod(y, 1) == 0) & (y >= 0)


def _labels_in_range(y, valid, classes, where, skip_bad, values=None):
    """(int64 labels, rows kept, notes on those skipped): a label must be a class number
    below ``len(classes)``, or, given the label ``values`` of the classes (classes named
    after the labels present), one of them, which becomes its index; bad ones stop
    loading unless ``skip_bad``."""
    if values is not None:
        positions = np.searchsorted(values, np.where(valid, y, -1))
        positions = np.minimum(positions, len(values) - 1)
        with np.errstate(invalid="ignore"):
            valid = valid & (values[positions] == y)
        y_indices = np.where(valid, positions, -1)
        allowed = ", ".join(map(str, values.tolist()[:10])) + \
            (", ..." if len(values) > 10 else "")
    else:
        y_indices = y
        allowed = f"0..{len(classes) - 1}"
    with np.errstate(invalid="ignore"):
        bad = ~(valid & (y_indices < len(classes)))
    if not bad.any():
        return y_indices.astype(np.int64), np.arange(len(y)), []
    rows = np.flatnonzero(bad)

    def problem(row):
        label = y[row].item()
        if valid[row] or (isinstance(label, int) and label < 0):
            return f"label {label!r} of sample {row} is outside {allowed}"
        return f"label {label!r} of sample {row} is not a class number (integers {allowed})"

    if not skip_bad:
        raise DataError(f"{where}: {problem(int(rows[0]))} ({len(rows)} such labels); fix the "
                        "labels or pass --skip-bad")
    notes = [f"{where}: {problem(row)}" for row in rows[:MAX_NOTES].tolist()]
    if len(rows) > MAX_NOTES:
        notes.append(f"{where}: {len(rows) - MAX_NOTES} more samples with bad labels")
    labels = np.where(bad, 0, np.nan_to_num(y_indices)).astype(np.int64)
    return labels, np.flatnonzero(~bad), notes


def _file_classes(values, where):
    if values.ndim != 1 or values.dtype.kind not in "USiu":
        raise DataError(f"{where}: expected a list of class names, got {values.dtype} of shape "
                        f"{values.shape}")
    too_many = MAX_CLASSES.exceeded(len(values), where)
    if too_many:
        raise DataError(too_many)
    names = [class_name(name, where) for name in values.tolist()]
    if len(set(names)) != len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise DataError(f"{where}: the class {ascii(twice)[:60]} is named twice; class names "
                        "must be unique")
    return names


def _classes_from_labels(labels, where, skip_bad):
    """(class names, label values): one class per label value present in any part, named
    after it ('0', '1', '2', '7'), so a stray label does not make empty classes of the
    numbers below it. A label of ``limits.MAX_CLASSES`` or more is refused, or left out
    under ``skip_bad``."""
    limit = MAX_CLASSES.value
    present = []
    for y, valid in labels:
        with np.errstate(invalid="ignore"):
            too_large = valid & (y >= limit)
        if too_large.any() and not skip_bad:
            top = int(np.max(y[too_large]))
            raise DataError(f"{MAX_CLASSES.exceeded(top + 1, f'{where}: label {top}')}, or pass "
                            "--skip-bad to leave such labels out")
        present.append(np.unique(y[valid & ~too_large]).astype(np.int64))
    values = np.unique(np.concatenate(present)) if present else np.zeros(0, np.int64)
    if len(values) == 0:
        values = np.zeros(1, np.int64)
    return [str(value) for value in values.tolist()], values


NPZ_PARTS = {"train": ("x_train", "y_train"), "val": ("x_val", "y_val"),
             "test": ("x_test", "y_test")}


def _npz_arrays(path):
    """(classes array or None, {part: (x, y, x key)}) of an .npz, not yet checked."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise DataError(f"{path}: not a readable .npz file ({cut(error)})") from None
    with archive:
        keys = {name[:-4] for name in archive.namelist() if name.endswith(".npy")}
        try:
            classes = _npz_member(path, archive, "classes") if "classes" in keys else None
            parts = {part: (_npz_member(path, archive, x_key),
                            _npz_member(path, archive, y_key), x_key)
                     for part, (x_key, y_key) in NPZ_PARTS.items()
                     if x_key in keys and y_key in keys}
            if not parts and {"x", "y"} <= keys:
                parts["train"] = (_npz_member(path, archive, "x"),
                                  _npz_member(path, archive, "y"), "x")
        except (ValueError, OSError, zipfile.BadZipFile, EOFError, NotImplementedError,
                SyntaxError, tokenize.TokenError) as error:
            # numpy parses an array's header as a Python literal: a damaged one
            # raises the parser's errors.
            if isinstance(error, DataError):
                raise
            raise DataError(f"{path}: cannot read its arrays ({cut(error)})") from None
    if "train" not in parts:
        raise DataError(f"{path}: expected arrays 'x' and 'y', or 'x_train' and 'y_train', "
                        f"found {cut(sorted(keys), 100)}")
    return classes, parts


def load_npz(path, skip_bad=False, classes=None):
    """Arrays from an .npz: ``x``/``y`` (one part) or ``x_train``, ``y_train``, ``x_test``,
    ``y_test`` (and optionally ``x_val``, ``y_val``); class names from ``classes`` if present.

    Pixels must be numbers (float pixels finite); labels class numbers. With
    ``skip_bad``, samples with bad labels or non-finite pixels are left out
    and listed in ``skipped``.
    """
    path = check_file(path, "dataset", DataError)
    stored_classes, parts = _npz_arrays(path)
    if classes is None and stored_classes is not None:
        classes = _file_classes(stored_classes, f"{path} [classes]")
    checked = {}
    for part, (x, y, x_key) in parts.items():
        where = f"{path} [{x_key}]"
        x = _as_images(x, where)
        checked[part] = (x, *_label_values(y, len(x), where), where)
    values = None
    if classes is None:
        classes, values = _classes_from_labels(
            [(y, valid) for _, y, valid, _ in checked.values()], path, skip_bad)
    datasets = {}
    for part, (x, y, valid, where) in checked.items():
        labels, keep, skipped = _labels_in_range(y, valid, classes, where, skip_bad, values)
        non_finite = _non_finite_rows(x)
        if len(non_finite):
            if not skip_bad:
                raise DataError(f"{where}: sample {int(non_finite[0])} has NaN or infinite "
                                f"pixels ({len(non_finite)} such samples); fix the data or pass "
                                "--skip-bad")
            skipped += [f"{where}: sample {row}: NaN or infinite pixels"
                        for row in non_finite[:MAX_NOTES]]
            keep = np.setdiff1d(keep, non_finite)
        dataset = Dataset(x, labels, classes, _pixel_max(x, keep), source=f"{path} ({part})",
                          skipped=skipped)
        datasets[part] = dataset if len(keep) == len(labels) else dataset.subset(keep)
    return Splits(**datasets)
