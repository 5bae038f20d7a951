"""Files the tool writes and reads: atomic writes, run locks, checked paths, strict JSON.

Atomic writes. ``atomic_write`` puts the bytes in a temporary file beside the
target (``.<name>.<random>.partial``), flushes it to disk and renames it over
the target, so a crash or a full disk leaves the previous file intact. The
writer holds an advisory lock on its temporary file; a later write of the
same target removes the temporary files whose writer died (their lock is
free), so killed saves leave nothing behind for long.

Run locks. ``RunLock(path)`` is held by a run (training, fine-tuning) for
every file and folder it will write: a second run writing the same output
is refused at once instead of racing the first and silently losing one
result. The lock is an advisory ``flock`` on ``.<name>.lock`` beside the
target, released (and the file removed) when the run ends; a killed run's
lock is released by the system. Where ``fcntl`` is missing (Windows) there
is no locking.
"""

import contextlib
import json
import math
import os
import re
import secrets
import stat

from cnncli.limits import MAX_JSON_BYTES, cut

try:
    import fcntl
except ImportError:     # pragma: no cover - Windows
    fcntl = None

__all__ = ["atomic_write", "check_file", "RunLock", "OutputLocked", "parse_json",
           "read_json_file"]

WRITE_CHUNK = 1 << 20


class OutputLocked(FileExistsError):
    """Another run holds the lock of an output this run would write."""


def _try_lock(descriptor):
    """Take the exclusive lock of an open file without waiting; False when another holds it."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _same_file(path, descriptor):
    """Whether ``path`` still names the file open as ``descriptor`` (not removed or replaced)."""
    try:
        return os.stat(path).st_ino == os.fstat(descriptor).st_ino
    except FileNotFoundError:
        return False


def _remove_dead_partials(directory, name):
    """Remove the temporary files of earlier writes of ``name`` whose writer is gone."""
    if fcntl is None:
        return
    pattern = re.compile(rf"\.{re.escape(name)}\.[0-9a-f]{{12}}\.partial\Z")
    with contextlib.suppress(OSError):
        candidates = [entry for entry in os.listdir(directory) if pattern.match(entry)]
        for entry in candidates:
            path = os.path.join(directory, entry)
            with contextlib.suppress(OSError):
                descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
                try:
                    if _try_lock(descriptor) and _same_file(path, descriptor):
                        os.unlink(path)
                finally:
                    os.close(descriptor)


def _create_partial(directory, name):
    """A new temporary file beside the target, locked by this writer: (path, descriptor)."""
    while True:
        temporary = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.partial")
        # os.open applies the umask to 0o666, so the file gets the usual permissions.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        if fcntl is None:
            return temporary, descriptor
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        # Between creating and locking it, another writer may have taken the file
        # for a dead one and removed it: then start again with a new name.
        if _same_file(temporary, descriptor):
            return temporary, descriptor
        os.close(descriptor)


def atomic_write(path, data, overwrite=True):
    """Write ``data`` (bytes) to ``path`` so that the file is either the old one or the new one.

    The bytes go to a temporary file beside ``path``, are flushed to disk and
    renamed over it; on any failure the temporary file is removed and the
    previous file is untouched.
    """
    path = os.path.abspath(os.fspath(path))
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path}: already exists")
    directory, name = os.path.split(path)
    _remove_dead_partials(directory, name)
    temporary, descriptor = _create_partial(directory, name)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            view = memoryview(data)
            for start in range(0, len(view), WRITE_CHUNK):
                handle.write(view[start:start + WRITE_CHUNK])
            handle.flush()
            os.fsync(handle.fileno())
            # Renamed while still locked, so no other writer takes it for a dead one.
            os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    # Make the rename itself durable, where the file system lets a folder be synced.
    with contextlib.suppress(OSError):
        folder = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


class RunLock:
    """Exclusive use of ``target`` (a file or folder a run writes) while the block runs.

    Raises ``OutputLocked`` at once, naming the other run's process, when
    another run holds it.
    """

    def __init__(self, target):
        self.target = os.fspath(target)
        directory, name = os.path.split(os.path.abspath(self.target.rstrip(os.sep) or os.sep))
        self.path = os.path.join(directory, f".{name}.lock")
        self.descriptor = None

    def __enter__(self):
        if fcntl is None:
            return self
        while True:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            if not _try_lock(descriptor):
                holder = _read_small(descriptor)
                os.close(descriptor)
                who = f" (process {holder})" if holder.isdigit() else ""
                raise OutputLocked(f"{self.target}: another cnncli run is writing it{who}; "
                                   "wait for it to finish or choose another output")
            # The last holder removes the file on release: if it did so between
            # our open and our lock, we hold a lock nobody else can see.
            if _same_file(self.path, descriptor):
                break
            os.close(descriptor)
        os.ftruncate(descriptor, 0)
        os.write(descriptor, str(os.getpid()).encode())
        self.descriptor = descriptor
        return self

    def __exit__(self, *exc):
        if self.descriptor is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            os.close(self.descriptor)
            self.descriptor = None
        return False


def _read_small(descriptor):
    with contextlib.suppress(OSError):
        return os.pread(descriptor, 32, 0).decode("ascii", "replace").strip()
    return ""


def check_file(path, kind="model file", error=ValueError):
    """``path`` as a string, if it names a readable file.

    FileNotFoundError when it does not exist; ``error`` (a ValueError class)
    when it is a folder or something other than a regular file, or cannot be
    read.
    """
    path = os.fspath(path)
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except OSError as problem:
        raise error(f"{path}: cannot be read ({problem.strerror or problem})") from None
    if os.path.isdir(path):
        raise error(f"{path}: is a folder, not a {kind}")
    if not stat.S_ISREG(status.st_mode):
        raise error(f"{path}: is not a regular file (a pipe, socket or device), not a {kind}")
    if not os.access(path, os.R_OK):
        raise error(f"{path}: permission denied (the file cannot be read)")
    return path


def _unique_keys(pairs):
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate keys in an object: {cut(sorted(keys), 100)}")
    return dict(pairs)


def _no_constant(constant):
    raise ValueError(f"{constant} is not allowed")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{cut(text, 40)} is out of range")
    return value


def parse_json(text):
    """JSON from an untrusted file, strictly: no NaN or infinities, no duplicate keys.

    Raises ValueError (with a short reason) for anything else, nesting too
    deep for the parser included.
    """
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant,
                          parse_float=_finite_float)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as error:
        raise ValueError(cut(error)) from None


def read_json_file(path, what):
    """The strict JSON (see ``parse_json``) of a file of at most MAX_JSON_BYTES; ValueError
    naming the file for anything wrong."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        too_large = MAX_JSON_BYTES.exceeded(size, f"{path}")
        if too_large:
            raise ValueError(too_large)
        with open(path, "rb") as handle:
            text = handle.read(size + 1).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a readable {what} (not UTF-8 text)") from None
    except OSError as error:
        raise ValueError(f"{path}: not a readable {what} ({error.strerror or error})") from None
    try:
        return parse_json(text)
    except ValueError as error:
        raise ValueError(f"{path}: not a readable {what} ({error})") from None
