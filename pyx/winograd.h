/* The transforms of Winograd's F(2x2, 3x3) convolution (pyx/winograd.pxi).
 *
 * Design notes
 * - F(2x2, 3x3) computes a 2x2 block of outputs ("a tile") of a 3x3 stride-1 layer from a
 *   4x4 patch of input d and the 3x3 kernel g as Y = A^T [(G g G^T) . (B^T d B)] A: 16
 *   products per tile and channel instead of 36. Over all channels the 16 elements of the
 *   transformed input V = B^T d B and weights U = G g G^T meet in 16 independent sums
 *   M[e] = sum_c U[e][c] V[e][c], each a product of (tiles x channels) by (channels x
 *   filters): those run on the direct kernel's micro-kernel (microkernel.h). With
 *       B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  G = [1 0 0; .5 .5 .5; .5 -.5 .5;
 *       0 0 1],  A^T = [1 1 1 0; 0 1 -1 -1]
 *   it computes the cross-correlation y[i] = sum_k d[i + k] g[k], as the layers do. Element
 *   e = 4k + l: k from the transform of the rows, l of the columns.
 * - Layouts. V of a band of R tiles: V[e][c][r], so three neighbouring tiles are three
 *   neighbouring broadcasts of the micro-kernel. U of a block of `width` filters:
 *   U[e][c][j], the micro-kernel's packed weights. M: M[e][r][j], its sums.
 * - The input transform takes eight tiles of a row at a time: their patches' columns
 *   2t..2t+3 are the even and odd columns of two overlapping 16-float loads, separated by
 *   shuffles.
 * - Every value goes through a fixed sequence of additions and multiply-adds: a result
 *   does not depend on which thread computed it.
 */
#ifndef CNNCLI_WINOGRAD_H
#define CNNCLI_WINOGRAD_H

#include <stddef.h>

/* G of F(2x2, 3x3) (4x3) and of F(2x2, 5x5) (6x5, below), and the one for an r x r kernel. */
static const double CNNCLI_G4[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5},
                                       {0, 0, 1}};
static const double CNNCLI_G6[6][5] = {
    {1.0 / 4, 0, 0, 0, 0},
    {-1.0 / 6, -1.0 / 6, -1.0 / 6, -1.0 / 6, -1.0 / 6},
    {-1.0 / 6, 1.0 / 6, -1.0 / 6, 1.0 / 6, -1.0 / 6},
    {1.0 / 24, 1.0 / 12, 1.0 / 6, 1.0 / 3, 2.0 / 3},
    {1.0 / 24, -1.0 / 12, 1.0 / 6, -1.0 / 3, 2.0 / 3},
    {0, 0, 0, 0, 1}};

static const double* cnncli_wino_g(int r)
{
    return r == 3 ? &CNNCLI_G4[0][0] : &CNNCLI_G6[0][0];
}

/* Filters transformed side by side: each step of cnncli_wino_weights_r is a loop over
 * this many of them, which the compiler turns into vector instructions. */
#define CNNCLI_WINO_LANES 8

/* u[e][c][j] for the filters f = f0 + j (j < filters; 0 for filters <= j < width) and every
 * channel c < C: G g G^T (e = (r + 1) k + l, computed in double) of the r x r kernel
 * g[kh][kw] = weight[f * sf + c * sc + kh * sh + kw * sw] (strides, so that grad_input's
 * rotated, transposed kernel is read in place), times scale[j] unless scale is NULL.
 * width is a multiple of CNNCLI_WINO_LANES (a tile's filters). Inlined with r a constant
 * into cnncli_wino_weights, so that its loops unroll, and run CNNCLI_WINO_LANES filters at
 * a time: filter by filter, with r known only at run time, a 128 x 128-channel 3x3 layer
 * took 1.1 ms (67 ns a filter and channel), for every forward and grad_input. Each value
 * is the same sequence of products and sums either way (no fused multiply-adds: the
 * target has none). */
