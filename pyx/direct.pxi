# Direct float32 convolution on the CPU's vector units (textually included in conv.pyx).
#
# Design notes
# - No column matrix: each sample is copied once into a zero-padded buffer (C, HP, WP), and
#   the micro-kernel (microkernel.h) broadcasts each value from there. Two offset tables
#   address it: taps[k] = c*HP*WP + kh*DH*WP + kw*DW for k = (c, kh, kw), and
#   positions[p] = oh*SH*WP + ow*SW for p = (oh, ow); value (k, p) of im2col's matrix is
#   padded[taps[k] + positions[p]].
# - Forward: a tile is 6 output positions by TILE_FILTERS filters, summed over all K taps
#   in registers; the weights are packed once per call as (filter block, K, TILE_FILTERS),
#   so each step reads one contiguous row of them. grad_input of a stride-1 layer is the
#   forward of grad_output with the kernel rotated by 180 degrees and in/out channels
#   swapped, padded by (K-1)*D - P. grad_weight swaps the roles: a tile is 6 taps by
#   TILE_FILTERS filters, summed over the output positions against grad_output transposed
#   to (filter block, L, TILE_FILTERS).
# - Why: im2col + GEMM writes the column matrix, then BLAS copies it again into its packed
#   panels; on GEMM-bound layers (LeNet conv2, VGG) those copies cost a third of the time.
#   Here the only copies are the padded sample (one pass) and the weights (once per call).
# - Parallel axis: as the GEMM path. Samples for the forward (each owns out[n]); below
#   SHARED_BATCH samples, the tiles of one sample (each owns its block of out[n]);
#   grad_weight over the same fixed chunks, partial sums added in chunk order. Each output
#   value is one in-order sum computed by one thread: bit-identical for any thread count.
# - Allocation: the caller (conv2d_forward / conv2d_backward) allocates the padded buffers,
#   tiles and partials with the GIL, one row per thread.
# - Which path: see direct_forward_applies and friends; float64 (gradient checks), grouped
#   convolutions and CPUs without AVX2 keep im2col + GEMM.

import os

cdef extern from "microkernel.h" nogil:
    enum: CNNCLI_TILE_ROWS
    int cnncli_tile_filters(const char* ceiling)
    void cnncli_tile(const float* a, const int* rows, const int* cols, Py_ssize_t T,
                     const float* b, float* c, int accumulate)


cdef Py_ssize_t pick_tile_filters():
    """Filters per tile: 16 with AVX2, 32 with AVX-512, 0 where neither is available.
    CNNCLI_DIRECT_ISA=avx2 or none lowers the choice (to compare variants on one CPU)."""
    cdef bytes ceiling = os.environ.get("CNNCLI_DIRECT_ISA", "").encode()
    if ceiling:
        return cnncli_tile_filters(ceiling)
    return cnncli_tile_filters(NULL)


cdef Py_ssize_t TILE_FILTERS = pick_tile_filters()
cdef Py_ssize_t TILE_ROWS = CNNCLI_TILE_ROWS
cdef bint direct_enabled = TILE_FILTERS > 0

# The direct path pays off once a tile's sum is long enough to hide loading and storing its
# accumulators: forward and grad_input sum over the K taps, grad_weight over L positions.
cdef Py_ssize_t MIN_DIRECT_SUM = 64
# A task of the forward is GROUP_TILES tiles of positions; its taps are summed CHUNK_TAPS at
# a time, so the chunk's packed weights (16 KiB) stay in the L1 cache across its tiles.
cdef Py_ssize_t GROUP_TILES = 8
cdef Py_ssize_t CHUNK_TAPS = 4096 // TILE_FILTERS if TILE_FILTERS else 1
# Offsets are 32-bit: a padded sample must stay below 2**31 values.
cdef Py_ssize_t MAX_PADDED = 2147483647


def use_direct_kernel(bint enabled):
    """Allow (True) or forbid (False) the direct path; returns whether it was allowed. For
    tests and benchmarks that compare it with im2col + GEMM on the same machine."""
    global direct_enabled
    previous = direct_enabled
    direct_enabled = enabled and TILE_FILTERS > 0
    return previous


