# Pooling kernels: max, average and global average pooling, forward and backward.
#
# Design notes
# - Layout: the caller's NCHW arrays are seen as (planes = N*C, H, W),
#   C-contiguous; every plane is pooled independently.
# - Parallel axis: planes. Each iteration owns one output plane (forward) or
#   one grad_input plane (backward), so overlapping windows accumulate inside
#   a single thread: no races, and the result is the same for any number of
#   threads.
# - Windows: (oh*SH - PH, ow*SW - PW) is the top-left corner; padded cells are
#   skipped (max) or counted as zeros (average, count_include_pad). Every
#   window is checked to overlap the input before the loop runs.
# - Max pooling ties: the gradient goes to the first maximum in row-major
#   window order; a NaN counts as the maximum (the first NaN wins), as in
#   PyTorch. Indices are flat positions h*W + w inside the input plane (int64).
# - Allocation: all outputs come from the caller; there is no scratch.

from cython.parallel cimport prange
from cython cimport floating
from libc.stdint cimport int64_t
from libc.string cimport memset

include "checks.pxi"


cdef struct Window:
    Py_ssize_t planes, H, W, OH, OW
    Py_ssize_t KH, KW, SH, SW, PH, PW


cdef Window make_window(tuple input_shape, tuple output_shape, tuple kernel_size,
                        tuple stride, tuple padding) except *:
    cdef Window w
    cdef Py_ssize_t N, C
    N, C, w.H, w.W = input_shape
    w.planes = N * C
    w.OH, w.OW = output_shape[2:]
    w.KH, w.KW = kernel_size
    w.SH, w.SW = stride
    w.PH, w.PW = padding
    if tuple(output_shape[:2]) != (N, C):
        raise ValueError(f"output: expected batch and channels {(N, C)}, "
                         f"got {tuple(output_shape[:2])}")
    for name, value, minimum in (("kernel height", w.KH, 1), ("kernel width", w.KW, 1),
                                 ("stride", w.SH, 1), ("stride", w.SW, 1),
                                 ("padding", w.PH, 0), ("padding", w.PW, 0),
                                 ("input height", w.H, 1), ("input width", w.W, 1),
                                 ("output height", w.OH, 1), ("output width", w.OW, 1)):
        check_at_least(name, value, minimum)
    # Windows move monotonically, so the first and last ones bound them all.
    if w.PH >= w.KH or w.PW >= w.KW:
        raise ValueError(f"padding: must be smaller than the kernel {kernel_size}, got {padding}")
    if (w.OH - 1) * w.SH - w.PH >= w.H or (w.OW - 1) * w.SW - w.PW >= w.W:
        raise ValueError(f"output: shape {output_shape[2:]} has windows that lie "
                         f"entirely outside the input {input_shape[2:]}")
    return w


cdef inline Py_ssize_t clamp(Py_ssize_t value, Py_ssize_t low, Py_ssize_t high) noexcept nogil:
    return low if value < low else (high if value > high else value)


cdef void max_pool_plane(const floating* x, floating* out, int64_t* indices,
                         const Window* w) noexcept nogil:
    cdef Py_ssize_t oh, ow, h, col, h0, h1, w0, w1, best_at
    cdef floating best, value
    for oh in range(w.OH):
        h0 = clamp(oh * w.SH - w.PH, 0, w.H)
        h1 = clamp(oh * w.SH - w.PH + w.KH, 0, w.H)
        for ow in range(w.OW):
            w0 = clamp(ow * w.SW - w.PW, 0, w.W)
            w1 = clamp(ow * w.SW - w.PW + w.KW, 0, w.W)
            best_at = h0 * w.W + w0
            best = x[best_at]
            for h in range(h0, h1):
                for col in range(w0, w1):
                    value = x[h * w.W + col]
                    if value > best or (value != value and best == best):
                        best = value
                        best_at = h * w.W + col
            out[oh * w.OW + ow] = best
            if indices != NULL:
                indices[oh * w.OW + ow] = best_at