__attribute__((target("avx2"))) static inline __attribute__((always_inline))
void cnncli_wino_weights_r(const float* weight, ptrdiff_t sf, ptrdiff_t sc, ptrdiff_t sh,
                           ptrdiff_t sw, const float* scale, float* u, ptrdiff_t C,
                           ptrdiff_t filters, ptrdiff_t width, const int r)
{
    const double* G = cnncli_wino_g(r);
    const int n = r + 1;
    ptrdiff_t c, j0, i, k, l, q;
    double g[5][5][CNNCLI_WINO_LANES], h[6][5][CNNCLI_WINO_LANES], e[CNNCLI_WINO_LANES];
    float factor[CNNCLI_WINO_LANES];
    for (c = 0; c < C; c++)
        for (j0 = 0; j0 < width; j0 += CNNCLI_WINO_LANES) {
            for (i = 0; i < CNNCLI_WINO_LANES; i++)
                factor[i] = j0 + i >= filters ? 0.0f : scale != NULL ? scale[j0 + i] : 1.0f;
            for (k = 0; k < r; k++)
                for (q = 0; q < r; q++)
                    for (i = 0; i < CNNCLI_WINO_LANES; i++)
                        g[k][q][i] = j0 + i < filters
                            ? weight[(j0 + i) * sf + c * sc + k * sh + q * sw] : 0.0;
            for (k = 0; k < n; k++)                        /* h = G g */
                for (q = 0; q < r; q++) {
                    for (i = 0; i < CNNCLI_WINO_LANES; i++)
                        h[k][q][i] = 0;
                    for (l = 0; l < r; l++)
                        for (i = 0; i < CNNCLI_WINO_LANES; i++)
                            h[k][q][i] += G[k * r + l] * g[l][q][i];
                }
            for (k = 0; k < n; k++)                        /* (h G^T)[k][l] */
                for (l = 0; l < n; l++) {
                    for (i = 0; i < CNNCLI_WINO_LANES; i++)
                        e[i] = 0;
                    for (q = 0; q < r; q++)
                        for (i = 0; i < CNNCLI_WINO_LANES; i++)
                            e[i] += h[k][q][i] * G[l * r + q];
                    for (i = 0; i < CNNCLI_WINO_LANES; i++)
                        u[((n * k + l) * C + c) * width + j0 + i] = (float)e[i] * factor[i];
                }
        }
}

/* The same transform with 8 doubles a vector, for the AVX-512 variant: a layer of 256
 * channels and filters at 7x7 transforms 65536 kernels for every forward and grad_input. */
__attribute__((target("avx512f")))
static void cnncli_wino_weights_avx512(const float* weight, ptrdiff_t sf, ptrdiff_t sc,
                                       ptrdiff_t sh, ptrdiff_t sw, const float* scale, float* u,
                                       ptrdiff_t C, ptrdiff_t filters, ptrdiff_t width, int r)
{
    if (r == 3)
        cnncli_wino_weights_r(weight, sf, sc, sh, sw, scale, u, C, filters, width, 3);
    else
        cnncli_wino_weights_r(weight, sf, sc, sh, sw, scale, u, C, filters, width, 5);
}

static int cnncli_wino_sixteen_lanes;

__attribute__((target("avx2")))
static void cnncli_wino_weights(const float* weight, ptrdiff_t sf, ptrdiff_t sc, ptrdiff_t sh,
                                ptrdiff_t sw, const float* scale, float* u, ptrdiff_t C,
                                ptrdiff_t filters, ptrdiff_t width, int r)
{
    if (cnncli_wino_sixteen_lanes)
        cnncli_wino_weights_avx512(weight, sf, sc, sh, sw, scale, u, C, filters, width, r);
    else if (r == 3)
        cnncli_wino_weights_r(weight, sf, sc, sh, sw, scale, u, C, filters, width, 3);
    else
        cnncli_wino_weights_r(weight, sf, sc, sh, sw, scale, u, C, filters, width, 5);
}

/* grad[j * stride + kh * r + kw] = (G^T du_j G)[kh][kw] for filters j < count of one
 * channel: the weight gradient of an r x r kernel from its (r + 1)^2 sums du[e][j] in the
 * transformed space (the adjoint of cnncli_wino_weights), computed in double for
 * CNNCLI_WINO_LANES filters side by side, inlined with r a constant as
 * cnncli_wino_weights_r is. Filter by filter it cost about as much as that transform did
 * (67 ns a filter and channel of a 3x3 kernel); the same operations in the same order. */
__attribute__((target("avx2"))) static inline __attribute__((always_inline))
void cnncli_wino_weight_grads_r(const double du[][CNNCLI_WINO_LANES], float* grad,
                                ptrdiff_t stride, int count, const int r)
{
    const double* G = cnncli_wino_g(r);
    const int n = r + 1;
    double h[5][6][CNNCLI_WINO_LANES], sum[CNNCLI_WINO_LANES];
    int k, l, q, j;
    for (k = 0; k < r; k++)                                /* h = G^T du */
        for (l = 0; l < n; l++) {
            for (j = 0; j < CNNCLI_WINO_LANES; j++)
                h[k][l][j] = 0;
            for (q = 0; q < n; q++)
                for (j = 0; j < CNNCLI_WINO_LANES; j++)
                    h[k][l][j] += G[q * r + k] * du[n * q + l][j];
        }
    for (k = 0; k < r; k++)                                /* grad = h G */
        for (l = 0; l < r; l++) {
            for (j = 0; j < CNNCLI_WINO_LANES; j++)
                sum[j] = 0;
            for (q = 0; q < n; q++)
                for (j = 0; j < CNNCLI_WINO_LANES; j++)
                    sum[j] += h[k][q][j] * G[q * r + l];
            for (j = 0; j < count; j++)
                grad[j * stride + k * r + l] = (float)sum[j];
        }
}

