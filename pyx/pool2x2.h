/* Max pooling of whole 2x2 windows at stride 2, one output row at a time, and of the
 * interior windows of any stride-2 pooling (pyx/pool.pyx).
 *
 * Design notes
 * - Why: the 2x2 pool after nearly every convolution (LeNet, VGG, the shipped models) is
 *   four loads and three compares per output, but the general sweep of pool.pyx compiles
 *   its NaN-aware compare into branches that random activations mispredict: LeNet's first
 *   pooling at batch 64 took 3.8 ms on one thread (10 GB/s would read it in 0.6).
 * - How: eight windows at a time, AVX2 where the CPU has it. Each row pair is split into
 *   its even and odd columns (a shuffle and a permute), then the four cells are compared in
 *   row-major order (top left, top right, bottom left, bottom right) with blends, so the
 *   first maximum wins and a NaN counts as the maximum (the first NaN), as in the general
 *   path. A row's last block (fewer than eight windows) is read and written through
 *   masks. CPUs without AVX2 keep pool.pyx's general path (cnncli_pool_has_avx2).
 * - Indices (training) are the flat position h * W + w of each window's winner in the
 *   input plane, as the general path writes them.
 */
#ifndef CNNCLI_POOL2X2_H
#define CNNCLI_POOL2X2_H

#include <stddef.h>
#include <stdint.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

__attribute__((target("avx2")))
static inline __m256 cnncli_even_columns(__m256 low, __m256 high)
{
    __m256 mixed = _mm256_shuffle_ps(low, high, _MM_SHUFFLE(2, 0, 2, 0));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(mixed), 0xD8));
}

__attribute__((target("avx2")))
static inline __m256 cnncli_odd_columns(__m256 low, __m256 high)
{
    __m256 mixed = _mm256_shuffle_ps(low, high, _MM_SHUFFLE(3, 1, 3, 1));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(mixed), 0xD8));
}

__attribute__((target("avx2")))
static inline void cnncli_keep_max(__m256 value, int offset, __m256* best, __m256i* at)
{
    __m256 greater = _mm256_or_ps(
        _mm256_cmp_ps(value, *best, _CMP_GT_OQ),
        _mm256_and_ps(_mm256_cmp_ps(value, value, _CMP_UNORD_Q),
                      _mm256_cmp_ps(*best, *best, _CMP_ORD_Q)));
    *best = _mm256_blendv_ps(*best, value, greater);
    *at = _mm256_castps_si256(_mm256_blendv_ps(
        _mm256_castsi256_ps(*at), _mm256_castsi256_ps(_mm256_set1_epi32(offset)), greater));
}

