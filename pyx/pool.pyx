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
# - Loop order: windows that padding clips at the left or right edge are
#   pooled one at a time. The interior windows of an output row are pooled
#   together, one window cell at a time across all of them ("sweeps"), in the
#   same row-major cell order: each sweep is a unit-stride (or stride-2)
#   loop over output columns that the compiler vectorises.
# - Whole 2x2 windows at stride 2 (float32, AVX2 CPUs) take pool2x2.h instead: eight
#   windows at a time with vector compares, where the sweeps' compares became mispredicted
#   branches. So do the interior windows of any other max pooling at stride 2 (ResNet's
#   3x3 with padding 1): each window's maximum stays in a register over its cells, where
#   the sweeps stored and reloaded it per cell (cnncli_max_windows2).
# - Max pooling ties: the gradient goes to the first maximum in row-major
#   window order; a NaN counts as the maximum (the first NaN wins), as in
#   PyTorch. Indices are flat positions h*W + w inside the input plane (int64).
# - Allocation: all outputs come from the caller; there is no scratch.

from cython.parallel cimport prange
from cython cimport floating
from libc.stdint cimport int32_t, int64_t
from libc.string cimport memset

include "checks.pxi"


# Interior windows are swept in blocks of this many output columns, whose
# int32 positions live on the stack.
DEF SWEEP_BLOCK = 256
# Narrower rows are pooled window by window: for a handful of columns the
# setup of one sweep per window cell costs more than it saves.
DEF MIN_SWEEP_COLUMNS = 5


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
    if w.H * w.W > 2147483647:
        raise ValueError(f"x: planes of more than 2**31 cells are not supported, got {w.H}x{w.W}")
    if w.PH >= w.KH or w.PW >= w.KW:
        raise ValueError(f"padding: must be smaller than the kernel {kernel_size}, got {padding}")
    if (w.OH - 1) * w.SH - w.PH >= w.H or (w.OW - 1) * w.SW - w.PW >= w.W:
        raise ValueError(f"output: shape {output_shape[2:]} has windows that lie "
                         f"entirely outside the input {input_shape[2:]}")
    return w


cdef inline Py_ssize_t clamp(Py_ssize_t value, Py_ssize_t low, Py_ssize_t high) noexcept nogil:
    return low if value < low else (high if value > high else value)


cdef inline void swept_columns(const Window* w, Py_ssize_t* start, Py_ssize_t* stop) noexcept nogil:
    """Output columns [start, stop) pooled by sweeps; the others go window by window.

    They are the columns whose windows lie entirely inside the input's width,
    unless there are too few of them to be worth sweeping (then none).
    """
    cdef Py_ssize_t first = (w.PW + w.SW - 1) // w.SW
    cdef Py_ssize_t last = 0
    if w.W + w.PW - w.KW >= 0:
        last = (w.W + w.PW - w.KW) // w.SW + 1
    start[0] = first if first < w.OW else w.OW
    stop[0] = clamp(last, start[0], w.OW)
    if stop[0] - start[0] < MIN_SWEEP_COLUMNS:
        stop[0] = start[0]


cdef inline bint is_new_max(floating value, floating best) noexcept nogil:
    """value beats best: larger, or the first NaN (which then stays)."""
    return (value > best) | ((value != value) & (best == best))


cdef inline void max_window(const floating* x, Py_ssize_t W, Py_ssize_t h0, Py_ssize_t h1,
                            Py_ssize_t w0, Py_ssize_t w1, floating* best,
                            int64_t* best_at) noexcept nogil:
    """Scan one (clipped) window in row-major order; the first maximum wins."""
    cdef Py_ssize_t h, col, at = h0 * W + w0
    cdef floating top = x[at], value
    for h in range(h0, h1):
        for col in range(w0, w1):
            value = x[h * W + col]
            if is_new_max(value, top):
                top = value
                at = h * W + col
    best[0] = top
    if best_at != NULL:
        best_at[0] = at


cdef inline void max_sweep(const floating* row, Py_ssize_t stride, Py_ssize_t count,
                           Py_ssize_t offset, floating* best, int32_t* best_at) noexcept nogil:
    """best[o] = max(best[o], row[o*stride]) for o < count; best_at[o] = offset + o*stride.

    One cell of `count` interior windows at once. Positions are int32, the
    width of float32 lanes, so the loop vectorises; inlined with a constant
    stride, so does the strided load.
    """
    cdef Py_ssize_t o
    cdef floating value, current
    cdef bint greater
    if best_at == NULL:
        for o in range(count):
            value = row[o * stride]
            current = best[o]
            best[o] = value if is_new_max(value, current) else current
    else:
        for o in range(count):
            value = row[o * stride]
            current = best[o]
            greater = is_new_max(value, current)
            best[o] = value if greater else current
            best_at[o] = <int32_t>(offset + o * stride) if greater else best_at[o]