def direct_tile_filters():
    """Filters per tile of the direct kernel on this CPU (0: the CPU has no AVX2)."""
    return TILE_FILTERS


cdef struct Padding:
    Py_ssize_t HP, WP        # extent of the padded sample
    Py_ssize_t top, left     # where the sample starts inside it


cdef Padding padding_for(const Geometry* g):
    cdef Padding p
    p.top, p.left = g.PH, g.PW
    p.HP = max(g.PH + g.H, (g.OH - 1) * g.SH + (g.KH - 1) * g.DH + 1)
    p.WP = max(g.PW + g.W, (g.OW - 1) * g.SW + (g.KW - 1) * g.DW + 1)
    return p


cdef bint fills_tiles(Py_ssize_t filters):
    """At least three quarters of the lanes of the tiles over `filters` do useful work
    (the first layer's grad_input, one channel wide, would waste 15 of 16)."""
    return 4 * filters >= 3 * round_up(filters, TILE_FILTERS)


cdef bint direct_common(const Geometry* g, object dtype):
    cdef Padding p = padding_for(g)
    return (direct_enabled and dtype == np.float32 and g.G == 1 and not is_pointwise(g)
            and g.C * p.HP * p.WP < MAX_PADDED)


cdef bint direct_forward_applies(const Geometry* g, object dtype):
    return (direct_common(g, dtype) and fills_tiles(g.F)
            and g.C * g.KH * g.KW >= MIN_DIRECT_SUM)


cdef bint direct_input_grad_applies(const Geometry* g, object dtype):
    """grad_input as a forward of grad_output: stride 1, and a padding no wider than the
    kernel's reach (so the rotated kernel's padding is not negative)."""
    return (direct_common(g, dtype) and g.SH == 1 and g.SW == 1
            and g.PH <= (g.KH - 1) * g.DH and g.PW <= (g.KW - 1) * g.DW
            and fills_tiles(g.C) and g.F * g.KH * g.KW >= MIN_DIRECT_SUM)


cdef bint direct_weight_grad_applies(const Geometry* g, object dtype):
    return (direct_common(g, dtype) and fills_tiles(g.F) and g.OH * g.OW >= MIN_DIRECT_SUM
            and g.C * g.KH * g.KW >= MIN_DIRECT_SUM and g.F <= g.OH * g.OW)


cdef Geometry transposed_geometry(const Geometry* g):
    """The geometry whose forward is grad_input of a stride-1 layer: grad_output in,
    grad_input out, channels swapped, the kernel rotated, padding (K-1)*D - P."""
    cdef Geometry t = g[0]
    t.C, t.H, t.W = g.F, g.OH, g.OW
    t.F, t.OH, t.OW = g.C, g.H, g.W
    t.PH = (g.KH - 1) * g.DH - g.PH
    t.PW = (g.KW - 1) * g.DW - g.PW
    return t


cdef Py_ssize_t round_up(Py_ssize_t value, Py_ssize_t multiple) noexcept nogil:
    return (value + multiple - 1) // multiple * multiple


cdef object tap_offsets(const Geometry* g, Padding p, Py_ssize_t count):
    """taps[k] for k = (c, kh, kw), repeated at the end up to `count` entries."""
    c, kh, kw = np.meshgrid(np.arange(g.C), np.arange(g.KH), np.arange(g.KW), indexing="ij")
    taps = (c * p.HP * p.WP + kh * g.DH * p.WP + kw * g.DW).reshape(-1)
    return np.pad(taps, (0, count - taps.size), mode="edge").astype(np.int32)


cdef object position_offsets(const Geometry* g, Padding p, Py_ssize_t count):
    """positions[p] for p = (oh, ow), repeated at the end up to `count` entries."""
    oh, ow = np.meshgrid(np.arange(g.OH), np.arange(g.OW), indexing="ij")
    positions = (oh * g.SH * p.WP + ow * g.SW).reshape(-1)
    return np.pad(positions, (0, count - positions.size), mode="edge").astype(np.int32)