__attribute__((target("avx2")))
static void cnncli_wino_weight_grads(const double du[][CNNCLI_WINO_LANES], float* grad,
                                     ptrdiff_t stride, int count, int r)
{
    if (r == 3)
        cnncli_wino_weight_grads_r(du, grad, stride, count, 3);
    else
        cnncli_wino_weight_grads_r(du, grad, stride, count, 5);
}

/* F(2x2, 5x5): the same for a 5x5 kernel from 6x6 patches, 36 products per tile and
 * channel instead of 100, with the matrices of the points 0, 1, -1, 2, -2 and infinity
 * (those of F(4x4, 3x3)): B^T below, G (6x5) rows (1/4, 0, 0, 0, 0), -(1, 1, 1, 1, 1)/6,
 * -(1, -1, 1, -1, 1)/6, (1, 2, 4, 8, 16)/24, (1, -2, 4, -8, 16)/24, (0, 0, 0, 0, 1), and
 * A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 1]. Element e = 6k + l. */
static const float CNNCLI_BT6[6][6] = {{4, 0, -5, 0, 1, 0}, {0, -4, -4, 1, 1, 0},
                                       {0, 4, -4, -1, 1, 0}, {0, -2, -1, 2, 1, 0},
                                       {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
static const float CNNCLI_AT6[2][6] = {{1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 1}};

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

/* Even and odd floats of p[0..15]: ev = p[0], p[2], ..., p[14]; od = p[1], ..., p[15]. */
__attribute__((target("avx2")))
static inline void cnncli_deinterleave(const float* p, __m256* ev, __m256* od)
{
    __m256 lo = _mm256_loadu_ps(p), hi = _mm256_loadu_ps(p + 8);
    *ev = _mm256_castpd_ps(_mm256_permute4x64_pd(
        _mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0x88)), 0xD8));
    *od = _mm256_castpd_ps(_mm256_permute4x64_pd(
        _mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0xDD)), 0xD8));
}

/* cnncli_deinterleave of p[0..count-1] only (count < 16; the rest read as zeros). */
__attribute__((target("avx2")))
static inline void cnncli_deinterleave_first(const float* p, ptrdiff_t count, __m256* ev,
                                             __m256* od)
{
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256 lo = _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)count), lanes));
    __m256 hi = _mm256_maskload_ps(p + 8, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)count - 8),
                                                             lanes));
    *ev = _mm256_castpd_ps(_mm256_permute4x64_pd(
        _mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0x88)), 0xD8));
    *od = _mm256_castpd_ps(_mm256_permute4x64_pd(
        _mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0xDD)), 0xD8));
}

/* cnncli_wino_input's last block of a row, fewer than eight tiles (all of a 7-tile row):
 * the columns it needs read and its `left` tiles written through masks (element e at
 * out[e * stride]). Patch by patch, as scalars, these took 3% of a ResNet-18
 * training step at 112x112. Kept apart from the whole blocks' loop, whose registers the
 * masks would crowd (VGG's 16-tile rows ran 1.05x slower). */
__attribute__((target("avx2"), noinline))
static void cnncli_wino_input_last(const float* d, ptrdiff_t row, ptrdiff_t left, float* out,
                                   ptrdiff_t stride)
{
    __m256 col[4][4], tr[4][4];
    __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)left),
                                      _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    int r, k;
    for (r = 0; r < 4; r++) {
        cnncli_deinterleave_first(d + r * row, 2 * left + 2, &col[r][0], &col[r][1]);
        cnncli_deinterleave_first(d + r * row + 2, 2 * left, &col[r][2], &col[r][3]);
    }
    for (k = 0; k < 4; k++) {
        tr[0][k] = _mm256_sub_ps(col[0][k], col[2][k]);
        tr[1][k] = _mm256_add_ps(col[1][k], col[2][k]);
        tr[2][k] = _mm256_sub_ps(col[2][k], col[1][k]);
        tr[3][k] = _mm256_sub_ps(col[1][k], col[3][k]);
    }
    for (k = 0; k < 4; k++) {
        _mm256_maskstore_ps(out + (4 * k + 0) * stride, keep, _mm256_sub_ps(tr[k][0], tr[k][2]));
        _mm256_maskstore_ps(out + (4 * k + 1) * stride, keep, _mm256_add_ps(tr[k][1], tr[k][2]));
        _mm256_maskstore_ps(out + (4 * k + 2) * stride, keep, _mm256_sub_ps(tr[k][2], tr[k][1]));
        _mm256_maskstore_ps(out + (4 * k + 3) * stride, keep, _mm256_sub_ps(tr[k][1], tr[k][3]));
    }
}

