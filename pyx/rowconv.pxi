# The row kernel's forward: stride-1 layers of few taps (textually included in conv.pyx).
#
# Design notes
# - For a layer whose sums are short (C * KH * KW taps up to ROW_MAX_TAPS: LeNet's first
#   layer, one channel by 5x5), the direct kernel's tiles (filters in the lanes) spent
#   more time transposing their sums into the output than computing them. rowkernel.h's
#   tile puts consecutive positions of a padded row in the lanes instead and stores each
#   filter's sums straight into its output rows; see its notes.
# - A task is a band of output rows of one sample: its input rows (all channels, KH - 1
#   more than the band) are copied zero-padded into the thread's buffer (at most
#   ROW_BAND_BYTES, so they stay in the L1/L2 cache while every block of filters passes
#   over them), then the band's positions are summed tile by tile, each tile position
#   through every block of filters (cnncli_row_tiles: where its lanes land is worked out
#   once for all the blocks), each tile adding the bias, applying ReLU and storing its
#   rows' real columns.
# - Parallel axis: the (sample, band) tasks; bands are cut finer where the samples alone
#   give a thread fewer than TASKS_PER_THREAD tasks (batch 1). Each output value is one
#   in-order sum computed by one thread: bit-identical for any thread count, and to the
#   direct kernel's result (the same chain of multiply-adds).
# - Allocation: weights packed as (filter block, K, tile filters), the tap table, band
#   buffers, with the GIL before the loop.

cdef extern from "rowkernel.h" nogil:
    ctypedef struct cnncli_row_out:
        float* y
        Py_ssize_t plane, WP, OW, rows
    int cnncli_row_filters()
    int cnncli_row_positions()
    void cnncli_row_tiles(const float* x, const int* taps, Py_ssize_t T, const float* packed,
                          const float* bias, int relu, Py_ssize_t filters,
                          const cnncli_row_out* o, Py_ssize_t q0)


# The row kernel takes the forward of stride-1 layers of ROW_MIN_TAPS to ROW_MAX_TAPS
# taps, those of fewer than MIN_DIRECT_TAPS over at least ROW_FEW_TAPS_POSITIONS output
# positions in the batch (see row_forward_applies).
cdef Py_ssize_t ROW_MIN_TAPS = 9
cdef Py_ssize_t ROW_MAX_TAPS = 128
cdef Py_ssize_t ROW_FEW_TAPS_POSITIONS = 4096
# A band's padded input rows take at most this many bytes (or one output row's worth).
cdef Py_ssize_t ROW_BAND_BYTES = 32768
cdef bint row_kernel_enabled = True
# Where 512-bit work runs at full rate (isa.h), the direct kernel ran these layers faster
# from ROW_DIRECT_FROM_BATCH samples on (same layer, the row kernel off and on call by
# call, 2 threads, an AMD EPYC of family 26): LeNet's first layer at batch 64 0.89x and
# 0.92x, batch 16 0.99x, batch 4 1.08x, batch 2 1.32x; 3 channels of 3x3 at 224x224,
# batch 8 0.94x, batch 1 1.10x; at 32x32, batch 32, 0.98x. (On the Intel VM the row kernel
# led at every batch: 0.76x at batch 64.) The two give the same bits.
cdef bint ROW_SMALL_BATCHES = cnncli_full_rate_512()
cdef Py_ssize_t ROW_DIRECT_FROM_BATCH = 8
# Tests set this to run the row kernel on every layer it computes, whatever the batch.
cdef bint row_forced = False


def force_row_kernel(bint forced):
    """Run the row kernel on every layer it computes, whatever the batch (True), or where
    its rule says (False, the default); returns the previous setting. For tests."""
    global row_forced
    previous = row_forced
    row_forced = forced
    return previous


def use_row_kernel(bint enabled):
    """Allow (True) or forbid (False) the row kernel; returns whether it was allowed. For
    tests and benchmarks that compare it with the direct kernel on the same machine."""
    global row_kernel_enabled
    previous = row_kernel_enabled
    row_kernel_enabled = enabled
    return previous


