# Element-wise and per-channel kernels: ReLU, batch normalisation, optimizer updates.
#
# Design notes
# - Why compiled: between two convolutions, NumPy makes a pass over memory per
#   operation and a temporary array per intermediate result. ReLU's backward
#   (mask, then multiply) and training-mode BatchNorm (mean, variance, centre,
#   scale, shift; and five more in backward) each become one or two passes
#   here, with no temporaries, on the kernels' threads.
# - Layout: ReLU and the optimizer updates see flat C-contiguous arrays;
#   BatchNorm sees NCHW as (N, C, H*W).
# - Parallel axis: flat arrays are cut into blocks of BLOCK values, one per
#   iteration, each writing only its own block. BatchNorm runs one channel per
#   iteration: its sums over (N, H, W) are taken by one thread in a fixed
#   order (in double precision; float32 planes in float lanes of 16 values
#   first, planes.h), so results are bit-identical for any number of threads.
# - BatchNorm's float32 loops are C (planes.h), compiled for AVX-512, AVX2 and
#   the baseline and picked at import. In training, a ReLU after a BatchNorm
#   runs inside its passes: the affine map's output ReLU'd, and that output
#   as the backward's mask (channel_affine's relu, batchnorm_backward's mask).
# - Small arrays (under PARALLEL_MIN values) run on one thread: starting the
#   others would cost more than the work.
# - Allocation: every output comes from the caller; there is no scratch.

from cython.parallel cimport prange
from cython cimport floating
from libc.math cimport sqrt

include "checks.pxi"
include "relu.pxi"
include "isa.pxi"

cdef extern from "planes.h" nogil:
    void cnncli_plane_sum(const float* x, Py_ssize_t n, double* sums)
    void cnncli_plane_squares(const float* x, Py_ssize_t n, float centre, double* sums)
    void cnncli_gradient_sums(const float* dy, const float* x, Py_ssize_t n, float centre,
                              float inverse_std, double* sums)
    void cnncli_input_gradient(const float* dy, const float* x, float* dx, Py_ssize_t n,
                               float scale, float mean_dy, float centre, float inverse_std,
                               float mean_dy_xhat)
    void cnncli_affine(const float* x, float a, float b, float* out, Py_ssize_t n)
    void cnncli_affine_relu(const float* x, float a, float b, float* out, Py_ssize_t n)
    void cnncli_masked_scale(const float* x, const float* mask, float a, float* out,
                             Py_ssize_t n)
    void cnncli_masked_gradient_sums(const float* dy, const float* x, const float* mask,
                                     Py_ssize_t n, float centre, float inverse_std,
                                     double* sums)
    void cnncli_masked_input_gradient(const float* dy, const float* x, const float* mask,
                                      float* dx, Py_ssize_t n, float scale, float mean_dy,
                                      float centre, float inverse_std, float mean_dy_xhat)
    int cnncli_planes_choose(int wanted)

# CNNCLI_DIRECT_ISA also chooses the variant of planes.h's loops (none: the baseline's).
cdef int planes_variant = cnncli_planes_choose(wanted_isa())


def planes_kernel_variant():
    """The variant of batch normalisation's float32 loops on this CPU: 'avx512', 'avx2' or
    'baseline', as CNNCLI_DIRECT_ISA and the CPU chose it when the module was loaded."""
    return ("baseline", "avx2", "avx512")[planes_variant]

cdef Py_ssize_t BLOCK = 16384
cdef Py_ssize_t PARALLEL_MIN = 32768


cdef inline int threads_for(Py_ssize_t size, int n_threads) noexcept nogil:
    return n_threads if size >= PARALLEL_MIN else 1


# The loops over one block are plain pointer loops in helpers of their own, and every
# value is loaded before any choice between values: a load inside a conditional
# expression kept the compiler from turning the choice into a select, so it branched on
# every sign and did not vectorise (ReLU's backward: 7.5 ms instead of 0.5 for 1.6M
# random values).

