# ReLU over a run of values, shared by the convolution (applied to its output while in
# cache) and the element-wise kernels (textually included).
#
# The value is loaded before the choice: with the load inside a conditional
# expression the compiler branched on every sign instead of selecting.


cdef inline void relu_block(const floating* x, floating* out, Py_ssize_t n) noexcept nogil:
    """out[i] = max(x[i], 0); NaN is kept (a comparison with NaN is false), as np.maximum
    does. out may be x."""
    cdef Py_ssize_t i
    cdef floating value
    for i in range(n):
        value = x[i]
        out[i] = 0 if value < 0 else value
