# Direct float32 convolution on the CPU's vector units (textually included in conv.pyx).
#
# Design notes
# - No column matrix: each sample is copied once into a zero-padded buffer (C, HP, WP), and
#   the micro-kernel (microkernel.h) broadcasts each value from there. Two offset tables
#   address it: taps[k] = c*HP*WP + kh*DH*WP + kw*DW for k = (c, kh, kw), and
#   positions[p] = oh*SH*WP + ow*SW for p = (oh, ow); value (k, p) of im2col's matrix is
#   padded[taps[k] + positions[p]].
# - Forward: a tile is a few output positions (3 to 8) by a block of filters (32, or 16
#   where 32-wide tiles would idle over a quarter of their lanes: tile_for; on AVX-512 64
#   or 48 where the filters are a multiple of them: forward_tile_for), summed over all
#   K taps in registers; the weights are packed once per call as (filter block, K, tile
#   filters), so each step reads one contiguous row of them. grad_input of a stride-1 layer
#   is the forward of grad_output with the kernel rotated by 180 degrees and in/out
#   channels swapped, padded by (K-1)*D - P; of a strided layer, a sum of such forwards,
#   one per phase of the stride (phases.pxi). grad_weight swaps the roles: a tile is a few taps by a
#   block of filters, summed over the output positions against grad_output transposed
#   to (filter block, L, tile filters).
# - Why: im2col + GEMM writes the column matrix, then BLAS copies it again into its packed
#   panels; on GEMM-bound layers (LeNet conv2, VGG) those copies cost a third of the time.
#   Here the only copies are the padded sample (one pass) and the weights (once per call).
# - Two ways to list positions. A layer of many output positions per sample works sample
#   by sample (padded copy per thread). A layer of few (ResNet's later stages), and any
#   layer's forward at batches below SHARED_BATCH (forward_lists_batch), lists the whole
#   batch's positions back to back over one padded copy of the batch, so a chunk of
#   weights serves every position of a task across samples instead of a few; there each
#   task packs its chunks of weights itself, just before using them (forward_task_packing),
#   rather than reading back a packed copy of them all. "Few" is below 128 for the
#   forward and grad_input, below 256 for grad_weight (see whole_batch).
# - Parallel axis. Forward: samples (each owns out[n]); with the whole batch listed
#   (always below SHARED_BATCH samples), tasks of (filter block, group of positions), each
#   owning its block of the output. grad_weight: the same fixed chunks of samples as the
#   GEMM path, partial sums added in chunk order; with the whole batch listed, tasks of
#   tap tiles, each owning its rows of the result, with no partial sums. Each output value
#   is one in-order sum computed by one thread: bit-identical for any thread count.
# - Allocation: direct_forward / direct_weight_grad allocate the packed weights, offset
#   tables, padded buffers, tile sums and partials with the GIL before the loops (the
#   offsets and the packing are then filled without it).
# - 1x1 layers: which passes take the direct kernel depends on the BLAS beside it (see
#   DIRECT_OUTRUNS_BLAS). They and any other layer without padding read each sample in
#   place: it is its own padded copy.
# - Which path: see direct_forward_applies and friends; float64 (gradient checks), grouped
#   convolutions and CPUs without AVX2 keep im2col + GEMM. On AVX-512 the forward of
#   stride-1 layers of 9 to 128 taps goes to the row kernel instead (rowconv.pxi).

cdef extern from "microkernel.h" nogil:
    int cnncli_tile_filters(int wanted)
    int cnncli_variant()
    int cnncli_tile_rows(int wide)
    int cnncli_widest_filters(Py_ssize_t filters)
    void cnncli_tile(int wide, const float* a, const int* rows, const int* cols, Py_ssize_t T,
                     const float* b, float* c, int accumulate)
    void cnncli_pack(const float* weight, const float* scale, float* out, Py_ssize_t filters,
                     Py_ssize_t K, Py_ssize_t width)
    void cnncli_pack_rotated(const float* weight, Py_ssize_t C, Py_ssize_t taps,
                             Py_ssize_t sub_taps, const int* offsets, Py_ssize_t c_first,
                             Py_ssize_t count, float* out, Py_ssize_t k_first,
                             Py_ssize_t k_stop, Py_ssize_t width)
    void cnncli_pack_rows(const float* weight, Py_ssize_t stride, const float* scale,
                          float* out, Py_ssize_t filters, Py_ssize_t K, Py_ssize_t width)
    void cnncli_store(const float* sums, Py_ssize_t rows, Py_ssize_t filters,
                      Py_ssize_t width, const float* bias, int relu, float* y,
                      Py_ssize_t row_stride)


cdef Py_ssize_t pick_tile_filters():
    """Filters of the wide tile: 32, or 0 where the direct kernel does not run.
    CNNCLI_DIRECT_ISA (auto, none, avx2, avx512: isa.pxi) chooses the variant."""
    return cnncli_tile_filters(wanted_isa())


cdef Py_ssize_t WIDE_FILTERS = pick_tile_filters()
cdef Py_ssize_t NARROW_FILTERS = WIDE_FILTERS // 2
cdef bint direct_enabled = WIDE_FILTERS > 0


def direct_kernel_variant():
    """The direct kernel's variant on this CPU ('avx512', 'avx2' or 'none'), as
    CNNCLI_DIRECT_ISA and the CPU chose it when the module was loaded."""
    return next(name for name, number in ISA_CHOICES.items()
                if number == cnncli_variant())


cdef struct Tile:
    int wide                # which shape of microkernel.h: 0 narrow, 1 wide, 64 or 48 widest
    Py_ssize_t rows         # output positions (forward) or taps (grad_weight) per tile
    Py_ssize_t filters      # filters per tile; 0: the layer keeps im2col + GEMM
    Py_ssize_t chunk        # steps of a tile's sum per call (see SUM_CHUNK_BYTES)
    Py_ssize_t group        # most positions of a forward task (see MAX_GROUP_ROWS)