cdef void max_pool_forward_typed(const floating[:, ::1] x, floating[:, ::1] out,
                                 int64_t[:, ::1] indices, Window w, int n_threads) noexcept:
    cdef Py_ssize_t plane
    cdef bint keep_indices = indices is not None
    with nogil:
        for plane in prange(w.planes, schedule='static', num_threads=n_threads):
            max_pool_plane(&x[plane, 0], &out[plane, 0],
                           &indices[plane, 0] if keep_indices else NULL, &w)


cdef void max_pool_backward_typed(const floating[:, ::1] grad_output,
                                  const int64_t[:, ::1] indices,
                                  floating[:, ::1] grad_input, Window w,
                                  int n_threads) noexcept:
    cdef Py_ssize_t plane, o
    cdef floating* dx
    with nogil:
        for plane in prange(w.planes, schedule='static', num_threads=n_threads):
            dx = &grad_input[plane, 0]
            memset(dx, 0, w.H * w.W * sizeof(floating))
            for o in range(w.OH * w.OW):
                dx[indices[plane, o]] += grad_output[plane, o]


cdef Py_ssize_t count_bad_indices(const int64_t[:, ::1] indices, Py_ssize_t plane_size,
                                  int n_threads) noexcept:
    cdef Py_ssize_t plane, o, bad = 0
    with nogil:
        for plane in prange(indices.shape[0], schedule='static', num_threads=n_threads):
            for o in range(indices.shape[1]):
                if indices[plane, o] < 0 or indices[plane, o] >= plane_size:
                    bad += 1
    return bad


cdef inline double window_divisor(Py_ssize_t h0, Py_ssize_t h1, Py_ssize_t w0,
                                  Py_ssize_t w1, const Window* w,
                                  bint count_include_pad) noexcept nogil:
    if count_include_pad:
        return <double>(w.KH * w.KW)
    return <double>((h1 - h0) * (w1 - w0))


cdef void avg_pool_forward_typed(const floating[:, ::1] x, floating[:, ::1] out, Window w,
                                 bint count_include_pad, int n_threads) noexcept:
    cdef Py_ssize_t plane, oh, ow, h, col, h0, h1, w0, w1
    cdef const floating* src
    cdef double total
    with nogil:
        for plane in prange(w.planes, schedule='static', num_threads=n_threads):
            src = &x[plane, 0]
            for oh in range(w.OH):
                h0 = clamp(oh * w.SH - w.PH, 0, w.H)
                h1 = clamp(oh * w.SH - w.PH + w.KH, 0, w.H)
                for ow in range(w.OW):
                    w0 = clamp(ow * w.SW - w.PW, 0, w.W)
                    w1 = clamp(ow * w.SW - w.PW + w.KW, 0, w.W)
                    total = 0
                    for h in range(h0, h1):
                        for col in range(w0, w1):
                            total = total + src[h * w.W + col]
                    out[plane, oh * w.OW + ow] = <floating>(
                        total / window_divisor(h0, h1, w0, w1, &w, count_include_pad))


cdef void avg_pool_backward_typed(const floating[:, ::1] grad_output,
                                  floating[:, ::1] grad_input, Window w,
                                  bint count_include_pad, int n_threads) noexcept:
    cdef Py_ssize_t plane, oh, ow, h, col, h0, h1, w0, w1
    cdef floating* dx
    cdef floating share
    with nogil:
        for plane in prange(w.planes, schedule='static', num_threads=n_threads):
            dx = &grad_input[plane, 0]
            memset(dx, 0, w.H * w.W * sizeof(floating))
            for oh in range(w.OH):
                h0 = clamp(oh * w.SH - w.PH, 0, w.H)
                h1 = clamp(oh * w.SH - w.PH + w.KH, 0, w.H)
                for ow in range(w.OW):
                    w0 = clamp(ow * w.SW - w.PW, 0, w.W)
                    w1 = clamp(ow * w.SW - w.PW + w.KW, 0, w.W)
                    share = <floating>(grad_output[plane, oh * w.OW + ow] / window_divisor(
                        h0, h1, w0, w1, &w, count_include_pad))
                    for h in range(h0, h1):
                        for col in range(w0, w1):
                            dx[h * w.W + col] += share


