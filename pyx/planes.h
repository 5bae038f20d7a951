/* Per-channel loops of float32 batch normalisation (pyx/elementwise.pyx): the sums of the
 * statistics and of the gradient, and the two per-value passes.
 *
 * Design notes
 * - Why here: the Cython loops are compiled for the build's baseline (SSE2 on x86-64), and
 *   their sums went to double lanes value by value, a conversion and a double add per
 *   value; the backward of ResNet's 64 channels at 56x56, batch 16, took 3.5 ms where
 *   PyTorch's takes 1.3. Each function here is compiled three times, for AVX-512, AVX2
 *   with FMA and the baseline, from one body (an always-inline function the compiler
 *   vectorises for each target); elementwise.pyx chooses one when it is loaded, by the
 *   CPU and CNNCLI_DIRECT_ISA, through isa.h as the direct kernel does
 *   (cnncli_planes_choose).
 * - Sums: PLANE_LANES float partial sums (value i goes to lane i % PLANE_LANES), each
 *   added into a double lane every PLANE_BLOCK values (16 values a lane); the values past
 *   the last whole group of lanes, and the lanes at the end, are added in double, in
 *   order. The order depends on the plane's size only, so results do not change with the
 *   thread count; they may differ in the last bits between the variants (the AVX ones
 *   fuse multiply and add).
 * - Masked variants take a ReLU's output after the normalisation: the gradient counts only
 *   where it is positive, as relu_backward would have left it (the same values), so a
 *   BatchNorm and its ReLU need no pass of the ReLU's own; and the affine map can apply
 *   the ReLU as it writes (NaN kept, as relu.pxi's).
 * - Non-x86 or other compilers: the baseline body alone (CNNCLI_PLANES_PICK).
 */
#ifndef CNNCLI_PLANES_H
#define CNNCLI_PLANES_H

#include <stddef.h>

#include "isa.h"

#define CNNCLI_PLANE_LANES 16
#define CNNCLI_PLANE_BLOCK 256

#if defined(__GNUC__) || defined(__clang__)
#define CNNCLI_INLINE static inline __attribute__((always_inline))
#define CNNCLI_VECTOR_TYPES 1
#else
#define CNNCLI_INLINE static inline
#define CNNCLI_VECTOR_TYPES 0
#endif

#if CNNCLI_VECTOR_TYPES
/* PLANE_LANES floats as one value of GCC's and clang's generic vectors: a zmm register
 * for AVX-512, two ymm for AVX2, four xmm otherwise. Plain C arrays of lanes were
 * vectorised across loop iterations instead, through shuffles and spills (3.2 ms for the
 * backward above). Loaded and stored through memcpy: the planes need not be aligned. */
typedef float cnncli_lanes __attribute__((vector_size(4 * CNNCLI_PLANE_LANES)));
typedef int cnncli_bits __attribute__((vector_size(4 * CNNCLI_PLANE_LANES)));

#define CNNCLI_LOAD_LANES(v, x) __builtin_memcpy(&(v), (x), sizeof (v))

/* Adds the sums over x[first:stop] (a whole number of lane groups) to the double lanes:
 * of x (kind 0), of (x - centre)^2 (kind 1), or of dy and dy * xhat (kind 2; kind 3: dy
 * taken only where mask > 0, zero elsewhere, as a ReLU's backward passes it). */