# The direct path pays off once a tile's sum is long enough to hide loading and storing its
# accumulators: the forward and grad_input sum over at least MIN_DIRECT_TAPS taps (LeNet's
# first layer, 25 taps: 0.80-0.89x im2col's time), grad_weight over positions and needs
# MIN_DIRECT_SUM taps too (at 25, transposing the output gradient costs more than it
# saves: 1.38x), and a batch of MIN_DIRECT_SUM positions (direct_weight_grad_applies).
cdef Py_ssize_t MIN_DIRECT_TAPS = 16
cdef Py_ssize_t MIN_DIRECT_SUM = 64
# A task of the forward is a group of tiles of at most MAX_GROUP_ROWS positions (the tiles
# shared out evenly between the fewest groups). A tile's sum runs SUM_CHUNK_BYTES of packed
# rows at a time, so they stay in the L1 cache across the tiles. grad_weight sums the tiles
# of TASK_TAP_ROWS taps together (weight_grad_tiles), each such group one task when the
# whole batch is listed.
cdef Py_ssize_t MAX_GROUP_ROWS = 96
# Sample by sample with at least SAMPLE_GROUP_MIN_POSITIONS positions, a group grows to
# SAMPLE_GROUP_BYTES of sums (the whole sample where that fits): cnncli_store then writes
# each filter's row of the output in one run, not in runs of 96 positions, one per group.
# With two threads writing, 32 short runs at once cost the store more than the larger sums
# cost the tiles: LeNet's first layer ran in 0.81x the time, AlexNet's 0.94x, ResNet's
# strided 3x3 0.95x; layers of 196 positions (LeNet's second, ResNet's 1x1) gained nothing.
cdef Py_ssize_t SAMPLE_GROUP_BYTES = 131072
cdef Py_ssize_t SAMPLE_GROUP_MIN_POSITIONS = 2 * MAX_GROUP_ROWS
cdef Py_ssize_t SUM_CHUNK_BYTES = 16384
cdef Py_ssize_t TASK_TAP_ROWS = 96
# grad_weight's partials are gathered into (filters, taps) in runs of this many taps.
cdef Py_ssize_t GATHER_TAPS = 256
# Layers with fewer output positions per sample than these list the whole batch's: in the
# forward (and grad_input), and in grad_weight. Layers of 196 positions (LeNet's second,
# ResNet-18's 14x14 stage) ran their forward in 0.92-0.98x the time sample by sample,
# their grad_weight in 1.1-1.2x.
cdef Py_ssize_t FORWARD_WHOLE_BATCH = 128
cdef Py_ssize_t WEIGHT_GRAD_WHOLE_BATCH = 256
# A whole batch's forward packs its weights chunk by chunk inside each task (forward_task_
# packing): a task is a filter block over a group of at most PACKING_GROUP_ROWS positions
# (its sums: 128 KiB), split further only to give each thread TASKS_PER_THREAD tasks, and
# not below PACKING_MIN_ROWS positions, each group repacking the weights it uses. On
# ResNet-18's 256- and 512-channel layers, groups of 200 or 400 positions and 8 tasks
# per thread measured within 1-3% of these.
cdef Py_ssize_t PACKING_GROUP_ROWS = 1024
cdef Py_ssize_t PACKING_MIN_ROWS = 192
# Where the filter blocks are fewer than the threads, groups go down to this many positions
# instead, so every thread gets a task: LeNet's second layer at batch 1 (one block of 64
# filters, 196 positions) ran as one task on one thread; in two groups (each packing the
# weights it uses) its forward took 0.70x the time and its grad_input 0.73x, in four
# 1.08-1.24x that (paired, 2 threads).
cdef Py_ssize_t FEW_BLOCKS_MIN_ROWS = 96
cdef Py_ssize_t TASKS_PER_THREAD = 4
# Offsets are 32-bit: a padded sample (or batch, when listed whole) stays below 2**31 values.
cdef Py_ssize_t MAX_PADDED = 2147483647
# The widest narrowing 1x1 layer the forward takes (see narrowing_pointwise).
cdef Py_ssize_t MAX_POINTWISE_FILTERS = 128
# Some passes are one GEMM with little to copy, which OpenBLAS runs as fast as the direct
# kernel where both use vectors of one width: every pass of a 1x1 layer, and grad_weight
# where the filters outnumber the positions summed over (the batch side by side, one
# product: ResNet-18's 512-filter layers). The direct kernel takes them too
# (DIRECT_OUTRUNS_BLAS) where its
# tiles do twice the work of OpenBLAS's per cycle: AVX-512 at full rate
# (cnncli_full_rate_512, isa.h) beside an OpenBLAS running narrower kernels
# (blas_kernels_narrower: OPENBLAS_CORETYPE holding it to Haswell's, or a build without
# AVX-512 kernels for the CPU). bench_ab, 2 threads, an AMD EPYC of family 26, time
# against GEMM on OpenBLAS's Haswell / AVX-512 kernels (forward, grad_input,
# grad_weight): 256 to 64 channels at 14x14, batch 32: 1.00/1.00x, 0.57/0.90x,
# 0.67/1.04x; 64 to 256: 0.55/0.94x, 0.32/0.39x, 0.74/0.98x; 64 to 64 at 56x56:
# 0.71/0.97x, 0.74/0.91x, 0.84/1.18x; 1024 to 256 at 14x14: 0.63/1.17x, 0.56/0.91x,
# 0.84/1.35x; 2048 to 512 at 7x7: 0.56/0.89x, 0.81/1.20x, 0.99/1.01x; ResNet-18's
# layers at 112x112, batch 16, grad_weight: 512 at 4x4 0.52/0.87x, 256 to 512 at stride
# 2 0.54/0.86x. On the Intel AVX-512 VM of BENCHMARKS' twelfth and thirteenth parts
# (OpenBLAS on Haswell's kernels) the 512-filter grad_weight took 1.20x GEMM's time.
# Whatever the CPU and BLAS: the forward of a strided 1x1 layer (GEMM reads a gathered
# copy of the input; Haswell / AVX-512 kernels: ResNet-18's at 112x112 0.47-0.49/
# 0.66-0.71x, 64 to 128 at 56x56 0.64/0.97x; the AVX2 variant against Haswell's
# 0.80-0.91x) and of a narrowing one (narrowing_pointwise), and so the grad_input of a
# widening one, whose transpose narrows (the AVX2 variant: 64 to 256 0.49x).
AVX512_BLAS_CORES = ("skylakex", "cooperlake", "sapphirerapids")


def blas_kernels_narrower():
    """Whether an OpenBLAS this process has loaded runs kernels narrower than AVX-512 (its
    core name, as threadpoolctl reads it, is not one of AVX512_BLAS_CORES). False where
    the libraries cannot be inspected: the rule then keeps the BLAS's passes."""
    try:
        from threadpoolctl import ThreadpoolController
        libraries = ThreadpoolController().lib_controllers
    except Exception:
        return False
    return any(library.internal_api == "openblas"
               and str(getattr(library, "architecture", "") or "").lower()
               not in ("",) + AVX512_BLAS_CORES
               for library in libraries if library.user_api == "blas")


def full_rate_512():
    """Whether this CPU runs 512-bit multiply-adds at full rate (isa.h)."""
    return bool(cnncli_full_rate_512())