/* Lanes below `count` set (count may exceed 8). */
__attribute__((target("avx2")))
static inline __m256i cnncli_first_lanes(ptrdiff_t count)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(count < 8 ? count : 8)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* out[ow] (and indices[ow], unless NULL) for the OW windows whose top-left cells are
 * top[2 * ow], eight at a time; row_start = the flat position of top[0] in its plane. The
 * last block (a row of LeNet's second pooling has seven windows) goes through masked loads
 * and stores. */
__attribute__((target("avx2")))
static void cnncli_max2x2_row(const float* top, ptrdiff_t OW, ptrdiff_t W, int64_t row_start,
                              float* out, int64_t* indices)
{
    const float* bottom = top + W;
    const __m256i lanes = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    const __m256i start = _mm256_set1_epi64x(row_start);
    ptrdiff_t ow;
    for (ow = 0; ow < OW; ow += 8) {
        ptrdiff_t left = OW - ow, cells = 2 * left;
        __m256i low_mask = cnncli_first_lanes(cells), high_mask = cnncli_first_lanes(cells - 8);
        __m256i out_mask = cnncli_first_lanes(left);
        __m256 top_low = _mm256_maskload_ps(top + 2 * ow, low_mask);
        __m256 top_high = _mm256_maskload_ps(top + 2 * ow + 8, high_mask);
        __m256 bottom_low = _mm256_maskload_ps(bottom + 2 * ow, low_mask);
        __m256 bottom_high = _mm256_maskload_ps(bottom + 2 * ow + 8, high_mask);
        __m256 best = cnncli_even_columns(top_low, top_high);
        __m256i at = _mm256_setzero_si256();
        cnncli_keep_max(cnncli_odd_columns(top_low, top_high), 1, &best, &at);
        cnncli_keep_max(cnncli_even_columns(bottom_low, bottom_high), (int)W, &best, &at);
        cnncli_keep_max(cnncli_odd_columns(bottom_low, bottom_high), (int)W + 1, &best, &at);
        _mm256_maskstore_ps(out + ow, out_mask, best);
        if (indices != NULL) {
            /* Offsets inside the row pair fit 32 bits (a plane has < 2**31 cells). */
            __m256i column = _mm256_add_epi32(_mm256_add_epi32(_mm256_set1_epi32((int)(2 * ow)),
                                                               lanes), at);
            _mm256_maskstore_epi64((long long*)(indices + ow),
                                   _mm256_cvtepi32_epi64(_mm256_castsi256_si128(out_mask)),
                                   _mm256_add_epi64(start, _mm256_cvtepi32_epi64(
                                       _mm256_castsi256_si128(column))));
            _mm256_maskstore_epi64((long long*)(indices + ow + 4),
                                   _mm256_cvtepi32_epi64(_mm256_extracti128_si256(out_mask, 1)),
                                   _mm256_add_epi64(start, _mm256_cvtepi32_epi64(
                                       _mm256_extracti128_si256(column, 1))));
        }
    }
}

/* The interior windows of one output row at stride 2, eight at a time, for float32: for
 * o < count, best[o] = the maximum of the plane x over rows h0 to h1 - 1 and columns
 * column + 2 * o + kw (kw < KW), cells compared in row-major order as cnncli_keep_max
 * (the first maximum wins, a NaN counts as the maximum); at[o] (unless NULL) = its flat
 * position. The general path swept one cell of every window at a time through memory,
 * with strided loads that do not vectorise: ResNet's 3x3 pooling at stride 2 (64
 * channels of 56x56, batch 16) took 4.7 ms, 6.8 keeping indices. Here each window's
 * maximum stays in a register over its cells. A block's loads stop at the last cell it
 * needs (masked where the next block does not follow). */
__attribute__((target("avx2")))
static void cnncli_max_windows2(const float* x, ptrdiff_t W, ptrdiff_t h0, ptrdiff_t h1,
                                ptrdiff_t KW, ptrdiff_t column, ptrdiff_t count, float* best,
                                int32_t* at)
{
    const __m256i lanes = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    ptrdiff_t o, h, kw;
    for (o = 0; o < count; o += 8) {
        ptrdiff_t left = count - o, cells = 2 * left - 1;
        __m256i low_mask = cnncli_first_lanes(cells), high_mask = cnncli_first_lanes(cells - 8);
        __m256i out_mask = cnncli_first_lanes(left);
        __m256 top = _mm256_setzero_ps(), top_at = _mm256_setzero_ps();
        for (h = h0; h < h1; h++)
            for (kw = 0; kw < KW; kw++) {
                ptrdiff_t cell = h * W + column + 2 * o + kw;
                __m256 low, high, value, position, greater;
                if (left > 8) {
                    low = _mm256_loadu_ps(x + cell);
                    high = _mm256_loadu_ps(x + cell + 8);
                } else {
                    low = _mm256_maskload_ps(x + cell, low_mask);
                    high = _mm256_maskload_ps(x + cell + 8, high_mask);
                }
                value = cnncli_even_columns(low, high);
                position = _mm256_castsi256_ps(_mm256_add_epi32(
                    _mm256_set1_epi32((int)cell), lanes));
                if (h == h0 && kw == 0) {
                    top = value;
                    top_at = position;
                    continue;
                }
                greater = _mm256_or_ps(
                    _mm256_cmp_ps(value, top, _CMP_GT_OQ),
                    _mm256_and_ps(_mm256_cmp_ps(value, value, _CMP_UNORD_Q),
                                  _mm256_cmp_ps(top, top, _CMP_ORD_Q)));
                top = _mm256_blendv_ps(top, value, greater);
                top_at = _mm256_blendv_ps(top_at, position, greater);
            }
        _mm256_maskstore_ps(best + o, out_mask, top);
        if (at != NULL)
            _mm256_maskstore_epi32((int*)(at + o), out_mask, _mm256_castps_si256(top_at));
    }
}

/* Asked once, when pool.pyx is imported. */
static int cnncli_pool_has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") ? 1 : 0;
}
#else
static int cnncli_pool_has_avx2(void) { return 0; }
static void cnncli_max2x2_row(const float* top, ptrdiff_t OW, ptrdiff_t W, int64_t row_start,
                              float* out, int64_t* indices)
{
    (void)top; (void)OW; (void)W; (void)row_start; (void)out; (void)indices;
}
static void cnncli_max_windows2(const float* x, ptrdiff_t W, ptrdiff_t h0, ptrdiff_t h1,
                                ptrdiff_t KW, ptrdiff_t column, ptrdiff_t count, float* best,
                                int32_t* at)
{
    (void)x; (void)W; (void)h0; (void)h1; (void)KW; (void)column; (void)count; (void)best;
    (void)at;
}
#endif

#endif