CNNCLI_INLINE void cnncli_block_sums(const float* x, const float* dy, const float* mask,
                                     ptrdiff_t first, ptrdiff_t stop, float centre,
                                     float inverse_std, int kind, double* plain,
                                     double* weighted)
{
    cnncli_lanes p = {0}, q = {0}, value, deviation, gradient, keep;
    float p_lanes[CNNCLI_PLANE_LANES], q_lanes[CNNCLI_PLANE_LANES];
    ptrdiff_t i, l;
    for (i = first; i < stop; i += CNNCLI_PLANE_LANES) {
        CNNCLI_LOAD_LANES(value, x + i);
        if (kind == 0) {
            p += value;
        } else if (kind == 1) {
            deviation = value - centre;
            p += deviation * deviation;
        } else {
            CNNCLI_LOAD_LANES(gradient, dy + i);
            if (kind == 3) {
                CNNCLI_LOAD_LANES(keep, mask + i);
                gradient = (cnncli_lanes)((cnncli_bits)gradient & (keep > 0));
            }
            p += gradient;
            q += gradient * ((value - centre) * inverse_std);
        }
    }
    __builtin_memcpy(p_lanes, &p, sizeof p);
    __builtin_memcpy(q_lanes, &q, sizeof q);
    for (l = 0; l < CNNCLI_PLANE_LANES; l++) {
        plain[l] += p_lanes[l];
        weighted[l] += q_lanes[l];
    }
}
#else
/* Other compilers: the same sums in plain arrays of lanes (the same order per lane). */
CNNCLI_INLINE void cnncli_block_sums(const float* x, const float* dy, const float* mask,
                                     ptrdiff_t first, ptrdiff_t stop, float centre,
                                     float inverse_std, int kind, double* plain,
                                     double* weighted)
{
    float p[CNNCLI_PLANE_LANES] = {0}, q[CNNCLI_PLANE_LANES] = {0};
    ptrdiff_t i, l;
    for (i = first; i < stop; i += CNNCLI_PLANE_LANES)
        for (l = 0; l < CNNCLI_PLANE_LANES; l++) {
            float value = x[i + l], gradient;
            if (kind == 0) {
                p[l] += value;
            } else if (kind == 1) {
                p[l] += (value - centre) * (value - centre);
            } else {
                gradient = kind == 3 && !(mask[i + l] > 0) ? 0.0f : dy[i + l];
                p[l] += gradient;
                q[l] += gradient * ((value - centre) * inverse_std);
            }
        }
    for (l = 0; l < CNNCLI_PLANE_LANES; l++) {
        plain[l] += p[l];
        weighted[l] += q[l];
    }
}
#endif

/* The plane's sums (see cnncli_block_sums' kinds) added to sums[0] (and sums[1]). */
CNNCLI_INLINE void cnncli_plane_sums_body(const float* x, const float* dy, const float* mask,
                                          ptrdiff_t n, float centre, float inverse_std,
                                          int kind, double* sums)
{
    double plain[CNNCLI_PLANE_LANES] = {0}, weighted[CNNCLI_PLANE_LANES] = {0};
    double total = 0, weighted_total = 0;
    ptrdiff_t whole = n - n % CNNCLI_PLANE_LANES, first, i, l;
    for (first = 0; first < whole; first += CNNCLI_PLANE_BLOCK) {
        ptrdiff_t stop = first + CNNCLI_PLANE_BLOCK < whole ? first + CNNCLI_PLANE_BLOCK : whole;
        cnncli_block_sums(x, dy, mask, first, stop, centre, inverse_std, kind, plain,
                          weighted);
    }
    for (l = 0; l < CNNCLI_PLANE_LANES; l++) {
        total += plain[l];
        weighted_total += weighted[l];
    }
    for (i = whole; i < n; i++) {
        double value = x[i];
        if (kind == 0) {
            total += value;
        } else if (kind == 1) {
            total += (value - centre) * (value - centre);
        } else {
            float gradient = kind == 3 && !(mask[i] > 0) ? 0.0f : dy[i];
            total += gradient;
            weighted_total += gradient * ((x[i] - centre) * inverse_std);
        }
    }
    sums[0] += total;
    if (kind >= 2)
        sums[1] += weighted_total;
}

/* dx = scale * (dy - mean_dy - xhat * mean_dy_xhat), xhat = (x - centre) * inverse_std;
 * masked: dy taken only where mask > 0. */
CNNCLI_INLINE void cnncli_input_gradient_body(const float* dy, const float* x,
                                              const float* mask, int masked, float* dx,
                                              ptrdiff_t n, float scale, float mean_dy,
                                              float centre, float inverse_std,
                                              float mean_dy_xhat)
{
    ptrdiff_t i;
    for (i = 0; i < n; i++) {
        float gradient = dy[i], keep = masked ? mask[i] : 1.0f;
        gradient = keep > 0 ? gradient : 0.0f;
        dx[i] = scale * (gradient - mean_dy - (x[i] - centre) * inverse_std * mean_dy_xhat);
    }
}