/* V of a band of tile rows: v[(e * C + c) * R + (i * tiles_wide + t)] for the tile rows
 * i < rows, the tiles t < tiles_wide of a row and the channels c < C, from the padded
 * sample x (channel planes `plane` floats apart, rows `row` floats apart) whose tile row i
 * starts at input row 2 * i (x points at the band's first). A row needs 2 * tiles_wide + 2
 * readable columns. */
__attribute__((target("avx2")))
static void cnncli_wino_input(const float* x, ptrdiff_t plane, ptrdiff_t row, ptrdiff_t C,
                              ptrdiff_t rows, ptrdiff_t tiles_wide, float* v, ptrdiff_t R)
{
    ptrdiff_t c, i, t, k, r;
    for (c = 0; c < C; c++)
        for (i = 0; i < rows; i++) {
            const float* d = x + c * plane + 2 * i * row;
            float* out = v + c * R + i * tiles_wide;
            for (t = 0; t + 8 <= tiles_wide; t += 8) {
                /* Columns 2t + q of the eight patches: q = 0, 1 from one load, 2, 3 from
                 * the load two floats on; rows combined first (B^T d), then columns. */
                __m256 col[4][4], tr[4][4];
                for (r = 0; r < 4; r++) {
                    cnncli_deinterleave(d + r * row + 2 * t, &col[r][0], &col[r][1]);
                    cnncli_deinterleave(d + r * row + 2 * t + 2, &col[r][2], &col[r][3]);
                }
                for (k = 0; k < 4; k++) {
                    tr[0][k] = _mm256_sub_ps(col[0][k], col[2][k]);
                    tr[1][k] = _mm256_add_ps(col[1][k], col[2][k]);
                    tr[2][k] = _mm256_sub_ps(col[2][k], col[1][k]);
                    tr[3][k] = _mm256_sub_ps(col[1][k], col[3][k]);
                }
                for (k = 0; k < 4; k++) {
                    _mm256_storeu_ps(out + (4 * k + 0) * C * R + t,
                                     _mm256_sub_ps(tr[k][0], tr[k][2]));
                    _mm256_storeu_ps(out + (4 * k + 1) * C * R + t,
                                     _mm256_add_ps(tr[k][1], tr[k][2]));
                    _mm256_storeu_ps(out + (4 * k + 2) * C * R + t,
                                     _mm256_sub_ps(tr[k][2], tr[k][1]));
                    _mm256_storeu_ps(out + (4 * k + 3) * C * R + t,
                                     _mm256_sub_ps(tr[k][1], tr[k][3]));
                }
            }
            if (t < tiles_wide)
                cnncli_wino_input_last(d + 2 * t, row, tiles_wide - t, out + t, C * R);
        }
}

/* Y = A^T M A of each tile of a band, written position-major: y[p * width + j] for the
 * output positions p = (2 * i + a) * out_wide + 2 * t + b of the band (i < rows, t <
 * tiles_wide) that lie inside out_high x out_wide, from m[(e * R + i * tiles_wide + t) *
 * width + j]; width a multiple of 8. */
__attribute__((target("avx2")))
static void cnncli_wino_output(const float* m, ptrdiff_t R, ptrdiff_t width, ptrdiff_t rows,
                               ptrdiff_t tiles_wide, ptrdiff_t out_high, ptrdiff_t out_wide,
                               float* y)
{
    ptrdiff_t i, t, j, e, a, b;
    for (i = 0; i < rows; i++)
        for (t = 0; t < tiles_wide; t++)
            for (j = 0; j < width; j += 8) {
                __m256 v[16], s[2][4], out[2][2];
                for (e = 0; e < 16; e++)
                    v[e] = _mm256_loadu_ps(m + (e * R + i * tiles_wide + t) * width + j);
                for (b = 0; b < 4; b++) {              /* s = A^T M */
                    s[0][b] = _mm256_add_ps(_mm256_add_ps(v[b], v[4 + b]), v[8 + b]);
                    s[1][b] = _mm256_sub_ps(_mm256_sub_ps(v[4 + b], v[8 + b]), v[12 + b]);
                }
                for (a = 0; a < 2; a++) {              /* Y = s A */
                    out[a][0] = _mm256_add_ps(_mm256_add_ps(s[a][0], s[a][1]), s[a][2]);
                    out[a][1] = _mm256_sub_ps(_mm256_sub_ps(s[a][1], s[a][2]), s[a][3]);
                }
                for (a = 0; a < 2; a++)
                    for (b = 0; b < 2; b++)
                        if (2 * i + a < out_high && 2 * t + b < out_wide)
                            _mm256_storeu_ps(
                                y + ((2 * i + a) * out_wide + 2 * t + b) * width + j,
                                out[a][b]);
            }
}

