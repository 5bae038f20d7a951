/* The row kernel: a stride-1 convolution's forward over few taps, vectorised along the
 * output's positions rather than its filters (used by rowconv.pxi).
 *
 * Design notes
 * - The direct kernel (microkernel.h) holds a tile of positions by filters with the
 *   filters in the vector lanes, so its sums come out position-major and cnncli_store
 *   transposes them into the output's (F, OH, OW) layout. Over few taps (LeNet's first
 *   layer: 25) that transpose and the round trip of the sums through the L2 cache took
 *   more time than the sums themselves (48% of the layer against 34%, `perf`).
 * - Here the lanes hold consecutive positions of a padded row: at stride 1, position q's
 *   value at tap k is padded[taps[k] + q], so a vector of positions is one unaligned load,
 *   and a filter's weight is broadcast. A tile is CNNCLI_ROW_FILTERS filters by
 *   VECTORS vectors of positions, all in registers for the whole sum, written out
 *   filter-major: already the output's layout.
 * - Positions are "padded" ones, q = oh * WP + ow: each row of the output carries WP - OW
 *   positions that are computed and dropped (4 of 32 for LeNet's first layer), so that a
 *   vector never needs a gather.
 * - Each sum is the same chain of fused multiply-adds over the taps in order, from zero,
 *   as in the direct kernel: the results are bit-identical to its, for either variant.
 * - AVX-512: 8 filters by 3 vectors of 16 (24 accumulators; per tap 3 loads, most of
 *   them across two cache lines, and 8 broadcasts for 24 multiply-adds). Against 4 filters
 *   by 6 vectors (6 split loads a tap), one thread on LeNet's first layer: 0.87x the
 *   direct kernel's time instead of 1.12x.
 * - AVX-512 only. An AVX2 tile of 2 filters by 6 vectors of 8 (12 accumulators, 15 of the
 *   16 registers: 6 loads and 2 broadcasts for 12 multiply-adds) ran LeNet's first layer
 *   in 1.80x the AVX2 direct kernel's time on the AVX-512 machine (batch 1: 1.18x; 6
 *   filters: 0.97x), so AVX2 CPUs keep the direct kernel.
 * - Each tile stores straight into the output: the runs of its lanes that land in real
 *   columns (cnncli_find_runs, shared by its filters), each a masked store (all lanes set
 *   for a whole vector). The store loop is unrolled over the tile's filters and vectors,
 *   so the accumulators stay in registers: as a loop choosing between a whole and a
 *   masked store per run, it spilled all 24 of them to the stack, and on data in the L1
 *   cache the tile ran LeNet's first layer at 49-53 GFLOP/s instead of 60-95.
 */
#ifndef CNNCLI_ROWKERNEL_H
#define CNNCLI_ROWKERNEL_H

#include <stddef.h>
#include "microkernel.h"

/* Where a band's sums go: padded position q = i * WP + j of the band is output row i
 * (of `rows`) and column j, real for j < OW. */
typedef struct {
    float* y;               /* the band's first output row of the first filter */
    ptrdiff_t plane;        /* floats from one filter's output plane to the next's */
    ptrdiff_t WP, OW, rows;
} cnncli_row_out;

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define ROW512_FILTERS 8    /* a multiple of 8: cnncli_pack packs eight filters at a time */
#define ROW512_VECTORS 3

/* The runs of lanes of each vector of a tile that land in the output: the lanes of each
 * padded row that fall in its first OW columns. Run i of vector j (runs[j] <= i <
 * runs[j + 1]) puts the lanes set in mask[i] at offset[i] + lane of a filter's output
 * rows. Shared by the tile's filters. */
#define CNNCLI_MAX_RUNS 128
typedef struct {
    int runs[ROW512_VECTORS + 1];
    ptrdiff_t offset[CNNCLI_MAX_RUNS];
    __mmask16 mask[CNNCLI_MAX_RUNS];
} cnncli_row_runs;

static void cnncli_find_runs(const cnncli_row_out* o, ptrdiff_t q0, int lanes, int vectors,
                             cnncli_row_runs* runs)
{
    ptrdiff_t row = q0 / o->WP, col = q0 - row * o->WP, lane;
    int j, count = 0, stop;
    for (j = 0; j < vectors; j++) {
        runs->runs[j] = count;
        for (lane = 0; lane < lanes && row < o->rows; lane += o->WP - col, row++, col = 0) {
            stop = col < o->OW ? (int)(lane + o->OW - col) : (int)lane;
            if (stop > lanes)
                stop = lanes;
            if (stop > lane && count < CNNCLI_MAX_RUNS) {
                runs->mask[count] = (__mmask16)(((1u << stop) - 1) & ~((1u << lane) - 1));
                runs->offset[count] = row * o->OW + col - lane;
                count++;
            }
        }
        /* The next vector starts where this one's lanes end: lane - lanes past the start
         * of the padded row it reached (row, col 0), or in the row left (col + lanes). */
        if (lane > lanes) {
            row--;
            col = o->WP - (lane - lanes);
        }
    }
    runs->runs[vectors] = count;
}