cdef object aligned_empty(tuple shape):
    """An uninitialised float32 array starting on a 64-byte boundary. The micro-kernel reads
    rows of 64 or 128 bytes: NumPy's 16-byte alignment would split every other one across
    two cache lines (VGG 3x3 forward: 54 ms instead of 37 on one thread)."""
    cdef Py_ssize_t count = 1
    for extent in shape:
        count *= extent
    buffer = np.empty(count + 16, dtype=np.float32)
    first = (-buffer.ctypes.data % 64) // 4
    return buffer[first:first + count].reshape(shape)


cdef object packed_filters(object weight):
    """weight (F, K...) as (ceil(F / TILE_FILTERS), K, TILE_FILTERS), zero-filled past F."""
    cdef Py_ssize_t F = weight.shape[0]
    flat = weight.reshape(F, -1)
    blocks = round_up(F, TILE_FILTERS) // TILE_FILTERS
    packed = aligned_empty((blocks, flat.shape[1], TILE_FILTERS))
    packed[...] = 0
    for block in range(blocks):
        packed[block, :, :min(TILE_FILTERS, F - block * TILE_FILTERS)] = \
            flat[block * TILE_FILTERS:(block + 1) * TILE_FILTERS].T
    return packed.reshape(-1)


cdef void pad_channels(const float* x, float* padded, const Geometry* g, Padding p,
                       Py_ssize_t c_first, Py_ssize_t c_stop) noexcept nogil:
    """padded[c] = x[c] placed at (top, left) of an HP x WP plane of zeros."""
    cdef Py_ssize_t c, h
    cdef float* plane
    cdef Py_ssize_t right = p.WP - p.left - g.W
    for c in range(c_first, c_stop):
        plane = padded + c * p.HP * p.WP
        zero(plane, p.top * p.WP)
        for h in range(g.H):
            zero(plane + (p.top + h) * p.WP, p.left)
            memcpy(plane + (p.top + h) * p.WP + p.left, x + (c * g.H + h) * g.W,
                   g.W * sizeof(float))
            zero(plane + (p.top + h) * p.WP + p.left + g.W, right)
        zero(plane + (p.top + g.H) * p.WP, (p.HP - p.top - g.H) * p.WP)