/* d[a][b] = the 8 filters from j of output (2i + a, 2t + b) of y (position-major, `width`
 * filters a position), zero past the output's edge: one tile of the output gradient. */
__attribute__((target("avx2")))
static inline void cnncli_wino_output_tile(const float* y, ptrdiff_t i, ptrdiff_t t, ptrdiff_t j,
                                           ptrdiff_t out_high, ptrdiff_t out_wide,
                                           ptrdiff_t width, __m256 d[2][2])
{
    ptrdiff_t a, b;
    for (a = 0; a < 2; a++)
        for (b = 0; b < 2; b++)
            d[a][b] = 2 * i + a < out_high && 2 * t + b < out_wide
                ? _mm256_loadu_ps(y + ((2 * i + a) * out_wide + 2 * t + b) * width + j)
                : _mm256_setzero_ps();
}

/* dm[(e * R + i * tiles_wide + t) * width + j] = (A dY A^T)[e] of each tile's 2x2 block of
 * output gradients dY, from y[p * width + j] (position-major, p = oh * out_wide + ow; zero
 * outside out_high x out_wide): the adjoint of cnncli_wino_output, for the weight gradient.
 * width a multiple of 8. */
__attribute__((target("avx2")))
static void cnncli_wino_gradient(const float* y, ptrdiff_t width, ptrdiff_t tiles_high,
                                 ptrdiff_t tiles_wide, ptrdiff_t out_high, ptrdiff_t out_wide,
                                 float* dm, ptrdiff_t R)
{
    ptrdiff_t i, t, j, b, k;
    const __m256 zero = _mm256_setzero_ps();
    for (i = 0; i < tiles_high; i++)
        for (t = 0; t < tiles_wide; t++)
            for (j = 0; j < width; j += 8) {
                __m256 d[2][2], z[4][2];
                float* out = dm + (i * tiles_wide + t) * width + j;
                cnncli_wino_output_tile(y, i, t, j, out_high, out_wide, width, d);
                for (b = 0; b < 2; b++) {              /* z = A dY */
                    z[0][b] = d[0][b];
                    z[1][b] = _mm256_add_ps(d[0][b], d[1][b]);
                    z[2][b] = _mm256_sub_ps(d[0][b], d[1][b]);
                    z[3][b] = _mm256_sub_ps(zero, d[1][b]);
                }
                for (k = 0; k < 4; k++) {              /* dm = z A^T */
                    _mm256_storeu_ps(out + (4 * k + 0) * R * width, z[k][0]);
                    _mm256_storeu_ps(out + (4 * k + 1) * R * width,
                                     _mm256_add_ps(z[k][0], z[k][1]));
                    _mm256_storeu_ps(out + (4 * k + 2) * R * width,
                                     _mm256_sub_ps(z[k][0], z[k][1]));
                    _mm256_storeu_ps(out + (4 * k + 3) * R * width,
                                     _mm256_sub_ps(zero, z[k][1]));
                }
            }
}

/* V of a band for F(2x2, 5x5), from a padded sample stored channel-minor: x[(h * row + w)
 * * CP + c] (CP = C rounded up to 8, row = the padded width; x points at the band's first
 * input row), to v[(e * R + i * tiles_wide + t) * CP + c]. Eight channels at a time, so
 * every tile is vectorised however narrow the image (LeNet's 14x14 outputs are 7 tiles
 * wide: too few to take eight tiles of a row at a time); sixteen on AVX-512 where CP is
 * a multiple of 16. The loops are unrolled, so the zeros of B^T (14 of its 36 entries)
 * are known and skipped: a third of the multiply-adds, which the compiler must keep
 * otherwise (0 * x is not 0 for every x).
 * And cnncli_wino_output for F(2x2, 5x5): Y = A^T M A from 36 elements, `LANES` filters
 * at a time. Both give the same bits at either width: each lane is the same sequence. */