cdef bint row_forward_applies(const Geometry* g, object dtype):
    """A stride-1 layer wider than 1x1 (those have narrowing_pointwise) of ROW_MIN_TAPS to
    ROW_MAX_TAPS taps, on an AVX-512 CPU (AVX2's tile lost: rowkernel.h; at full rate,
    batches below ROW_DIRECT_FROM_BATCH or layers the direct kernel does not take), whose
    output rows fill at least three quarters of the padded rows' lanes (at most a quarter
    of the positions computed are dropped), and below MIN_DIRECT_TAPS taps, with at least
    ROW_FEW_TAPS_POSITIONS output positions in the batch.
    Measured against the kernel that had the layer (bench/bench_rows.py, interleaved in
    one process, AVX-512, 2 threads / 1 thread), with the tile's stores unrolled: LeNet's
    first layer at batch 64 0.76x, at batch 1 0.73x; with 6 filters (which the direct
    kernel's 16-wide tiles waste) 0.51x; 3 channels of 3x3 at 32x32 to 64 filters 0.86x;
    2 channels of 5x5 (50 taps) 0.92x; 8 channels of 3x3 (72) 0.88x / 0.87x; 3 of 5x5
    (75) 0.89x / 0.87x; 4 of 5x5 (100) 0.92x; beyond 128 taps no longer ahead: 16 of
    3x3 (144) 1.01x, 3 of 7x7 (147) 0.96x / 0.96x. One channel of 3x3 (9 taps) against
    im2col + GEMM: at 28x28, batch 64 0.69x / 0.99x, batch 8 (6272 positions) 0.90x,
    batch 1 1.04x; 8x8 images, batch 128 (8192) 0.82x, batch 32 (2048) 1.16x / 0.95x:
    hence ROW_FEW_TAPS_POSITIONS."""
    cdef Padding p = padding_for(g)
    cdef Py_ssize_t taps = g.C * g.KH * g.KW
    return (row_kernel_enabled and cnncli_row_filters() > 0 and direct_allowed(g, dtype)
            and g.SH == 1 and g.SW == 1 and g.KH * g.KW > 1
            and ROW_MIN_TAPS <= taps <= ROW_MAX_TAPS and 4 * g.OW >= 3 * p.WP
            and (taps >= MIN_DIRECT_TAPS or g.N * g.OH * g.OW >= ROW_FEW_TAPS_POSITIONS)
            and (row_forced or not (ROW_SMALL_BATCHES and g.N >= ROW_DIRECT_FROM_BATCH
                                    and direct_forward_applies(g, dtype))))


cdef struct RowBands:
    Py_ssize_t rows          # output rows of a band (the last may have fewer)
    Py_ssize_t count         # bands per sample
    Py_ssize_t plane         # floats of one channel's padded rows in a band buffer


