# Winograd F(2x2, 3x3) and F(2x2, 5x5) for 3x3 and 5x5 stride-1 float32 layers (textually
# included in conv.pyx, after direct.pxi).
#
# Design notes
# - What: each 2x2 block of outputs (a tile) from a 4x4 patch of input, through the
#   transforms of winograd.h: 16 multiplications per tile and channel where the direct
#   kernel does 36, so 2.25x fewer. The 16 sums over channels are products of (tiles x
#   channels) by (channels x filters), run on the direct kernel's micro-kernel with the
#   tile its forward would take (forward_tile_for: on AVX-512 the 64-filter tile for a
#   multiple of 64 filters; against the 32-filter tile, forward and grad_input of 64
#   channels at 28x28 0.92-0.94x, 128 at 14x14 0.93-0.95x, VGG's 64 at 32x32 0.87-0.95x,
#   LeNet's second layer's 5x5 forward 0.94-0.97x). A 5x5 kernel takes 6x6 patches: 36
#   multiplications where the direct kernel does 100 (2.78x fewer).
# - Accuracy: F(2x2, 3x3)'s transforms only add, subtract and halve, so a result differs
#   from the direct sum by float32 rounding of a few more terms: relative to the largest
#   output, 0.4-1.9e-6 on random data (see test_winograd.py); F(2x2, 5x5)'s coefficients
#   reach 5 and 1/24: 3-5e-6 for the forward and grad_input, 0.9-1.7e-5 for grad_weight
#   (its sums run over every tile). Non-finite inputs still give non-finite outputs, but an
#   infinity may come out as NaN (inf - inf in a transform).
# - Layout of V: [element][channel][tile] for 3x3 kernels, where the input transform takes
#   eight tiles of a row at a time; [element][tile][channel] for 5x5 ones, from a padded
#   sample stored channel-minor, eight channels at a time (LeNet's 14x14 outputs are only
#   7 tiles wide: taken tile by tile, the transform cost more than the products saved).
# - Order of work: a task is a band of tile rows of one sample, sized so that its
#   transformed input V (16 values per tile and channel) stays in the L2 cache
#   (WINOGRAD_BAND_BYTES); for each block of filters in turn, its 16 sums M over the band
#   are computed, transformed back and stored. Channels are summed in chunks of tile.chunk,
#   each through all of a band's tiles, so the chunk's weights stay in the L1 cache, as in
#   forward_task.
# - grad_input is the forward of grad_output through the kernel rotated by 180 degrees,
#   channels swapped (as direct_input_grad). grad_weight sums U's gradient
#   du[e][c][f] = sum over tiles of V[e][c][tile] * (A dY A^T)[e][tile][f] over the tiles
#   of a group of samples at once (WINOGRAD_SUM_TILES or more per sum), into one partial
#   per fixed chunk of samples, then adds the chunks in order and transforms back,
#   G^T du G.
# - A strided layer whose kernel spans three strides (AlexNet's first layer: 11x11 at stride
#   4) is a stride-1 3x3 layer over its input folded into S*S times the channels: channel
#   (c, i, j) of the fold, position (h, w) is the input's (c, S*h + i, S*w + j), and the
#   kernel, zero-padded to 3S x 3S, is cut the same way (fold_channels, folded_weight).
#   Its forward then runs as F(2x2, 3x3) (winograd_fold_applies), the fold written
#   straight into each band's padded sample.
# - Which passes: winograd_pays states where the transforms pay, measured per variant of
#   the direct kernel (on AVX-512 fewer layers, and never a 3x3 layer's grad_weight);
#   force_winograd lets the tests run every pass Winograd can compute.
# - Parallel axis: samples (each thread pads its own, then takes its bands in order);
#   below SHARED_BATCH samples, the bands of one sample; grad_weight: its chunks. Each
#   output is one in-order sum computed by one thread: bit-identical for any thread count.
# - Allocation: packed weights, offsets and every thread's padded sample, V, M and
#   position-major output are allocated with the GIL before the loops.

cdef extern from "winograd.h" nogil:
    void cnncli_wino_weights(const float* weight, Py_ssize_t sf, Py_ssize_t sc, Py_ssize_t sh,
                             Py_ssize_t sw, const float* scale, float* u, Py_ssize_t C,
                             Py_ssize_t filters, Py_ssize_t width, int r)
    void cnncli_wino_input(const float* x, Py_ssize_t plane, Py_ssize_t row, Py_ssize_t C,
                           Py_ssize_t rows, Py_ssize_t tiles_wide, float* v, Py_ssize_t R)
    void cnncli_wino_gradient(const float* y, Py_ssize_t width, Py_ssize_t tiles_high,
                              Py_ssize_t tiles_wide, Py_ssize_t out_high, Py_ssize_t out_wide,
                              float* dm, Py_ssize_t R)
    enum: CNNCLI_WINO_LANES
    void cnncli_wino_weight_grads(const double (*du)[CNNCLI_WINO_LANES], float* grad,
                                  Py_ssize_t stride, int count, int r)
    void cnncli_wino_output(const float* m, Py_ssize_t R, Py_ssize_t width, Py_ssize_t rows,
                            Py_ssize_t tiles_wide, Py_ssize_t out_high, Py_ssize_t out_wide,
                            float* y)
    void cnncli_wino5_input_channels(const float* x, Py_ssize_t row, Py_ssize_t CP,
                                     Py_ssize_t rows, Py_ssize_t tiles_wide, float* v,
                                     Py_ssize_t R)
    void cnncli_wino5_gradient(const float* y, Py_ssize_t width, Py_ssize_t tiles_high,
                               Py_ssize_t tiles_wide, Py_ssize_t out_high, Py_ssize_t out_wide,
                               float* dm, Py_ssize_t R)
    void cnncli_wino_use_sixteen_lanes(int sixteen)
    void cnncli_fold_row(const float* source, Py_ssize_t stride, float* out, Py_ssize_t plane,
                         Py_ssize_t count)
    void cnncli_wino5_output(const float* m, Py_ssize_t R, Py_ssize_t width, Py_ssize_t rows,
                             Py_ssize_t tiles_wide, Py_ssize_t out_high, Py_ssize_t out_wide,
                             float* y)

