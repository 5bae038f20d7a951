/* Tile shapes of the direct kernel against the one in use, on AlexNet's first layer's sums,
 * one core, data in the L1 cache: how much each keeps of its speed in this VM's slow spells.
 *
 *     gcc -O3 -march=native -I pyx bench/tile_shapes.c -o /tmp/tile_shapes && /tmp/tile_shapes
 *
 * Each round times every shape once, in the same order, over the same 363 taps (3 channels
 * of 11x11, offsets into a 227-wide sample) and reports per shape the median, 10th
 * percentile and best GFLOP/s over the rounds, and the median over rounds of its speed
 * divided by the 6 x 2 tile's in the same round (above 1: faster). The shapes:
 * - "6x2 in use", "8x3 in use", "6x4 in use": cnncli_tile_avx512 and the 48- and
 *   64-filter tiles (microkernel.h), a pointer per position.
 * - "RxV one base": R positions 4 floats apart (a run of an output row at stride 4) by V
 *   vectors of 16 filters; one pointer per tap addresses every broadcast.
 * - "Rx1 folded": R positions by one vector, each broadcast folded into its multiply-add
 *   ({1to16}, base plus displacement), as oneDNN's JIT kernel does for this layer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "microkernel.h"

#define TAPS 363
#define ROUNDS 200

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int ascending(const void* a, const void* b)
{
    double x = *(const double*)a, y = *(const double*)b;
    return x < y ? -1 : x > y;
}

#define DEFINE_RUN(NAME, R, V)                                                              \
__attribute__((target("avx512f"), noinline))                                              \
static void NAME(const float* a, const int* cols, ptrdiff_t T, const float* b, float* c)  \
{                                                                                          \
    __m512 acc[R][V], w[V], x;                                                             \
    int r, j;                                                                              \
    for (r = 0; r < R; r++)                                                                \
        for (j = 0; j < V; j++)                                                            \
            acc[r][j] = _mm512_setzero_ps();                                               \
    for (ptrdiff_t t = 0; t < T; t++) {                                                    \
        const float* p = a + cols[t];                                                      \
        CNNCLI_OPAQUE(p);                                                                  \
        _Pragma("GCC unroll 8")                                                            \
        for (j = 0; j < V; j++)                                                            \
            w[j] = _mm512_loadu_ps(b + 16 * (V * t + j));                                  \
        _Pragma("GCC unroll 32")                                                           \
        for (r = 0; r < R; r++) {                                                          \
            x = _mm512_set1_ps(p[4 * r]);                                                  \
            _Pragma("GCC unroll 8")                                                        \
            for (j = 0; j < V; j++)                                                        \
                acc[r][j] = _mm512_fmadd_ps(x, w[j], acc[r][j]);                           \
        }                                                                                  \
    }                                                                                      \
    for (r = 0; r < R; r++)                                                                \
        for (j = 0; j < V; j++)                                                            \
            _mm512_storeu_ps(c + 16 * (V * r + j), acc[r][j]);                             \
}

DEFINE_RUN(run_12x2, 12, 2)
DEFINE_RUN(run_14x2, 14, 2)
DEFINE_RUN(run_8x3, 8, 3)
DEFINE_RUN(run_6x4, 6, 4)
DEFINE_RUN(run_7x4, 7, 4)
DEFINE_RUN(folded_24x1, 24, 1)  /* one vector: GCC folds each broadcast into its FMA */
DEFINE_RUN(folded_28x1, 28, 1)

typedef void (*shape_fn)(const float*, const int*, ptrdiff_t, const float*, float*);

/* The tiles in use, their positions 4 floats apart as in the run shapes. */
static const int positions[8] = {0, 4, 8, 12, 16, 20, 24, 28};

static void in_use_48(const float* a, const int* cols, ptrdiff_t T, const float* b, float* c)
{
    cnncli_tile_avx512_48(a, positions, cols, T, b, c, 0);
}

static void in_use_64(const float* a, const int* cols, ptrdiff_t T, const float* b, float* c)
{
    cnncli_tile_avx512_64(a, positions, cols, T, b, c, 0);
}

int main(void)
{
    static const char* names[] = {"6x2 in use", "8x3 in use", "6x4 in use",
                                  "12x2 one base", "14x2 one base", "8x3 one base",
                                  "6x4 one base", "7x4 one base", "24x1 folded",
                                  "28x1 folded"};
    static const shape_fn shapes[] = {NULL, in_use_48, in_use_64, run_12x2, run_14x2,
                                      run_8x3, run_6x4, run_7x4, folded_24x1, folded_28x1};
    static const int R[] = {6, 8, 6, 12, 14, 8, 6, 7, 24, 28};
    static const int V[] = {2, 3, 4, 2, 2, 3, 4, 4, 1, 1};
    enum { SHAPES = sizeof(R) / sizeof(R[0]), CALLS = 1200 };
    static double speed[SHAPES][ROUNDS], ratio[SHAPES][ROUNDS];
    float* a = aligned_alloc(64, sizeof(float) * 200000);
    float* b = aligned_alloc(64, sizeof(float) * TAPS * 64);
    float* c = aligned_alloc(64, sizeof(float) * 64 * 64);
    int cols[TAPS], i, k, s;
    double checksum = 0;
    for (i = 0; i < 200000; i++)
        a[i] = (i % 7) * 0.01f;
    for (i = 0; i < TAPS * 64; i++)
        b[i] = 0.001f * (i % 13);
    for (i = 0; i < TAPS; i++)
        cols[i] = i / 121 * 227 * 20 + i % 121 / 11 * 227 + i % 11;
    cnncli_tile_filters(CNNCLI_AUTO);
    for (k = 0; k < ROUNDS; k++)
        for (s = 0; s < SHAPES; s++) {
            int calls = CALLS * 12 / (R[s] * V[s]);
            double started = now();
            for (i = 0; i < calls; i++) {
                if (s == 0)
                    cnncli_tile_avx512(a, positions, cols, TAPS, b, c + (i % 4) * 192, i & 1);
                else
                    shapes[s](a, cols, TAPS, b, c);
            }
            speed[s][k] = 2.0 * TAPS * 16 * V[s] * R[s] * calls / (now() - started) / 1e9;
        }
    for (i = 0; i < 64 * 64; i++)
        checksum += c[i];
    printf("checksum %g (keeps the sums alive)\n", checksum);
    for (s = 0; s < SHAPES; s++) {
        for (k = 0; k < ROUNDS; k++)
            ratio[s][k] = speed[s][k] / speed[0][k];
        qsort(speed[s], ROUNDS, sizeof(double), ascending);
        qsort(ratio[s], ROUNDS, sizeof(double), ascending);
        printf("%-14s median %6.1f  p10 %6.1f  best %6.1f GFLOP/s  speed / 6x2's: %.3f\n",
               names[s], speed[s][ROUNDS / 2], speed[s][ROUNDS / 10], speed[s][ROUNDS - 1],
               ratio[s][ROUNDS / 2]);
    }
    free(a);
    free(b);
    free(c);
    return 0;
}
