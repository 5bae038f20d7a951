# Convolution kernels: 2-D cross-correlation, forward and backward.
#
# Design notes
# - Layout: NCHW, C-contiguous; weights (F, C/groups, KH, KW). The output
#   size is given by the caller's output buffer (OH, OW): the caller decides
#   the bottom/right padding, the kernel only needs the top/left offsets.
# - Three paths. float32 layers whose shape suits it run on the direct kernel
#   (direct.pxi, phases.pxi for strided grad_input, microkernel.h: no column matrix, a
#   register-blocked inner product) where
#   the CPU has AVX2, and the 3x3 stride-1 layers of 64 channels or more among them as
#   Winograd's F(2x2, 3x3) on the same micro-kernel (winograd.pxi, winograd.h: 2.25x
#   fewer multiplications); each of the three passes picks a path by a rule stated
#   there. The rest, float64 (gradient checks) included, runs im2col + GEMM as below.
# - Decomposition: one sample at a time, im2col builds the (C*KH*KW, OH*OW)
#   column matrix in per-thread scratch, then one GEMM per group through
#   scipy's BLAS. A 1x1, stride-1, unpadded convolution skips im2col: the
#   sample itself is the column matrix. A stride-1 layer whose output is as
#   wide as its input (every 'same' convolution) builds each column row as one
#   shifted copy of a block of input rows, zeroing the few values that wrapped
#   around a row's end, instead of a copy per output row.
# - Parallel axis: samples. Forward and grad_input iterations each own
#   out[n] / grad_input[n]. A forward of fewer than SHARED_BATCH samples goes
#   one sample at a time instead: the threads build its column matrix (a block
#   of channels each, so disjoint rows), then compute disjoint blocks of its
#   output, a block of filters by a block of positions each. grad_weight sums over samples, so the batch is cut
#   into a fixed number of chunks that does not depend on the thread count;
#   each chunk owns one partial sum, and the partials are added in chunk
#   order. Results are therefore bit-identical for any number of threads.
#   Samples and chunks are handed out dynamically: when another process takes
#   a core, the thread still running takes over the waiting work instead of
#   the loop waiting for a static share (which thread computes an iteration
#   never changes its result).
# - A backward with more filters than output positions (deep layers with a
#   small image: ResNet's last stages) takes groups of S samples side by side
#   instead (S fixed by the shape): each sample's columns and output gradient
#   are copied into one wide matrix, and grad_weight and the column gradients
#   are each one product over S*L columns, cut into blocks of the result (one
#   task each, so no sums to combine); grad_weight adds the groups in order.
#   Per sample, those products would be L columns wide and each would rewrite a
#   weight-sized partial sum (9 MB per sample at 512 filters of 3x3x512).
#   grad_weight's blocks cut its longer side first (filters, or the C*KH*KW
#   columns), as BLAS packs the whole of the other operand for each block: cut
#   into blocks of filters, ResNet-18's 512 filters of 3x3x512 at 4x4, batch 16,
#   packed the 4608-row column matrix four times (17% of the pass, and im2col
#   13%); cut into blocks of columns, the pass took 0.81x the time (256 to 512
#   at stride 2: 0.91x; the 1x1 layers, whose columns are the fewer, unchanged).
# - Allocation: outputs come from the caller; the column scratch (one row per
#   thread, indexed by threadid()) and the grad_weight partials are allocated
#   here with the GIL before the loop, so a failed allocation is a
#   MemoryError and never happens inside the nogil region.
# - BLAS is called from inside the OpenMP loop: the caller (cnncli.functional)
#   caps the BLAS library at one thread for the duration of the call.

from cython.parallel cimport prange, threadid
from libc.string cimport memcpy, memset

include "checks.pxi"
include "blas.pxi"
include "relu.pxi"
include "isa.pxi"

# Batches of fewer samples than this run each sample on all threads (its product cut into
# at most SHARED_TASKS blocks of at least MIN_FILTER_BLOCK filters by MIN_POSITION_BLOCK
# output positions, where the shape allows): one image still uses every core. The rule
# depends on the shapes only, so results do not change with the thread count.
cdef Py_ssize_t SHARED_BATCH = 4
cdef Py_ssize_t SHARED_TASKS = 4
cdef Py_ssize_t MIN_FILTER_BLOCK = 64
cdef Py_ssize_t MIN_POSITION_BLOCK = 96

# The grouped backward puts enough samples side by side for products over at least this
# many columns.
cdef Py_ssize_t GROUPED_COLUMNS = 1024

# Upper bound on grad_weight partial sums: enough to keep 16 threads busy,
# small enough that the partials stay a few copies of the weight.
cdef Py_ssize_t MAX_WEIGHT_GRAD_CHUNKS = 16


cdef struct Geometry:
    Py_ssize_t N, C, H, W      # input batch, channels, height, width
    Py_ssize_t F, KH, KW       # filters and kernel extent
    Py_ssize_t OH, OW          # output extent
    Py_ssize_t SH, SW          # stride
    Py_ssize_t PH, PW          # top / left padding
    Py_ssize_t DH, DW          # dilation
    Py_ssize_t G               # groups


