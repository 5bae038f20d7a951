# Argument checks shared by the kernel modules (textually included).
#
# Every def entry point of a kernel runs these with the GIL held, before any
# loop: a bad argument becomes a ValueError naming it, never an out-of-bounds
# access inside a nogil loop.

import numpy as np

# BLAS takes 32-bit sizes; a matrix dimension beyond this cannot be passed on.
cdef Py_ssize_t BLAS_INT_MAX = 2147483647


cdef check_array(str name, object array, int ndim, object dtype, bint writable):
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{name}: expected a numpy.ndarray, got {type(array).__name__}")
    if array.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {array.shape}")
    if array.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)}, got {array.dtype}")
    if not array.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array, got strides {array.strides}")
    if writable and not array.flags.writeable:
        raise ValueError(f"{name}: expected a writable array, got a read-only one")


cdef check_shape(str name, object array, tuple expected):
    if tuple(array.shape) != expected:
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(array.shape)}")


cdef check_disjoint(str output_name, object output, str input_name, object input_array):
    if np.may_share_memory(output, input_array):
        raise ValueError(f"{output_name}: must not share memory with {input_name}")


cdef check_at_least(str name, Py_ssize_t value, Py_ssize_t minimum):
    if value < minimum:
        raise ValueError(f"{name}: expected a value >= {minimum}, got {value}")


cdef object working_dtype(str name, object array):
    """The dtype the kernels run in: float32 or float64, taken from `array`."""
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{name}: expected a numpy.ndarray, got {type(array).__name__}")
    if array.dtype != np.float32 and array.dtype != np.float64:
        raise ValueError(f"{name}: expected dtype float32 or float64, got {array.dtype}")
    return array.dtype