cdef bint AVX512_TILES = cnncli_variant() == ISA_CHOICES["avx512"]
cdef bint DIRECT_OUTRUNS_BLAS = (AVX512_TILES and cnncli_full_rate_512()
                                 and blas_kernels_narrower())


def use_direct_over_blas(bint enabled):
    """Let the direct kernel take every 1x1 pass and every grad_weight it can (True;
    AVX-512 only) or only what it takes whatever the CPU and BLAS (False); returns the
    previous setting. For tests and benchmarks."""
    global DIRECT_OUTRUNS_BLAS
    previous = DIRECT_OUTRUNS_BLAS
    DIRECT_OUTRUNS_BLAS = enabled and AVX512_TILES
    return previous


def use_direct_kernel(bint enabled):
    """Allow (True) or forbid (False) the direct path; returns whether it was allowed. For
    tests and benchmarks that compare it with im2col + GEMM on the same machine."""
    global direct_enabled
    previous = direct_enabled
    direct_enabled = enabled and WIDE_FILTERS > 0
    return previous


cdef struct Padding:
    Py_ssize_t HP, WP        # extent of the padded sample
    Py_ssize_t top, left     # where the sample starts inside it


cdef Padding padding_for(const Geometry* g):
    cdef Padding p
    p.top, p.left = g.PH, g.PW
    p.HP = max(g.PH + g.H, (g.OH - 1) * g.SH + (g.KH - 1) * g.DH + 1)
    p.WP = max(g.PW + g.W, (g.OW - 1) * g.SW + (g.KW - 1) * g.DW + 1)
    return p


cdef bint needs_no_padding(const Geometry* g) noexcept:
    """Whether a sample is its own padded copy (no padding, and every window inside it:
    padding_for gives HP = H, WP = W), so the tiles read it in place: a 1x1 layer, or an
    unpadded one such as AlexNet's first (8 samples of 227x227x3: 4.9 MB not copied)."""
    cdef Padding p = padding_for(g)
    return g.PH == 0 and g.PW == 0 and p.HP == g.H and p.WP == g.W


cdef bint fills(Py_ssize_t filters, Py_ssize_t width) noexcept nogil:
    """At least three quarters of the lanes of tiles `width` filters wide over `filters`
    do useful work (the first layer's grad_input, one channel wide, would waste 15 of 16)."""
    return width > 0 and 4 * filters >= 3 * round_up(filters, width)


cdef Tile tile_for(Py_ssize_t filters) noexcept nogil:
    """The tile of a pass over `filters` filters: the wide one where it fills its lanes
    (32, 64, 96, ...: every layer of the shipped architectures), else the narrow one where
    that fills them (12 to 16 filters, or 40), else none (filters 0: im2col + GEMM)."""
    cdef Tile tile
    tile.wide = fills(filters, WIDE_FILTERS)
    tile.filters = (WIDE_FILTERS if tile.wide
                    else NARROW_FILTERS if fills(filters, NARROW_FILTERS) else 0)
    tile.rows = cnncli_tile_rows(tile.wide)
    tile.chunk = SUM_CHUNK_BYTES // (4 * tile.filters) if tile.filters else 1
    tile.group = MAX_GROUP_ROWS
    return tile


cdef Tile forward_tile_for(Py_ssize_t filters) noexcept nogil:
    """The tile of a direct forward (and so of grad_input) over `filters` filters: on
    AVX-512, 64 filters wide (6 positions by 4 vectors) where the filters are a multiple
    of 64, else 48 wide (8 by 3) where they are a multiple of 48, else tile_for's. The
    wider tiles load less for each multiply-add, which is what slows when another VM's
    thread shares the core (microkernel.h). Against the 32-wide tile (bench_ab, 2
    threads, ResNet-18's layers at 112x112, batch 16; forward, grad_input): 64 to 128
    channels at stride 2 0.93x, 0.94x; 128 to 256 at stride 2 0.78-0.81x, 0.97x; 256 at
    7x7 0.89-0.92x, 0.90-0.93x; 512 at 4x4 0.93-0.96x, 0.87-0.91x; 64 to 128 at 56x56,
    stride 2: 0.93-1.03x, 0.90x. The 48-wide tile: AlexNet's first layer (96 filters)
    0.92-0.98x (five runs of 300 paired calls, median 0.94x); 64 to 96 channels at
    stride 2 0.94x; 32 to 96 at 16x16 0.94x; grad_input of 96 channels of 5x5 0.92x; 48
    filters at 32x32, which the 32-wide tile covers with a quarter of its lanes idle,
    0.70x."""
    cdef Tile tile = tile_for(filters)
    cdef int widest = cnncli_widest_filters(filters)
    if widest:
        tile.wide = widest
        tile.filters = widest
        tile.rows = cnncli_tile_rows(widest)
        tile.chunk = SUM_CHUNK_BYTES // (4 * widest)
    return tile


cdef bint fills_tiles(Py_ssize_t filters):
    return tile_for(filters).filters > 0


cdef bint direct_allowed(const Geometry* g, object dtype):
    """What every pass needs: float32, no groups, a sample (a batch of fewer than
    SHARED_BATCH, which the forward lists whole: forward_lists_batch) that 32-bit offsets
    can address.
    However few the positions: the forward (and grad_input) of a layer of fewer than 64
    at batch 1 (ResNet-18's last stage, 7x7) lost to OpenBLAS's one product, 4.4 ms
    against 3.2 for 512 filters of 3x3x512, while it packed all its weights before use;
    packing them inside its tasks (forward_task_packing), it reads them once, as OpenBLAS
    does, and takes 0.76-0.82x GEMM's time there (16 positions: 0.81-0.83x; the AVX2
    variant on the same CPU: medians 0.77-0.93x)."""
    cdef Padding p = padding_for(g)
    cdef Py_ssize_t listed = g.N if g.N < SHARED_BATCH else 1
    return (direct_enabled and dtype == np.float32 and g.G == 1
            and listed * g.C * p.HP * p.WP < MAX_PADDED)


cdef bint direct_common(const Geometry* g, object dtype):
    """direct_allowed, and a kernel wider than 1x1, or any where DIRECT_OUTRUNS_BLAS."""
    return direct_allowed(g, dtype) and (g.KH * g.KW > 1 or DIRECT_OUTRUNS_BLAS)