cdef RowBands row_bands_for(const Geometry* g, Padding p, int n_threads):
    cdef RowBands b
    cdef Py_ssize_t reach = (g.KH - 1) * g.DH
    cdef Py_ssize_t wanted = (TASKS_PER_THREAD * n_threads + g.N - 1) // g.N
    b.rows = max(1, min(g.OH, ROW_BAND_BYTES // (4 * g.C * p.WP) - reach))
    b.count = (g.OH + b.rows - 1) // b.rows
    if b.count < wanted:
        b.rows = (g.OH + min(wanted, g.OH) - 1) // min(wanted, g.OH)
        b.count = (g.OH + b.rows - 1) // b.rows
    b.plane = (b.rows + reach) * p.WP
    return b


cdef void pad_band(const float* x, float* band, const Geometry* g, Padding p, RowBands b,
                   Py_ssize_t first_row, Py_ssize_t padded_rows) noexcept nogil:
    """band[c, i] = row first_row + i of channel c's padded plane (pad_channels), for
    i < padded_rows."""
    cdef Py_ssize_t c, i, h
    cdef float* row
    for c in range(g.C):
        for i in range(padded_rows):
            row = band + c * b.plane + i * p.WP
            h = first_row + i - p.top
            if h < 0 or h >= g.H:
                zero(row, p.WP)
            else:
                pad_row(x + (c * g.H + h) * g.W, row, g, p)


cdef void row_task(const float* x, const float* packed, const int* taps, const float* bias,
                   bint relu, float* y, float* band, const Geometry* g, Padding p, RowBands b,
                   Py_ssize_t task) noexcept nogil:
    """Band task % b.count of sample task // b.count: its padded rows into `band`, then
    its positions tile by tile through every block of filters, each storing into y."""
    cdef Py_ssize_t tile = cnncli_row_positions()
    cdef Py_ssize_t K = g.C * g.KH * g.KW
    cdef Py_ssize_t n = task // b.count
    cdef Py_ssize_t first = task % b.count * b.rows
    cdef Py_ssize_t positions
    cdef Py_ssize_t q
    cdef cnncli_row_out o
    o.plane, o.WP, o.OW = g.OH * g.OW, p.WP, g.OW
    o.rows = min(b.rows, g.OH - first)
    positions = (o.rows - 1) * p.WP + g.OW
    pad_band(x + n * g.C * g.H * g.W, band, g, p, b, first, o.rows + (g.KH - 1) * g.DH)
    o.y = y + n * g.F * o.plane + first * g.OW
    for q in range((positions + tile - 1) // tile):
        cnncli_row_tiles(band, taps, K, packed, bias, relu, g.F, &o, q * tile)


cdef void row_forward_typed(const float[:, :, :, ::1] x, const float[:, :, :, ::1] weight,
                            const float* scale, const float* bias, float[:, :, :, ::1] out,
                            float[::1] packed, int[::1] taps, float[:, ::1] bands,
                            Geometry g, Padding p, RowBands b, bint relu,
                            int n_threads) noexcept:
    cdef Py_ssize_t R = cnncli_row_filters()
    cdef Py_ssize_t K = g.C * g.KH * g.KW
    cdef Py_ssize_t c, kh, kw, block, task
    cdef const float* w = &weight[0, 0, 0, 0]
    with nogil:
        for c in range(g.C):
            for kh in range(g.KH):
                for kw in range(g.KW):
                    taps[(c * g.KH + kh) * g.KW + kw] = <int>(c * b.plane + kh * g.DH * p.WP
                                                              + kw * g.DW)
        for block in range(round_up(g.F, R) // R):
            pack_block(w, scale, &packed[0], block, g.F, K, R)
        for task in prange(g.N * b.count, schedule="dynamic", num_threads=n_threads):
            row_task(&x[0, 0, 0, 0], &packed[0], &taps[0], bias, relu, &out[0, 0, 0, 0],
                     &bands[threadid(), 0], &g, p, b, task)


cdef row_forward(x, weight, scale, bias, out, Geometry g, bint relu, int n_threads):
    """out = conv2d(x, weight) * scale + bias (then ReLU) by the row kernel; scale and bias
    may be None."""
    cdef Padding p = padding_for(&g)
    cdef RowBands b = row_bands_for(&g, p, n_threads)
    cdef Py_ssize_t R = cnncli_row_filters()
    cdef const float* bias_pointer = optional_data(bias)
    cdef const float* scale_pointer = optional_data(scale)
    packed = aligned_empty((round_up(g.F, R) * g.C * g.KH * g.KW,))
    taps = np.empty(g.C * g.KH * g.KW, dtype=np.int32)
    # The tiles of a band read up to a tile's positions past its last padded row: zeros.
    bands = np.zeros((n_threads, g.C * b.plane + cnncli_row_positions()), dtype=np.float32)
    row_forward_typed(x, weight, scale_pointer, bias_pointer, out, packed, taps, bands, g, p,
                      b, relu, n_threads)
