# What the OpenMP build of the kernels can do.
#
# Design notes
# - openmp_enabled() reports whether this module was compiled with OpenMP:
#   setup.py builds every kernel module with the same flags, so this one
#   speaks for all of them.
# - threads_used(n) runs a static prange over n threads and counts the
#   distinct thread ids that took part: a serial build answers 1 whatever n.
#   Each iteration writes only the flag of the thread running it.

from cython.parallel cimport prange, threadid

import numpy as np

cdef extern from *:
    """
    #ifdef _OPENMP
    #define CNNCLI_OPENMP_ENABLED 1
    #else
    #define CNNCLI_OPENMP_ENABLED 0
    #endif
    """
    int CNNCLI_OPENMP_ENABLED


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(CNNCLI_OPENMP_ENABLED)


def threads_used(int n_threads):
    """Number of distinct threads that run a parallel loop asked to use n_threads."""
    if n_threads < 1:
        raise ValueError(f"n_threads: expected a value >= 1, got {n_threads}")
    seen = np.zeros(n_threads, dtype=np.intc)
    cdef int[::1] flags = seen
    cdef Py_ssize_t i
    with nogil:
        for i in prange(64 * n_threads, schedule='static', num_threads=n_threads):
            flags[threadid()] = 1
    return int(seen.sum())