cdef extern from "pool2x2.h" nogil:
    int cnncli_pool_has_avx2()
    void cnncli_max2x2_row(const float* top, Py_ssize_t OW, Py_ssize_t W, int64_t row_start,
                           float* out, int64_t* indices)
    void cnncli_max_windows2(const float* x, Py_ssize_t W, Py_ssize_t h0, Py_ssize_t h1,
                             Py_ssize_t KW, Py_ssize_t column, Py_ssize_t count, float* best,
                             int32_t* at)

# Whether pool2x2.h can run: asked once, at import.
cdef bint POOL_2X2_VECTORS = cnncli_pool_has_avx2()


cdef void max_pool_plane(const floating* x, floating* out, int64_t* indices,
                         const Window* window) noexcept nogil:
    # Extents are copied to locals: the index stores could otherwise alias
    # them and force a reload on every iteration.
    cdef Py_ssize_t H = window.H, W = window.W, OH = window.OH, OW = window.OW
    cdef Py_ssize_t KH = window.KH, KW = window.KW, SH = window.SH, SW = window.SW
    cdef Py_ssize_t PH = window.PH, PW = window.PW
    cdef Py_ssize_t oh, ow, h, kw, h0, h1, start, stop, first, count, cell
    cdef int32_t positions[SWEEP_BLOCK]
    cdef int32_t* best_at = positions if indices != NULL else NULL
    cdef floating* best
    swept_columns(window, &start, &stop)
    for oh in range(OH):
        h0 = clamp(oh * SH - PH, 0, H)
        h1 = clamp(oh * SH - PH + KH, 0, H)
        best = out + oh * OW
        for ow in range(start):
            max_window(x, W, h0, h1, clamp(ow * SW - PW, 0, W), clamp(ow * SW - PW + KW, 0, W),
                       best + ow, indices + oh * OW + ow if indices != NULL else NULL)
        for ow in range(stop, OW):
            max_window(x, W, h0, h1, clamp(ow * SW - PW, 0, W), clamp(ow * SW - PW + KW, 0, W),
                       best + ow, indices + oh * OW + ow if indices != NULL else NULL)
        for first in range(start, stop, SWEEP_BLOCK):
            count = min(SWEEP_BLOCK, stop - first)
            if floating is float and SW == 2 and POOL_2X2_VECTORS:
                cnncli_max_windows2(x, W, h0, h1, KW, first * SW - PW, count, best + first,
                                    best_at)
                if indices != NULL:
                    for ow in range(count):
                        indices[oh * OW + first + ow] = positions[ow]
                continue
            # Seed each window with its first cell, then sweep the remaining
            # cells in the same row-major order as max_window.
            for ow in range(count):
                cell = h0 * W + (first + ow) * SW - PW
                best[first + ow] = x[cell]
                positions[ow] = <int32_t>cell
            for h in range(h0, h1):
                for kw in range(KW):
                    if h == h0 and kw == 0:
                        continue
                    cell = h * W + first * SW + kw - PW
                    if SW == 2:
                        max_sweep(x + cell, 2, count, cell, best + first, best_at)
                    elif SW == 1:
                        max_sweep(x + cell, 1, count, cell, best + first, best_at)
                    else:
                        max_sweep(x + cell, SW, count, cell, best + first, best_at)
            if indices != NULL:
                for ow in range(count):
                    indices[oh * OW + first + ow] = positions[ow]




cdef void max_pool_2x2_plane(const float* x, float* out, int64_t* indices,
                             const Window* window) noexcept nogil:
    """Whole 2x2 windows at stride 2, no padding (pool2x2.h), float32, on AVX2. LeNet's first
    pooling at batch 64, one thread: 0.58 ms (0.73 keeping indices) against 3.8 ms (2.6)
    for max_pool_plane's sweeps; its second: 0.34 ms against 2.7."""
    cdef Py_ssize_t oh
    for oh in range(window.OH):
        cnncli_max2x2_row(x + 2 * oh * window.W, window.OW, window.W, 2 * oh * window.W,
                          out + oh * window.OW,
                          indices + oh * window.OW if indices != NULL else NULL)


