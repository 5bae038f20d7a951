/* The register-blocked inner product of the direct convolution (pyx/direct.pxi).
 *
 * Design notes
 * - One call computes a tile of rows by filters:
 *       c[r][j] (+)= sum_{t < T} a[rows[r] + cols[t]] * b[t][j]
 *   The forward takes r = output positions, t = (channel, kh, kw) taps and b = the weights
 *   packed filter-minor; the weight gradient takes r = taps, t = output positions and
 *   b = the output gradient transposed. Either way `a` is an input sample copied once into
 *   a padded buffer, so no column matrix is built: each value is broadcast straight from it.
 * - Tile shapes chosen per layer by its filters (pyx/direct.pxi, tile_for):
 *   the wide tile, 32 filters, and the narrow one, 16 filters, where the wide one would
 *   idle over a quarter of its lanes (layers of 12 to 16 filters, or 40).
 *   AVX2's wide tile is 3 rows by 4 vectors: per step, three broadcasts and four vector
 *   loads feed twelve fused multiply-adds (7 loads for 12), as oneDNN's AVX2 kernels
 *   block; the narrow one, 6 rows by 2 vectors, needs 8 for 12. On LeNet's second layer,
 *   one core: 57-62 GFLOP/s for the narrow tile, 68-70 for the wide one (both loops
 *   unrolled 4 times). AVX-512's wide tile is 6 rows by 2 vectors of 16 lanes; the
 *   widest ones, 6 rows by 4 vectors (64 filters) and 8 rows by 3 (48 filters), take the
 *   forward and grad_input of layers whose filters are a multiple of 64, or else of 48
 *   (direct.pxi, forward_tile_for).
 *   Either way each accumulator lives in a register for the whole sum.
 * - Written in C because Cython has no vector types and cannot compile one function for
 *   several instruction sets. Each variant is compiled for its own target (AVX2+FMA,
 *   AVX-512) whatever flags the build used, and chosen at run time by what the CPU
 *   supports (see isa.h's cnncli_pick_isa). Elsewhere cnncli_tile_filters() is 0 and the caller
 *   keeps im2col + GEMM.
 * - The sum over t runs in order with fused multiply-adds, so a result depends on the CPU
 *   variant only, never on the thread that computed it nor on the tile shape (each
 *   accumulator is the same chain of multiply-adds whichever tile holds it).
 * - cnncli_store writes a forward tile's sums (position-major) out filter-major through an
 *   8x8 in-register transpose, bias and ReLU applied to whole vectors: value by value,
 *   those stores cost more than the sums of a layer with few taps.
 */
#ifndef CNNCLI_MICROKERNEL_H
#define CNNCLI_MICROKERNEL_H

#include <stddef.h>

#include "isa.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

/* The rows' pointers are kept in registers as they are: the compiler otherwise rebuilds
 * each broadcast's address from `a`, rows[r] and the tap's offset, an extra integer
 * instruction per broadcast (six per step of twelve multiply-adds). With the core shared
 * (another VM's thread on its sibling), the tile ran at 104-108 GFLOP/s with them and
 * 113-115 without, on one core of the AVX-512 machine; alone, both at 161-174. */
#define CNNCLI_OPAQUE(pointer) __asm__("" : "+r"(pointer))