/* out = x * a + b (masked: x taken only where mask > 0), then ReLU'd if relu (NaN kept,
 * as relu.pxi's ReLU). */
CNNCLI_INLINE void cnncli_affine_body(const float* x, const float* mask, int masked, float a,
                                      float b, int relu, float* out, ptrdiff_t n)
{
    ptrdiff_t i;
    for (i = 0; i < n; i++) {
        float value = x[i], keep = masked ? mask[i] : 1.0f;
        value = (keep > 0 ? value : 0.0f) * a + b;
        out[i] = relu && value < 0 ? 0.0f : value;
    }
}

#define CNNCLI_DEFINE_PLANES(SUFFIX, ATTRIBUTE)                                            \
ATTRIBUTE static void cnncli_plane_sum_##SUFFIX(const float* x, ptrdiff_t n, double* sums)  \
{                                                                                          \
    cnncli_plane_sums_body(x, NULL, NULL, n, 0, 0, 0, sums);                               \
}                                                                                          \
ATTRIBUTE static void cnncli_plane_squares_##SUFFIX(const float* x, ptrdiff_t n,           \
                                                    float centre, double* sums)           \
{                                                                                          \
    cnncli_plane_sums_body(x, NULL, NULL, n, centre, 0, 1, sums);                          \
}                                                                                          \
ATTRIBUTE static void cnncli_gradient_sums_##SUFFIX(const float* dy, const float* x,       \
                                                    ptrdiff_t n, float centre,            \
                                                    float inverse_std, double* sums)      \
{                                                                                          \
    cnncli_plane_sums_body(x, dy, NULL, n, centre, inverse_std, 2, sums);                  \
}                                                                                          \
ATTRIBUTE static void cnncli_masked_gradient_sums_##SUFFIX(const float* dy, const float* x, \
                                                           const float* mask, ptrdiff_t n, \
                                                           float centre, float inverse_std, \
                                                           double* sums)                  \
{                                                                                          \
    cnncli_plane_sums_body(x, dy, mask, n, centre, inverse_std, 3, sums);                  \
}                                                                                          \
ATTRIBUTE static void cnncli_input_gradient_##SUFFIX(const float* dy, const float* x,      \
                                                     float* dx, ptrdiff_t n, float scale,  \
                                                     float mean_dy, float centre,         \
                                                     float inverse_std, float mean_dy_xhat) \
{                                                                                          \
    cnncli_input_gradient_body(dy, x, NULL, 0, dx, n, scale, mean_dy, centre, inverse_std,  \
                               mean_dy_xhat);                                              \
}                                                                                          \
ATTRIBUTE static void cnncli_masked_input_gradient_##SUFFIX(                               \
    const float* dy, const float* x, const float* mask, float* dx, ptrdiff_t n,            \
    float scale, float mean_dy, float centre, float inverse_std, float mean_dy_xhat)        \
{                                                                                          \
    cnncli_input_gradient_body(dy, x, mask, 1, dx, n, scale, mean_dy, centre, inverse_std,  \
                               mean_dy_xhat);                                              \
}                                                                                          \
ATTRIBUTE static void cnncli_affine_##SUFFIX(const float* x, float a, float b, float* out,  \
                                             ptrdiff_t n)                                  \
{                                                                                          \
    cnncli_affine_body(x, NULL, 0, a, b, 0, out, n);                                       \
}                                                                                          \
ATTRIBUTE static void cnncli_affine_relu_##SUFFIX(const float* x, float a, float b,         \
                                                  float* out, ptrdiff_t n)                \
{                                                                                          \
    cnncli_affine_body(x, NULL, 0, a, b, 1, out, n);                                       \
}                                                                                          \
ATTRIBUTE static void cnncli_masked_scale_##SUFFIX(const float* x, const float* mask,       \
                                                   float a, float* out, ptrdiff_t n)      \
{                                                                                          \
    cnncli_affine_body(x, mask, 1, a, 0, 0, out, n);                                       \
}

CNNCLI_DEFINE_PLANES(baseline, )