#define CNNCLI_DEFINE_WINO5(SUFFIX, TARGET, VEC, LANES, LOADU, STOREU, SET1, FMADD, ZERO)    \
__attribute__((target(TARGET)))                                                            \
static void cnncli_wino5_input_channels_##SUFFIX(const float* x, ptrdiff_t row,            \
                                                 ptrdiff_t CP, ptrdiff_t rows,             \
                                                 ptrdiff_t tiles_wide, float* v,           \
                                                 ptrdiff_t R)                              \
{                                                                                          \
    ptrdiff_t i, t, c, k, l, q, r;                                                         \
    for (i = 0; i < rows; i++)                                                             \
        for (t = 0; t < tiles_wide; t++)                                                   \
            for (c = 0; c < CP; c += LANES) {                                              \
                const float* d = x + (2 * i * row + 2 * t) * CP + c;                       \
                float* out = v + (i * tiles_wide + t) * CP + c;                            \
                VEC tr[6][6], sum;                                                         \
                _Pragma("GCC unroll 6")                                                    \
                for (k = 0; k < 6; k++)                                                    \
                    _Pragma("GCC unroll 6")                                                \
                    for (q = 0; q < 6; q++) {                                              \
                        sum = ZERO();                                                      \
                        _Pragma("GCC unroll 6")                                            \
                        for (r = 0; r < 6; r++)                                            \
                            if (CNNCLI_BT6[k][r] != 0)                                     \
                                sum = FMADD(SET1(CNNCLI_BT6[k][r]),                        \
                                            LOADU(d + (r * row + q) * CP), sum);           \
                        tr[k][q] = sum;                                                    \
                    }                                                                      \
                _Pragma("GCC unroll 6")                                                    \
                for (k = 0; k < 6; k++)                                                    \
                    _Pragma("GCC unroll 6")                                                \
                    for (l = 0; l < 6; l++) {                                              \
                        sum = ZERO();                                                      \
                        _Pragma("GCC unroll 6")                                            \
                        for (q = 0; q < 6; q++)                                            \
                            if (CNNCLI_BT6[l][q] != 0)                                     \
                                sum = FMADD(SET1(CNNCLI_BT6[l][q]), tr[k][q], sum);        \
                        STOREU(out + (6 * k + l) * R * CP, sum);                           \
                    }                                                                      \
            }                                                                              \
}                                                                                          \
__attribute__((target(TARGET)))                                                            \
static void cnncli_wino5_output_##SUFFIX(const float* m, ptrdiff_t R, ptrdiff_t width,     \
                                         ptrdiff_t rows, ptrdiff_t tiles_wide,             \
                                         ptrdiff_t out_high, ptrdiff_t out_wide, float* y) \
{                                                                                          \
    ptrdiff_t i, t, j, e, a, b, k, l;                                                      \
    for (i = 0; i < rows; i++)                                                             \
        for (t = 0; t < tiles_wide; t++)                                                   \
            for (j = 0; j < width; j += LANES) {                                           \
                VEC v[36], s[2][6], out;                                                   \
                for (e = 0; e < 36; e++)                                                   \
                    v[e] = LOADU(m + (e * R + i * tiles_wide + t) * width + j);            \
                _Pragma("GCC unroll 2")                                                    \
                for (a = 0; a < 2; a++)                                                    \
                    _Pragma("GCC unroll 6")                                                \
                    for (l = 0; l < 6; l++) {                                              \
                        s[a][l] = ZERO();                                                  \
                        _Pragma("GCC unroll 6")                                            \
                        for (k = 0; k < 6; k++)                                            \
                            if (CNNCLI_AT6[a][k] != 0)                                     \
                                s[a][l] = FMADD(SET1(CNNCLI_AT6[a][k]), v[6 * k + l],      \
                                                s[a][l]);                                  \
                    }                                                                      \
                _Pragma("GCC unroll 2")                                                    \
                for (a = 0; a < 2; a++)                                                    \
                    _Pragma("GCC unroll 2")                                                \
                    for (b = 0; b < 2; b++) {                                              \
                        if (2 * i + a >= out_high || 2 * t + b >= out_wide)                \
                            continue;                                                      \
                        out = ZERO();                                                      \
                        _Pragma("GCC unroll 6")                                            \
                        for (l = 0; l < 6; l++)                                            \
                            if (CNNCLI_AT6[b][l] != 0)                                     \
                                out = FMADD(SET1(CNNCLI_AT6[b][l]), s[a][l], out);         \
                        STOREU(y + ((2 * i + a) * out_wide + 2 * t + b) * width + j, out); \
                    }                                                                      \
            }                                                                              \
}

