"""How many threads the kernels use, and keeping BLAS at one thread while they run.

The kernels use ``get_num_threads()`` OpenMP threads, set with
``set_num_threads``, the ``threads`` context manager, or the environment
variable ``CNNCLI_NUM_THREADS`` (then ``OMP_NUM_THREADS``, then every core
this process may use). ``cnncli.functional`` passes the count to every kernel
and holds every loaded BLAS library at one thread while a kernel calls it.
"""

import contextlib
import os
import threading
from typing import Optional

from threadpoolctl import ThreadpoolController

from cnncli.geometry import INT_MAX
from cnncli.limits import MAX_THREADS
from cnncli.validation import positive_int

__all__ = ["get_num_threads", "set_num_threads", "threads", "single_threaded_blas",
           "thread_count_set", "THREADS_VARIABLE"]

THREADS_VARIABLE = "CNNCLI_NUM_THREADS"

_num_threads: Optional[int] = None


def _threads_from_environment():
    for variable in (THREADS_VARIABLE, "OMP_NUM_THREADS"):
        text = os.environ.get(variable, "").strip()
        if not text:
            continue
        if variable == THREADS_VARIABLE:
            if not text.isdigit() or int(text) < 1:
                raise ValueError(f"{THREADS_VARIABLE}: expected a positive integer, got {text!r}")
            return int(text)
        # OMP_NUM_THREADS may hold a per-level list ("4,2"): its first entry applies.
        first = text.split(",")[0].strip()
        if first.isdigit() and int(first) >= 1:
            return int(first)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _within_thread_limit(name, count):
    """``count`` threads, refused beyond ``limits.MAX_THREADS``: far more threads than cores
    only slows the kernels, and tens of thousands exhaust the OpenMP runtime."""
    problem = MAX_THREADS.exceeded(count, f"{name}: {count:,} threads")
    if problem:
        raise ValueError(problem)
    return count


def get_num_threads() -> int:
    """Number of OpenMP threads the kernels use."""
    global _num_threads
    if _num_threads is None:
        _num_threads = _within_thread_limit("the thread count from the environment",
                                            _threads_from_environment())
    return _num_threads


def thread_count_set() -> bool:
    """Whether the thread count was set (``set_num_threads``, ``threads``) or already read
    from the environment."""
    return _num_threads is not None


def set_num_threads(n: int) -> None:
    """Set the number of OpenMP threads the kernels use (a positive int, at most
    ``cnncli.limits.MAX_THREADS``: 4 per core unless raised)."""
    global _num_threads
    _num_threads = _within_thread_limit("n", positive_int("n", n, INT_MAX))


@contextlib.contextmanager
def threads(n: int):
    """Run the enclosed kernels on ``n`` threads, then restore the previous setting (an
    unset count stays unset, to be read from the environment when first needed)."""
    global _num_threads
    previous = _num_threads
    set_num_threads(n)
    try:
        yield
    finally:
        _num_threads = previous


class SingleThreadedBlas:
    """Holds every loaded BLAS library at one thread while a kernel calls it.

    The convolution kernels call BLAS from inside their OpenMP loop; a BLAS
    with threads of its own would multiply the two. Nested uses (from several
    Python threads) share one cap, lifted when the last one leaves.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._depth = 0
        self._switches = None
        self._saved = []

    def __enter__(self):
        with self._lock:
            if self._depth == 0:
                if self._switches is None:
                    self._switches = [_thread_switch(library) for library in
                                      ThreadpoolController().lib_controllers
                                      if library.user_api == "blas"]
                self._saved = []
                for get_threads, set_threads in self._switches:
                    count = get_threads()
                    if count != 1:
                        set_threads(1)
                        self._saved.append((set_threads, count))
            self._depth += 1

    def __exit__(self, *exc_info):
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                for set_threads, count in self._saved:
                    set_threads(count)
                self._saved = []


def _thread_switch(library):
    """(get, set) of a BLAS library's thread count. For an OpenBLAS with its own threads
    (pthreads), its two C functions, called directly: through threadpoolctl, capping the
    two OpenBLAS copies NumPy and SciPy load took 6.5 us per kernel call, a tenth of a
    small layer's time at batch 1. Any other BLAS goes through threadpoolctl."""
    if library.internal_api == "openblas" and getattr(library, "threading_layer", "") != "openmp":
        for prefix in ("", "scipy_"):
            for suffix in ("", "64_", "_64"):
                get_threads = getattr(library.dynlib, f"{prefix}openblas_get_num_threads{suffix}",
                                      None)
                set_threads = getattr(library.dynlib, f"{prefix}openblas_set_num_threads{suffix}",
                                      None)
                if get_threads is not None and set_threads is not None:
                    return get_threads, set_threads
    return library.get_num_threads, library.set_num_threads


single_threaded_blas = SingleThreadedBlas()