cdef bint narrowing_pointwise(const Geometry* g) noexcept:
    """A stride-1 1x1 layer that narrows its channels to at most MAX_POINTWISE_FILTERS
    filters (a bottleneck's first layer). The GEMM path's product packs the whole sample
    for BLAS, a copy so few filters do not pay back; the direct kernel reads the sample in
    place. Interleaved against GEMM, time ratio: 256 to 64 channels at 14x14, batch 32:
    0.71-0.72x; at 56x56, batch 16: 0.95x, batch 1: 0.73x; 512 to 64: 0.72x; 256 to 128:
    0.82x; 96 to 32 at 16x16: 0.63x; 1024 to 128: 1.04x (the one loss seen). Layers that
    keep or widen their channels lose or draw (64 to 64 at 56x56: 1.00-1.07x; 128 to 128:
    1.00x; 64 to 256: 1.04-1.08x), and so do wider ones (2048 to 512 at 7x7: 1.07x)."""
    return is_pointwise(g) and g.F <= MAX_POINTWISE_FILTERS and g.C > g.F


cdef bint strided_one_by_one(const Geometry* g) noexcept:
    return g.KH * g.KW == 1 and (g.SH > 1 or g.SW > 1)


cdef bint direct_forward_applies(const Geometry* g, object dtype):
    return ((direct_common(g, dtype) or ((narrowing_pointwise(g) or strided_one_by_one(g))
                                          and direct_allowed(g, dtype)))
            and fills_tiles(g.F) and g.C * g.KH * g.KW >= MIN_DIRECT_TAPS)


cdef bint direct_input_grad_applies(const Geometry* g, object dtype):
    """grad_input as a forward of grad_output (transposed_geometry): stride 1 and a padding
    no wider than the kernel's reach (so the rotated kernel's padding is not negative).
    A 1x1 layer's grad_input is the forward of the 1x1 layer with the channels swapped, so
    the forward's rule decides it: on AVX2, that of a widening 1x1 layer, whose transpose
    narrows (64 to 256 channels at 14x14, batch 32: 0.49x GEMM's time)."""
    if (g.SH != 1 or g.SW != 1 or g.PH > (g.KH - 1) * g.DH
            or g.PW > (g.KW - 1) * g.DW):
        return False
    cdef Geometry t = transposed_geometry(g)
    return direct_forward_applies(&t, dtype)


cdef bint direct_weight_grad_applies(const Geometry* g, object dtype):
    """The sum over positions (a sample's or, for layers of few positions, the whole
    batch's) is at least as long as the filters are many, or DIRECT_OUTRUNS_BLAS.
    Otherwise the im2col path's one product over samples side by side wins: ResNet-18's
    last stage at 112x112, batch 16 (512 filters, 256 positions): 16 ms against 21."""
    cdef Py_ssize_t positions = g.OH * g.OW * (g.N if whole_batch(g, WEIGHT_GRAD_WHOLE_BATCH)
                                               else 1)
    return (direct_common(g, dtype) and fills_tiles(g.F) and g.C * g.KH * g.KW >= MIN_DIRECT_SUM
            and (g.F <= positions or DIRECT_OUTRUNS_BLAS)
            and g.N * g.OH * g.OW >= MIN_DIRECT_SUM)


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


cdef void fill_taps(int* taps, Py_ssize_t count, const Geometry* g, Padding p) noexcept nogil:
    """taps[k] for k = (c, kh, kw), the last one repeated up to `count` entries."""
    cdef Py_ssize_t c, kh, kw, k = 0
    for c in range(g.C):
        for kh in range(g.KH):
            for kw in range(g.KW):
                taps[k] = <int>(c * p.HP * p.WP + kh * g.DH * p.WP + kw * g.DW)
                k += 1
    for k in range(k, count):
        taps[k] = taps[k - 1]


cdef void fill_positions(int* positions, Py_ssize_t count, const Geometry* g, Padding p,
                         Py_ssize_t samples) noexcept nogil:
    """positions[n*L + l] for l = (oh, ow) of the first `samples` samples, padded back to
    back, the last one repeated up to `count` entries."""
    cdef Py_ssize_t n, oh, ow, l = 0
    for n in range(samples):
        for oh in range(g.OH):
            for ow in range(g.OW):
                positions[l] = <int>(n * g.C * p.HP * p.WP + oh * g.SH * p.WP + ow * g.SW)
                l += 1
    for l in range(l, count):
        positions[l] = positions[l - 1]


cdef void pack_block(const float* weight, const float* scale, float* packed, Py_ssize_t block,
                     Py_ssize_t F, Py_ssize_t K, Py_ssize_t width) noexcept nogil:
    """packed[block, k, j] = weight[f, k] (F, K) for f = block * width + j, zero past F;
    times scale[f] unless scale is NULL (a BatchNorm folded in while packing, rather than
    in a pass of its own over the weights). Transposed eight filters at a time
    (cnncli_pack): ResNet-18's 256-channel 3x3 layer at batch 1 took 2.67 ms instead of
    2.37 when each tap's 32 filters were read one by one."""
    cnncli_pack(weight + block * width * K, scale + block * width if scale != NULL else NULL,
                packed + block * K * width, min(width, F - block * width), K, width)


cdef struct Rotation:
    # How grad_input's kernel is read from the layer's (F, C, KH, KW) weight: its filter c
    # (a channel of the layer) at tap (f, t) is weight[f, c, offsets[t]], the last index
    # counting the layer's KH * KW taps; t < sub_taps.
    Py_ssize_t C, taps, sub_taps
    const int* offsets


cdef void pack_rotated_taps(const float* weight, float* out, Py_ssize_t block,
                            const Rotation* rotation, Py_ssize_t width, Py_ssize_t k_first,
                            Py_ssize_t k_stop) noexcept nogil:
    """The packing of pack_block for the kernel of grad_input, taps k_first to k_stop of
    the block into `out`, zero past the layer's C channels. For a stride-1 layer the
    kernel is the layer's rotated by 180 degrees (offsets[t] = taps-1-t); for a strided
    one, a phase's sub-kernel (phases.pxi). Each tap is one strided run over the block's
    channels (cnncli_pack_rotated; indexed value by value, the copy took 3.7% of a
    256-channel 7x7 layer's forward and backward)."""
    cnncli_pack_rotated(weight, rotation.C, rotation.taps, rotation.sub_taps, rotation.offsets,
                        block * width, min(width, rotation.C - block * width), out, k_first,
                        k_stop, width)


cdef void pack_rotated_block(const float* weight, float* packed, Py_ssize_t block,
                             const Rotation* rotation, Py_ssize_t width,
                             Py_ssize_t K) noexcept nogil:
    """All K taps of a block (pack_rotated_taps) into its place in `packed`."""
    pack_rotated_taps(weight, packed + block * K * width, block, rotation, width, 0, K)


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


cdef inline void pad_row(const float* source, float* row, const Geometry* g,
                         Padding p) noexcept nogil:
    """row (WP values) = the W values of source placed at `left`, zeros around them."""
    zero(row, p.left)
    memcpy(row + p.left, source, g.W * sizeof(float))
    zero(row + p.left + g.W, p.WP - p.left - g.W)