cdef void global_avg_pool_forward_typed(const floating[:, ::1] x, floating[::1] out,
                                        int n_threads) noexcept:
    cdef Py_ssize_t plane, i
    cdef Py_ssize_t size = x.shape[1]
    cdef double total
    with nogil:
        for plane in prange(x.shape[0], schedule='static', num_threads=n_threads):
            total = 0
            for i in range(size):
                total = total + x[plane, i]
            out[plane] = <floating>(total / size)


cdef void global_avg_pool_backward_typed(const floating[::1] grad_output,
                                         floating[:, ::1] grad_input, int n_threads) noexcept:
    cdef Py_ssize_t plane, i
    cdef Py_ssize_t size = grad_input.shape[1]
    cdef floating share
    with nogil:
        for plane in prange(grad_input.shape[0], schedule='static', num_threads=n_threads):
            share = grad_output[plane] / size
            for i in range(size):
                grad_input[plane, i] = share


def max_pool2d_forward(x, out, indices, tuple kernel_size, tuple stride, tuple padding,
                       int n_threads):
    """out[n, c, oh, ow] = max over the window at (oh*S - P, ow*S - P) of x[n, c]; indices = its first argmax (h*W + w)."""
    dtype = working_dtype("x", x)
    check_array("x", x, 4, dtype, False)
    check_array("out", out, 4, dtype, True)
    check_at_least("n_threads", n_threads, 1)
    cdef Window w = make_window(x.shape, out.shape, kernel_size, stride, padding)
    check_disjoint("out", out, "x", x)
    planes = x.reshape(w.planes, w.H * w.W)
    pooled = out.reshape(w.planes, w.OH * w.OW)
    flat_indices = None
    if indices is not None:
        check_array("indices", indices, 4, np.int64, True)
        check_shape("indices", indices, out.shape)
        check_disjoint("indices", indices, "x", x)
        check_disjoint("indices", indices, "out", out)
        flat_indices = indices.reshape(w.planes, w.OH * w.OW)
    if dtype == np.float32:
        max_pool_forward_typed[float](planes, pooled, flat_indices, w, n_threads)
    else:
        max_pool_forward_typed[double](planes, pooled, flat_indices, w, n_threads)


def max_pool2d_backward(grad_output, indices, grad_input, int n_threads):
    """grad_input[n, c].flat[indices[n, c, o]] += grad_output[n, c, o] (zero elsewhere)."""
    dtype = working_dtype("grad_output", grad_output)
    check_array("grad_output", grad_output, 4, dtype, False)
    check_array("indices", indices, 4, np.int64, False)
    check_array("grad_input", grad_input, 4, dtype, True)
    check_at_least("n_threads", n_threads, 1)
    check_shape("indices", indices, grad_output.shape)
    N, C, H, W = grad_input.shape
    if tuple(grad_output.shape[:2]) != (N, C):
        raise ValueError(f"grad_output: expected batch and channels {(N, C)}, "
                         f"got {tuple(grad_output.shape[:2])}")
    check_disjoint("grad_input", grad_input, "grad_output", grad_output)
    check_disjoint("grad_input", grad_input, "indices", indices)
    cdef Window w
    w.planes, w.H, w.W = N * C, H, W
    w.OH, w.OW = grad_output.shape[2:]
    flat_indices = indices.reshape(w.planes, w.OH * w.OW)
    bad = count_bad_indices(flat_indices, H * W, n_threads)
    if bad:
        raise ValueError(f"indices: {bad} entries lie outside the {H}x{W} input plane")
    upstream = grad_output.reshape(w.planes, w.OH * w.OW)
    downstream = grad_input.reshape(w.planes, H * W)
    if dtype == np.float32:
        max_pool_backward_typed[float](upstream, flat_indices, downstream, w, n_threads)
    else:
        max_pool_backward_typed[double](upstream, flat_indices, downstream, w, n_threads)