cdef void max_pool_forward_typed(const floating[:, ::1] x, floating[:, ::1] out,
                                 int64_t[:, ::1] indices, Window w, int n_threads) noexcept:
    cdef Py_ssize_t plane
    cdef bint keep_indices = indices is not None
    cdef bint whole_2x2 = (POOL_2X2_VECTORS and w.KH == 2 and w.KW == 2 and w.SH == 2
                           and w.SW == 2 and w.PH == 0 and w.PW == 0
                           and 2 * w.OH <= w.H and 2 * w.OW <= w.W)
    with nogil:
        for plane in prange(w.planes, schedule='static', num_threads=n_threads):
            if floating is float and whole_2x2:
                max_pool_2x2_plane(&x[plane, 0], &out[plane, 0],
                                   &indices[plane, 0] if keep_indices else NULL, &w)
            else:
                max_pool_plane(&x[plane, 0], &out[plane, 0],
                               &indices[plane, 0] if keep_indices else NULL, &w)


cdef Py_ssize_t max_pool_backward_typed(const floating[:, ::1] grad_output,
                                        const int64_t[:, ::1] indices,
                                        floating[:, ::1] grad_input, Window w,
                                        int n_threads) noexcept:
    """Scatters grad_output to the indexed cells; returns how many indices lie outside their
    plane (those are skipped). Checked here, in the pass that reads them anyway: a separate
    pass over the indices took 1.5% of a LeNet training step."""
    cdef Py_ssize_t plane, o, bad = 0
    cdef Py_ssize_t size = w.H * w.W
    cdef int64_t at
    cdef floating* dx
    with nogil:
        for plane in prange(w.planes, schedule='static', num_threads=n_threads):
            dx = &grad_input[plane, 0]
            memset(dx, 0, size * sizeof(floating))
            for o in range(w.OH * w.OW):
                at = indices[plane, o]
                if 0 <= at < size:
                    dx[at] += grad_output[plane, o]
                else:
                    bad += 1
    return bad


cdef inline Py_ssize_t window_divisor(Py_ssize_t h0, Py_ssize_t h1, Py_ssize_t w0,
                                      Py_ssize_t w1, Py_ssize_t area,
                                      bint count_include_pad) noexcept nogil:
    """Cells an average divides by: the whole window, or only those inside the input."""
    return area if count_include_pad else (h1 - h0) * (w1 - w0)


cdef inline void sum_sweep(const floating* row, Py_ssize_t stride, Py_ssize_t count,
                           floating* total) noexcept nogil:
    """total[o] += row[o*stride] for o < count: one cell of `count` interior windows."""
    cdef Py_ssize_t o
    for o in range(count):
        total[o] += row[o * stride]


cdef inline void spread_sweep(floating* row, Py_ssize_t stride, Py_ssize_t count,
                              const floating* share) noexcept nogil:
    """row[o*stride] += share[o] for o < count; distinct o never hit the same cell."""
    cdef Py_ssize_t o
    for o in range(count):
        row[o * stride] += share[o]


cdef inline floating avg_window(const floating* x, const Window* w, Py_ssize_t h0,
                                Py_ssize_t h1, Py_ssize_t ow, bint count_include_pad) noexcept nogil:
    """Mean of one (clipped) border window, summed in row-major order."""
    cdef Py_ssize_t h, col
    cdef Py_ssize_t w0 = clamp(ow * w.SW - w.PW, 0, w.W), w1 = clamp(ow * w.SW - w.PW + w.KW, 0, w.W)
    cdef floating total = 0
    for h in range(h0, h1):
        for col in range(w0, w1):
            total = total + x[h * w.W + col]
    return total / <floating>window_divisor(h0, h1, w0, w1, w.KH * w.KW, count_include_pad)


cdef inline void spread_window(floating* dx, const Window* w, Py_ssize_t h0, Py_ssize_t h1,
                               Py_ssize_t ow, floating grad, bint count_include_pad) noexcept nogil:
    """Add one border window's share of grad to each of its cells."""
    cdef Py_ssize_t h, col
    cdef Py_ssize_t w0 = clamp(ow * w.SW - w.PW, 0, w.W), w1 = clamp(ow * w.SW - w.PW + w.KW, 0, w.W)
    cdef floating share = grad / <floating>window_divisor(h0, h1, w0, w1, w.KH * w.KW,
                                                          count_include_pad)
    for h in range(h0, h1):
        for col in range(w0, w1):
            dx[h * w.W + col] += share