#define CNNCLI_DEFINE_TILE(NAME, TARGET, VEC, LANES, LOADU, STOREU, SET1, FMADD, ZERO)     \
__attribute__((target(TARGET)))                                                           \
static void NAME(const float* a, const int* rows, const int* cols, ptrdiff_t T,            \
                 const float* b, float* c, int accumulate)                                 \
{                                                                                          \
    const float *a0 = a + rows[0], *a1 = a + rows[1], *a2 = a + rows[2];                  \
    const float *a3 = a + rows[3], *a4 = a + rows[4], *a5 = a + rows[5];                  \
    CNNCLI_OPAQUE(a0); CNNCLI_OPAQUE(a1); CNNCLI_OPAQUE(a2);                               \
    CNNCLI_OPAQUE(a3); CNNCLI_OPAQUE(a4); CNNCLI_OPAQUE(a5);                               \
    VEC c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, b0, b1, x;            \
    ptrdiff_t t, o;                                                                        \
    if (accumulate) {                                                                      \
        c00 = LOADU(c + 0 * LANES); c01 = LOADU(c + 1 * LANES);                            \
        c10 = LOADU(c + 2 * LANES); c11 = LOADU(c + 3 * LANES);                            \
        c20 = LOADU(c + 4 * LANES); c21 = LOADU(c + 5 * LANES);                            \
        c30 = LOADU(c + 6 * LANES); c31 = LOADU(c + 7 * LANES);                            \
        c40 = LOADU(c + 8 * LANES); c41 = LOADU(c + 9 * LANES);                            \
        c50 = LOADU(c + 10 * LANES); c51 = LOADU(c + 11 * LANES);                          \
    } else {                                                                               \
        c00 = c01 = c10 = c11 = c20 = c21 = ZERO();                                        \
        c30 = c31 = c40 = c41 = c50 = c51 = ZERO();                                        \
    }                                                                                      \
    _Pragma("GCC unroll 4")                                                                \
    for (t = 0; t < T; t++) {                                                              \
        o = cols[t];                                                                       \
        b0 = LOADU(b + 2 * LANES * t);                                                     \
        b1 = LOADU(b + 2 * LANES * t + LANES);                                             \
        x = SET1(a0[o]); c00 = FMADD(x, b0, c00); c01 = FMADD(x, b1, c01);                 \
        x = SET1(a1[o]); c10 = FMADD(x, b0, c10); c11 = FMADD(x, b1, c11);                 \
        x = SET1(a2[o]); c20 = FMADD(x, b0, c20); c21 = FMADD(x, b1, c21);                 \
        x = SET1(a3[o]); c30 = FMADD(x, b0, c30); c31 = FMADD(x, b1, c31);                 \
        x = SET1(a4[o]); c40 = FMADD(x, b0, c40); c41 = FMADD(x, b1, c41);                 \
        x = SET1(a5[o]); c50 = FMADD(x, b0, c50); c51 = FMADD(x, b1, c51);                 \
    }                                                                                      \
    STOREU(c + 0 * LANES, c00); STOREU(c + 1 * LANES, c01);                                \
    STOREU(c + 2 * LANES, c10); STOREU(c + 3 * LANES, c11);                                \
    STOREU(c + 4 * LANES, c20); STOREU(c + 5 * LANES, c21);                                \
    STOREU(c + 6 * LANES, c30); STOREU(c + 7 * LANES, c31);                                \
    STOREU(c + 8 * LANES, c40); STOREU(c + 9 * LANES, c41);                                \
    STOREU(c + 10 * LANES, c50); STOREU(c + 11 * LANES, c51);                              \
}

