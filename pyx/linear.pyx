# Fully connected (dense) layer kernels: y = x @ W.T + b, forward and backward.
#
# Design notes
# - Layout: x (N, K), weight (F, K) as in the layer, out (N, F); C-contiguous.
# - Why a kernel rather than NumPy's matmul: NumPy's OpenBLAS runs its own
#   worker threads, which keep spinning for a long while after each call. On
#   a machine with as many cores as OpenMP threads they then compete with the
#   convolution kernels' threads: a LeNet training step took 96 ms instead of
#   52 ms at 2 threads. Here every GEMM runs single-threaded inside one OpenMP
#   loop, so the whole network shares one set of threads.
# - Parallel axis: each product is cut into column blocks of its output (out
#   by filters, grad_weight by filters, grad_input by input features) that
#   no two blocks share, so there is nothing to reduce. The blocks depend on
#   the shapes only, never on the thread count: the same BLAS calls happen in
#   any order, and results are bit-identical for any number of threads.

from cython.parallel cimport prange

include "checks.pxi"
include "blas.pxi"

# Blocks are multiples of this many columns (whole SIMD vectors) and at least
# MIN_BLOCK wide, with at most MAX_BLOCKS of them: enough for 16 threads,
# few enough that each GEMM stays large.
cdef Py_ssize_t BLOCK_ALIGN = 16
cdef Py_ssize_t MIN_BLOCK = 64
cdef Py_ssize_t MAX_BLOCKS = 16


cdef Py_ssize_t block_width(Py_ssize_t columns) noexcept nogil:
    cdef Py_ssize_t width = (columns + MAX_BLOCKS - 1) // MAX_BLOCKS
    width = (width + BLOCK_ALIGN - 1) // BLOCK_ALIGN * BLOCK_ALIGN
    return width if width > MIN_BLOCK else MIN_BLOCK


cdef void linear_forward_typed(const floating[:, ::1] x, const floating[:, ::1] weight,
                               const floating[::1] bias, floating[:, ::1] out,
                               int n_threads) noexcept:
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], F = weight.shape[0]
    cdef Py_ssize_t width = block_width(F)
    cdef Py_ssize_t blocks = (F + width - 1) // width
    cdef Py_ssize_t block, first, count, n, f
    cdef bint has_bias = bias is not None
    cdef floating beta = 1 if has_bias else 0
    with nogil:
        for block in prange(blocks, schedule='static', num_threads=n_threads):
            first = block * width
            count = F - first if F - first < width else width
            if has_bias:
                for n in range(N):
                    for f in range(first, first + count):
                        out[n, f] = bias[f]
            gemm(False, True, N, count, K, 1, &x[0, 0], K, &weight[first, 0], K,
                 beta, &out[0, first], F)


cdef void linear_backward_typed(const floating[:, ::1] grad_output,
                                const floating[:, ::1] x, const floating[:, ::1] weight,
                                floating[:, ::1] grad_input, floating[:, ::1] grad_weight,
                                floating[::1] grad_bias, int n_threads) noexcept:
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], F = weight.shape[0]
    cdef Py_ssize_t block, first, count, n, f, width, blocks
    cdef double total
    with nogil:
        if grad_input is not None:
            # grad_input[:, k block] = grad_output @ weight[:, k block]
            width = block_width(K)
            blocks = (K + width - 1) // width
            for block in prange(blocks, schedule='static', num_threads=n_threads):
                first = block * width
                count = K - first if K - first < width else width
                gemm(False, False, N, count, F, 1, &grad_output[0, 0], F, &weight[0, first], K,
                     0, &grad_input[0, first], K)
        if grad_weight is not None:
            # grad_weight[f block] = grad_output[:, f block].T @ x
            width = block_width(F)
            blocks = (F + width - 1) // width
            for block in prange(blocks, schedule='static', num_threads=n_threads):
                first = block * width
                count = F - first if F - first < width else width
                gemm(True, False, count, K, N, 1, &grad_output[0, first], F, &x[0, 0], K,
                     0, &grad_weight[first, 0], K)
                for f in range(first, first + count):
                    total = 0
                    for n in range(N):
                        total = total + grad_output[n, f]
                    grad_bias[f] = <floating>total


cdef tuple check_operands(object x, object weight, int n_threads):
    """(dtype, N, K, F) of a valid x (N, K) and weight (F, K)."""
    dtype = working_dtype("x", x)
    check_array("x", x, 2, dtype, False)
    check_array("weight", weight, 2, dtype, False)
    check_at_least("n_threads", n_threads, 1)
    N, K, F = x.shape[0], x.shape[1], weight.shape[0]
    for name, value in (("batch size", N), ("input features", K), ("units", F)):
        check_at_least(name, value, 1)
    if N > BLAS_INT_MAX or K > BLAS_INT_MAX or F > BLAS_INT_MAX:
        raise ValueError("x: a matrix dimension exceeds the 2**31 BLAS accepts")
    check_shape("weight", weight, (F, K))
    return dtype, N, K, F


def linear_forward(x, weight, bias, out, int n_threads):
    """out[n, f] = bias[f] + sum_k x[n, k] * weight[f, k]."""
    dtype, N, K, F = check_operands(x, weight, n_threads)
    check_array("out", out, 2, dtype, True)
    check_shape("out", out, (N, F))
    if bias is not None:
        check_array("bias", bias, 1, dtype, False)
        check_shape("bias", bias, (F,))
    check_disjoint("out", out, "x", x)
    check_disjoint("out", out, "weight", weight)
    if dtype == np.float32:
        linear_forward_typed[float](x, weight, bias, out, n_threads)
    else:
        linear_forward_typed[double](x, weight, bias, out, n_threads)


def linear_backward(grad_output, x, weight, grad_input, grad_weight, grad_bias, int n_threads):
    """grad_input = grad_output @ weight; grad_weight = grad_output.T @ x; grad_bias = grad_output summed over the batch.

    grad_input, or grad_weight together with grad_bias, may be None: what is
    not asked for is not computed.
    """
    dtype, N, K, F = check_operands(x, weight, n_threads)
    check_array("grad_output", grad_output, 2, dtype, False)
    check_shape("grad_output", grad_output, (N, F))
    inputs = (("grad_output", grad_output), ("x", x), ("weight", weight))
    if grad_input is not None:
        check_array("grad_input", grad_input, 2, dtype, True)
        check_shape("grad_input", grad_input, (N, K))
        for name, array in inputs:
            check_disjoint("grad_input", grad_input, name, array)
    if (grad_weight is None) != (grad_bias is None):
        raise ValueError("grad_weight and grad_bias: pass both or neither")
    if grad_weight is not None:
        check_array("grad_weight", grad_weight, 2, dtype, True)
        check_shape("grad_weight", grad_weight, (F, K))
        check_array("grad_bias", grad_bias, 1, dtype, True)
        check_shape("grad_bias", grad_bias, (F,))
        for name, array in inputs + (("grad_input", grad_input),):
            if array is not None:
                check_disjoint("grad_weight", grad_weight, name, array)
                check_disjoint("grad_bias", grad_bias, name, array)
        check_disjoint("grad_bias", grad_bias, "grad_weight", grad_weight)
    if dtype == np.float32:
        linear_backward_typed[float](grad_output, x, weight, grad_input, grad_weight,
                                     grad_bias, n_threads)
    else:
        linear_backward_typed[double](grad_output, x, weight, grad_input, grad_weight,
                                      grad_bias, n_threads)