cdef inline void relu_grad_block(const floating* dy, const floating* y, floating* dx,
                                 Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gradient, output
    for i in range(n):
        gradient = dy[i]
        output = y[i]
        dx[i] = gradient if output > 0 else 0


cdef inline void affine_block(const floating* x, floating a, floating b, floating* out,
                              Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    if floating is float:
        cnncli_affine(x, a, b, out, n)
    else:
        for i in range(n):
            out[i] = x[i] * a + b


cdef inline void affine_relu_block(const floating* x, floating a, floating b, floating* out,
                                   Py_ssize_t n) noexcept nogil:
    """affine_block, then relu_block's ReLU on each value."""
    cdef Py_ssize_t i
    cdef floating value
    if floating is float:
        cnncli_affine_relu(x, a, b, out, n)
    else:
        for i in range(n):
            value = x[i] * a + b
            out[i] = 0 if value < 0 else value


cdef inline void masked_scale_block(const floating* x, const floating* mask, floating a,
                                    floating* out, Py_ssize_t n) noexcept nogil:
    """out = x * a where mask > 0, else 0: relu_grad_block's mask, then affine_block."""
    cdef Py_ssize_t i
    cdef floating value, keep
    if floating is float:
        cnncli_masked_scale(x, mask, a, out, n)
    else:
        for i in range(n):
            value = x[i]
            keep = mask[i]
            out[i] = (value if keep > 0 else 0) * a + 0


# ---------------------------------------------------------------------------
# ReLU
# ---------------------------------------------------------------------------

cdef void relu_forward_typed(const floating[::1] x, floating[::1] out,
                             int n_threads) noexcept:
    cdef Py_ssize_t size = x.shape[0], blocks = (size + BLOCK - 1) // BLOCK
    cdef Py_ssize_t block, stop
    with nogil:
        for block in prange(blocks, schedule='static',
                            num_threads=threads_for(size, n_threads)):
            stop = min((block + 1) * BLOCK, size)
            relu_block(&x[block * BLOCK], &out[block * BLOCK], stop - block * BLOCK)


cdef void relu_backward_typed(const floating[::1] grad_output, const floating[::1] out,
                              floating[::1] grad_input, int n_threads) noexcept:
    cdef Py_ssize_t size = out.shape[0], blocks = (size + BLOCK - 1) // BLOCK
    cdef Py_ssize_t block, stop
    with nogil:
        for block in prange(blocks, schedule='static',
                            num_threads=threads_for(size, n_threads)):
            stop = min((block + 1) * BLOCK, size)
            relu_grad_block(&grad_output[block * BLOCK], &out[block * BLOCK],
                            &grad_input[block * BLOCK], stop - block * BLOCK)


def relu_forward(x, out, int n_threads):
    """out = max(x, 0) element-wise (NaN stays NaN). x and out are flat."""
    dtype = working_dtype("x", x)
    check_array("x", x, 1, dtype, False)
    check_array("out", out, 1, dtype, True)
    check_shape("out", out, x.shape)
    check_at_least("n_threads", n_threads, 1)
    if dtype == np.float32:
        relu_forward_typed[float](x, out, n_threads)
    else:
        relu_forward_typed[double](x, out, n_threads)


def relu_backward(grad_output, out, grad_input, int n_threads):
    """grad_input = grad_output where out > 0, else 0 (out is ReLU's output). Flat arrays;
    grad_input may be grad_output itself."""
    dtype = working_dtype("out", out)
    check_array("grad_output", grad_output, 1, dtype, False)
    check_array("out", out, 1, dtype, False)
    check_array("grad_input", grad_input, 1, dtype, True)
    check_shape("grad_output", grad_output, out.shape)
    check_shape("grad_input", grad_input, out.shape)
    check_at_least("n_threads", n_threads, 1)
    if dtype == np.float32:
        relu_backward_typed[float](grad_output, out, grad_input, n_threads)
    else:
        relu_backward_typed[double](grad_output, out, grad_input, n_threads)


# ---------------------------------------------------------------------------
# Batch normalisation over (N, H*W) of each channel
# ---------------------------------------------------------------------------

# Sums over a plane keep LANES partial sums (value i goes to lane i % LANES) added up in
# lane order at the end: independent additions the compiler can vectorise, where a single
# running sum waits on each addition in turn (4x slower). The order is fixed by the
# plane's size, so results do not depend on the thread count. float32 planes go to
# planes.h, compiled for the CPU's vector units, whose lanes sum in float in short runs.
DEF LANES = 8


cdef inline double plane_sum(const floating* x, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i, lane, whole = n - n % LANES
    cdef double partial[LANES]
    cdef double total = 0
    if floating is float:
        cnncli_plane_sum(x, n, &total)
        return total
    else:
        for lane in range(LANES):
            partial[lane] = 0
        for i in range(0, whole, LANES):
            for lane in range(LANES):
                partial[lane] += x[i + lane]
        for lane in range(LANES):
            total += partial[lane]
        for i in range(whole, n):
            total += x[i]
        return total


cdef inline double plane_squared_deviation(const floating* x, Py_ssize_t n,
                                           double centre) noexcept nogil:
    cdef Py_ssize_t i, lane, whole = n - n % LANES
    cdef double partial[LANES]
    cdef double total = 0, deviation
    if floating is float:
        cnncli_plane_squares(x, n, <float>centre, &total)
        return total
    else:
        for lane in range(LANES):
            partial[lane] = 0
        for i in range(0, whole, LANES):
            for lane in range(LANES):
                deviation = x[i + lane] - centre
                partial[lane] += deviation * deviation
        for lane in range(LANES):
            total += partial[lane]
        for i in range(whole, n):
            deviation = x[i] - centre
            total += deviation * deviation
        return total


cdef inline void plane_gradient_sums(const floating* dy, const floating* x,
                                     const floating* mask, Py_ssize_t n, floating centre,
                                     floating inverse_std, double* sum_dy,
                                     double* sum_dy_xhat) noexcept nogil:
    """Adds the plane's sums of dy and dy * xhat to sum_dy and sum_dy_xhat; with a mask (a
    ReLU's output after this layer; NULL: none), dy counts only where mask > 0."""
    cdef Py_ssize_t i, lane, whole = n - n % LANES
    cdef double plain[LANES]
    cdef double weighted[LANES]
    cdef double total = 0, weighted_total = 0
    cdef double sums[2]
    cdef floating gradient
    if floating is float:
        sums[0] = sums[1] = 0
        if mask == NULL:
            cnncli_gradient_sums(dy, x, n, centre, inverse_std, sums)
        else:
            cnncli_masked_gradient_sums(dy, x, mask, n, centre, inverse_std, sums)
        sum_dy[0] += sums[0]
        sum_dy_xhat[0] += sums[1]
    else:
        for lane in range(LANES):
            plain[lane] = 0
            weighted[lane] = 0
        for i in range(0, whole, LANES):
            for lane in range(LANES):
                gradient = dy[i + lane] if mask == NULL or mask[i + lane] > 0 else 0
                plain[lane] += gradient
                weighted[lane] += gradient * ((x[i + lane] - centre) * inverse_std)
        for lane in range(LANES):
            total += plain[lane]
            weighted_total += weighted[lane]
        for i in range(whole, n):
            gradient = dy[i] if mask == NULL or mask[i] > 0 else 0
            total += gradient
            weighted_total += gradient * ((x[i] - centre) * inverse_std)
        sum_dy[0] += total
        sum_dy_xhat[0] += weighted_total


cdef inline void plane_input_gradient(const floating* dy, const floating* x,
                                      const floating* mask, floating* dx, Py_ssize_t n,
                                      floating scale, floating mean_dy, floating centre,
                                      floating inverse_std,
                                      floating mean_dy_xhat) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gradient
    if floating is float:
        if mask == NULL:
            cnncli_input_gradient(dy, x, dx, n, scale, mean_dy, centre, inverse_std,
                                  mean_dy_xhat)
        else:
            cnncli_masked_input_gradient(dy, x, mask, dx, n, scale, mean_dy, centre,
                                         inverse_std, mean_dy_xhat)
    else:
        for i in range(n):
            gradient = dy[i] if mask == NULL or mask[i] > 0 else 0
            dx[i] = scale * (gradient - mean_dy - (x[i] - centre) * inverse_std * mean_dy_xhat)


cdef void batch_statistics_typed(const floating[:, :, ::1] x, floating[::1] mean,
                                 floating[::1] var, int n_threads) noexcept:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2]
    cdef Py_ssize_t c, n
    cdef double total, centre
    with nogil:
        for c in prange(C, schedule='static', num_threads=threads_for(N * C * P, n_threads)):
            total = 0
            for n in range(N):
                total = total + plane_sum(&x[n, c, 0], P)
            centre = total / (N * P)
            total = 0
            for n in range(N):
                total = total + plane_squared_deviation(&x[n, c, 0], P, centre)
            mean[c] = <floating>centre
            var[c] = <floating>(total / (N * P))


cdef void channel_affine_typed(const floating[:, :, ::1] x, const floating[::1] scale,
                               const floating[::1] shift, floating[:, :, ::1] out, bint relu,
                               int n_threads) noexcept:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2]
    cdef Py_ssize_t plane, n, c
    with nogil:
        for plane in prange(N * C, schedule='static',
                            num_threads=threads_for(N * C * P, n_threads)):
            n = plane // C
            c = plane % C
            if relu:
                affine_relu_block(&x[n, c, 0], scale[c], shift[c], &out[n, c, 0], P)
            else:
                affine_block(&x[n, c, 0], scale[c], shift[c], &out[n, c, 0], P)


cdef void batchnorm_backward_typed(const floating[:, :, ::1] grad_output,
                                   const floating[:, :, ::1] x, const floating[::1] mean,
                                   const floating[::1] inverse_std, const floating[::1] gamma,
                                   floating[:, :, ::1] grad_input, floating[::1] grad_gamma,
                                   floating[::1] grad_beta, const floating[:, :, ::1] mask,
                                   bint batch_statistics, int n_threads) noexcept:
    cdef Py_ssize_t N = grad_output.shape[0], C = grad_output.shape[1]
    cdef Py_ssize_t P = grad_output.shape[2]
    cdef Py_ssize_t c, n
    cdef double sum_dy, sum_dy_xhat, count = N * P
    cdef floating scale, mean_dy, mean_dy_xhat, centre, inv
    cdef bint need_input = grad_input is not None
    cdef bint masked = mask is not None
    cdef const floating* plane_mask
    with nogil:
        for c in prange(C, schedule='static', num_threads=threads_for(N * C * P, n_threads)):
            centre = mean[c]
            inv = inverse_std[c]
            sum_dy = 0
            sum_dy_xhat = 0
            for n in range(N):
                plane_mask = &mask[n, c, 0] if masked else NULL
                plane_gradient_sums(&grad_output[n, c, 0], &x[n, c, 0], plane_mask, P, centre,
                                    inv, &sum_dy, &sum_dy_xhat)
            grad_gamma[c] = <floating>sum_dy_xhat
            grad_beta[c] = <floating>sum_dy
            scale = gamma[c] * inv
            if need_input and batch_statistics:
                # The batch mean and variance depend on every input, hence the two
                # correction terms.
                mean_dy = <floating>(sum_dy / count)
                mean_dy_xhat = <floating>(sum_dy_xhat / count)
                for n in range(N):
                    plane_mask = &mask[n, c, 0] if masked else NULL
                    plane_input_gradient(&grad_output[n, c, 0], &x[n, c, 0], plane_mask,
                                         &grad_input[n, c, 0], P, scale, mean_dy, centre, inv,
                                         mean_dy_xhat)
            elif need_input:
                for n in range(N):
                    if masked:
                        masked_scale_block(&grad_output[n, c, 0], &mask[n, c, 0], scale,
                                           &grad_input[n, c, 0], P)
                    else:
                        affine_block(&grad_output[n, c, 0], scale, 0, &grad_input[n, c, 0], P)


cdef check_planes(str name, object array, object dtype, bint writable, tuple shape):
    check_array(name, array, 3, dtype, writable)
    if shape is not None:
        check_shape(name, array, shape)


cdef check_channels(str name, object array, object dtype, bint writable, Py_ssize_t C):
    check_array(name, array, 1, dtype, writable)
    check_shape(name, array, (C,))


def batch_statistics(x, mean, var, int n_threads):
    """mean[c], var[c] = mean and (biased) variance of x[:, c, :], summed in double. x is
    (N, C, H*W) with N*H*W >= 1."""
    dtype = working_dtype("x", x)
    check_planes("x", x, dtype, False, None)
    N, C, P = x.shape
    check_at_least("values per channel", N * P, 1)
    check_channels("mean", mean, dtype, True, C)
    check_channels("var", var, dtype, True, C)
    check_at_least("n_threads", n_threads, 1)
    if dtype == np.float32:
        batch_statistics_typed[float](x, mean, var, n_threads)
    else:
        batch_statistics_typed[double](x, mean, var, n_threads)


def channel_affine(x, scale, shift, out, int n_threads, bint relu=False):
    """out[n, c, p] = x[n, c, p] * scale[c] + shift[c], then ReLU'd if relu; x and out are
    (N, C, H*W) and out may be x itself."""
    dtype = working_dtype("x", x)
    check_planes("x", x, dtype, False, None)
    check_planes("out", out, dtype, True, tuple(x.shape))
    check_channels("scale", scale, dtype, False, x.shape[1])
    check_channels("shift", shift, dtype, False, x.shape[1])
    check_at_least("n_threads", n_threads, 1)
    if dtype == np.float32:
        channel_affine_typed[float](x, scale, shift, out, relu, n_threads)
    else:
        channel_affine_typed[double](x, scale, shift, out, relu, n_threads)


def batchnorm_backward(grad_output, x, mean, inverse_std, gamma, grad_input, grad_gamma,
                       grad_beta, bint batch_statistics, int n_threads, mask=None):
    """Gradients of out = gamma * (x - mean) * inverse_std + beta, per channel of (N, C, H*W).

    grad_gamma[c] = sum dy * xhat; grad_beta[c] = sum dy; grad_input (None to skip)
    = gamma * inverse_std * (dy - mean(dy) - xhat * mean(dy * xhat)) when mean and
    inverse_std are the batch's own statistics, else gamma * inverse_std * dy. With a mask
    (the output of a ReLU after this layer), dy is grad_output where mask > 0, else 0: the
    gradient through the ReLU too.
    """
    dtype = working_dtype("x", x)
    check_planes("x", x, dtype, False, None)
    shape = tuple(x.shape)
    C = shape[1]
    check_planes("grad_output", grad_output, dtype, False, shape)
    for name, array in (("mean", mean), ("inverse_std", inverse_std), ("gamma", gamma)):
        check_channels(name, array, dtype, False, C)
    for name, array in (("grad_gamma", grad_gamma), ("grad_beta", grad_beta)):
        check_channels(name, array, dtype, True, C)
    check_disjoint("grad_gamma", grad_gamma, "grad_beta", grad_beta)
    if grad_input is not None:
        check_planes("grad_input", grad_input, dtype, True, shape)
        for name, array in (("grad_output", grad_output), ("x", x)):
            check_disjoint("grad_input", grad_input, name, array)
    if mask is not None:
        check_planes("mask", mask, dtype, False, shape)
        if grad_input is not None:
            check_disjoint("grad_input", grad_input, "mask", mask)
    check_at_least("values per channel", shape[0] * shape[2], 1)
    check_at_least("n_threads", n_threads, 1)
    if dtype == np.float32:
        batchnorm_backward_typed[float](grad_output, x, mean, inverse_std, gamma, grad_input,
                                        grad_gamma, grad_beta, mask, batch_statistics,
                                        n_threads)
    else:
        batchnorm_backward_typed[double](grad_output, x, mean, inverse_std, gamma, grad_input,
                                         grad_gamma, grad_beta, mask, batch_statistics,
                                         n_threads)


# ---------------------------------------------------------------------------
# Optimizer updates, in place, one pass over a parameter and its state
# ---------------------------------------------------------------------------

cdef inline void sgd_block(floating* value, const floating* grad, floating* velocity,
                           Py_ssize_t n, floating lr, floating momentum, floating weight_decay,
                           bint nesterov, bint first_step) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating g, v
    for i in range(n):
        g = grad[i] + weight_decay * value[i]
        if velocity != NULL:
            v = velocity[i]
            v = g if first_step else momentum * v + g
            velocity[i] = v
            g = g + momentum * v if nesterov else v
        value[i] = value[i] - lr * g


cdef void sgd_typed(floating[::1] value, const floating[::1] grad, floating[::1] velocity,
                    floating lr, floating momentum, floating weight_decay, bint nesterov,
                    bint first_step, int n_threads) noexcept:
    cdef Py_ssize_t size = value.shape[0], blocks = (size + BLOCK - 1) // BLOCK
    cdef Py_ssize_t block, first, stop
    cdef floating* slots = NULL if velocity is None else &velocity[0]
    with nogil:
        for block in prange(blocks, schedule='static',
                            num_threads=threads_for(size, n_threads)):
            first = block * BLOCK
            stop = min(first + BLOCK, size)
            sgd_block(&value[first], &grad[first], NULL if slots == NULL else slots + first,
                      stop - first, lr, momentum, weight_decay, nesterov, first_step)


cdef inline void adam_block(floating* value, const floating* grad, floating* m, floating* v,
                            Py_ssize_t n, floating lr, floating beta1, floating beta2,
                            floating eps, floating weight_decay, bint decoupled,
                            floating correction1, floating correction2) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating g, p, first, second
    for i in range(n):
        g = grad[i]
        p = value[i]
        if decoupled:
            p = p - lr * weight_decay * p
        else:
            g = g + weight_decay * p
        first = beta1 * m[i] + (1 - beta1) * g
        second = beta2 * v[i] + (1 - beta2) * g * g
        m[i] = first
        v[i] = second
        value[i] = p - lr * (first / correction1) / (<floating>sqrt(second / correction2) + eps)


cdef void adam_typed(floating[::1] value, const floating[::1] grad, floating[::1] m,
                     floating[::1] v, floating lr, floating beta1, floating beta2,
                     floating eps, floating weight_decay, bint decoupled,
                     floating correction1, floating correction2, int n_threads) noexcept:
    cdef Py_ssize_t size = value.shape[0], blocks = (size + BLOCK - 1) // BLOCK
    cdef Py_ssize_t block, first, stop
    with nogil:
        for block in prange(blocks, schedule='static',
                            num_threads=threads_for(size, n_threads)):
            first = block * BLOCK
            stop = min(first + BLOCK, size)
            adam_block(&value[first], &grad[first], &m[first], &v[first], stop - first, lr,
                       beta1, beta2, eps, weight_decay, decoupled, correction1, correction2)


cdef check_update(object value, object grad, tuple slots, int n_threads):
    dtype = working_dtype("value", value)
    check_array("value", value, 1, dtype, True)
    check_array("grad", grad, 1, dtype, False)
    check_shape("grad", grad, value.shape)
    for name, slot in slots:
        if slot is not None:
            check_array(name, slot, 1, dtype, True)
            check_shape(name, slot, value.shape)
            check_disjoint(name, slot, "value", value)
    check_at_least("n_threads", n_threads, 1)
    return dtype


def sgd_update(value, grad, velocity, double lr, double momentum, double weight_decay,
               bint nesterov, bint first_step, int n_threads):
    """In place, with g = grad + weight_decay * value: velocity = g on the first step, else
    momentum * velocity + g (velocity None: no momentum); value -= lr * (g + momentum *
    velocity if nesterov else velocity). Flat arrays."""
    dtype = check_update(value, grad, (("velocity", velocity),), n_threads)
    if dtype == np.float32:
        sgd_typed[float](value, grad, velocity, lr, momentum, weight_decay, nesterov,
                         first_step, n_threads)
    else:
        sgd_typed[double](value, grad, velocity, lr, momentum, weight_decay, nesterov,
                          first_step, n_threads)


def adam_update(value, grad, m, v, double lr, double beta1, double beta2, double eps,
                double weight_decay, bint decoupled, long step, int n_threads):
    """One Adam step in place (PyTorch's formula): m = beta1 m + (1 - beta1) g; v = beta2 v
    + (1 - beta2) g^2; value -= lr * (m / (1 - beta1^step)) / (sqrt(v / (1 - beta2^step))
    + eps). weight_decay adds weight_decay * value to g, or with decoupled (AdamW)
    first takes lr * weight_decay * value off value. Flat arrays."""
    dtype = check_update(value, grad, (("m", m), ("v", v)), n_threads)
    check_at_least("step", step, 1)
    correction1 = 1 - beta1 ** step
    correction2 = 1 - beta2 ** step
    if dtype == np.float32:
        adam_typed[float](value, grad, m, v, lr, beta1, beta2, eps, weight_decay, decoupled,
                          correction1, correction2, n_threads)
    else:
        adam_typed[double](value, grad, m, v, lr, beta1, beta2, eps, weight_decay, decoupled,
                           correction1, correction2, n_threads)