cdef void forward_task(const float* padded, const int* taps, const int* positions,
                       const float* packed, const float* bias, bint relu, float* y,
                       float* sums, const Geometry* g, Py_ssize_t task) noexcept nogil:
    """One task of a sample's output y (F, L): filter block task // groups, times the
    positions of group task % groups (GROUP_TILES tiles of TILE_ROWS positions).

    The taps are summed in chunks of CHUNK_TAPS, so the weights of a chunk stay in the L1
    cache while every tile of the group uses them; the group's sums wait in `sums`.
    Chunking does not change a result: each sum is the same sequence of fused
    multiply-adds, only stored and reloaded between chunks."""
    cdef Py_ssize_t K = g.C * g.KH * g.KW, L = g.OH * g.OW
    cdef Py_ssize_t groups = (L + GROUP_TILES * TILE_ROWS - 1) // (GROUP_TILES * TILE_ROWS)
    cdef Py_ssize_t block = task // groups
    cdef Py_ssize_t p_first = task % groups * GROUP_TILES * TILE_ROWS
    cdef Py_ssize_t p_stop = min(L, p_first + GROUP_TILES * TILE_ROWS)
    cdef Py_ssize_t filters = min(TILE_FILTERS, g.F - block * TILE_FILTERS)
    cdef Py_ssize_t chunk, k0, count, tile, p0, j, p
    cdef float value
    cdef float* row
    for chunk in range((K + CHUNK_TAPS - 1) // CHUNK_TAPS):
        k0 = chunk * CHUNK_TAPS
        count = min(CHUNK_TAPS, K - k0)
        for tile in range((p_stop - p_first + TILE_ROWS - 1) // TILE_ROWS):
            p0 = p_first + tile * TILE_ROWS
            cnncli_tile(padded, positions + p0, taps + k0, count,
                        packed + (block * K + k0) * TILE_FILTERS,
                        sums + (p0 - p_first) * TILE_FILTERS, k0 > 0)
    for j in range(filters):
        row = y + (block * TILE_FILTERS + j) * L
        for p in range(p_first, p_stop):
            value = sums[(p - p_first) * TILE_FILTERS + j]
            if bias != NULL:
                value = value + bias[block * TILE_FILTERS + j]
            if relu:
                value = 0 if value < 0 else value
            row[p] = value


cdef void direct_forward_typed(const float[:, :, :, ::1] x, const float* bias,
                               float[:, :, :, ::1] out, const float[::1] packed,
                               const int[::1] taps, const int[::1] positions,
                               float[:, ::1] padded, float[:, ::1] sums, Geometry g,
                               bint relu, int n_threads) noexcept:
    cdef Padding p = padding_for(&g)
    cdef Py_ssize_t L = g.OH * g.OW
    cdef Py_ssize_t tasks = (round_up(g.F, TILE_FILTERS) // TILE_FILTERS) * (
        (L + GROUP_TILES * TILE_ROWS - 1) // (GROUP_TILES * TILE_ROWS))
    cdef Py_ssize_t channel_blocks = min(g.C, SHARED_TASKS)
    cdef Py_ssize_t n, t, task, block
    with nogil:
        if g.N >= SHARED_BATCH:
            for n in prange(g.N, schedule="dynamic", num_threads=n_threads):
                t = threadid()
                pad_channels(&x[n, 0, 0, 0], &padded[t, 0], &g, p, 0, g.C)
                for task in range(tasks):
                    forward_task(&padded[t, 0], &taps[0], &positions[0], &packed[0], bias,
                                 relu, &out[n, 0, 0, 0], &sums[t, 0], &g, task)
            return
        for n in range(g.N):
            for block in prange(channel_blocks, schedule="static", num_threads=n_threads):
                pad_channels(&x[n, 0, 0, 0], &padded[0, 0], &g, p,
                             block * g.C // channel_blocks, (block + 1) * g.C // channel_blocks)
            for task in prange(tasks, schedule="dynamic", num_threads=n_threads):
                forward_task(&padded[0, 0], &taps[0], &positions[0], &packed[0], bias, relu,
                             &out[n, 0, 0, 0], &sums[threadid(), 0], &g, task)


cdef direct_forward(x, weight, bias, out, Geometry g, bint relu, int n_threads):
    """out = conv2d(x, weight) + bias (then ReLU) by the direct kernel, float32, groups 1."""
    cdef Padding p = padding_for(&g)
    cdef Py_ssize_t K = g.C * g.KH * g.KW, L = g.OH * g.OW
    cdef int workers = n_threads if g.N >= SHARED_BATCH else 1
    cdef const float[::1] bias_view
    cdef const float* bias_pointer = NULL
    if bias is not None:
        bias_view = bias
        bias_pointer = &bias_view[0]
    padded = np.empty((workers, g.C * p.HP * p.WP), dtype=np.float32)
    sums = aligned_empty((n_threads, GROUP_TILES * TILE_ROWS * TILE_FILTERS))
    direct_forward_typed(x, bias_pointer, out, packed_filters(weight), tap_offsets(&g, p, K),
                         position_offsets(&g, p, round_up(L, TILE_ROWS)), padded, sums, g,
                         relu, n_threads)


cdef direct_input_grad(grad_output, weight, grad_input, Geometry g, int n_threads):
    """grad_input of a stride-1 layer: the forward of grad_output through the kernel rotated
    by 180 degrees, with input and output channels swapped."""
    rotated = np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    direct_forward(grad_output, rotated, None, grad_input, transposed_geometry(&g), False,
                   n_threads)


cdef void transpose_gradient(const float* dy, float* blocks, Py_ssize_t F,
                             Py_ssize_t L) noexcept nogil:
    """blocks[b, p, j] = dy[b * TILE_FILTERS + j, p], zero past F."""
    cdef Py_ssize_t b, p, j, f
    for b in range(round_up(F, TILE_FILTERS) // TILE_FILTERS):
        for p in range(L):
            for j in range(TILE_FILTERS):
                f = b * TILE_FILTERS + j
                if f < F:
                    blocks[(b * L + p) * TILE_FILTERS + j] = dy[f * L + p]
                else:
                    blocks[(b * L + p) * TILE_FILTERS + j] = 0


cdef void direct_weight_grad_typed(const float[:, :, :, ::1] grad_output,
                                   const float[:, :, :, ::1] x, float[:, ::1] partials,
                                   float[::1] grad_weight, const int[::1] taps,
                                   const int[::1] positions, float[:, ::1] padded,
                                   float[:, ::1] transposed, Geometry g, Py_ssize_t n_chunks,
                                   int n_threads) noexcept:
    cdef Padding p = padding_for(&g)
    cdef Py_ssize_t K = g.C * g.KH * g.KW, L = g.OH * g.OW
    cdef Py_ssize_t KR = round_up(K, TILE_ROWS)
    cdef Py_ssize_t blocks = round_up(g.F, TILE_FILTERS) // TILE_FILTERS
    cdef Py_ssize_t chunk, n, first, stop, t, block, tap_tile, i, f, k
    cdef double total
    with nogil:
        for chunk in prange(n_chunks, schedule="dynamic", num_threads=n_threads):
            t = threadid()
            first = chunk * g.N // n_chunks
            stop = (chunk + 1) * g.N // n_chunks
            for n in range(first, stop):
                pad_channels(&x[n, 0, 0, 0], &padded[t, 0], &g, p, 0, g.C)
                transpose_gradient(&grad_output[n, 0, 0, 0], &transposed[t, 0], g.F, L)
                for block in range(blocks):
                    for tap_tile in range(KR // TILE_ROWS):
                        cnncli_tile(&padded[t, 0], &taps[tap_tile * TILE_ROWS], &positions[0], L,
                                    &transposed[t, block * L * TILE_FILTERS],
                                    &partials[chunk, (block * KR + tap_tile * TILE_ROWS)
                                              * TILE_FILTERS],
                                    n > first)
        for i in prange(g.F * K, schedule="static", num_threads=n_threads):
            f = i // K
            k = i % K
            total = 0
            for chunk in range(n_chunks):
                total = total + partials[chunk, ((f // TILE_FILTERS) * KR + k) * TILE_FILTERS
                                         + f % TILE_FILTERS]
            grad_weight[i] = <float>total


cdef direct_weight_grad(grad_output, x, grad_weight, Geometry g, Py_ssize_t n_chunks,
                        int n_threads):
    """grad_weight (flat, F*K) summed over the batch in n_chunks fixed chunks."""
    cdef Padding p = padding_for(&g)
    cdef Py_ssize_t K = g.C * g.KH * g.KW, L = g.OH * g.OW
    cdef Py_ssize_t KR = round_up(K, TILE_ROWS)
    cdef Py_ssize_t FR = round_up(g.F, TILE_FILTERS)
    workers = min(n_threads, n_chunks)
    partials = aligned_empty((n_chunks, FR * KR))
    padded = np.empty((n_threads, g.C * p.HP * p.WP), dtype=np.float32)
    transposed = aligned_empty((n_threads, FR * L))
    direct_weight_grad_typed(grad_output, x, partials, grad_weight, tap_offsets(&g, p, KR),
                             position_offsets(&g, p, L), padded, transposed, g, n_chunks,
                             workers)



def direct_paths(tuple input_shape, tuple weight_shape, tuple output_size, tuple stride,
                 tuple padding, tuple dilation, Py_ssize_t groups, dtype):
    """Which parts of a convolution of these shapes run on the direct kernel: a dict of
    'forward', 'input_grad', 'weight_grad' to bools (padding is the top/left pair the
    kernels take)."""
    cdef Geometry g = make_geometry(input_shape, weight_shape[0], weight_shape[2:],
                                    output_size, stride, padding, dilation, groups)
    dtype = np.dtype(dtype)
    return {"forward": direct_forward_applies(&g, dtype),
            "input_grad": direct_input_grad_applies(&g, dtype),
            "weight_grad": direct_weight_grad_applies(&g, dtype)}