cdef inline void valid_range(Py_ssize_t offset, Py_ssize_t stride, Py_ssize_t size,
                             Py_ssize_t count, Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """Output positions o in [lo, hi) whose input index o * stride + offset is in [0, size)."""
    cdef Py_ssize_t first = 0, last = 0
    if offset < 0:
        first = (-offset + stride - 1) // stride
    if offset <= size - 1:
        last = (size - 1 - offset) // stride + 1
    lo[0] = first if first < count else count
    hi[0] = last if last < count else count
    if hi[0] < lo[0]:
        hi[0] = lo[0]


cdef inline void zero(floating* dst, Py_ssize_t count) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(count):
        dst[i] = 0


cdef inline void relu_rows(floating* y, Py_ssize_t rows, Py_ssize_t width,
                           Py_ssize_t row_stride) noexcept nogil:
    """max(y, 0) in place over `rows` rows of `width` values, row_stride apart, while the
    output is still in cache (NaN is kept, as by ReLU)."""
    cdef Py_ssize_t r
    for r in range(rows):
        relu_block(y + r * row_stride, y + r * row_stride, width)


cdef inline void scale_shift_rows(floating* y, Py_ssize_t f_first, Py_ssize_t f_stop,
                                  Py_ssize_t width, Py_ssize_t row_stride,
                                  const floating[::1] scale, const floating[::1] bias,
                                  bint has_bias) noexcept nogil:
    """y[f, :width] = y[f, :width] * scale[f] (+ bias[f]) for rows f_first..f_stop of y (row f
    at f * row_stride): a BatchNorm folded into the output pass of a GEMM that summed
    without the bias."""
    cdef Py_ssize_t f, p
    cdef floating factor, shift
    for f in range(f_first, f_stop):
        factor = scale[f]
        shift = bias[f] if has_bias else 0
        for p in range(width):
            y[f * row_stride + p] = y[f * row_stride + p] * factor + shift


cdef inline void same_width_rows(floating* dst, const floating* src, Py_ssize_t rows,
                                 Py_ssize_t W, Py_ssize_t shift, bint accumulate) noexcept nogil:
    """For a stride-1 row whose output is as wide as the input: dst[r, w] = src[r, w + shift]
    for `rows` consecutive rows (zero where w + shift leaves the row), or, with `accumulate`,
    the adjoint src[r, w + shift] += dst[r, w] (dst's entries outside the row are zeroed first).

    The rows lie back to back in both arrays, so the inside of the block is one shifted
    copy (or sum) over rows * W values; the |shift| values per row that wrapped into the
    neighbouring row are then zeroed in dst (before the sum, for the adjoint).
    """
    cdef Py_ssize_t r, j, lo = -shift if shift < 0 else 0
    cdef Py_ssize_t hi = W - shift if shift > 0 else W
    cdef Py_ssize_t first = lo, last = rows * W - (W - hi)
    cdef floating* io = <floating*>src
    if hi <= lo:
        # The kernel offset lies beyond the row: every value reads padding.
        if not accumulate:
            zero(dst, rows * W)
        return
    if accumulate:
        for r in range(rows):
            zero(dst + r * W, lo)
            zero(dst + r * W + hi, W - hi)
        for j in range(first, last):
            io[j + shift] += dst[j]
        return
    for j in range(first, last):
        dst[j] = src[j + shift]
    for r in range(rows):
        zero(dst + r * W, lo)
        zero(dst + r * W + hi, W - hi)


cdef void im2col_channels(const floating* x, floating* col, const Geometry* g,
                          Py_ssize_t c_first, Py_ssize_t c_stop,
                          Py_ssize_t row_stride) noexcept nogil:
    """Rows (c, kh, kw) of channels [c_first, c_stop) of im2col_sample's column matrix,
    each row of OH*OW values starting row_stride after the one before."""
    cdef Py_ssize_t c, kh, kw, oh, ow, ih, iw0, lo, hi, oh_lo, oh_hi
    cdef Py_ssize_t L = g.OH * g.OW
    cdef floating* row = col + c_first * g.KH * g.KW * row_stride
    cdef floating* dst
    cdef const floating* src
    cdef bint same_width = g.SH == 1 and g.SW == 1 and g.OW == g.W
    for c in range(c_first, c_stop):
        for kh in range(g.KH):
            if same_width:
                valid_range(kh * g.DH - g.PH, 1, g.H, g.OH, &oh_lo, &oh_hi)
            for kw in range(g.KW):
                iw0 = kw * g.DW - g.PW
                dst = row
                row += row_stride
                if same_width:
                    zero(dst, oh_lo * g.OW)
                    zero(dst + oh_hi * g.OW, (g.OH - oh_hi) * g.OW)
                    src = x + (c * g.H + oh_lo + kh * g.DH - g.PH) * g.W
                    same_width_rows(dst + oh_lo * g.OW, src, oh_hi - oh_lo, g.W, iw0, False)
                    continue
                valid_range(iw0, g.SW, g.W, g.OW, &lo, &hi)
                for oh in range(g.OH):
                    ih = oh * g.SH + kh * g.DH - g.PH
                    if ih < 0 or ih >= g.H:
                        zero(dst, g.OW)
                    else:
                        src = x + (c * g.H + ih) * g.W
                        zero(dst, lo)
                        if g.SW == 1:
                            memcpy(dst + lo, src + lo + iw0, (hi - lo) * sizeof(floating))
                        else:
                            for ow in range(lo, hi):
                                dst[ow] = src[ow * g.SW + iw0]
                        zero(dst + hi, g.OW - hi)
                    dst += g.OW


cdef inline void im2col_sample(const floating* x, floating* col, const Geometry* g) noexcept nogil:
    """col[(c, kh, kw), (oh, ow)] = x[c, oh*SH + kh*DH - PH, ow*SW + kw*DW - PW], 0 outside."""
    im2col_channels(x, col, g, 0, g.C, g.OH * g.OW)


cdef void col2im_sample(floating* col, floating* x, const Geometry* g,
                        bint col_is_scratch, Py_ssize_t row_stride) noexcept nogil:
    """Adjoint of im2col_sample: x[c, ih, iw] += every col entry that im2col read from it.

    When col is scratch, a stride-1 layer whose output is as wide as its input takes the
    same-width path: the entries of col that im2col filled with padding are zeroed, so
    whole blocks of rows are summed at once."""
    cdef Py_ssize_t c, kh, kw, oh, ow, ih, iw0, lo, hi, oh_lo, oh_hi
    cdef floating* row = col
    cdef floating* src
    cdef floating* dst
    cdef bint same_width = col_is_scratch and g.SH == 1 and g.SW == 1 and g.OW == g.W
    for c in range(g.C):
        for kh in range(g.KH):
            if same_width:
                valid_range(kh * g.DH - g.PH, 1, g.H, g.OH, &oh_lo, &oh_hi)
            for kw in range(g.KW):
                iw0 = kw * g.DW - g.PW
                src = row
                row += row_stride
                if same_width:
                    dst = x + (c * g.H + oh_lo + kh * g.DH - g.PH) * g.W
                    same_width_rows(src + oh_lo * g.OW, dst, oh_hi - oh_lo, g.W, iw0, True)
                    continue
                valid_range(iw0, g.SW, g.W, g.OW, &lo, &hi)
                for oh in range(g.OH):
                    ih = oh * g.SH + kh * g.DH - g.PH
                    if ih >= 0 and ih < g.H:
                        dst = x + (c * g.H + ih) * g.W + iw0
                        if g.SW == 1:
                            for ow in range(lo, hi):
                                dst[ow] += src[ow]
                        else:
                            for ow in range(lo, hi):
                                dst[ow * g.SW] += src[ow]
                    src += g.OW


cdef Geometry make_geometry(tuple input_shape, Py_ssize_t filters, tuple kernel_size,
                            tuple output_size, tuple stride, tuple padding, tuple dilation,
                            Py_ssize_t groups) except *:
    cdef Geometry g
    g.N, g.C, g.H, g.W = input_shape
    g.F = filters
    g.KH, g.KW = kernel_size
    g.OH, g.OW = output_size
    g.SH, g.SW = stride
    g.PH, g.PW = padding
    g.DH, g.DW = dilation
    g.G = groups
    for name, value, minimum in (("kernel height", g.KH, 1), ("kernel width", g.KW, 1),
                                 ("output height", g.OH, 1), ("output width", g.OW, 1),
                                 ("stride", g.SH, 1), ("stride", g.SW, 1),
                                 ("padding", g.PH, 0), ("padding", g.PW, 0),
                                 ("dilation", g.DH, 1), ("dilation", g.DW, 1),
                                 ("groups", g.G, 1), ("input channels", g.C, 1),
                                 ("input height", g.H, 1), ("input width", g.W, 1)):
        check_at_least(name, value, minimum)
    if g.C % g.G or g.F % g.G:
        raise ValueError(f"groups: must divide the input channels ({g.C}) and "
                         f"filters ({g.F}), got {g.G}")
    if g.C * g.KH * g.KW > BLAS_INT_MAX or g.OH * g.OW > BLAS_INT_MAX or g.F > BLAS_INT_MAX:
        raise ValueError("input: a per-sample matrix exceeds the 2**31 elements BLAS accepts")
    return g


cdef bint is_pointwise(const Geometry* g) noexcept:
    """A 1x1, stride-1 convolution that keeps the spatial size needs no im2col."""
    return (g.KH == 1 and g.KW == 1 and g.SH == 1 and g.SW == 1 and g.PH == 0
            and g.PW == 0 and g.OH == g.H and g.OW == g.W)


include "direct.pxi"
# The vector variant of the bias gradient's sums (filtersum.h): the direct kernel's.
cdef int filter_sum_variant = cnncli_variant()
include "phases.pxi"
include "winograd.pxi"
include "rowconv.pxi"


cdef object column_scratch(const Geometry* g, bint pointwise, int n_threads, object dtype):
    cdef Py_ssize_t columns = 1 if pointwise else g.C * g.KH * g.KW * g.OH * g.OW
    return np.empty((n_threads, columns), dtype=dtype)


cdef void conv2d_forward_typed(const floating[:, :, :, ::1] x,
                               const floating[:, :, :, ::1] weight,
                               const floating[::1] scale, const floating[::1] bias,
                               floating[:, :, :, ::1] out, floating[:, ::1] scratch,
                               Geometry g, bint pointwise, bint relu, int n_threads) noexcept:
    cdef Py_ssize_t n, f, p, group
    cdef Py_ssize_t L = g.OH * g.OW
    cdef Py_ssize_t Fg = g.F // g.G
    cdef Py_ssize_t K = (g.C // g.G) * g.KH * g.KW
    cdef bint has_bias = bias is not None
    cdef bint has_scale = scale is not None
    # With a scale, the bias is added after it, in the output pass.
    cdef floating beta = 1 if has_bias and not has_scale else 0
    cdef const floating* col
    cdef floating* y
    with nogil:
        for n in prange(g.N, schedule="dynamic", num_threads=n_threads):
            if pointwise:
                col = &x[n, 0, 0, 0]
            else:
                im2col_sample(&x[n, 0, 0, 0], &scratch[threadid(), 0], &g)
                col = &scratch[threadid(), 0]
            y = &out[n, 0, 0, 0]
            if has_bias and not has_scale:
                for f in range(g.F):
                    for p in range(L):
                        y[f * L + p] = bias[f]
            for group in range(g.G):
                gemm(False, False, Fg, L, K, 1, &weight[group * Fg, 0, 0, 0], K,
                     col + group * K * L, L, beta, y + group * Fg * L, L)
            if has_scale:
                scale_shift_rows(y, 0, g.F, L, L, scale, bias, has_bias)
            if relu:
                relu_rows(y, 1, g.F * L, 0)


cdef void conv2d_backward_typed(const floating[:, :, :, ::1] grad_output,
                                const floating[:, :, :, ::1] x,
                                const floating[:, :, :, ::1] weight,
                                floating[:, :, :, ::1] grad_input,
                                floating[:, ::1] weight_partials,
                                floating[::1] grad_weight, floating[::1] grad_bias,
                                floating[:, ::1] scratch, Geometry g, bint pointwise,
                                Py_ssize_t n_chunks, int n_threads) noexcept:
    cdef Py_ssize_t chunk, n, first, stop, group, f, p, i, position
    cdef Py_ssize_t L = g.OH * g.OW
    cdef Py_ssize_t Fg = g.F // g.G
    cdef Py_ssize_t K = (g.C // g.G) * g.KH * g.KW
    cdef Py_ssize_t weight_size = g.F * K
    cdef bint need_input = grad_input is not None
    cdef bint need_weight = grad_weight is not None
    cdef const floating* col
    cdef const floating* dy
    cdef floating* buffer
    cdef floating* dcol
    cdef floating beta
    cdef double total
    with nogil:
        for chunk in prange(n_chunks, schedule="dynamic", num_threads=n_threads):
            buffer = &scratch[threadid(), 0]
            first = chunk * g.N // n_chunks
            stop = (chunk + 1) * g.N // n_chunks
            for n in range(first, stop):
                dy = &grad_output[n, 0, 0, 0]
                if need_weight:
                    if pointwise:
                        col = &x[n, 0, 0, 0]
                    else:
                        im2col_sample(&x[n, 0, 0, 0], buffer, &g)
                        col = buffer
                    beta = 0 if n == first else 1
                    for group in range(g.G):
                        gemm(False, True, Fg, K, L, 1, dy + group * Fg * L, L,
                             col + group * K * L, L, beta,
                             &weight_partials[chunk, group * Fg * K], K)
                if need_input:
                    dcol = &grad_input[n, 0, 0, 0] if pointwise else buffer
                    for group in range(g.G):
                        gemm(True, False, K, L, Fg, 1, &weight[group * Fg, 0, 0, 0], K,
                             dy + group * Fg * L, L, 0, dcol + group * K * L, L)
                    if not pointwise:
                        memset(&grad_input[n, 0, 0, 0], 0, g.C * g.H * g.W * sizeof(floating))
                        col2im_sample(buffer, &grad_input[n, 0, 0, 0], &g, True, L)

        if need_weight:
            for i in prange(weight_size, schedule='static', num_threads=n_threads):
                total = 0
                for chunk in range(n_chunks):
                    total = total + weight_partials[chunk, i]
                grad_weight[i] = <floating>total
    if need_weight and grad_bias is not None:
        bias_gradient(grad_output, grad_bias, n_threads)


cdef extern from "filtersum.h" nogil:
    double cnncli_filter_sum(const float* dy, Py_ssize_t N, Py_ssize_t stride, Py_ssize_t L,
                             int variant)


cdef double filter_sum(const floating* dy, Py_ssize_t N, Py_ssize_t stride,
                       Py_ssize_t L) noexcept nogil:
    """The sum of dy[n * stride + position] over n < N and position < L, in double, in eight
    interleaved partial sums added in a fixed order at the end: one running sum waits for
    each addition to finish (LeNet conv2's bias gradient took 4% of its grad_weight).
    float32 goes through filtersum.h where the direct kernel has a vector variant: the same
    sums on its vector units."""
    if floating is float:
        if filter_sum_variant > 0:
            return cnncli_filter_sum(dy, N, stride, L, filter_sum_variant)
    cdef double partial[8]
    cdef Py_ssize_t n, position, j
    for j in range(8):
        partial[j] = 0
    for n in range(N):
        for position in range(0, L - 7, 8):
            for j in range(8):
                partial[j] = partial[j] + dy[n * stride + position + j]
        for position in range(L - L % 8, L):
            partial[position % 8] = partial[position % 8] + dy[n * stride + position]
    return (((partial[0] + partial[1]) + (partial[2] + partial[3]))
            + ((partial[4] + partial[5]) + (partial[6] + partial[7])))


cdef void bias_gradient(const floating[:, :, :, ::1] grad_output, floating[::1] grad_bias,
                        int n_threads) noexcept:
    """grad_bias[f] = sum of grad_output[:, f], one filter per iteration (filter_sum)."""
    cdef Py_ssize_t N = grad_output.shape[0], F = grad_output.shape[1]
    cdef Py_ssize_t L = grad_output.shape[2] * grad_output.shape[3]
    cdef Py_ssize_t f
    if N == 0:
        grad_bias[:] = 0
        return
    with nogil:
        for f in prange(F, schedule='static', num_threads=n_threads):
            grad_bias[f] = <floating>filter_sum(&grad_output[0, f, 0, 0], N, F * L, L)


cdef void conv2d_backward_grouped_typed(const floating[:, :, :, ::1] grad_output,
                                        const floating[:, :, :, ::1] x,
                                        const floating[:, :, :, ::1] weight,
                                        floating[:, :, :, ::1] grad_input,
                                        floating[::1] grad_weight, floating[::1] grad_bias,
                                        floating[::1] columns, floating[::1] gradients,
                                        Geometry g, Py_ssize_t S, int n_threads) noexcept:
    """conv2d_backward_typed for layers with more filters than output positions: S samples
    at a time side by side, so each product runs over S*L columns (see the design notes)."""
    cdef Py_ssize_t batch_group, first, count, s, task, f, group, f0, f1, k0, k1, ld
    cdef Py_ssize_t L = g.OH * g.OW
    cdef Py_ssize_t Fg = g.F // g.G
    cdef Py_ssize_t K = (g.C // g.G) * g.KH * g.KW
    cdef Py_ssize_t f_blocks = min(SHARED_TASKS, max(1, Fg // MIN_FILTER_BLOCK))
    cdef Py_ssize_t k_blocks = min(max(1, SHARED_TASKS // f_blocks), max(1, K // MIN_POSITION_BLOCK))
    cdef Py_ssize_t tasks = g.G * f_blocks * k_blocks
    # grad_weight's products are split along its longer side first: each task packs the
    # whole of the other operand for BLAS (see the design notes).
    cdef Py_ssize_t weight_k_blocks = (min(SHARED_TASKS, max(1, K // MIN_POSITION_BLOCK))
                                       if K >= Fg else k_blocks)
    cdef Py_ssize_t weight_f_blocks = (min(max(1, SHARED_TASKS // weight_k_blocks),
                                           max(1, Fg // MIN_FILTER_BLOCK))
                                       if K >= Fg else f_blocks)
    cdef Py_ssize_t weight_tasks = g.G * weight_f_blocks * weight_k_blocks
    cdef bint need_input = grad_input is not None
    cdef bint need_weight = grad_weight is not None
    cdef floating beta
    cdef floating* dyt = &gradients[0]
    cdef floating* cols = &columns[0]
    with nogil:
        for batch_group in range((g.N + S - 1) // S):
            first = batch_group * S
            count = min(S, g.N - first)
            ld = count * L
            # dyt[f, s*L + p] = grad_output[first + s, f, p]; cols likewise from im2col.
            for s in prange(count, schedule='static', num_threads=n_threads):
                for f in range(g.F):
                    memcpy(dyt + f * ld + s * L, &grad_output[first + s, f, 0, 0],
                           L * sizeof(floating))
                if need_weight:
                    im2col_channels(&x[first + s, 0, 0, 0], cols + s * L, &g, 0, g.C, ld)
            if need_weight:
                beta = 0 if first == 0 else 1
                for task in prange(weight_tasks, schedule='static', num_threads=n_threads):
                    group = task // (weight_f_blocks * weight_k_blocks)
                    f0 = (group * Fg + task // weight_k_blocks % weight_f_blocks * Fg
                          // weight_f_blocks)
                    f1 = (group * Fg + (task // weight_k_blocks % weight_f_blocks + 1) * Fg
                          // weight_f_blocks)
                    k0 = task % weight_k_blocks * K // weight_k_blocks
                    k1 = (task % weight_k_blocks + 1) * K // weight_k_blocks
                    gemm(False, True, f1 - f0, k1 - k0, ld, 1, dyt + f0 * ld, ld,
                         cols + (group * K + k0) * ld, ld, beta, &grad_weight[f0 * K + k0], K)
            if need_input:
                # The column matrix is no longer needed: its gradient takes its place.
                for task in prange(tasks, schedule='static', num_threads=n_threads):
                    group = task // (f_blocks * k_blocks)
                    k0 = task % (f_blocks * k_blocks) * K // (f_blocks * k_blocks)
                    k1 = (task % (f_blocks * k_blocks) + 1) * K // (f_blocks * k_blocks)
                    gemm(True, False, k1 - k0, ld, Fg, 1, &weight[group * Fg, 0, 0, 0] + k0, K,
                         dyt + group * Fg * ld, ld, 0, cols + (group * K + k0) * ld, ld)
                for s in prange(count, schedule='static', num_threads=n_threads):
                    memset(&grad_input[first + s, 0, 0, 0], 0,
                           g.C * g.H * g.W * sizeof(floating))
                    col2im_sample(cols + s * L, &grad_input[first + s, 0, 0, 0], &g, True, ld)
    if need_weight and grad_bias is not None:
        bias_gradient(grad_output, grad_bias, n_threads)


cdef void conv2d_forward_shared_typed(const floating[:, :, :, ::1] x,
                                      const floating[:, :, :, ::1] weight,
                                      const floating[::1] scale, const floating[::1] bias,
                                      floating[:, :, :, ::1] out, floating[::1] cols,
                                      Geometry g, bint pointwise, bint relu,
                                      int n_threads) noexcept:
    """conv2d_forward_typed for a few samples (groups == 1): each sample's column matrix is
    built by all threads (a block of channels each), then its product is cut into blocks
    of filters and output positions, fixed by the shape, one task each."""
    cdef Py_ssize_t n, block, task, f_first, f_stop, l_first, l_stop, f, p
    cdef Py_ssize_t L = g.OH * g.OW
    cdef Py_ssize_t K = g.C * g.KH * g.KW
    cdef Py_ssize_t channel_blocks = g.C if g.C < SHARED_TASKS else SHARED_TASKS
    cdef Py_ssize_t f_blocks = min(SHARED_TASKS, max(1, g.F // MIN_FILTER_BLOCK))
    cdef Py_ssize_t l_blocks = min(max(1, SHARED_TASKS // f_blocks),
                                   max(1, L // MIN_POSITION_BLOCK))
    cdef bint has_bias = bias is not None
    cdef bint has_scale = scale is not None
    cdef floating beta = 1 if has_bias and not has_scale else 0
    cdef const floating* col
    cdef floating* y
    with nogil:
        for n in range(g.N):
            if pointwise:
                col = &x[n, 0, 0, 0]
            else:
                for block in prange(channel_blocks, schedule='static', num_threads=n_threads):
                    im2col_channels(&x[n, 0, 0, 0], &cols[0], &g, block * g.C // channel_blocks,
                                    (block + 1) * g.C // channel_blocks, L)
                col = &cols[0]
            for task in prange(f_blocks * l_blocks, schedule='static', num_threads=n_threads):
                f_first = task // l_blocks * g.F // f_blocks
                f_stop = (task // l_blocks + 1) * g.F // f_blocks
                l_first = task % l_blocks * L // l_blocks
                l_stop = (task % l_blocks + 1) * L // l_blocks
                y = &out[n, 0, 0, 0]
                if has_bias and not has_scale:
                    for f in range(f_first, f_stop):
                        for p in range(l_first, l_stop):
                            y[f * L + p] = bias[f]
                gemm(False, False, f_stop - f_first, l_stop - l_first, K, 1,
                     &weight[f_first, 0, 0, 0], K, col + l_first, L, beta,
                     y + f_first * L + l_first, L)
                if has_scale:
                    scale_shift_rows(y + l_first, f_first, f_stop, l_stop - l_first, L, scale,
                                     bias, has_bias)
                if relu:
                    relu_rows(y + f_first * L + l_first, f_stop - f_first, l_stop - l_first, L)


def conv2d_forward(x, weight, bias, out, tuple stride, tuple padding, tuple dilation,
                   Py_ssize_t groups, int n_threads, bint relu=False, scale=None):
    """out[n, f] = scale[f] * (sum_{c in group(f), kh, kw} weight[f, c, kh, kw] * x_padded[n, c, oh*S + kh*D, ow*S + kw*D]) + bias[f]; then max(out, 0) with relu. scale and bias may be None."""
    dtype = working_dtype("x", x)
    check_array("x", x, 4, dtype, False)
    check_array("weight", weight, 4, dtype, False)
    check_array("out", out, 4, dtype, True)
    check_at_least("n_threads", n_threads, 1)
    cdef Geometry g = make_geometry(x.shape, weight.shape[0], weight.shape[2:],
                                    out.shape[2:], stride, padding, dilation, groups)
    check_shape("weight", weight, (g.F, g.C // g.G, g.KH, g.KW))
    check_shape("out", out, (g.N, g.F, g.OH, g.OW))
    if bias is not None:
        check_array("bias", bias, 1, dtype, False)
        check_shape("bias", bias, (g.F,))
    if scale is not None:
        check_array("scale", scale, 1, dtype, False)
        check_shape("scale", scale, (g.F,))
    check_disjoint("out", out, "x", x)
    if winograd_forward_applies(&g, dtype):
        winograd_forward(x, weight, scale, bias, out, g, relu, n_threads)
        return
    if winograd_fold_applies(&g, dtype):
        winograd_fold_forward(x, weight, scale, bias, out, g, relu, n_threads)
        return
    if row_forward_applies(&g, dtype):
        row_forward(x, weight, scale, bias, out, g, relu, n_threads)
        return
    if direct_forward_applies(&g, dtype):
        direct_forward(x, weight, scale, bias, out, g, relu, n_threads)
        return
    cdef bint pointwise = is_pointwise(&g)
    if g.N < SHARED_BATCH and g.G == 1:
        cols = column_scratch(&g, pointwise, 1, dtype)[0]
        if dtype == np.float32:
            conv2d_forward_shared_typed[float](x, weight, scale, bias, out, cols, g, pointwise,
                                               relu, n_threads)
        else:
            conv2d_forward_shared_typed[double](x, weight, scale, bias, out, cols, g, pointwise,
                                                relu, n_threads)
        return
    scratch = column_scratch(&g, pointwise, n_threads, dtype)
    if dtype == np.float32:
        conv2d_forward_typed[float](x, weight, scale, bias, out, scratch, g, pointwise,
                                    relu, n_threads)
    else:
        conv2d_forward_typed[double](x, weight, scale, bias, out, scratch, g, pointwise,
                                     relu, n_threads)


def conv2d_backward(grad_output, x, weight, grad_input, grad_weight, grad_bias,
                    tuple stride, tuple padding, tuple dilation, Py_ssize_t groups,
                    int n_threads):
    """grad_input = conv2d adjoint of grad_output; grad_weight[f] = sum_n grad_output[n, f] (*) x_padded[n]; grad_bias[f] = sum grad_output[:, f].

    grad_input, grad_weight or grad_bias may be None (grad_bias only with grad_weight):
    what is not asked for is not computed.
    """
    dtype = working_dtype("x", x)
    check_array("grad_output", grad_output, 4, dtype, False)
    check_array("x", x, 4, dtype, False)
    check_array("weight", weight, 4, dtype, False)
    check_at_least("n_threads", n_threads, 1)
    cdef Geometry g = make_geometry(x.shape, weight.shape[0], weight.shape[2:],
                                    grad_output.shape[2:], stride, padding, dilation, groups)
    check_shape("weight", weight, (g.F, g.C // g.G, g.KH, g.KW))
    check_shape("grad_output", grad_output, (g.N, g.F, g.OH, g.OW))
    if grad_input is not None:
        check_array("grad_input", grad_input, 4, dtype, True)
        check_shape("grad_input", grad_input, x.shape)
        for name, array in (("grad_output", grad_output), ("x", x), ("weight", weight)):
            check_disjoint("grad_input", grad_input, name, array)
    if grad_bias is not None and grad_weight is None:
        raise ValueError("grad_bias: pass grad_weight with it")
    weight_flat = bias_flat = partials = None
    cdef Py_ssize_t n_chunks = min(g.N, MAX_WEIGHT_GRAD_CHUNKS)
    if grad_weight is not None:
        check_array("grad_weight", grad_weight, 4, dtype, True)
        check_shape("grad_weight", grad_weight, weight.shape)
        if grad_bias is not None:
            check_array("grad_bias", grad_bias, 1, dtype, True)
            check_shape("grad_bias", grad_bias, (g.F,))
            check_disjoint("grad_weight", grad_weight, "grad_bias", grad_bias)
        for name, array in (("grad_output", grad_output), ("x", x), ("weight", weight),
                            ("grad_input", grad_input)):
            if array is not None:
                check_disjoint("grad_weight", grad_weight, name, array)
                if grad_bias is not None:
                    check_disjoint("grad_bias", grad_bias, name, array)
        weight_flat = grad_weight.reshape(-1)
        bias_flat = grad_bias
    # The direct kernel takes the parts it applies to; im2col + GEMM does the rest.
    if grad_input is not None and winograd_input_grad_applies(&g, dtype):
        winograd_input_grad(grad_output, weight, grad_input, g, n_threads)
        grad_input = None
    if grad_input is not None and direct_input_grad_applies(&g, dtype):
        direct_input_grad(grad_output, weight, grad_input, g, n_threads)
        grad_input = None
    if grad_input is not None and strided_input_grad_applies(&g, dtype):
        strided_input_grad(grad_output, weight, grad_input, g, n_threads)
        grad_input = None
    if weight_flat is not None and winograd_weight_grad_applies(&g, dtype):
        winograd_weight_grad(grad_output, x, weight_flat, g, max(n_chunks, 1), n_threads)
        if bias_flat is not None:
            bias_gradient[float](grad_output, bias_flat, n_threads)
        weight_flat = bias_flat = None
    if weight_flat is not None and direct_weight_grad_applies(&g, dtype):
        direct_weight_grad(grad_output, x, weight_flat, g, max(n_chunks, 1), n_threads)
        if bias_flat is not None:
            bias_gradient[float](grad_output, bias_flat, n_threads)
        weight_flat = bias_flat = None
    if grad_input is None and weight_flat is None:
        return
    cdef Py_ssize_t L = g.OH * g.OW, S
    if g.N > 0 and g.F > L:
        # Fewer positions than filters: per-sample products would be thin (L columns)
        # and each would rewrite a whole weight-sized partial sum.
        S = min(g.N, max(1, (GROUPED_COLUMNS + L - 1) // L))
        columns = np.empty(g.C * g.KH * g.KW * S * L, dtype=dtype)
        gradients = np.empty(g.F * S * L, dtype=dtype)
        if dtype == np.float32:
            conv2d_backward_grouped_typed[float](grad_output, x, weight, grad_input, weight_flat,
                                                 bias_flat, columns, gradients, g, S, n_threads)
        else:
            conv2d_backward_grouped_typed[double](grad_output, x, weight, grad_input,
                                                  weight_flat, bias_flat, columns, gradients, g,
                                                  S, n_threads)
        return
    if weight_flat is not None:
        partials = np.empty((max(n_chunks, 1), weight_flat.shape[0]), dtype=dtype)
    cdef bint pointwise = is_pointwise(&g)
    scratch = column_scratch(&g, pointwise, n_threads, dtype)
    if dtype == np.float32:
        conv2d_backward_typed[float](grad_output, x, weight, grad_input, partials, weight_flat,
                                     bias_flat, scratch, g, pointwise, n_chunks, n_threads)
    else:
        conv2d_backward_typed[double](grad_output, x, weight, grad_input, partials, weight_flat,
                                      bias_flat, scratch, g, pointwise, n_chunks, n_threads)


cdef void im2col_typed(const floating[:, :, ::1] x, floating[:, :, ::1] cols,
                       Geometry g, int n_threads) noexcept:
    cdef Py_ssize_t n
    with nogil:
        for n in prange(g.N, schedule='static', num_threads=n_threads):
            im2col_sample(&x[n, 0, 0], &cols[n, 0, 0], &g)


cdef void col2im_typed(const floating[:, :, ::1] cols, floating[:, :, ::1] x,
                       Geometry g, int n_threads) noexcept:
    cdef Py_ssize_t n
    with nogil:
        for n in prange(g.N, schedule='static', num_threads=n_threads):
            memset(&x[n, 0, 0], 0, g.C * g.H * g.W * sizeof(floating))
            col2im_sample(<floating*>&cols[n, 0, 0], &x[n, 0, 0], &g, False, g.OH * g.OW)


cdef Geometry unfold_geometry(object x, object cols, tuple kernel_size, tuple output_size,
                              tuple stride, tuple padding, tuple dilation) except *:
    cdef Geometry g = make_geometry(x.shape, 1, kernel_size, output_size,
                                    stride, padding, dilation, 1)
    check_shape("cols", cols, (g.N, g.C * g.KH * g.KW, g.OH * g.OW))
    check_disjoint("cols", cols, "x", x)
    return g


def im2col(x, cols, tuple kernel_size, tuple output_size, tuple stride, tuple padding,
           tuple dilation, int n_threads):
    """cols[n, (c, kh, kw), (oh, ow)] = x_padded[n, c, oh*S + kh*D, ow*S + kw*D]."""
    dtype = working_dtype("x", x)
    check_array("x", x, 4, dtype, False)
    check_array("cols", cols, 3, dtype, True)
    check_at_least("n_threads", n_threads, 1)
    cdef Geometry g = unfold_geometry(x, cols, kernel_size, output_size, stride, padding,
                                      dilation)
    image = x.reshape(g.N, g.C, g.H * g.W)
    if dtype == np.float32:
        im2col_typed[float](image, cols, g, n_threads)
    else:
        im2col_typed[double](image, cols, g, n_threads)


def col2im(cols, x, tuple kernel_size, tuple output_size, tuple stride, tuple padding,
           tuple dilation, int n_threads):
    """Adjoint of im2col: x[n, c, ih, iw] = sum of the cols entries that im2col copies from there."""
    dtype = working_dtype("cols", cols)
    check_array("cols", cols, 3, dtype, False)
    check_array("x", x, 4, dtype, True)
    check_at_least("n_threads", n_threads, 1)
    cdef Geometry g = unfold_geometry(x, cols, kernel_size, output_size, stride, padding,
                                      dilation)
    image = x.reshape(g.N, g.C, g.H * g.W)
    if dtype == np.float32:
        col2im_typed[float](cols, image, g, n_threads)
    else:
        col2im_typed[double](cols, image, g, n_threads)