/* 3 rows by 4 vectors: AVX2's wide tile (see the design notes). */
__attribute__((target("avx2,fma")))
static void cnncli_tile_avx2_wide(const float* a, const int* rows, const int* cols, ptrdiff_t T,
                                  const float* b, float* c, int accumulate)
{
    const float *a0 = a + rows[0], *a1 = a + rows[1], *a2 = a + rows[2];
    CNNCLI_OPAQUE(a0); CNNCLI_OPAQUE(a1); CNNCLI_OPAQUE(a2);
    __m256 c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23, w, x0, x1, x2;
    ptrdiff_t t, o;
    if (accumulate) {
        c00 = _mm256_loadu_ps(c + 0); c01 = _mm256_loadu_ps(c + 8);
        c02 = _mm256_loadu_ps(c + 16); c03 = _mm256_loadu_ps(c + 24);
        c10 = _mm256_loadu_ps(c + 32); c11 = _mm256_loadu_ps(c + 40);
        c12 = _mm256_loadu_ps(c + 48); c13 = _mm256_loadu_ps(c + 56);
        c20 = _mm256_loadu_ps(c + 64); c21 = _mm256_loadu_ps(c + 72);
        c22 = _mm256_loadu_ps(c + 80); c23 = _mm256_loadu_ps(c + 88);
    } else {
        c00 = c01 = c02 = c03 = c10 = c11 = _mm256_setzero_ps();
        c12 = c13 = c20 = c21 = c22 = c23 = _mm256_setzero_ps();
    }
    _Pragma("GCC unroll 4")
    for (t = 0; t < T; t++) {
        o = cols[t];
        x0 = _mm256_set1_ps(a0[o]);
        x1 = _mm256_set1_ps(a1[o]);
        x2 = _mm256_set1_ps(a2[o]);
        w = _mm256_loadu_ps(b + 32 * t);
        c00 = _mm256_fmadd_ps(x0, w, c00); c10 = _mm256_fmadd_ps(x1, w, c10);
        c20 = _mm256_fmadd_ps(x2, w, c20);
        w = _mm256_loadu_ps(b + 32 * t + 8);
        c01 = _mm256_fmadd_ps(x0, w, c01); c11 = _mm256_fmadd_ps(x1, w, c11);
        c21 = _mm256_fmadd_ps(x2, w, c21);
        w = _mm256_loadu_ps(b + 32 * t + 16);
        c02 = _mm256_fmadd_ps(x0, w, c02); c12 = _mm256_fmadd_ps(x1, w, c12);
        c22 = _mm256_fmadd_ps(x2, w, c22);
        w = _mm256_loadu_ps(b + 32 * t + 24);
        c03 = _mm256_fmadd_ps(x0, w, c03); c13 = _mm256_fmadd_ps(x1, w, c13);
        c23 = _mm256_fmadd_ps(x2, w, c23);
    }
    _mm256_storeu_ps(c + 0, c00); _mm256_storeu_ps(c + 8, c01);
    _mm256_storeu_ps(c + 16, c02); _mm256_storeu_ps(c + 24, c03);
    _mm256_storeu_ps(c + 32, c10); _mm256_storeu_ps(c + 40, c11);
    _mm256_storeu_ps(c + 48, c12); _mm256_storeu_ps(c + 56, c13);
    _mm256_storeu_ps(c + 64, c20); _mm256_storeu_ps(c + 72, c21);
    _mm256_storeu_ps(c + 80, c22); _mm256_storeu_ps(c + 88, c23);
}

CNNCLI_DEFINE_TILE(cnncli_tile_avx2, "avx2,fma", __m256, 8, _mm256_loadu_ps,
                   _mm256_storeu_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_setzero_ps)
CNNCLI_DEFINE_TILE(cnncli_tile_avx512, "avx512f", __m512, 16, _mm512_loadu_ps,
                   _mm512_storeu_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_setzero_ps)

/* An AVX-512 tile of ROWS rows by VECTORS vectors of 16 filters: the same sums as the
 * 6 x 2 tile, with fewer loads for each multiply-add (6 x 4: 11 for 24; 6 x 2: 9 for
 * 12). On a core whose load ports another VM's thread shares (the slow spells of
 * BENCHMARKS.md), on data in the L1 cache: 6 x 2 medians 104-105 GFLOP/s, 6 x 4
 * 123-124 (4 x 6, 96 filters: 121-123, but AlexNet's first layer took 1.05x the 6 x 2
 * tile's time); on a quiet core all at 150-166. The 8 x 3 tile (12 loads for 24; 8 row
 * pointers still fit the integer registers) runs AlexNet's 96 filters as two blocks of
 * 48: 0.92-0.98x the 6 x 2 tile's time (bench/tile_shapes.c times the shapes alone). */
