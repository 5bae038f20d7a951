/* A convolution's bias gradient, one filter's sum (pyx/conv.pyx, bias_gradient).
 *
 * Design notes
 * - The sum of dy[n * stride + position] over n < N and position < L in eight double
 *   partial sums: within each row of L values, position p of the whole groups of eight
 *   goes to sum p % 8, then the row's last L % 8 values to theirs one by one; the eight are
 *   added pairwise at the end. Eight independent sums, because one running sum waits for
 *   each addition to finish.
 * - The vector variants hold the eight sums in one vector of eight doubles (AVX-512) or
 *   two of four (AVX2) and do the same additions in the same order: the same bits as
 *   conv.pyx's filter_sum, which the baseline (and float64) keeps. Compiled for the
 *   baseline (SSE2, two doubles a vector), the sum took 5-7% of grad_weight of
 *   ResNet-18's downsampling layer.
 */
#ifndef CNNCLI_FILTERSUM_H
#define CNNCLI_FILTERSUM_H

#include <stddef.h>

static double cnncli_filter_sum_lanes(const double* partial)
{
    return ((partial[0] + partial[1]) + (partial[2] + partial[3]))
           + ((partial[4] + partial[5]) + (partial[6] + partial[7]));
}

static void cnncli_filter_sum_tail(const float* row, ptrdiff_t L, double* partial)
{
    ptrdiff_t position;
    for (position = L - L % 8; position < L; position++)
        partial[position % 8] += row[position];
}

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

__attribute__((target("avx512f")))
static double cnncli_filter_sum_avx512(const float* dy, ptrdiff_t N, ptrdiff_t stride,
                                       ptrdiff_t L)
{
    double partial[8];
    __m512d sums = _mm512_setzero_pd();
    ptrdiff_t n, position;
    for (n = 0; n < N; n++) {
        const float* row = dy + n * stride;
        for (position = 0; position + 8 <= L; position += 8)
            sums = _mm512_add_pd(sums, _mm512_cvtps_pd(_mm256_loadu_ps(row + position)));
        if (L % 8) {
            _mm512_storeu_pd(partial, sums);
            cnncli_filter_sum_tail(row, L, partial);
            sums = _mm512_loadu_pd(partial);
        }
    }
    _mm512_storeu_pd(partial, sums);
    return cnncli_filter_sum_lanes(partial);
}

__attribute__((target("avx2")))
static double cnncli_filter_sum_avx2(const float* dy, ptrdiff_t N, ptrdiff_t stride,
                                     ptrdiff_t L)
{
    double partial[8];
    __m256d low = _mm256_setzero_pd(), high = _mm256_setzero_pd();
    ptrdiff_t n, position;
    for (n = 0; n < N; n++) {
        const float* row = dy + n * stride;
        for (position = 0; position + 8 <= L; position += 8) {
            low = _mm256_add_pd(low, _mm256_cvtps_pd(_mm_loadu_ps(row + position)));
            high = _mm256_add_pd(high, _mm256_cvtps_pd(_mm_loadu_ps(row + position + 4)));
        }
        if (L % 8) {
            _mm256_storeu_pd(partial, low);
            _mm256_storeu_pd(partial + 4, high);
            cnncli_filter_sum_tail(row, L, partial);
            low = _mm256_loadu_pd(partial);
            high = _mm256_loadu_pd(partial + 4);
        }
    }
    _mm256_storeu_pd(partial, low);
    _mm256_storeu_pd(partial + 4, high);
    return cnncli_filter_sum_lanes(partial);
}

/* variant: the direct kernel's (microkernel.h's cnncli_variant): 2 AVX-512, 1 AVX2; only
 * those (without one, conv.pyx sums in its own baseline loop). */
static double cnncli_filter_sum(const float* dy, ptrdiff_t N, ptrdiff_t stride, ptrdiff_t L,
                                int variant)
{
    if (variant == 2)
        return cnncli_filter_sum_avx512(dy, N, stride, L);
    return cnncli_filter_sum_avx2(dy, N, stride, L);
}
#else
static double cnncli_filter_sum(const float* dy, ptrdiff_t N, ptrdiff_t stride, ptrdiff_t L,
                                int variant)
{
    (void)dy; (void)N; (void)stride; (void)L; (void)variant;
    return 0;
}
#endif
#endif