# A band's transformed input is at most this large (unless one tile row is larger).
cdef Py_ssize_t WINOGRAD_BAND_BYTES = 262144
# Winograd takes a 3x3 stride-1 layer of at least WINOGRAD_MIN_CHANNELS channels and filters,
# at most WINOGRAD_MAX_WEIGHTS of them multiplied, with at least WINOGRAD_MIN_POSITIONS
# output positions in the batch (see winograd_forward_applies). The direct kernel's AVX-512
# variant (16 lanes) does twice the multiply-adds per cycle of the AVX2 one while the
# transforms gain less, so there Winograd needs larger layers (winograd_pays).
# Where the CPU runs those 16 lanes at full rate (cnncli_full_rate_512: AMD's Zen 5), the
# measurements came out the other way again, and Winograd takes more (winograd_pays).
cdef bint SIXTEEN_LANES = cnncli_variant() == 2
cdef bint FULL_RATE = SIXTEEN_LANES and cnncli_full_rate_512()
cnncli_wino_use_sixteen_lanes(SIXTEEN_LANES)
cdef Py_ssize_t WINOGRAD_MIN_CHANNELS = 64
cdef Py_ssize_t WINOGRAD5_MIN_CHANNELS = 32
cdef Py_ssize_t WINOGRAD5_MIN_POSITIONS = 3136
cdef Py_ssize_t WINOGRAD_MAX_WEIGHTS = 16384 if SIXTEEN_LANES and not FULL_RATE else 65536
cdef Py_ssize_t WINOGRAD_MIN_POSITIONS = (784 if FULL_RATE else 3136 if SIXTEEN_LANES
                                          else 1536)
# grad_weight sums each product over the tiles of a group of samples, at least this many
# tiles where the batch has them (winograd_weight_grad).
cdef Py_ssize_t WINOGRAD_SUM_TILES = 196
cdef Py_ssize_t WINOGRAD_MAX_GROUP_BYTES = 4194304
# Tests set this to run Winograd wherever it can compute a pass, whatever winograd_pays says.
cdef bint winograd_forced = False
cdef bint winograd_enabled = True


def use_winograd(bint enabled):
    """Allow (True) or forbid (False) Winograd's path; returns whether it was allowed. For
    tests and benchmarks that compare it with the direct kernel."""
    global winograd_enabled
    previous = winograd_enabled
    winograd_enabled = enabled
    return previous


def force_winograd(bint forced):
    """Run Winograd on every pass it can compute (True), or where its rule says it pays
    (False, the default); returns the previous setting. For tests: on AVX-512 the rule
    keeps a 3x3 layer's grad_weight on the direct kernel."""
    global winograd_forced
    previous = winograd_forced
    winograd_forced = forced
    return previous


cdef struct Bands:
    Py_ssize_t elements                 # 16 for a 3x3 kernel (4x4 patches), 36 for 5x5
    Py_ssize_t tiles_high, tiles_wide   # tiles of the output, 2x2 outputs each
    Py_ssize_t rows                     # tile rows per band
    Py_ssize_t count                    # bands per sample
    Py_ssize_t R                        # tiles per band, rounded up to whole micro-tiles
    Py_ssize_t HP, WP                   # the padded sample: every patch inside it
    Py_ssize_t CP                       # channels of V: C (3x3), C rounded up to 8 (5x5)