/* The variant that runs (0 baseline, 1 AVX2 with FMA, 2 AVX-512: isa.h); -1 until chosen. */
static int cnncli_planes_isa = -1;

/* Chooses the variant (isa.h's `wanted`); returns the one chosen. */
static int cnncli_planes_choose(int wanted)
{
    cnncli_planes_isa = cnncli_pick_isa(wanted);
    return cnncli_planes_isa;
}

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
CNNCLI_DEFINE_PLANES(avx2, __attribute__((target("avx2,fma"))))
CNNCLI_DEFINE_PLANES(avx512, __attribute__((target("avx512f,avx2,fma"))))

#define CNNCLI_PLANES_PICK(NAME, ARGS)                                                     \
    switch (cnncli_planes_isa >= 0 ? cnncli_planes_isa : cnncli_planes_choose(CNNCLI_AUTO)) { \
    case 2: NAME##_avx512 ARGS; return;                                                    \
    case 1: NAME##_avx2 ARGS; return;                                                      \
    default: NAME##_baseline ARGS; return;                                                 \
    }
#else
#define CNNCLI_PLANES_PICK(NAME, ARGS) NAME##_baseline ARGS; return;
#endif

/* sums[0] += the sum of x[:n]. */
static void cnncli_plane_sum(const float* x, ptrdiff_t n, double* sums)
{
    CNNCLI_PLANES_PICK(cnncli_plane_sum, (x, n, sums))
}

/* sums[0] += the sum of (x - centre)^2 over x[:n]. */
static void cnncli_plane_squares(const float* x, ptrdiff_t n, float centre, double* sums)
{
    CNNCLI_PLANES_PICK(cnncli_plane_squares, (x, n, centre, sums))
}

/* sums[0] += the sum of dy, sums[1] += the sum of dy * (x - centre) * inverse_std. */
static void cnncli_gradient_sums(const float* dy, const float* x, ptrdiff_t n, float centre,
                                 float inverse_std, double* sums)
{
    CNNCLI_PLANES_PICK(cnncli_gradient_sums, (dy, x, n, centre, inverse_std, sums))
}

/* cnncli_gradient_sums of dy where mask > 0 (zero elsewhere). */
static void cnncli_masked_gradient_sums(const float* dy, const float* x, const float* mask,
                                        ptrdiff_t n, float centre, float inverse_std,
                                        double* sums)
{
    CNNCLI_PLANES_PICK(cnncli_masked_gradient_sums, (dy, x, mask, n, centre, inverse_std, sums))
}

/* cnncli_input_gradient of dy where mask > 0 (zero elsewhere). */
static void cnncli_masked_input_gradient(const float* dy, const float* x, const float* mask,
                                         float* dx, ptrdiff_t n, float scale, float mean_dy,
                                         float centre, float inverse_std, float mean_dy_xhat)
{
    CNNCLI_PLANES_PICK(cnncli_masked_input_gradient,
                       (dy, x, mask, dx, n, scale, mean_dy, centre, inverse_std, mean_dy_xhat))
}

static void cnncli_input_gradient(const float* dy, const float* x, float* dx, ptrdiff_t n,
                                  float scale, float mean_dy, float centre, float inverse_std,
                                  float mean_dy_xhat)
{
    CNNCLI_PLANES_PICK(cnncli_input_gradient,
                       (dy, x, dx, n, scale, mean_dy, centre, inverse_std, mean_dy_xhat))
}

static void cnncli_affine(const float* x, float a, float b, float* out, ptrdiff_t n)
{
    CNNCLI_PLANES_PICK(cnncli_affine, (x, a, b, out, n))
}

/* cnncli_affine then ReLU, in one pass. */
static void cnncli_affine_relu(const float* x, float a, float b, float* out, ptrdiff_t n)
{
    CNNCLI_PLANES_PICK(cnncli_affine_relu, (x, a, b, out, n))
}

/* out = x * a where mask > 0, zero elsewhere. */
static void cnncli_masked_scale(const float* x, const float* mask, float a, float* out,
                                ptrdiff_t n)
{
    CNNCLI_PLANES_PICK(cnncli_masked_scale, (x, mask, a, out, n))
}

#endif