cdef void pad_channels(const float* x, float* padded, const Geometry* g, Padding p,
                       Py_ssize_t c_first, Py_ssize_t c_stop) noexcept nogil:
    """padded[c] = x[c] placed at (top, left) of an HP x WP plane of zeros."""
    cdef Py_ssize_t c, h
    cdef float* plane
    for c in range(c_first, c_stop):
        plane = padded + c * p.HP * p.WP
        zero(plane, p.top * p.WP)
        for h in range(g.H):
            pad_row(x + (c * g.H + h) * g.W, plane + (p.top + h) * p.WP, g, p)
        zero(plane + (p.top + g.H) * p.WP, (p.HP - p.top - g.H) * p.WP)


cdef Py_ssize_t position_groups(Py_ssize_t P, Tile tile, Py_ssize_t* group_tiles) noexcept nogil:
    """How many groups of tiles P positions form, and (group_tiles) how many tiles each
    holds: the fewest groups of at most MAX_GROUP_ROWS positions, as even as can be."""
    cdef Py_ssize_t tiles = (P + tile.rows - 1) // tile.rows
    cdef Py_ssize_t max_tiles = tile.group // tile.rows
    cdef Py_ssize_t groups = (tiles + max_tiles - 1) // max_tiles
    group_tiles[0] = (tiles + groups - 1) // groups
    return (tiles + group_tiles[0] - 1) // group_tiles[0]


cdef void store_group(const float* sums, Py_ssize_t p_first, Py_ssize_t p_stop,
                      Py_ssize_t block, Py_ssize_t width, const float* bias, bint relu,
                      float* y, const Geometry* g) noexcept nogil:
    """A task's sums of positions p_first to p_stop (of those listed, samples back to
    back) for filter block `block`, written out filter-major into y (samples, F, L): one
    run of positions per sample the group touches."""
    cdef Py_ssize_t L = g.OH * g.OW, p = p_first, n, run
    cdef Py_ssize_t filters = min(width, g.F - block * width)
    while p < p_stop:
        n = p // L
        run = min(p_stop, (n + 1) * L) - p
        cnncli_store(sums + (p - p_first) * width, run, filters, width,
                     bias + block * width if bias != NULL else NULL, relu,
                     y + (n * g.F + block * width) * L + p - n * L, L)
        p += run