cdef Bands bands_for(const Geometry* g, Tile tile):
    cdef Bands b
    b.elements = (g.KH + 1) * (g.KW + 1)
    b.tiles_high = (g.OH + 1) // 2
    b.tiles_wide = (g.OW + 1) // 2
    b.rows = max(1, min(b.tiles_high,
                        WINOGRAD_BAND_BYTES // (4 * b.elements * g.C * b.tiles_wide)))
    b.count = (b.tiles_high + b.rows - 1) // b.rows
    b.R = round_up(b.rows * b.tiles_wide, tile.rows)
    b.HP = max(g.PH + g.H, 2 * b.tiles_high + g.KH - 1)
    b.WP = max(g.PW + g.W, 2 * b.tiles_wide + g.KW - 1)
    b.CP = g.C if g.KH == 3 else round_up(g.C, 8)
    return b


cdef bint winograd_computes(const Geometry* g, object dtype):
    """What Winograd's code needs: float32 on the direct kernel's CPUs, a 3x3 or 5x5
    stride-1 undilated kernel, no groups, channels and filters for its sums and tiles."""
    return (winograd_enabled and direct_enabled and dtype == np.float32 and g.G == 1
            and g.KH == g.KW and (g.KH == 3 or g.KH == 5) and g.SH == 1 and g.SW == 1
            and g.DH == 1 and g.DW == 1
            and min(g.C, g.F) >= (WINOGRAD_MIN_CHANNELS if g.KH == 3 else WINOGRAD5_MIN_CHANNELS)
            and fills_tiles(g.F))


cdef bint winograd_pays(const Geometry* g):
    """Where a forward's transforms pay. On the AVX2 variant, interleaved against the direct
    kernel (time ratio), 64 to 256 channels and filters over 1536 output positions or more
    took 0.62-0.91x (VGG's 64 channels at 32x32, batch 32: 0.63x; ResNet's 256 at 14x14,
    batch 32: 0.66x; 64 at 56x56, batch 1: 0.83x). Below WINOGRAD_MIN_CHANNELS, a sum over
    channels is too short for the micro-kernel (32 channels at 28x28: 1.05x); beyond
    WINOGRAD_MAX_WEIGHTS channels times filters the transformed weights (16 values per pair)
    no longer stay in the L3 cache while the bands pass over them (512 to 512 at 7x7, batch
    64: 1.87x); below WINOGRAD_MIN_POSITIONS, transforming the weights is not paid back, and
    7x7 outputs waste a quarter of 4x4 tiles (about 1024 positions: 64 channels at 32x32,
    batch 1: 1.01x; 256 at 7x7, batch 21: 1.05x; 128 at 16x16, batch 4: 0.94x; 128 at 28x28,
    batch 1: 1.10x; 256 at 7x7, batch 16: 1.66x; at 1568: 128 and 256 channels at 28x28,
    batch 2: 0.89x and 0.82x).

    A 5x5 kernel (F(2x2, 5x5): 2.78x fewer multiplications) pays from 32 channels and
    3136 positions: LeNet's second layer (32 to 64 channels at 14x14), batch 64: forward
    0.69x, grad_input 0.78x; batch 16: 0.79x and 0.96x; batch 8 (1568 positions): 0.91x
    and 1.14x; 64 to 128 channels at 28x28, batch 16: 0.59x and 0.62x; 32 channels at
    28x28, batch 2: 1.00x and 1.15x.

    On the AVX-512 variant (an Intel Xeon, family 6 model 207, 2 threads, interleaved in
    one process; forward, grad_input, grad_weight): 64 channels at 56x56, batch 16: 0.67x,
    0.69x, 1.27x; 128 at 28x28, batch 16: 0.74x, 0.70x, 1.05x; 64 at 32x32, batch 32:
    0.70x, 0.72x, 1.15x; 128 at 14x14, batch 16: 0.89x, 0.88x, 0.98x; but 256 at 14x14,
    batch 16: 0.99x, 1.16x, 1.60x (hence at most 16384 channels times filters); 128 at
    28x28, batch 2 (1568 positions): 1.18x, 1.10x, 1.03x; 64 at 56x56, batch 1 (3136):
    0.99x, 0.94x (hence 3136 positions). So there a 3x3 layer's grad_weight stays on the
    direct kernel. The 5x5 layers, since their transforms take 16 lanes and skip B^T's
    zeros (forward, grad_input, grad_weight): LeNet's second layer, batch 64: 0.86x the
    8-lane Winograd, 0.70x, 0.90x the direct kernel; batch 16: 0.90x, 0.91x; 32 channels at
    28x28, batch 32: 0.76x, 0.97x; 96 at 27x27, batch 8: 0.68x, 0.91x; 64 to 128 at
    28x28, batch 16: 0.75x, 0.90x (with 8 lanes the grad_input had taken 1.12x and the
    grad_weight 1.27x at batch 64).

    On AVX-512 at full rate (an AMD EPYC of family 26, 2 threads, the same layer with and
    without Winograd call by call; forward, grad_input): 256 at 14x14, batch 16: 0.65x,
    0.67x, batch 32: 0.70x, batch 4 (784 positions): 0.81x, 0.80x; 256 at 7x7, batch 16
    (784): 0.89x, 0.84x; 128 at 14x14, batch 4: 0.75x, 0.72x; 128 at 28x28, batch 1:
    0.79x, 0.67x; 64 at 28x28, batch 1: 0.96x, 0.90x; but 256 at 7x7, batch 8 (392
    positions): 1.05x, 0.98x, and 256 at 14x14, batch 1: 1.37x (hence 784 positions);
    512 at 7x7, batch 16: 1.55x, 1.07x, and 512 to 256 at 7x7, batch 8: 1.37x (hence at
    most 65536 channels times filters). There a 3x3 layer's grad_weight takes Winograd
    too (winograd_weight_grad_applies)."""
    return (g.C * g.F <= WINOGRAD_MAX_WEIGHTS
            and g.N * g.OH * g.OW >= (WINOGRAD_MIN_POSITIONS if g.KH == 3
                                      else WINOGRAD5_MIN_POSITIONS))


cdef bint winograd_forward_applies(const Geometry* g, object dtype):
    return winograd_computes(g, dtype) and (winograd_forced or winograd_pays(g))


# A folded layer (see the design notes) needs at least this many channels once folded, and
# WINOGRAD_FOLD_MIN_POSITIONS output positions a sample (winograd_fold_pays).
cdef Py_ssize_t WINOGRAD_FOLD_MIN_CHANNELS = 48
cdef Py_ssize_t WINOGRAD_FOLD_MIN_POSITIONS = 3025


cdef Geometry folded_geometry(const Geometry* g):
    """The stride-1 3x3 layer a strided layer folds into: S*S channels a channel, its input
    the OH + 2 by OW + 2 positions the fold reads, no padding (it is in the fold)."""
    cdef Geometry t = g[0]
    t.C = g.C * g.SH * g.SW
    t.H, t.W = g.OH + 2, g.OW + 2
    t.KH = t.KW = 3
    t.SH = t.SW = 1
    t.PH = t.PW = 0
    return t


cdef bint winograd_fold_computes(const Geometry* g, object dtype):
    """A strided float32 layer whose kernel spans three strides each way, undilated, no
    groups, its filters filling the tiles."""
    return (winograd_enabled and direct_enabled and dtype == np.float32 and g.G == 1
            and g.SH == g.SW and g.SH >= 2 and g.DH == 1 and g.DW == 1
            and (g.KH + g.SH - 1) // g.SH == 3 and (g.KW + g.SW - 1) // g.SW == 3
            and fills_tiles(g.F))


cdef bint winograd_fold_pays(const Geometry* g):
    """Where a strided layer's forward gains by its fold. F(2x2, 3x3) on the fold does
    4 * S * S multiplications per output and channel where the direct kernel does KH * KW:
    for AlexNet's first layer (11x11, stride 4) 64 of 121. Measured on an AMD EPYC of
    family 26, 2 threads, each layer by its fold against the direct kernel call by call
    (N, C, H, filters, kernel, stride): AlexNet's first layer (8, 3, 227, 96, 11, 4) 0.70-0.81x
    (the AVX2 variant 0.72-0.74x), at batch 32 0.76-0.85x, batch 4 0.90-0.95x, but batch 3
    0.81-1.08x and batch 1 1.14x (below SHARED_BATCH a sample's bands are shared out);
    (16, 3, 227, 64, 11, 4) 0.85x; 12 channels of 6x6 at stride 2, (8, 12, 112, 64) 0.60-0.71x;
    but 55x55 outputs of 9x9 kernels at stride 4 (64 of 81) 1.18-1.24x, 16 channels of 5x5
    at stride 2 (16 of 25) 0.92-1.00x, and 30x30 outputs (8, 4, 128, 96, 11, 4) 1.06-1.18x,
    with 64 filters 0.97-0.99x, with 48 1.38-1.43x. So the fold takes layers where it saves
    at least 40% of the multiplications, with at least WINOGRAD_FOLD_MIN_CHANNELS channels
    once folded, WINOGRAD_MIN_CHANNELS filters, SHARED_BATCH samples and
    WINOGRAD_FOLD_MIN_POSITIONS output positions a sample, where the folded layer meets
    winograd_pays."""
    if 10 * 4 * g.SH * g.SW > 6 * g.KH * g.KW:
        return False
    cdef Geometry t = folded_geometry(g)
    return (t.C >= WINOGRAD_FOLD_MIN_CHANNELS and g.F >= WINOGRAD_MIN_CHANNELS
            and g.N >= SHARED_BATCH and g.OH * g.OW >= WINOGRAD_FOLD_MIN_POSITIONS
            and winograd_pays(&t))


cdef bint winograd_fold_applies(const Geometry* g, object dtype):
    return winograd_fold_computes(g, dtype) and (winograd_forced or winograd_fold_pays(g))


cdef folded_weight(weight, const Geometry* g):
    """The kernel of folded_geometry(g): weight zero-padded to 3S x 3S, then
    folded[f, (c, i, j), a, b] = weight[f, c, S*a + i, S*b + j]. (In NumPy, padding and
    transposing a copy took 52 us for AlexNet's first layer, 2% of its forward at batch 8.)"""
    cdef const float[:, :, :, ::1] source = weight
    folded = np.empty((g.F, g.C * g.SH * g.SW, 3, 3), dtype=np.float32)
    cdef float[:, :, :, ::1] target = folded
    cdef Py_ssize_t s = g.SH, f, c, i, j, a, b
    with nogil:
        for f in range(g.F):
            for c in range(g.C):
                for i in range(s):
                    for j in range(s):
                        for a in range(3):
                            for b in range(3):
                                target[f, (c * s + i) * s + j, a, b] = (
                                    source[f, c, s * a + i, s * b + j]
                                    if s * a + i < g.KH and s * b + j < g.KW else 0)
    return folded


cdef void fold_phases(const float* x, float* padded, const Geometry* layer, Bands b,
                      Py_ssize_t folded, Py_ssize_t count) noexcept nogil:
    """`count` channels of the folded sample from `folded` = (c, i, j) on, all of the same
    (c, i), each an HP x WP plane: padded[(c, i, j)][h][w] = x[c][S*h + i - PH][S*w + j -
    PW], zero outside x. With all S phases, each input row is read once: the positions
    every phase reads inside x go through cnncli_fold_row, the edges value by value."""
    cdef Py_ssize_t s = layer.SH, plane = b.HP * b.WP
    cdef Py_ssize_t c = folded // (s * s), i = folded // s % s, j_first = folded % s
    cdef Py_ssize_t j, h, w, ih, lo, hi, inner_lo = 0, inner_hi = 0
    cdef float* rows
    cdef const float* source
    if count == s:
        inner_hi = b.WP
        for j in range(s):
            valid_range(j - layer.PW, s, layer.W, b.WP, &lo, &hi)
            inner_lo, inner_hi = max(inner_lo, lo), min(inner_hi, hi)
        inner_hi = max(inner_lo, inner_hi)
    for h in range(b.HP):
        rows = padded + folded * plane + h * b.WP - j_first * plane
        ih = s * h + i - layer.PH
        if ih < 0 or ih >= layer.H:
            for j in range(j_first, j_first + count):
                zero(rows + j * plane, b.WP)
            continue
        source = x + (c * layer.H + ih) * layer.W
        for j in range(j_first, j_first + count):
            valid_range(j - layer.PW, s, layer.W, b.WP, &lo, &hi)
            zero(rows + j * plane, lo)
            for w in range(lo, min(inner_lo, hi)):
                rows[j * plane + w] = source[s * w + j - layer.PW]
            for w in range(max(inner_hi, lo), hi):
                rows[j * plane + w] = source[s * w + j - layer.PW]
            zero(rows + j * plane + hi, b.WP - hi)
        if inner_hi > inner_lo:
            cnncli_fold_row(source + s * inner_lo - layer.PW, s, rows + inner_lo, plane,
                            inner_hi - inner_lo)


cdef void fold_channels(const float* x, float* padded, const Geometry* layer, Bands b,
                        Py_ssize_t c_first, Py_ssize_t c_stop) noexcept nogil:
    """Channels c_first to c_stop of the folded sample, the phases of one input channel's
    rows at a time (fold_phases): all S of them where the range holds them."""
    cdef Py_ssize_t s = layer.SH, folded = c_first, count
    while folded < c_stop:
        count = min(s - folded % s, c_stop - folded)
        fold_phases(x, padded, layer, b, folded, count)
        folded += count


cdef void pad_for(const float* x, float* padded, const Geometry* g, Padding p, Bands b,
                  Py_ssize_t c_first, Py_ssize_t c_stop,
                  const Geometry* folded_from=NULL) noexcept nogil:
    """The padded sample of a 3x3 layer (pad_channels), or of a 5x5 one stored
    channel-minor, padded[(h * WP + w) * CP + c], channels c_first to c_stop (those from C
    to CP stay the zeros they were allocated as). A row of the input is read in order and
    written CP floats apart; its padding is zeroed apart, so the copy has no test per
    value (with one, this copy took 1.9% of a LeNet training epoch)."""
    cdef Py_ssize_t c, h, w, ih, iw
    cdef float* cell
    cdef const float* source
    if folded_from != NULL:
        fold_channels(x, padded, folded_from, b, c_first, c_stop)
        return
    if g.KH == 3:
        pad_channels(x, padded, g, p, c_first, c_stop)
        return
    for h in range(b.HP):
        ih = h - p.top
        for w in range(b.WP):
            if 0 <= ih < g.H and p.left <= w < p.left + g.W:
                continue
            cell = padded + (h * b.WP + w) * b.CP
            for c in range(c_first, c_stop):
                cell[c] = 0
        if not 0 <= ih < g.H:
            continue
        for c in range(c_first, c_stop):
            source = x + (c * g.H + ih) * g.W
            cell = padded + (h * b.WP + p.left) * b.CP + c
            for iw in range(g.W):
                cell[iw * b.CP] = source[iw]


cdef void winograd_band(const float* padded, const Geometry* g, Bands b, Tile tile,
                        Py_ssize_t band, const float* packed, const float* bias, bint relu,
                        const int* tile_offsets, const int* channel_offsets, float* v,
                        float* m, float* positions_out, float* y) noexcept nogil:
    """Every filter of the outputs of one band of one sample (y: that sample's output)."""
    cdef Py_ssize_t width = tile.filters, L = g.OH * g.OW
    cdef Py_ssize_t first_row = band * b.rows
    cdef Py_ssize_t rows = min(b.rows, b.tiles_high - first_row)
    cdef Py_ssize_t tiles = rows * b.tiles_wide
    cdef Py_ssize_t out_rows = min(2 * rows, g.OH - 2 * first_row)
    cdef Py_ssize_t blocks = round_up(g.F, width) // width
    cdef Py_ssize_t block, e, chunk, c0, count, i, r
    if g.KH == 3:
        cnncli_wino_input(padded + 2 * first_row * b.WP, b.HP * b.WP, b.WP, g.C, rows,
                          b.tiles_wide, v, b.R)
    else:
        cnncli_wino5_input_channels(padded + 2 * first_row * b.WP * b.CP, b.WP, b.CP, rows,
                                    b.tiles_wide, v, b.R)
    for block in range(blocks):
        for e in range(b.elements):
            for chunk in range((g.C + tile.chunk - 1) // tile.chunk):
                c0 = chunk * tile.chunk
                count = min(tile.chunk, g.C - c0)
                for i in range((tiles + tile.rows - 1) // tile.rows):
                    r = i * tile.rows
                    cnncli_tile(tile.wide, v + e * b.CP * b.R, tile_offsets + r,
                                channel_offsets + c0, count,
                                packed + ((block * b.elements + e) * g.C + c0) * width,
                                m + (e * b.R + r) * width, c0 > 0)
        if g.KH == 3:
            cnncli_wino_output(m, b.R, width, rows, b.tiles_wide, g.OH, g.OW, positions_out)
        else:
            cnncli_wino5_output(m, b.R, width, rows, b.tiles_wide, g.OH, g.OW, positions_out)
        cnncli_store(positions_out, out_rows * g.OW, min(width, g.F - block * width), width,
                     bias + block * width if bias != NULL else NULL, relu,
                     y + block * width * L + 2 * first_row * g.OW, L)


cdef void winograd_forward_typed(const float[:, :, :, ::1] x, const float* weight,
                                 Py_ssize_t sf, Py_ssize_t sc, Py_ssize_t sh, Py_ssize_t sw,
                                 const float* scale, const float* bias,
                                 float[:, :, :, ::1] out, float[::1] packed,
                                 int[::1] tile_offsets, int[::1] channel_offsets,
                                 float[:, ::1] padded, float[:, ::1] v, float[:, ::1] m,
                                 float[:, ::1] positions_out, Geometry g, Bands b, Tile tile,
                                 bint relu, int n_threads,
                                 const Geometry* folded_from) noexcept:
    cdef Padding p
    p.HP, p.WP, p.top, p.left = b.HP, b.WP, g.PH, g.PW
    cdef Py_ssize_t width = tile.filters
    cdef Py_ssize_t blocks = round_up(g.F, width) // width
    cdef Py_ssize_t channel_blocks = min(g.C, SHARED_TASKS)
    cdef Py_ssize_t n, t, band, block, r, c
    with nogil:
        # V is [e][channel][tile] for 3x3 kernels, [e][tile][channel] for 5x5.
        for r in range(b.R):
            tile_offsets[r] = <int>(min(r, b.rows * b.tiles_wide - 1) * (1 if g.KH == 3 else b.CP))
        for c in range(g.C):
            channel_offsets[c] = <int>(c * b.R if g.KH == 3 else c)
        for block in prange(blocks, schedule="static", num_threads=n_threads):
            cnncli_wino_weights(weight + block * width * sf, sf, sc, sh, sw,
                                scale + block * width if scale != NULL else NULL,
                                &packed[block * b.elements * g.C * width], g.C,
                                min(width, g.F - block * width), width, <int>g.KH)
        if g.N >= SHARED_BATCH:
            for n in prange(g.N, schedule="dynamic", num_threads=n_threads):
                t = threadid()
                pad_for(&x[n, 0, 0, 0], &padded[t, 0], &g, p, b, 0, g.C, folded_from)
                for band in range(b.count):
                    winograd_band(&padded[t, 0], &g, b, tile, band, &packed[0], bias, relu,
                                  &tile_offsets[0], &channel_offsets[0], &v[t, 0], &m[t, 0],
                                  &positions_out[t, 0], &out[n, 0, 0, 0])
        else:
            for n in range(g.N):
                for block in prange(channel_blocks, schedule="static", num_threads=n_threads):
                    pad_for(&x[n, 0, 0, 0], &padded[0, 0], &g, p, b,
                            block * g.C // channel_blocks, (block + 1) * g.C // channel_blocks,
                            folded_from)
                for band in prange(b.count, schedule="dynamic", num_threads=n_threads):
                    t = threadid()
                    winograd_band(&padded[0, 0], &g, b, tile, band, &packed[0], bias, relu,
                                  &tile_offsets[0], &channel_offsets[0], &v[t, 0], &m[t, 0],
                                  &positions_out[t, 0], &out[n, 0, 0, 0])


cdef winograd_forward(x, weight, scale, bias, out, Geometry g, bint relu, int n_threads,
                      const Geometry* layer=NULL, const Geometry* folded_from=NULL):
    """out = conv2d(x, weight) * scale + bias (then ReLU) by Winograd's F(2x2, 3x3), for a
    layer that winograd_forward_applies to; scale and bias may be None. With `layer`, this
    is grad_input of that stride-1 layer (g its transposed_geometry): its weight is read
    rotated by 180 degrees with input and output channels swapped. With `folded_from`, x is
    that strided layer's input, g its folded_geometry and weight its folded_weight."""
    cdef Tile tile = forward_tile_for(g.F)
    cdef Bands b = bands_for(&g, tile)
    cdef const float[:, :, :, ::1] weight_view = weight
    cdef const float* kernel = &weight_view[0, 0, 0, 0]
    # Strides of filter, channel, kernel row and column: kernel[f, c, kh, kw] is layer
    # weight[c, f, 2 - kh, 2 - kw] for grad_input.
    cdef Py_ssize_t taps = g.KH * g.KW
    cdef Py_ssize_t sf = g.C * taps, sc = taps, sh = g.KW, sw = 1
    if layer != NULL:
        kernel = kernel + taps - 1
        sf, sc, sh, sw = taps, layer.C * taps, -g.KW, -1
    cdef const float* bias_pointer = optional_data(bias)
    cdef const float* scale_pointer = optional_data(scale)
    cdef Py_ssize_t rows = n_threads if g.N >= SHARED_BATCH else 1
    packed = aligned_empty((round_up(g.F, tile.filters) * b.elements * g.C,))
    winograd_forward_typed(
        x, kernel, sf, sc, sh, sw, scale_pointer, bias_pointer, out,
        packed, np.empty(b.R, dtype=np.int32), np.empty(g.C, dtype=np.int32),
        np.zeros((rows, b.CP * b.HP * b.WP), dtype=np.float32),
        np.zeros((n_threads, b.elements * b.CP * b.R), dtype=np.float32),
        aligned_empty((n_threads, b.elements * b.R * tile.filters)),
        aligned_empty((n_threads, 2 * b.rows * g.OW * tile.filters)),
        g, b, tile, relu, n_threads, folded_from)


cdef winograd_fold_forward(x, weight, scale, bias, out, Geometry g, bint relu, int n_threads):
    """The forward of a layer that winograd_fold_applies to, by its fold."""
    winograd_forward(x, folded_weight(weight, &g), scale, bias, out, folded_geometry(&g),
                     relu, n_threads, NULL, &g)


cdef bint winograd_input_grad_applies(const Geometry* g, object dtype):
    """grad_input of a stride-1 3x3 layer as the forward of grad_output (transposed_geometry)
    where Winograd applies to that forward, and the layer's padding is within the kernel's
    reach (so the transposed padding is not negative)."""
    if g.SH != 1 or g.SW != 1 or g.PH > g.KH - 1 or g.PW > g.KW - 1:
        return False
    cdef Geometry t = transposed_geometry(g)
    return winograd_computes(&t, dtype) and (
        winograd_forced or winograd_pays(&t))


cdef winograd_input_grad(grad_output, weight, grad_input, Geometry g, int n_threads):
    winograd_forward(grad_output, weight, None, None, grad_input, transposed_geometry(&g),
                     False, n_threads, &g)


cdef bint winograd_weight_grad_applies(const Geometry* g, object dtype):
    """The forward's rule (on the AVX2 variant only), on outputs of at least 8x8, with a
    group's transformed input (16 values per tile and channel, held whole) within
    WINOGRAD_MAX_GROUP_BYTES: a 224x224 layer of 64 channels would hold 51 MB per thread
    (not measured: the direct kernel keeps it). Interleaved against the direct grad_weight
    (time ratio): 64 channels at 28x28, batch 16: 0.80x; at 32x32, batch 2: 0.76x, batch 32:
    0.87x; 128 at 28x28, batch 4: 0.72x; at 14x14, batch 16: 0.74x, batch 32: 0.86x; 256 at
    14x14, batch 8: 0.80x, batch 32: 0.98x. At 7x7 the tiles' unused quarter costs more than
    the multiplications saved: 256 channels, batch 64, 1.10x. 5x5 kernels: LeNet's second
    layer, batch 64: 0.79x, batch 16: 0.70x; 32 channels at 28x28, batch 32: 0.89x; 64 to
    128 at 28x28, batch 16: 0.75x.
    On AVX-512 a 3x3 layer's grad_weight stays direct (winograd_pays), except at full rate
    (FULL_RATE) where the batch holds two groups or more (a single group's sum is one
    thread's task): 64 channels at 28x28, batch 16: 0.68x; 128 at 14x14, batch 16: 0.76x;
    128 at 28x28, batch 16: 0.86x, batch 2: 0.64x; 256 at 14x14, batch 16: 0.87x; 64 at
    56x56, batch 16: 1.00x; 64 at 32x32, batch 32: 1.03x; one group: 128 at 14x14, batch
    4: 1.39x; 256 at 14x14, batch 4: 1.52x."""
    return (winograd_computes(g, dtype) and g.OH >= 8 and g.OW >= 8
            and (winograd_forced or (winograd_pays(g) and (
                not (SIXTEEN_LANES and g.KH == 3)
                or (FULL_RATE and g.N >= 2 * weight_grad_group(g)))))
            and 4 * (g.KH + 1) * (g.KW + 1) * g.C * weight_grad_group(g)
            * ((g.OH + 1) // 2) * ((g.OW + 1) // 2) <= WINOGRAD_MAX_GROUP_BYTES)


cdef Py_ssize_t weight_grad_group(const Geometry* g) noexcept:
    """Samples whose tiles one sum of grad_weight runs over: enough for WINOGRAD_SUM_TILES."""
    cdef Py_ssize_t tiles = ((g.OH + 1) // 2) * ((g.OW + 1) // 2)
    return max(1, min(g.N, (WINOGRAD_SUM_TILES + tiles - 1) // tiles))


cdef void winograd_weight_grad_group(const float* x, const float* dy, Py_ssize_t samples,
                                     const Geometry* g, Padding p, Bands b, Tile tile,
                                     const int* channel_offsets, const int* tile_list,
                                     float* padded, float* v, float* dm, float* positions_dy,
                                     float* partial, bint accumulate) noexcept nogil:
    """Adds the sums du[e][c][f] = sum over tiles of V[e][c][tile] * (A dY A^T)[e][tile][f]
    of `samples` consecutive samples (x, dy: the first one's) to `partial` (or writes them:
    not accumulate). Their tiles lie side by side in V and dm (b.R: room for a group's), so
    each sum runs over all of them at once."""
    cdef Py_ssize_t width = tile.filters, L = g.OH * g.OW, E = b.elements
    cdef Py_ssize_t blocks = round_up(g.F, width) // width
    cdef Py_ssize_t CR = round_up(g.C, tile.rows)
    cdef Py_ssize_t T = b.tiles_high * b.tiles_wide
    cdef Py_ssize_t block, e, i, n
    for n in range(samples):
        pad_for(x + n * g.C * g.H * g.W, padded, g, p, b, 0, g.C)
        if g.KH == 3:
            cnncli_wino_input(padded, b.HP * b.WP, b.WP, g.C, b.tiles_high, b.tiles_wide,
                              v + n * T, b.R)
        else:
            cnncli_wino5_input_channels(padded, b.WP, b.CP, b.tiles_high, b.tiles_wide,
                                        v + n * T * b.CP, b.R)
        for block in range(blocks):
            cnncli_pack(dy + (n * g.F + block * width) * L, NULL, positions_dy,
                        min(width, g.F - block * width), L, width)
            if g.KH == 3:
                cnncli_wino_gradient(positions_dy, width, b.tiles_high, b.tiles_wide, g.OH,
                                     g.OW, dm + (block * E * b.R + n * T) * width, b.R)
            else:
                cnncli_wino5_gradient(positions_dy, width, b.tiles_high, b.tiles_wide, g.OH,
                                      g.OW, dm + (block * E * b.R + n * T) * width, b.R)
    for block in range(blocks):
        for e in range(E):
            for i in range(CR // tile.rows):
                cnncli_tile(tile.wide, v + e * b.CP * b.R, channel_offsets + i * tile.rows,
                            tile_list, samples * T, dm + (block * E + e) * b.R * width,
                            partial + ((block * E + e) * CR + i * tile.rows) * width,
                            accumulate)


cdef void weight_grad_lanes(const float* partials, Py_ssize_t stride, Py_ssize_t n_chunks,
                            Py_ssize_t first, Py_ssize_t element_stride, Py_ssize_t elements,
                            int count, float* grad, Py_ssize_t grad_stride) noexcept nogil:
    """The 3x3 (16 elements) or 5x5 (36) gradients of `count` consecutive filters (at most
    CNNCLI_WINO_LANES, side by side in the partials) of one channel: each sum (element_stride
    apart from `first`) added over the chunks' partials (stride apart) in order, then
    G^T du G, filter j's written to grad + j * grad_stride."""
    cdef double du[36][CNNCLI_WINO_LANES]
    cdef Py_ssize_t e, k, j
    for e in range(elements):
        for j in range(CNNCLI_WINO_LANES):
            du[e][j] = 0
        for k in range(n_chunks):
            for j in range(count):
                du[e][j] = du[e][j] + partials[k * stride + first + e * element_stride + j]
    cnncli_wino_weight_grads(du, grad, grad_stride, count, 3 if elements == 16 else 5)


cdef void winograd_weight_grad_typed(const float[:, :, :, ::1] grad_output,
                                     const float[:, :, :, ::1] x, float[:, ::1] partials,
                                     float[::1] grad_weight, int[::1] channel_offsets,
                                     int[::1] tile_list, float[:, ::1] padded, float[:, ::1] v,
                                     float[:, ::1] dm, float[:, ::1] positions_dy, Geometry g,
                                     Bands b, Tile tile, Py_ssize_t n_chunks,
                                     int n_threads) noexcept:
    """One partial sum per fixed chunk of samples, added in chunk order (in double) and
    transformed back (G^T du G) at the end; a chunk's samples go in groups whose tiles are
    summed together (b.R). Both depend on the shape only: bit-identical for any thread
    count."""
    cdef Padding p
    p.HP, p.WP, p.top, p.left = b.HP, b.WP, g.PH, g.PW
    cdef Py_ssize_t width = tile.filters
    cdef Py_ssize_t CR = round_up(g.C, tile.rows)
    cdef Py_ssize_t group = b.R // (b.tiles_high * b.tiles_wide)
    cdef Py_ssize_t lane_groups = (g.F + CNNCLI_WINO_LANES - 1) // CNNCLI_WINO_LANES
    cdef Py_ssize_t chunk, n, first, stop, t, i, c, f0
    with nogil:
        # V is [e][channel][tile] for 3x3 kernels, [e][tile][channel] for 5x5.
        for c in range(CR):
            channel_offsets[c] = <int>(min(c, g.C - 1) * (b.R if g.KH == 3 else 1))
        for t in range(b.R):
            tile_list[t] = <int>(t * (1 if g.KH == 3 else b.CP))
        for chunk in prange(n_chunks, schedule="dynamic", num_threads=n_threads):
            t = threadid()
            first = chunk * g.N // n_chunks
            stop = (chunk + 1) * g.N // n_chunks
            for i in range((stop - first + group - 1) // group):
                n = first + i * group
                winograd_weight_grad_group(&x[n, 0, 0, 0], &grad_output[n, 0, 0, 0],
                                           min(group, stop - n), &g, p, b, tile,
                                           &channel_offsets[0], &tile_list[0], &padded[t, 0],
                                           &v[t, 0], &dm[t, 0], &positions_dy[t, 0],
                                           &partials[chunk, 0], i > 0)
        # Filters f0 to f0 + CNNCLI_WINO_LANES - 1 of channel c at a time (a block of width
        # filters holds whole groups of them).
        for i in prange(lane_groups * g.C, schedule="static", num_threads=n_threads):
            c = i % g.C
            f0 = i // g.C * CNNCLI_WINO_LANES
            weight_grad_lanes(&partials[0, 0], partials.shape[1], n_chunks,
                              ((f0 // width * b.elements) * CR + c) * width + f0 % width,
                              CR * width, b.elements,
                              <int>min(CNNCLI_WINO_LANES, g.F - f0),
                              &grad_weight[(f0 * g.C + c) * g.KH * g.KW], g.C * g.KH * g.KW)


cdef winograd_weight_grad(grad_output, x, grad_weight, Geometry g, Py_ssize_t n_chunks,
                          int n_threads):
    """grad_weight (flat, F*C*9) of a layer winograd_weight_grad_applies to, summed over the
    batch in fixed chunks of samples (at most n_chunks), each in groups of samples that
    bring WINOGRAD_SUM_TILES tiles or more to a sum."""
    cdef Tile tile = tile_for(g.F)
    cdef Bands b = bands_for(&g, tile)
    cdef Py_ssize_t T = b.tiles_high * b.tiles_wide
    cdef Py_ssize_t group = weight_grad_group(&g)
    n_chunks = max(1, min(n_chunks, g.N // group))
    b.rows, b.count, b.R = b.tiles_high, 1, group * T
    cdef Py_ssize_t FR = round_up(g.F, tile.filters)
    cdef Py_ssize_t rows = min(n_threads, n_chunks)
    winograd_weight_grad_typed(
        grad_output, x, aligned_empty((n_chunks, FR * b.elements * round_up(g.C, tile.rows))),
        grad_weight, np.empty(round_up(g.C, tile.rows), dtype=np.int32),
        np.empty(b.R, dtype=np.int32), np.zeros((rows, b.CP * b.HP * b.WP), dtype=np.float32),
        aligned_empty((rows, b.elements * b.CP * b.R)),
        aligned_empty((rows, FR * b.elements * b.R)),
        aligned_empty((rows, g.OH * g.OW * tile.filters)), g, b, tile, n_chunks, rows)