/* For filters r < `filters` (of FILTERS) and the tile's positions q0 + i, i <
 * VECTORS * LANES: relu?(sum_t w[t * FILTERS + r] * x[taps[t] + q0 + i] +
 * bias[r]) written to its place in filter r's output plane, y + r * plane (runs: the
 * tile's, from cnncli_find_runs; bias may be NULL). */
#define CNNCLI_DEFINE_ROW_TILE(NAME, TARGET, VEC, LANES, FILTERS, VECTORS, LOADU,          \
                               MASKED_STORE, SET1, FMADD, ZERO, ADD, MAX)                  \
__attribute__((target(TARGET)))                                                            \
static void NAME(const float* x, const int* taps, ptrdiff_t T, const float* w,             \
                 const float* bias, int relu, int filters, float* y, ptrdiff_t plane,      \
                 ptrdiff_t q0, const cnncli_row_runs* runs)                                \
{                                                                                          \
    VEC acc[FILTERS][VECTORS], v[VECTORS], b;                                              \
    ptrdiff_t t;                                                                           \
    int r, j, i;                                                                           \
    x += q0;                                                                               \
    for (r = 0; r < FILTERS; r++)                                                          \
        for (j = 0; j < VECTORS; j++)                                                      \
            acc[r][j] = ZERO();                                                            \
    for (t = 0; t < T; t++) {                                                              \
        const float* source = x + taps[t];                                                 \
        for (j = 0; j < VECTORS; j++)                                                      \
            v[j] = LOADU(source + j * LANES);                                              \
        for (r = 0; r < FILTERS; r++) {                                                    \
            b = SET1(w[t * FILTERS + r]);                                                  \
            for (j = 0; j < VECTORS; j++)                                                  \
                acc[r][j] = FMADD(b, v[j], acc[r][j]);                                     \
        }                                                                                  \
    }                                                                                      \
    _Pragma("GCC unroll 8")                                                                \
    for (r = 0; r < FILTERS; r++) {                                                        \
        float* row = y + r * plane;                                                        \
        if (r >= filters)                                                                  \
            break;                                                                         \
        _Pragma("GCC unroll 3")                                                            \
        for (j = 0; j < VECTORS; j++) {                                                    \
            b = acc[r][j];                                                                 \
            if (bias != NULL)                                                              \
                b = ADD(b, SET1(bias[r]));                                                 \
            if (relu)                                                                      \
                b = MAX(ZERO(), b);                                                        \
            for (i = runs->runs[j]; i < runs->runs[j + 1]; i++)                            \
                MASKED_STORE(row + runs->offset[i], runs->mask[i], b);                     \
        }                                                                                  \
    }                                                                                      \
}

#pragma GCC push_options
#pragma GCC optimize("unroll-loops")
CNNCLI_DEFINE_ROW_TILE(cnncli_row_tile_avx512, "avx512f", __m512, 16, ROW512_FILTERS,
                       ROW512_VECTORS, _mm512_loadu_ps, _mm512_mask_storeu_ps,
                       _mm512_set1_ps, _mm512_fmadd_ps, _mm512_setzero_ps, _mm512_add_ps,
                       _mm512_max_ps)
#pragma GCC pop_options

/* Filters of a tile where the AVX-512 variant was chosen (cnncli_variant, microkernel.h);
 * 0 (the direct kernel keeps these layers) elsewhere. */
static int cnncli_row_filters(void)
{
    return cnncli_variant() == 2 ? ROW512_FILTERS : 0;
}

/* Positions of a tile. */
static int cnncli_row_positions(void)
{
    return ROW512_VECTORS * 16;
}

/* The tiles of every filter of the band's positions q0 to q0 + cnncli_row_positions() - 1:
 * block by block of ROW512_FILTERS (packed: (block, T, ROW512_FILTERS); bias may be NULL),
 * each block's tile storing into its filters' planes of o. The runs are found once for
 * all the blocks (a quarter of their cost for LeNet's 32 filters). */
static void cnncli_row_tiles(const float* x, const int* taps, ptrdiff_t T,
                             const float* packed, const float* bias, int relu,
                             ptrdiff_t filters, const cnncli_row_out* o, ptrdiff_t q0)
{
    cnncli_row_runs runs;
    ptrdiff_t first;
    cnncli_find_runs(o, q0, 16, ROW512_VECTORS, &runs);
    for (first = 0; first < filters; first += ROW512_FILTERS)
        cnncli_row_tile_avx512(x, taps, T, packed + first * T,
                               bias != NULL ? bias + first : NULL, relu,
                               (int)(filters - first < ROW512_FILTERS ? filters - first
                                                                        : ROW512_FILTERS),
                               o->y + first * o->plane, o->plane, q0, &runs);
}

#else

static int cnncli_row_filters(void) { return 0; }
static int cnncli_row_positions(void) { return 48; }

static void cnncli_row_tiles(const float* x, const int* taps, ptrdiff_t T,
                             const float* packed, const float* bias, int relu,
                             ptrdiff_t filters, const cnncli_row_out* o, ptrdiff_t q0)
{
    (void)x; (void)taps; (void)T; (void)packed; (void)bias; (void)relu; (void)filters;
    (void)o; (void)q0;
}

#endif
#endif