CNNCLI_DEFINE_WINO5(avx2, "avx2,fma", __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps,
                    _mm256_set1_ps, _mm256_fmadd_ps, _mm256_setzero_ps)
CNNCLI_DEFINE_WINO5(avx512, "avx512f", __m512, 16, _mm512_loadu_ps, _mm512_storeu_ps,
                    _mm512_set1_ps, _mm512_fmadd_ps, _mm512_setzero_ps)

/* Whether the F(2x2, 5x5) transforms may take 16 lanes (the direct kernel's AVX-512
 * variant runs), set once by winograd.pxi. Against 8 lanes (paired, 2 threads), LeNet's
 * second layer's forward took 0.86x the time (its transforms were a third of it), 96
 * channels of 5x5 at 27x27 0.94x. */
static int cnncli_wino_sixteen_lanes = 0;

static void cnncli_wino_use_sixteen_lanes(int sixteen)
{
    cnncli_wino_sixteen_lanes = sixteen;
}

static void cnncli_wino5_input_channels(const float* x, ptrdiff_t row, ptrdiff_t CP,
                                        ptrdiff_t rows, ptrdiff_t tiles_wide, float* v,
                                        ptrdiff_t R)
{
    if (cnncli_wino_sixteen_lanes && CP % 16 == 0)
        cnncli_wino5_input_channels_avx512(x, row, CP, rows, tiles_wide, v, R);
    else
        cnncli_wino5_input_channels_avx2(x, row, CP, rows, tiles_wide, v, R);
}

/* width: a multiple of 16 on AVX-512 (the tiles' widths), of 8 otherwise. */
static void cnncli_wino5_output(const float* m, ptrdiff_t R, ptrdiff_t width, ptrdiff_t rows,
                                ptrdiff_t tiles_wide, ptrdiff_t out_high, ptrdiff_t out_wide,
                                float* y)
{
    if (cnncli_wino_sixteen_lanes && width % 16 == 0)
        cnncli_wino5_output_avx512(m, R, width, rows, tiles_wide, out_high, out_wide, y);
    else
        cnncli_wino5_output_avx2(m, R, width, rows, tiles_wide, out_high, out_wide, y);
}

/* cnncli_wino_gradient for F(2x2, 5x5): dm[e] = (A dY A^T)[e], 36 elements, with A^T the
 * 2x6 matrix above. */
__attribute__((target("avx2,fma")))
static void cnncli_wino5_gradient(const float* y, ptrdiff_t width, ptrdiff_t tiles_high,
                                  ptrdiff_t tiles_wide, ptrdiff_t out_high, ptrdiff_t out_wide,
                                  float* dm, ptrdiff_t R)
{
    ptrdiff_t i, t, j, b, k, l;
    for (i = 0; i < tiles_high; i++)
        for (t = 0; t < tiles_wide; t++)
            for (j = 0; j < width; j += 8) {
                __m256 d[2][2], z[6][2], sum;
                float* out = dm + (i * tiles_wide + t) * width + j;
                cnncli_wino_output_tile(y, i, t, j, out_high, out_wide, width, d);
                for (k = 0; k < 6; k++)                /* z = A dY */
                    for (b = 0; b < 2; b++)
                        z[k][b] = _mm256_fmadd_ps(_mm256_set1_ps(CNNCLI_AT6[1][k]), d[1][b],
                                                  _mm256_mul_ps(_mm256_set1_ps(CNNCLI_AT6[0][k]),
                                                                d[0][b]));
                for (k = 0; k < 6; k++)                /* dm = z A^T */
                    for (l = 0; l < 6; l++) {
                        sum = _mm256_fmadd_ps(_mm256_set1_ps(CNNCLI_AT6[1][l]), z[k][1],
                                              _mm256_mul_ps(_mm256_set1_ps(CNNCLI_AT6[0][l]),
                                                            z[k][0]));
                        _mm256_storeu_ps(out + (6 * k + l) * R * width, sum);
                    }
            }
}

/* out[j * plane + w] = source[S * w + j] for w < count, j < S: a row of a strided layer's
 * input cut into its S column phases, each the row of a channel of its own (the fold of
 * pyx/winograd.pxi; `plane` floats between those channels' rows). Strides 2, 3 and 4 as
 * loops the compiler vectorises with permutes (AVX2 or AVX-512 by the kernel's variant);
 * value by value, the fold took 7% of AlexNet's first layer's forward. */