def avg_pool2d_forward(x, out, tuple kernel_size, tuple stride, tuple padding,
                       bint count_include_pad, int n_threads):
    """out[n, c, oh, ow] = sum of the window at (oh*S - P, ow*S - P) of x[n, c] / (KH*KW, or the cells inside the input)."""
    dtype = working_dtype("x", x)
    check_array("x", x, 4, dtype, False)
    check_array("out", out, 4, dtype, True)
    check_at_least("n_threads", n_threads, 1)
    cdef Window w = make_window(x.shape, out.shape, kernel_size, stride, padding)
    check_disjoint("out", out, "x", x)
    planes = x.reshape(w.planes, w.H * w.W)
    pooled = out.reshape(w.planes, w.OH * w.OW)
    if dtype == np.float32:
        avg_pool_forward_typed[float](planes, pooled, w, count_include_pad, n_threads)
    else:
        avg_pool_forward_typed[double](planes, pooled, w, count_include_pad, n_threads)


def avg_pool2d_backward(grad_output, grad_input, tuple kernel_size, tuple stride,
                        tuple padding, bint count_include_pad, int n_threads):
    """grad_input[n, c, h, w] = sum over the windows containing (h, w) of grad_output / divisor."""
    dtype = working_dtype("grad_output", grad_output)
    check_array("grad_output", grad_output, 4, dtype, False)
    check_array("grad_input", grad_input, 4, dtype, True)
    check_at_least("n_threads", n_threads, 1)
    cdef Window w = make_window(grad_input.shape, grad_output.shape, kernel_size, stride, padding)
    check_disjoint("grad_input", grad_input, "grad_output", grad_output)
    upstream = grad_output.reshape(w.planes, w.OH * w.OW)
    downstream = grad_input.reshape(w.planes, w.H * w.W)
    if dtype == np.float32:
        avg_pool_backward_typed[float](upstream, downstream, w, count_include_pad, n_threads)
    else:
        avg_pool_backward_typed[double](upstream, downstream, w, count_include_pad, n_threads)


def global_avg_pool2d_forward(x, out, int n_threads):
    """out[n, c] = mean over h, w of x[n, c, h, w]."""
    dtype = working_dtype("x", x)
    check_array("x", x, 4, dtype, False)
    check_array("out", out, 2, dtype, True)
    check_at_least("n_threads", n_threads, 1)
    N, C, H, W = x.shape
    check_shape("out", out, (N, C))
    check_at_least("input height", H, 1)
    check_at_least("input width", W, 1)
    check_disjoint("out", out, "x", x)
    planes = x.reshape(N * C, H * W)
    if dtype == np.float32:
        global_avg_pool_forward_typed[float](planes, out.reshape(-1), n_threads)
    else:
        global_avg_pool_forward_typed[double](planes, out.reshape(-1), n_threads)


def global_avg_pool2d_backward(grad_output, grad_input, int n_threads):
    """grad_input[n, c, h, w] = grad_output[n, c] / (H*W)."""
    dtype = working_dtype("grad_output", grad_output)
    check_array("grad_output", grad_output, 2, dtype, False)
    check_array("grad_input", grad_input, 4, dtype, True)
    check_at_least("n_threads", n_threads, 1)
    N, C, H, W = grad_input.shape
    check_shape("grad_output", grad_output, (N, C))
    check_at_least("input height", H, 1)
    check_at_least("input width", W, 1)
    check_disjoint("grad_input", grad_input, "grad_output", grad_output)
    downstream = grad_input.reshape(N * C, H * W)
    if dtype == np.float32:
        global_avg_pool_backward_typed[float](grad_output.reshape(-1), downstream, n_threads)
    else:
        global_avg_pool_backward_typed[double](grad_output.reshape(-1), downstream, n_threads)