#define CNNCLI_DEFINE_WIDE_TILE(NAME, ROWS, VECTORS)                                          \
__attribute__((target("avx512f")))                                                         \
static void NAME(const float* a, const int* rows, const int* cols, ptrdiff_t T,             \
                 const float* b, float* c, int accumulate)                                  \
{                                                                                           \
    const float* p[ROWS];                                                                   \
    __m512 acc[ROWS][VECTORS], w[VECTORS], x;                                               \
    ptrdiff_t t, o;                                                                         \
    int r, j;                                                                               \
    _Pragma("GCC unroll 8")                                                                 \
    for (r = 0; r < ROWS; r++) {                                                            \
        p[r] = a + rows[r];                                                                 \
        CNNCLI_OPAQUE(p[r]);                                                                \
    }                                                                                       \
    _Pragma("GCC unroll 8")                                                                 \
    for (r = 0; r < ROWS; r++)                                                              \
        _Pragma("GCC unroll 8")                                                             \
        for (j = 0; j < VECTORS; j++)                                                       \
            acc[r][j] = accumulate ? _mm512_loadu_ps(c + (r * VECTORS + j) * 16)            \
                                   : _mm512_setzero_ps();                                   \
    _Pragma("GCC unroll 2")                                                                 \
    for (t = 0; t < T; t++) {                                                               \
        o = cols[t];                                                                        \
        _Pragma("GCC unroll 8")                                                             \
        for (j = 0; j < VECTORS; j++)                                                       \
            w[j] = _mm512_loadu_ps(b + (VECTORS * t + j) * 16);                             \
        _Pragma("GCC unroll 8")                                                             \
        for (r = 0; r < ROWS; r++) {                                                        \
            x = _mm512_set1_ps(p[r][o]);                                                    \
            _Pragma("GCC unroll 8")                                                         \
            for (j = 0; j < VECTORS; j++)                                                   \
                acc[r][j] = _mm512_fmadd_ps(x, w[j], acc[r][j]);                            \
        }                                                                                   \
    }                                                                                       \
    _Pragma("GCC unroll 8")                                                                 \
    for (r = 0; r < ROWS; r++)                                                              \
        _Pragma("GCC unroll 8")                                                             \
        for (j = 0; j < VECTORS; j++)                                                       \
            _mm512_storeu_ps(c + (r * VECTORS + j) * 16, acc[r][j]);                        \
}

CNNCLI_DEFINE_WIDE_TILE(cnncli_tile_avx512_64, 6, 4)
CNNCLI_DEFINE_WIDE_TILE(cnncli_tile_avx512_48, 8, 3)

/* Which variant runs: 0 none (im2col + GEMM), 1 AVX2 + FMA, 2 AVX-512 (isa.h); set on
 * first use. On an Intel Xeon of family 6, model 207 (AVX-512, 2 vCPUs, OpenBLAS choosing
 * its own AVX-512 GEMM), against im2col + GEMM, the AVX-512 variant took the convolution
 * shapes' forward from 1.41x to 0.88x PyTorch's time (geometric mean) and
 * forward+backward from 0.91x to 0.70x; the AVX2 variant on that CPU reached 1.19x and
 * 0.87x (BENCHMARKS.md, seventh part). */
static int cnncli_isa = -1;

/* Filters of the wide tile: 32 (AVX2 or AVX-512), 0 when no variant runs. The narrow
 * tile has 16. */
static int cnncli_tile_filters(int wanted)
{
    if (cnncli_isa < 0)
        cnncli_isa = cnncli_pick_isa(wanted);
    return cnncli_isa > 0 ? 32 : 0;
}

/* The variant chosen (0, 1 or 2 as above), after cnncli_tile_filters. */
static int cnncli_variant(void)
{
    return cnncli_isa > 0 ? cnncli_isa : 0;
}

/* Filters of the widest tile that `filters` fill exactly (AVX-512): 64 where they are a
 * multiple of 64, 48 where a multiple of 48 (96: AlexNet's first layer), else 0. */
static int cnncli_widest_filters(ptrdiff_t filters)
{
    if (cnncli_isa != 2)
        return 0;
    return filters % 64 == 0 ? 64 : filters % 48 == 0 ? 48 : 0;
}

/* Rows of a tile of that shape: `wide` 0 the narrow tile, 1 the wide one, 64 or 48 the
 * widest (6 rows by 4 vectors, 8 rows by 3). */
static int cnncli_tile_rows(int wide)
{
    return wide == 48 ? 8 : wide == 1 && cnncli_isa == 1 ? 3 : 6;
}

static void cnncli_tile(int wide, const float* a, const int* rows, const int* cols,
                        ptrdiff_t T, const float* b, float* c, int accumulate)
{
    if (wide == 64)
        cnncli_tile_avx512_64(a, rows, cols, T, b, c, accumulate);
    else if (wide == 48)
        cnncli_tile_avx512_48(a, rows, cols, T, b, c, accumulate);
    else if (!wide)
        cnncli_tile_avx2(a, rows, cols, T, b, c, accumulate);
    else if (cnncli_isa == 2)
        cnncli_tile_avx512(a, rows, cols, T, b, c, accumulate);
    else
        cnncli_tile_avx2_wide(a, rows, cols, T, b, c, accumulate);
}