#define CNNCLI_DEFINE_FOLD_ROW(NAME, TARGET)                                                 \
__attribute__((target(TARGET)))                                                            \
static void NAME(const float* restrict source, ptrdiff_t stride, float* restrict out,      \
                 ptrdiff_t plane, ptrdiff_t count)                                         \
{                                                                                          \
    float *restrict r0 = out, *restrict r1 = out + plane;                                   \
    float *restrict r2 = out + 2 * plane, *restrict r3 = out + 3 * plane;                  \
    ptrdiff_t w, j;                                                                        \
    if (stride == 2) {                                                                     \
        for (w = 0; w < count; w++) {                                                      \
            r0[w] = source[2 * w]; r1[w] = source[2 * w + 1];                              \
        }                                                                                  \
    } else if (stride == 3) {                                                              \
        for (w = 0; w < count; w++) {                                                      \
            r0[w] = source[3 * w]; r1[w] = source[3 * w + 1]; r2[w] = source[3 * w + 2];   \
        }                                                                                  \
    } else if (stride == 4) {                                                              \
        for (w = 0; w < count; w++) {                                                      \
            r0[w] = source[4 * w]; r1[w] = source[4 * w + 1];                              \
            r2[w] = source[4 * w + 2]; r3[w] = source[4 * w + 3];                          \
        }                                                                                  \
    } else {                                                                               \
        for (j = 0; j < stride; j++)                                                       \
            for (w = 0; w < count; w++)                                                    \
                out[j * plane + w] = source[stride * w + j];                               \
    }                                                                                      \
}

CNNCLI_DEFINE_FOLD_ROW(cnncli_fold_row_avx2, "avx2")
CNNCLI_DEFINE_FOLD_ROW(cnncli_fold_row_avx512, "avx512f")

static void cnncli_fold_row(const float* source, ptrdiff_t stride, float* out, ptrdiff_t plane,
                            ptrdiff_t count)
{
    if (cnncli_wino_sixteen_lanes)
        cnncli_fold_row_avx512(source, stride, out, plane, count);
    else
        cnncli_fold_row_avx2(source, stride, out, plane, count);
}

#else
static void cnncli_wino_use_sixteen_lanes(int sixteen) { (void)sixteen; }

static void cnncli_fold_row(const float* source, ptrdiff_t stride, float* out, ptrdiff_t plane,
                            ptrdiff_t count)
{
    (void)source; (void)stride; (void)out; (void)plane; (void)count;
}

static void cnncli_wino5_gradient(const float* y, ptrdiff_t width, ptrdiff_t tiles_high,
                                  ptrdiff_t tiles_wide, ptrdiff_t out_high, ptrdiff_t out_wide,
                                  float* dm, ptrdiff_t R)
{
    (void)y; (void)width; (void)tiles_high; (void)tiles_wide; (void)out_high; (void)out_wide;
    (void)dm; (void)R;
}

static void cnncli_wino5_input_channels(const float* x, ptrdiff_t row, ptrdiff_t CP,
                                        ptrdiff_t rows, ptrdiff_t tiles_wide, float* v,
                                        ptrdiff_t R)
{
    (void)x; (void)row; (void)CP; (void)rows; (void)tiles_wide; (void)v; (void)R;
}

static void cnncli_wino5_output(const float* m, ptrdiff_t R, ptrdiff_t width, ptrdiff_t rows,
                                ptrdiff_t tiles_wide, ptrdiff_t out_high, ptrdiff_t out_wide,
                                float* y)
{
    (void)m; (void)R; (void)width; (void)rows; (void)tiles_wide; (void)out_high;
    (void)out_wide; (void)y;
}

static void cnncli_wino_gradient(const float* y, ptrdiff_t width, ptrdiff_t tiles_high,
                                 ptrdiff_t tiles_wide, ptrdiff_t out_high, ptrdiff_t out_wide,
                                 float* dm, ptrdiff_t R)
{
    (void)y; (void)width; (void)tiles_high; (void)tiles_wide; (void)out_high; (void)out_wide;
    (void)dm; (void)R;
}

static void cnncli_wino_input(const float* x, ptrdiff_t plane, ptrdiff_t row, ptrdiff_t C,
                              ptrdiff_t rows, ptrdiff_t tiles_wide, float* v, ptrdiff_t R)
{
    (void)x; (void)plane; (void)row; (void)C; (void)rows; (void)tiles_wide; (void)v; (void)R;
}

static void cnncli_wino_output(const float* m, ptrdiff_t R, ptrdiff_t width, ptrdiff_t rows,
                               ptrdiff_t tiles_wide, ptrdiff_t out_high, ptrdiff_t out_wide,
                               float* y)
{
    (void)m; (void)R; (void)width; (void)rows; (void)tiles_wide; (void)out_high;
    (void)out_wide; (void)y;
}

#endif
#endif