cdef void avg_pool_plane(const floating* x, floating* out, const Window* window,
                         bint count_include_pad) noexcept nogil:
    cdef Py_ssize_t H = window.H, W = window.W, OH = window.OH, OW = window.OW
    cdef Py_ssize_t KH = window.KH, KW = window.KW, SH = window.SH, SW = window.SW
    cdef Py_ssize_t PH = window.PH, PW = window.PW
    cdef Py_ssize_t oh, ow, h, kw, h0, h1, start, stop, first, count, cell
    cdef floating divisor
    cdef floating* row_out
    swept_columns(window, &start, &stop)
    for oh in range(OH):
        h0 = clamp(oh * SH - PH, 0, H)
        h1 = clamp(oh * SH - PH + KH, 0, H)
        row_out = out + oh * OW
        for ow in range(start):
            row_out[ow] = avg_window(x, window, h0, h1, ow, count_include_pad)
        for ow in range(stop, OW):
            row_out[ow] = avg_window(x, window, h0, h1, ow, count_include_pad)
        divisor = <floating>window_divisor(h0, h1, 0, KW, KH * KW, count_include_pad)
        for first in range(start, stop, SWEEP_BLOCK):
            count = min(SWEEP_BLOCK, stop - first)
            for ow in range(count):
                row_out[first + ow] = 0
            for h in range(h0, h1):
                for kw in range(KW):
                    cell = h * W + first * SW + kw - PW
                    if SW == 2:
                        sum_sweep(x + cell, 2, count, row_out + first)
                    elif SW == 1:
                        sum_sweep(x + cell, 1, count, row_out + first)
                    else:
                        sum_sweep(x + cell, SW, count, row_out + first)
            for ow in range(count):
                row_out[first + ow] = row_out[first + ow] / divisor


cdef void avg_pool_backward_plane(const floating* grad_output, floating* dx,
                                  const Window* window, bint count_include_pad) noexcept nogil:
    cdef Py_ssize_t H = window.H, W = window.W, OH = window.OH, OW = window.OW
    cdef Py_ssize_t KH = window.KH, KW = window.KW, SH = window.SH, SW = window.SW
    cdef Py_ssize_t PH = window.PH, PW = window.PW
    cdef Py_ssize_t oh, ow, h, kw, h0, h1, start, stop, first, count, cell
    cdef floating divisor
    cdef floating shares[SWEEP_BLOCK]
    cdef const floating* row_grad
    swept_columns(window, &start, &stop)
    memset(dx, 0, H * W * sizeof(floating))
    for oh in range(OH):
        h0 = clamp(oh * SH - PH, 0, H)
        h1 = clamp(oh * SH - PH + KH, 0, H)
        row_grad = grad_output + oh * OW
        for ow in range(start):
            spread_window(dx, window, h0, h1, ow, row_grad[ow], count_include_pad)
        for ow in range(stop, OW):
            spread_window(dx, window, h0, h1, ow, row_grad[ow], count_include_pad)
        divisor = <floating>window_divisor(h0, h1, 0, KW, KH * KW, count_include_pad)
        for first in range(start, stop, SWEEP_BLOCK):
            count = min(SWEEP_BLOCK, stop - first)
            for ow in range(count):
                shares[ow] = row_grad[first + ow] / divisor
            for h in range(h0, h1):
                for kw in range(KW):
                    cell = h * W + first * SW + kw - PW
                    if SW == 2:
                        spread_sweep(dx + cell, 2, count, shares)
                    elif SW == 1:
                        spread_sweep(dx + cell, 1, count, shares)
                    else:
                        spread_sweep(dx + cell, SW, count, shares)


cdef void avg_pool_forward_typed(const floating[:, ::1] x, floating[:, ::1] out, Window w,
                                 bint count_include_pad, int n_threads) noexcept:
    cdef Py_ssize_t plane
    with nogil:
        for plane in prange(w.planes, schedule='static', num_threads=n_threads):
            avg_pool_plane(&x[plane, 0], &out[plane, 0], &w, count_include_pad)


cdef void avg_pool_backward_typed(const floating[:, ::1] grad_output,
                                  floating[:, ::1] grad_input, Window w,
                                  bint count_include_pad, int n_threads) noexcept:
    cdef Py_ssize_t plane
    with nogil:
        for plane in prange(w.planes, schedule='static', num_threads=n_threads):
            avg_pool_backward_plane(&grad_output[plane, 0], &grad_input[plane, 0], &w,
                                    count_include_pad)


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
    """grad_input[n, c].flat[indices[n, c, o]] += grad_output[n, c, o] (zero elsewhere). An
    index outside its plane raises ValueError; grad_input then holds the other cells' sums."""
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
    upstream = grad_output.reshape(w.planes, w.OH * w.OW)
    downstream = grad_input.reshape(w.planes, H * W)
    if dtype == np.float32:
        bad = max_pool_backward_typed[float](upstream, flat_indices, downstream, w, n_threads)
    else:
        bad = max_pool_backward_typed[double](upstream, flat_indices, downstream, w, n_threads)
    if bad:
        raise ValueError(f"indices: {bad} entries lie outside the {H}x{W} input plane")


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