/* v[r][c] becomes v[c][r]: an 8x8 block of floats transposed in registers. */
__attribute__((target("avx2")))
static inline void cnncli_transpose8(__m256 v[8])
{
    __m256 t[8], u[8];
    int r;
    for (r = 0; r < 8; r += 2) {
        t[r] = _mm256_unpacklo_ps(v[r], v[r + 1]);
        t[r + 1] = _mm256_unpackhi_ps(v[r], v[r + 1]);
    }
    for (r = 0; r < 8; r += 4) {
        u[r] = _mm256_shuffle_ps(t[r], t[r + 2], 0x44);
        u[r + 1] = _mm256_shuffle_ps(t[r], t[r + 2], 0xEE);
        u[r + 2] = _mm256_shuffle_ps(t[r + 1], t[r + 3], 0x44);
        u[r + 3] = _mm256_shuffle_ps(t[r + 1], t[r + 3], 0xEE);
    }
    /* u[0..3]: columns 0-3 of rows 0-3 in the low lanes, of rows 4-7 in the high lanes
     * of u[4..7]; the lane permutes finish the transpose. */
    for (r = 0; r < 4; r++) {
        v[r] = _mm256_permute2f128_ps(u[r], u[r + 4], 0x20);
        v[r + 4] = _mm256_permute2f128_ps(u[r], u[r + 4], 0x31);
    }
}

/* out[k * width + j] = weight[j * stride + k] (times scale[j] unless scale is NULL) for
 * k < K, j < filters, 0 for filters <= j < width: one block of the forward's packed
 * weights (stride K), or a chunk of K of its taps (stride: the layer's taps), weight and
 * scale pointing at the block's first filter. Eight filters at a time, in
 * chunks of PACK_TAPS taps, through 8x8 in-register transposes: eight rows read in step
 * stay in the L1 cache (rows K floats apart often share a handful of sets, and all 32 of
 * a block at once evicted each other: 0.38 ms for ResNet-18's 256-channel 3x3 layer),
 * and the chunk of output they fill (8 KiB) stays there until all four groups wrote it. */
#define CNNCLI_PACK_TAPS 64
__attribute__((target("avx2")))
static void cnncli_pack_avx2(const float* weight, ptrdiff_t stride, const float* scale,
                             float* out, ptrdiff_t filters, ptrdiff_t K, ptrdiff_t width)
{
    ptrdiff_t k0, k_stop, j0, k, j, r;
    for (k0 = 0; k0 < K; k0 += CNNCLI_PACK_TAPS) {
        k_stop = k0 + CNNCLI_PACK_TAPS < K ? k0 + CNNCLI_PACK_TAPS : K;
        for (j0 = 0; j0 < width; j0 += 8) {
            k = k0;
            if (j0 + 8 <= filters) {
                const __m256 factor = scale != NULL ? _mm256_loadu_ps(scale + j0)
                                                    : _mm256_set1_ps(1.0f);
                for (; k + 8 <= k_stop; k += 8) {
                    __m256 v[8];
                    for (r = 0; r < 8; r++)
                        v[r] = _mm256_loadu_ps(weight + (j0 + r) * stride + k);
                    cnncli_transpose8(v);
                    for (r = 0; r < 8; r++)
                        _mm256_storeu_ps(out + (k + r) * width + j0,
                                         scale != NULL ? _mm256_mul_ps(v[r], factor) : v[r]);
                }
            }
            for (; k < k_stop; k++)
                for (j = j0; j < j0 + 8; j++)
                    out[k * width + j] = j >= filters ? 0.0f
                                         : scale != NULL ? weight[j * stride + k] * scale[j]
                                         : weight[j * stride + k];
        }
    }
}

static void cnncli_pack_rows(const float* weight, ptrdiff_t stride, const float* scale,
                             float* out, ptrdiff_t filters, ptrdiff_t K, ptrdiff_t width)
{
    cnncli_pack_avx2(weight, stride, scale, out, filters, K, width);
}

static void cnncli_pack(const float* weight, const float* scale, float* out,
                        ptrdiff_t filters, ptrdiff_t K, ptrdiff_t width)
{
    cnncli_pack_avx2(weight, K, scale, out, filters, K, width);
}