cdef void forward_task(const float* padded, const int* taps, const int* positions,
                       Py_ssize_t P, const float* packed, const float* bias, bint relu,
                       float* y, float* sums, const Geometry* g, Tile tile,
                       Py_ssize_t task) noexcept nogil:
    """One task of one sample's output y (F, L) from its L positions (P): filter block
    task % blocks, times the positions of group task // blocks (see position_groups); the
    weights packed beforehand (packed).

    Consecutive tasks take the same positions with the next filter block, so a group's
    input stays in the L2 cache while every block of weights passes over it. Taking each
    block over all positions instead re-read the whole padded input once per block:
    ResNet-18's 14x14 stages at batch 32 took 1.1-1.5x (stride 1) and 2.4-2.8x (stride 2)
    as long (measured on the Zen 2 machine, when whole batches ran this way too).

    The taps are summed in chunks of tile.chunk, so the weights of a chunk stay in the L1
    cache while every tile of the group uses them; the group's sums wait in `sums`.
    Chunking does not change a result: each sum is the same sequence of fused
    multiply-adds, only stored and reloaded between chunks."""
    cdef Py_ssize_t K = g.C * g.KH * g.KW
    cdef Py_ssize_t group_tiles
    cdef Py_ssize_t groups = position_groups(P, tile, &group_tiles)
    cdef Py_ssize_t width = tile.filters
    cdef Py_ssize_t blocks = round_up(g.F, width) // width
    cdef Py_ssize_t block = task % blocks
    cdef Py_ssize_t p_first = task // blocks * group_tiles * tile.rows
    cdef Py_ssize_t p_stop = min(P, p_first + group_tiles * tile.rows)
    cdef Py_ssize_t chunk, k0, count, i, p0
    for chunk in range((K + tile.chunk - 1) // tile.chunk):
        k0 = chunk * tile.chunk
        count = min(tile.chunk, K - k0)
        for i in range((p_stop - p_first + tile.rows - 1) // tile.rows):
            p0 = p_first + i * tile.rows
            cnncli_tile(tile.wide, padded, positions + p0, taps + k0, count,
                        packed + (block * K + k0) * width, sums + (p0 - p_first) * width,
                        k0 > 0)
    store_group(sums, p_first, p_stop, block, width, bias, relu, y, g)


cdef Py_ssize_t packing_groups(Py_ssize_t P, Tile tile, Py_ssize_t blocks,
                               int n_threads) noexcept nogil:
    """How many groups of positions forward_task_packing splits P positions into: the
    fewest of at most PACKING_GROUP_ROWS, more where the filter blocks alone would give a
    thread fewer than TASKS_PER_THREAD tasks, none of them below PACKING_MIN_ROWS (or
    FEW_BLOCKS_MIN_ROWS). Which group computes an output does not change its sum."""
    cdef Py_ssize_t tiles = (P + tile.rows - 1) // tile.rows
    cdef Py_ssize_t fewest = (P + PACKING_GROUP_ROWS - 1) // PACKING_GROUP_ROWS
    cdef Py_ssize_t wanted = (TASKS_PER_THREAD * n_threads + blocks - 1) // blocks
    cdef Py_ssize_t least = PACKING_MIN_ROWS if blocks >= n_threads else FEW_BLOCKS_MIN_ROWS
    return min(tiles, max(fewest, min(wanted, P // least)))


cdef void forward_task_packing(const float* padded, const int* taps, const int* positions,
                               Py_ssize_t P, Py_ssize_t groups, const float* weight,
                               const float* scale, const Rotation* rotation,
                               float* chunk_weights,
                               const float* bias, bint relu, float* y, float* sums,
                               const Geometry* g, Tile tile, Py_ssize_t task) noexcept nogil:
    """forward_task for a whole batch listed (P positions back to back): filter block
    task // groups over group task % groups of the positions, the weights packed a chunk
    of taps at a time into chunk_weights (tile.chunk taps by tile.filters) just before
    the group's tiles use it. So the weights are read once per group, straight from the
    layer's (F, K) array (or, with `rotation`, from the layer's, for grad_input),
    with no packed copy of them all: ResNet-18's 512-channel layers at 4x4 hold 9.4 MB of
    weights, which packing wrote out and every group of 96 positions read back again.
    Same sums in the same order as forward_task."""
    cdef Py_ssize_t K = g.C * g.KH * g.KW
    cdef Py_ssize_t width = tile.filters
    cdef Py_ssize_t block = task // groups
    cdef Py_ssize_t group_tiles = ((P + tile.rows - 1) // tile.rows + groups - 1) // groups
    cdef Py_ssize_t p_first = task % groups * group_tiles * tile.rows
    cdef Py_ssize_t p_stop = min(P, p_first + group_tiles * tile.rows)
    cdef Py_ssize_t filters = min(width, g.F - block * width)
    cdef Py_ssize_t chunk, k0, count, i, p0
    if p_first >= P:
        return
    for chunk in range((K + tile.chunk - 1) // tile.chunk):
        k0 = chunk * tile.chunk
        count = min(tile.chunk, K - k0)
        if rotation != NULL:
            pack_rotated_taps(weight, chunk_weights, block, rotation, width, k0, k0 + count)
        else:
            cnncli_pack_rows(weight + block * width * K + k0, K,
                             scale + block * width if scale != NULL else NULL,
                             chunk_weights, filters, count, width)
        for i in range((p_stop - p_first + tile.rows - 1) // tile.rows):
            p0 = p_first + i * tile.rows
            cnncli_tile(tile.wide, padded, positions + p0, taps + k0, count, chunk_weights,
                        sums + (p0 - p_first) * width, k0 > 0)
    store_group(sums, p_first, p_stop, block, width, bias, relu, y, g)


cdef bint whole_batch(const Geometry* g, Py_ssize_t below):
    """Whether a pass lists the positions of the whole batch back to back (a padded copy
    of every sample at once) rather than one sample's: for layers of fewer than `below`
    positions, where a sample alone would reuse each chunk of weights over too few
    positions (ResNet-18's 4x4 last stage at 112x112: 16)."""
    cdef Padding p = padding_for(g)
    return g.OH * g.OW < below and g.N * g.C * p.HP * p.WP < MAX_PADDED


cdef bint forward_lists_batch(const Geometry* g):
    """Whether the forward (and grad_input) lists the whole batch's positions, each task
    packing its own weights (forward_task_packing): for layers of few positions
    (whole_batch), and for batches of fewer than SHARED_BATCH samples, whose weights serve
    one pass over them: packing them all first, ResNet-18 at batch 1 spent 8.8% of its
    time in the packing."""
    return whole_batch(g, FORWARD_WHOLE_BATCH) or g.N < SHARED_BATCH


cdef void direct_forward_typed(const float[:, :, :, ::1] x, const float* scale,
                               const float* bias, float[:, :, :, ::1] out,
                               const float[:, :, :, ::1] weight, float[::1] packed,
                               int[::1] taps, int[::1] positions, float[:, ::1] padded,
                               float[:, ::1] sums, float[:, ::1] chunk_weights, Geometry g,
                               Tile tile, const Rotation* rotation, bint relu,
                               int n_threads) noexcept:
    """With `rotation` (grad_input), weight is the layer's, packed as it says. A whole
    batch listed packs its weights inside its tasks (forward_task_packing, into
    chunk_weights), the other ways pack them all first (into packed)."""
    cdef Padding p = padding_for(&g)
    cdef Py_ssize_t K = g.C * g.KH * g.KW, L = g.OH * g.OW
    cdef Py_ssize_t plane = g.C * p.HP * p.WP
    cdef Py_ssize_t blocks = round_up(g.F, tile.filters) // tile.filters
    cdef bint batch = forward_lists_batch(&g)
    cdef Py_ssize_t P = g.N * L if batch else L
    cdef Py_ssize_t group_tiles
    cdef Py_ssize_t groups = (packing_groups(P, tile, blocks, n_threads) if batch
                              else position_groups(P, tile, &group_tiles))
    cdef Py_ssize_t tasks = blocks * groups
    cdef Py_ssize_t channel_blocks = min(g.C, SHARED_TASKS)
    cdef Py_ssize_t n, t, task, block
    cdef bint in_place = needs_no_padding(&g)
    cdef const float* source
    with nogil:
        fill_taps(&taps[0], K, &g, p)
        fill_positions(&positions[0], round_up(P, tile.rows), &g, p, g.N if batch else 1)
        if not batch:
            for block in prange(blocks, schedule="static", num_threads=n_threads):
                if rotation != NULL:
                    pack_rotated_block(&weight[0, 0, 0, 0], &packed[0], block, rotation,
                                       tile.filters, K)
                else:
                    pack_block(&weight[0, 0, 0, 0], scale, &packed[0], block, g.F, K,
                               tile.filters)
        if batch:
            if not in_place:
                for task in prange(g.N * channel_blocks, schedule="static",
                                   num_threads=n_threads):
                    n = task // channel_blocks
                    block = task % channel_blocks
                    pad_channels(&x[n, 0, 0, 0], &padded[0, n * plane], &g, p,
                                 block * g.C // channel_blocks,
                                 (block + 1) * g.C // channel_blocks)
            source = &x[0, 0, 0, 0] if in_place else &padded[0, 0]
            for task in prange(tasks, schedule="dynamic", num_threads=n_threads):
                t = threadid()
                forward_task_packing(source, &taps[0], &positions[0], P, groups,
                                     &weight[0, 0, 0, 0], scale, rotation, &chunk_weights[t, 0],
                                     bias, relu, &out[0, 0, 0, 0], &sums[t, 0], &g, tile,
                                     task)
        else:
            for n in prange(g.N, schedule="dynamic", num_threads=n_threads):
                t = threadid()
                if in_place:
                    source = &x[n, 0, 0, 0]
                else:
                    pad_channels(&x[n, 0, 0, 0], &padded[t, 0], &g, p, 0, g.C)
                    source = &padded[t, 0]
                for task in range(tasks):
                    forward_task(source, &taps[0], &positions[0], P, &packed[0], bias,
                                 relu, &out[n, 0, 0, 0], &sums[t, 0], &g, tile, task)


cdef const float* optional_data(array):
    """The first value of a contiguous float32 array, or NULL for None (a bias or scale the
    caller keeps alive while the pointer is used)."""
    if array is None:
        return NULL
    cdef const float[::1] view = array
    return &view[0]


cdef direct_forward(x, weight, scale, bias, out, Geometry g, bint relu, int n_threads,
                    const Rotation* rotation=NULL):
    """out = conv2d(x, weight) * scale + bias (then ReLU) by the direct kernel, float32,
    groups 1; scale and bias may be None. With `rotation`, this is (a part of) grad_input
    of a layer (g: grad_output in, grad_input out): weight is the layer's, read as
    `rotation` says while it is packed."""
    cdef Padding p = padding_for(&g)
    cdef Py_ssize_t K = g.C * g.KH * g.KW, L = g.OH * g.OW
    cdef bint batch = forward_lists_batch(&g)
    cdef Py_ssize_t rows = 1 if batch else n_threads
    cdef Py_ssize_t samples_per_row = g.N if batch else 1
    cdef const float* bias_pointer = optional_data(bias)
    cdef const float* scale_pointer = optional_data(scale)
    cdef Tile tile = forward_tile_for(g.F)
    if not batch and L >= SAMPLE_GROUP_MIN_POSITIONS:
        tile.group = min(round_up(L, tile.rows),
                         max(MAX_GROUP_ROWS, SAMPLE_GROUP_BYTES // (4 * tile.filters)))
    cdef Py_ssize_t blocks = round_up(g.F, tile.filters) // tile.filters
    cdef Py_ssize_t groups, group_rows
    if batch:
        groups = packing_groups(samples_per_row * L, tile, blocks, n_threads)
        group_rows = round_up((samples_per_row * L + groups - 1) // groups, tile.rows)
        packed = aligned_empty((1,))
        chunk_weights = aligned_empty((n_threads, tile.chunk * tile.filters))
    else:
        group_rows = tile.group
        packed = aligned_empty((blocks * tile.filters * K,))
        chunk_weights = aligned_empty((1, 1))
    taps = np.empty(K, dtype=np.int32)
    positions = np.empty(round_up(samples_per_row * L, tile.rows), dtype=np.int32)
    padded = np.empty((rows, 1 if needs_no_padding(&g) else samples_per_row * g.C * p.HP * p.WP),
                      dtype=np.float32)
    sums = aligned_empty((n_threads, group_rows * tile.filters))
    direct_forward_typed(x, scale_pointer, bias_pointer, out, weight, packed, taps, positions,
                         padded, sums, chunk_weights, g, tile, rotation, relu, n_threads)


cdef direct_input_grad(grad_output, weight, grad_input, Geometry g, int n_threads):
    """grad_input of a stride-1 layer: the forward of grad_output through the kernel rotated
    by 180 degrees, with input and output channels swapped."""
    cdef Py_ssize_t taps = g.KH * g.KW
    cdef int[::1] offsets = np.arange(taps - 1, -1, -1, dtype=np.int32)
    cdef Rotation rotation = Rotation(g.C, taps, taps, &offsets[0])
    direct_forward(grad_output, weight, None, None, grad_input, transposed_geometry(&g), False,
                   n_threads, &rotation)


cdef void transpose_gradient(const float* dy, float* blocks, Py_ssize_t F, Py_ssize_t L,
                             Py_ssize_t P, Py_ssize_t first, Py_ssize_t width) noexcept nogil:
    """blocks[b, first + l, j] = dy[b * width + j, l] for one sample's dy (F, L), in blocks
    of P positions; zero past F. The packing of the weights, with positions for taps
    (cnncli_pack's transposes): value by value, this took 13% of LeNet conv2's grad_weight."""
    cdef Py_ssize_t b
    for b in range(round_up(F, width) // width):
        cnncli_pack(dy + b * width * L, NULL, blocks + (b * P + first) * width,
                    min(width, F - b * width), L, width)


cdef void weight_grad_tiles(const float* padded, const int* taps, const int* positions,
                            Py_ssize_t P, const float* transposed, float* sums, Py_ssize_t KR,
                            Tile tile, Py_ssize_t block, Py_ssize_t first_tile,
                            Py_ssize_t stop_tile, bint accumulate) noexcept nogil:
    """sums (tile.rows taps by tile.filters) of filter block `block` for the tap tiles
    first_tile to stop_tile, over the P positions listed. The positions go in chunks of
    tile.chunk, each through every tile before the next: the chunk's output gradients
    (16 KiB) stay in the L1 cache, beside the tiles' sums (TASK_TAP_ROWS taps: 12 KiB at
    most). One tile at a time over every position read all the output gradients once per
    tile, from L3 when a whole batch is listed: LeNet conv2 took 1.09-1.16x as long,
    ResNet-18's 14x14 stage 1.12x, AlexNet's first layer (per sample) 1.08-1.14x."""
    cdef Py_ssize_t chunk, p0, tap_tile
    for chunk in range((P + tile.chunk - 1) // tile.chunk):
        p0 = chunk * tile.chunk
        for tap_tile in range(first_tile, stop_tile):
            cnncli_tile(tile.wide, padded, taps + tap_tile * tile.rows, positions + p0,
                        min(tile.chunk, P - p0), transposed + (block * P + p0) * tile.filters,
                        sums + (block * KR + tap_tile * tile.rows) * tile.filters,
                        accumulate or p0 > 0)


cdef void direct_weight_grad_typed(const float[:, :, :, ::1] grad_output,
                                   const float[:, :, :, ::1] x, float[:, ::1] partials,
                                   float[::1] grad_weight, int[::1] taps,
                                   int[::1] positions, float[:, ::1] padded,
                                   float[:, ::1] transposed, Geometry g, Tile tile,
                                   Py_ssize_t n_chunks, int n_threads) noexcept:
    """Per sample, one chunk of samples' sums in each row of partials; with the whole batch
    listed (whole_batch), one task per tile of the result, over every position at once."""
    cdef Padding p = padding_for(&g)
    cdef Py_ssize_t K = g.C * g.KH * g.KW, L = g.OH * g.OW
    cdef Py_ssize_t width = tile.filters
    cdef Py_ssize_t KR = round_up(K, tile.rows)
    cdef Py_ssize_t plane = g.C * p.HP * p.WP
    cdef Py_ssize_t blocks = round_up(g.F, width) // width
    cdef bint batch = whole_batch(&g, WEIGHT_GRAD_WHOLE_BATCH)
    cdef Py_ssize_t P = g.N * L if batch else L
    cdef Py_ssize_t tap_tiles = KR // tile.rows
    cdef Py_ssize_t task_tiles = TASK_TAP_ROWS // tile.rows
    cdef Py_ssize_t task_groups = (tap_tiles + task_tiles - 1) // task_tiles
    cdef Py_ssize_t tap_runs = (K + GATHER_TAPS - 1) // GATHER_TAPS
    cdef Py_ssize_t chunk, n, first, stop, t, task, block, first_tile, f, k
    cdef double total
    cdef bint in_place = needs_no_padding(&g)
    cdef const float* source
    with nogil:
        fill_taps(&taps[0], KR, &g, p)
        fill_positions(&positions[0], P, &g, p, g.N if batch else 1)
        if batch:
            n_chunks = 1
            for n in prange(g.N, schedule="static", num_threads=n_threads):
                if not in_place:
                    pad_channels(&x[n, 0, 0, 0], &padded[0, n * plane], &g, p, 0, g.C)
                transpose_gradient(&grad_output[n, 0, 0, 0], &transposed[0, 0], g.F, L, P,
                                   n * L, width)
            # The batch unpadded is its own padded copy (padded's layout is x's).
            source = &x[0, 0, 0, 0] if in_place else &padded[0, 0]
            # A task is up to TASK_TAP_ROWS taps of one filter block: thousands of tasks
            # of one tile each would spend their time being handed out.
            for task in prange(blocks * task_groups, schedule="dynamic", num_threads=n_threads):
                block = task // task_groups
                first_tile = task % task_groups * task_tiles
                weight_grad_tiles(source, &taps[0], &positions[0], P, &transposed[0, 0],
                                  &partials[0, 0], KR, tile, block, first_tile,
                                  min(tap_tiles, first_tile + task_tiles), False)
        else:
            for chunk in prange(n_chunks, schedule="dynamic", num_threads=n_threads):
                t = threadid()
                first = chunk * g.N // n_chunks
                stop = (chunk + 1) * g.N // n_chunks
                for n in range(first, stop):
                    if in_place:
                        source = &x[n, 0, 0, 0]
                    else:
                        pad_channels(&x[n, 0, 0, 0], &padded[t, 0], &g, p, 0, g.C)
                        source = &padded[t, 0]
                    transpose_gradient(&grad_output[n, 0, 0, 0], &transposed[t, 0], g.F, L, L,
                                       0, width)
                    for task in range(blocks * task_groups):
                        block = task // task_groups
                        first_tile = task % task_groups * task_tiles
                        weight_grad_tiles(source, &taps[0], &positions[0], L,
                                          &transposed[t, 0], &partials[chunk, 0], KR, tile,
                                          block, first_tile,
                                          min(tap_tiles, first_tile + task_tiles), n > first)
        # The chunks' partials, added in order, into grad_weight[f, k]: read in their own
        # order (each tap's `width` filters side by side), each task a filter block's run
        # of taps. Gathered element by element instead (strided reads, a division per
        # value), this took 11% of a 256-channel 7x7 layer's forward and backward.
        for task in prange(blocks * tap_runs, schedule="static", num_threads=n_threads):
            block = task // tap_runs
            first = task % tap_runs * GATHER_TAPS
            if n_chunks == 1:
                # One partial (the whole batch listed): its values as they are, through
                # the forward's transposing store. Value by value, this gather took 1.2%
                # of a ResNet-18 training step; grad_weight of 256 channels at 7x7 now
                # takes 0.89x the time, 128 to 256 at stride 2 0.90x.
                cnncli_store(&partials[0, (block * KR + first) * width],
                             min(K, first + GATHER_TAPS) - first, min(width, g.F - block * width),
                             width, NULL, False, &grad_weight[block * width * K + first], K)
                continue
            for k in range(first, min(K, first + GATHER_TAPS)):
                for f in range(min(width, g.F - block * width)):
                    total = 0
                    for chunk in range(n_chunks):
                        total = total + partials[chunk, (block * KR + k) * width + f]
                    grad_weight[(block * width + f) * K + k] = <float>total


cdef direct_weight_grad(grad_output, x, grad_weight, Geometry g, Py_ssize_t n_chunks,
                        int n_threads):
    """grad_weight (flat, F*K) summed over the batch: in n_chunks fixed chunks of samples,
    or over the whole batch's positions at once (whole_batch)."""
    cdef Padding p = padding_for(&g)
    cdef Py_ssize_t K = g.C * g.KH * g.KW, L = g.OH * g.OW
    cdef Tile tile = tile_for(g.F)
    cdef Py_ssize_t KR = round_up(K, tile.rows)
    cdef Py_ssize_t FR = round_up(g.F, tile.filters)
    cdef bint batch = whole_batch(&g, WEIGHT_GRAD_WHOLE_BATCH)
    cdef Py_ssize_t rows = 1 if batch else n_threads
    cdef Py_ssize_t samples_per_row = g.N if batch else 1
    partials = aligned_empty((1 if batch else n_chunks, FR * KR))
    padded = np.empty((rows, 1 if needs_no_padding(&g) else samples_per_row * g.C * p.HP * p.WP),
                      dtype=np.float32)
    transposed = aligned_empty((rows, FR * samples_per_row * L))
    direct_weight_grad_typed(grad_output, x, partials, grad_weight,
                             np.empty(KR, dtype=np.int32),
                             np.empty(samples_per_row * L, dtype=np.int32), padded, transposed,
                             g, tile, n_chunks, n_threads if batch else min(n_threads, n_chunks))


def direct_paths(tuple input_shape, tuple weight_shape, tuple output_size, tuple stride,
                 tuple padding, tuple dilation, Py_ssize_t groups, dtype):
    """Which parts of a convolution of these shapes run on the direct kernel's micro-kernel:
    a dict of 'forward', 'input_grad', 'weight_grad' to the filters of the tile each pass
    takes (16 or 32, on AVX-512 48 or 64; the row kernel's forward: its 8), 0 where it
    keeps im2col + GEMM, 'winograd' to the tuple of those passes that run as Winograd's
    F(2x2, 3x3) or F(2x2, 5x5) (winograd.pxi; a strided layer's forward on its fold)
    rather than as direct sums, and 'rows' to ('forward',)
    where the row kernel (rowconv.pxi) takes the forward (padding is the top/left pair the
    kernels take)."""
    cdef Geometry g = make_geometry(input_shape, weight_shape[0], weight_shape[2:],
                                    output_size, stride, padding, dilation, groups)
    dtype = np.dtype(dtype)
    cdef bint winograd_forward = (winograd_forward_applies(&g, dtype)
                                  or winograd_fold_applies(&g, dtype))
    cdef bint winograd_input = winograd_input_grad_applies(&g, dtype)
    cdef bint winograd_weights = winograd_weight_grad_applies(&g, dtype)
    cdef bint rows = not winograd_forward and row_forward_applies(&g, dtype)
    return {"forward": cnncli_row_filters() if rows else forward_tile_for(g.F).filters
            if winograd_forward or direct_forward_applies(&g, dtype) else 0,
            "input_grad": forward_tile_for(g.C).filters if winograd_input
            or direct_input_grad_applies(&g, dtype)
            or strided_input_grad_applies(&g, dtype) else 0,
            "weight_grad": tile_for(g.F).filters
            if winograd_weights or direct_weight_grad_applies(&g, dtype) else 0,
            "winograd": ("forward",) * winograd_forward + ("input_grad",) * winograd_input
            + ("weight_grad",) * winograd_weights,
            "rows": ("forward",) * rows}