/* Taps k_first to k_stop of grad_input's kernel for one block of `width` of the layer's
 * channels (count of them real, the rest 0): out[(k - k_first) * width + j] =
 * weight[(f * C + c_first + j) * taps + offsets[t]] for k = f * sub_taps + t, from the
 * layer's (F, C, taps) weight (offsets: the rotation, or a phase's sub-kernel; see
 * pyx/direct.pxi). Each row of `out` is a strided run of the weight: AVX-512 gathers it
 * sixteen channels at a time, other CPUs value by value. */
__attribute__((target("avx512f")))
static void cnncli_pack_rotated_avx512(const float* weight, ptrdiff_t C, ptrdiff_t taps,
                                       ptrdiff_t sub_taps, const int* offsets,
                                       ptrdiff_t c_first, ptrdiff_t count, float* out,
                                       ptrdiff_t k_first, ptrdiff_t k_stop, ptrdiff_t width)
{
    const __m512i lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2,
                                           1, 0);
    const __m512i step = _mm512_mullo_epi32(lanes, _mm512_set1_epi32((int)taps));
    ptrdiff_t k, f, j0;
    for (k = k_first; k < k_stop; k++, out += width) {
        const float* source;
        f = k / sub_taps;
        source = weight + (f * C + c_first) * taps + offsets[k - f * sub_taps];
        for (j0 = 0; j0 < width; j0 += 16) {
            ptrdiff_t left = count - j0;
            __mmask16 real = left >= 16 ? (__mmask16)0xFFFF
                             : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1);
            _mm512_storeu_ps(out + j0, _mm512_mask_i32gather_ps(
                _mm512_setzero_ps(), real, step, source + j0 * taps, 4));
        }
    }
}

static void cnncli_pack_rotated(const float* weight, ptrdiff_t C, ptrdiff_t taps,
                                ptrdiff_t sub_taps, const int* offsets, ptrdiff_t c_first,
                                ptrdiff_t count, float* out, ptrdiff_t k_first,
                                ptrdiff_t k_stop, ptrdiff_t width)
{
    ptrdiff_t k, f, j;
    if (cnncli_isa == 2 && width % 16 == 0) {
        cnncli_pack_rotated_avx512(weight, C, taps, sub_taps, offsets, c_first, count, out,
                                   k_first, k_stop, width);
        return;
    }
    for (k = k_first; k < k_stop; k++, out += width) {
        const float* source;
        f = k / sub_taps;
        source = weight + (f * C + c_first) * taps + offsets[k - f * sub_taps];
        for (j = 0; j < count; j++)
            out[j] = source[j * taps];
        for (; j < width; j++)
            out[j] = 0.0f;
    }
}

/* out[2r] = even[r], out[2r + 1] = odd[r] for r < pairs: a row of a stride-2 layer's
 * grad_input from its two column phases (pyx/phases.pxi), eight pairs at a time; value
 * by value, the strided writes took 12% of ResNet's 3x3 downsampling's grad_input. */
__attribute__((target("avx2")))
static void cnncli_interleave2(const float* even, const float* odd, float* out,
                               ptrdiff_t pairs)
{
    ptrdiff_t r = 0;
    for (; r + 8 <= pairs; r += 8) {
        __m256 e = _mm256_loadu_ps(even + r), o = _mm256_loadu_ps(odd + r);
        __m256 low = _mm256_unpacklo_ps(e, o), high = _mm256_unpackhi_ps(e, o);
        _mm256_storeu_ps(out + 2 * r, _mm256_permute2f128_ps(low, high, 0x20));
        _mm256_storeu_ps(out + 2 * r + 8, _mm256_permute2f128_ps(low, high, 0x31));
    }
    for (; r < pairs; r++) {
        out[2 * r] = even[r];
        out[2 * r + 1] = odd[r];
    }
}

/* y[j * row_stride + r] = relu?(sums[r * width + j] + bias[j]) for r < rows, j < filters:
 * a group's sums (position-major, `width` filters a row) written out filter-major. Blocks
 * of 8 positions by 8 filters go through an in-register transpose, the rest value by
 * value; bias may be NULL. ReLU keeps NaN, as the scalar max(0, x) of the other paths. */
__attribute__((target("avx2")))
static void cnncli_store_avx2(const float* sums, ptrdiff_t rows, ptrdiff_t filters,
                              ptrdiff_t width, const float* bias, int relu, float* y,
                              ptrdiff_t row_stride)
{
    ptrdiff_t r0, j0, r, j;
    const __m256 zero = _mm256_setzero_ps();
    for (j0 = 0; j0 + 8 <= filters; j0 += 8) {
        for (r0 = 0; r0 + 8 <= rows; r0 += 8) {
            __m256 v[8];
            for (r = 0; r < 8; r++)
                v[r] = _mm256_loadu_ps(sums + (r0 + r) * width + j0);
            cnncli_transpose8(v);
            for (j = 0; j < 8; j++) {
                __m256 value = v[j];
                if (bias != NULL)
                    value = _mm256_add_ps(value, _mm256_set1_ps(bias[j0 + j]));
                if (relu)
                    value = _mm256_max_ps(zero, value);
                _mm256_storeu_ps(y + (j0 + j) * row_stride + r0, value);
            }
        }
        for (j = j0; j < j0 + 8; j++)
            for (r = r0; r < rows; r++) {
                float value = sums[r * width + j];
                if (bias != NULL)
                    value += bias[j];
                y[j * row_stride + r] = relu && value < 0 ? 0.0f : value;
            }
    }
    for (j = j0; j < filters; j++)
        for (r = 0; r < rows; r++) {
            float value = sums[r * width + j];
            if (bias != NULL)
                value += bias[j];
            y[j * row_stride + r] = relu && value < 0 ? 0.0f : value;
        }
}

static void cnncli_store(const float* sums, ptrdiff_t rows, ptrdiff_t filters,
                         ptrdiff_t width, const float* bias, int relu, float* y,
                         ptrdiff_t row_stride)
{
    cnncli_store_avx2(sums, rows, filters, width, bias, relu, y, row_stride);
}

#else

static int cnncli_tile_filters(int wanted) { (void)wanted; return 0; }
static int cnncli_variant(void) { return 0; }

static int cnncli_tile_rows(int wide) { (void)wide; return 6; }
static int cnncli_widest_filters(ptrdiff_t filters) { (void)filters; return 0; }

static void cnncli_tile(int wide, const float* a, const int* rows, const int* cols,
                        ptrdiff_t T, const float* b, float* c, int accumulate)
{
    (void)wide; (void)a; (void)rows; (void)cols; (void)T; (void)b; (void)c; (void)accumulate;
}

static void cnncli_pack_rows(const float* weight, ptrdiff_t stride, const float* scale,
                             float* out, ptrdiff_t filters, ptrdiff_t K, ptrdiff_t width)
{
    (void)weight; (void)stride; (void)scale; (void)out; (void)filters; (void)K; (void)width;
}

static void cnncli_pack(const float* weight, const float* scale, float* out,
                        ptrdiff_t filters, ptrdiff_t K, ptrdiff_t width)
{
    (void)weight; (void)scale; (void)out; (void)filters; (void)K; (void)width;
}

static void cnncli_pack_rotated(const float* weight, ptrdiff_t C, ptrdiff_t taps,
                                ptrdiff_t sub_taps, const int* offsets, ptrdiff_t c_first,
                                ptrdiff_t count, float* out, ptrdiff_t k_first,
                                ptrdiff_t k_stop, ptrdiff_t width)
{
    (void)weight; (void)C; (void)taps; (void)sub_taps; (void)offsets; (void)c_first;
    (void)count; (void)out; (void)k_first; (void)k_stop; (void)width;
}

static void cnncli_interleave2(const float* even, const float* odd, float* out,
                               ptrdiff_t pairs)
{
    (void)even; (void)odd; (void)out; (void)pairs;
}

static void cnncli_store(const float* sums, ptrdiff_t rows, ptrdiff_t filters,
                         ptrdiff_t width, const float* bias, int relu, float* y,
                         ptrdiff_t row_stride)
{
    (void)sums; (void)rows; (void)filters; (void)width; (void)bias; (void)relu; (void)y;
    (void)row_stride;
}

#endif
#endif
