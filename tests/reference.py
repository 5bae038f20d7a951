"""Plain NumPy references for every kernel: readable loops, computed in float64.

They follow the definitions directly (pad, slide a window, multiply-add or
take the max/mean) and share no code with cnncli, so agreement with them is
evidence that the kernels are right.
"""

import numpy as np


def pad_image(x, top, bottom, left, right, value=0.0):
    N, C, H, W = x.shape
    padded = np.full((N, C, H + top + bottom, W + left + right), value, dtype=np.float64)
    padded[:, :, top:top + H, left:left + W] = x
    return padded


def conv2d(x, weight, bias, stride, padding, dilation, groups):
    """padding = (top, bottom, left, right)."""
    sh, sw = stride
    dh, dw = dilation
    xp = pad_image(x, *padding)
    N, C, H, W = xp.shape
    F, Cg, KH, KW = weight.shape
    OH = (H - dh * (KH - 1) - 1) // sh + 1
    OW = (W - dw * (KW - 1) - 1) // sw + 1
    filters_per_group = F // groups
    out = np.zeros((N, F, OH, OW))
    for f in range(F):
        group = f // filters_per_group
        channels = slice(group * Cg, (group + 1) * Cg)
        for oh in range(OH):
            for ow in range(OW):
                window = xp[:, channels,
                            oh * sh: oh * sh + dh * (KH - 1) + 1: dh,
                            ow * sw: ow * sw + dw * (KW - 1) + 1: dw]
                out[:, f, oh, ow] = np.sum(window * weight[f], axis=(1, 2, 3))
        if bias is not None:
            out[:, f] += bias[f]
    return out


def conv2d_backward(grad_output, x, weight, stride, padding, dilation, groups):
    """Returns (grad_input, grad_weight, grad_bias)."""
    sh, sw = stride
    dh, dw = dilation
    top, bottom, left, right = padding
    xp = pad_image(x, *padding)
    grad_xp = np.zeros_like(xp)
    grad_weight = np.zeros(weight.shape)
    F, Cg, KH, KW = weight.shape
    N, _, OH, OW = grad_output.shape
    filters_per_group = F // groups
    for f in range(F):
        group = f // filters_per_group
        channels = slice(group * Cg, (group + 1) * Cg)
        for oh in range(OH):
            for ow in range(OW):
                rows = slice(oh * sh, oh * sh + dh * (KH - 1) + 1, dh)
                cols = slice(ow * sw, ow * sw + dw * (KW - 1) + 1, dw)
                g = grad_output[:, f, oh, ow][:, None, None, None]
                grad_xp[:, channels, rows, cols] += g * weight[f]
                grad_weight[f] += np.sum(g * xp[:, channels, rows, cols], axis=0)
    H, W = x.shape[2:]
    grad_input = grad_xp[:, :, top:top + H, left:left + W]
    grad_bias = grad_output.sum(axis=(0, 2, 3))
    return grad_input, grad_weight, grad_bias


def unfold(x, kernel_size, stride, padding, dilation):
    """padding = (ph, pw) on both sides; rows ordered (c, kh, kw)."""
    KH, KW = kernel_size
    sh, sw = stride
    dh, dw = dilation
    xp = pad_image(x, padding[0], padding[0], padding[1], padding[1])
    N, C, H, W = xp.shape
    OH = (H - dh * (KH - 1) - 1) // sh + 1
    OW = (W - dw * (KW - 1) - 1) // sw + 1
    cols = np.zeros((N, C, KH, KW, OH, OW))
    for kh in range(KH):
        for kw in range(KW):
            for oh in range(OH):
                for ow in range(OW):
                    cols[:, :, kh, kw, oh, ow] = xp[:, :, oh * sh + kh * dh, ow * sw + kw * dw]
    return cols.reshape(N, C * KH * KW, OH * OW)


def _windows(H, W, kernel_size, stride, padding):
    """Yield (oh, ow, rows, cols) of every window, clipped to the H x W input."""
    KH, KW = kernel_size
    OH = (H + 2 * padding[0] - KH) // stride[0] + 1
    OW = (W + 2 * padding[1] - KW) // stride[1] + 1
    for oh in range(OH):
        for ow in range(OW):
            h0 = oh * stride[0] - padding[0]
            w0 = ow * stride[1] - padding[1]
            yield (oh, ow, range(max(h0, 0), min(h0 + KH, H)), range(max(w0, 0), min(w0 + KW, W)))


def max_pool2d(x, kernel_size, stride, padding):
    """Returns (out, indices): indices of the first maximum in row-major window order."""
    N, C, H, W = x.shape
    OH = (H + 2 * padding[0] - kernel_size[0]) // stride[0] + 1
    OW = (W + 2 * padding[1] - kernel_size[1]) // stride[1] + 1
    out = np.zeros((N, C, OH, OW))
    indices = np.zeros((N, C, OH, OW), dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for oh, ow, rows, cols in _windows(H, W, kernel_size, stride, padding):
                best_value, best_index = -np.inf, None
                for h in rows:
                    for w in cols:
                        if best_index is None or x[n, c, h, w] > best_value:
                            best_value, best_index = x[n, c, h, w], h * W + w
                out[n, c, oh, ow] = best_value
                indices[n, c, oh, ow] = best_index
    return out, indices


def max_pool2d_backward(grad_output, x, kernel_size, stride, padding):
    N, C, H, W = x.shape
    _, indices = max_pool2d(x, kernel_size, stride, padding)
    grad_input = np.zeros((N, C, H * W))
    for n in range(N):
        for c in range(C):
            for o, index in enumerate(indices[n, c].reshape(-1)):
                grad_input[n, c, index] += grad_output[n, c].reshape(-1)[o]
    return grad_input.reshape(N, C, H, W)


def avg_pool2d(x, kernel_size, stride, padding, count_include_pad):
    N, C, H, W = x.shape
    OH = (H + 2 * padding[0] - kernel_size[0]) // stride[0] + 1
    OW = (W + 2 * padding[1] - kernel_size[1]) // stride[1] + 1
    out = np.zeros((N, C, OH, OW))
    for oh, ow, rows, cols in _windows(H, W, kernel_size, stride, padding):
        window = x[:, :, rows.start:rows.stop, cols.start:cols.stop]
        divisor = kernel_size[0] * kernel_size[1] if count_include_pad else len(rows) * len(cols)
        out[:, :, oh, ow] = window.sum(axis=(2, 3)) / divisor
    return out


def avg_pool2d_backward(grad_output, x, kernel_size, stride, padding, count_include_pad):
    grad_input = np.zeros(x.shape)
    H, W = x.shape[2:]
    for oh, ow, rows, cols in _windows(H, W, kernel_size, stride, padding):
        area = len(rows) * len(cols)
        divisor = kernel_size[0] * kernel_size[1] if count_include_pad else area
        grad_input[:, :, rows.start:rows.stop, cols.start:cols.stop] += (
            grad_output[:, :, oh, ow][:, :, None, None] / divisor)
    return grad_input


def linear(x, weight, bias):
    """x @ weight.T + bias, one output element at a time, accumulated in float64."""
    N, F = x.shape[0], weight.shape[0]
    out = np.zeros((N, F))
    for n in range(N):
        for f in range(F):
            out[n, f] = np.dot(x[n].astype(np.float64), weight[f].astype(np.float64))
    if bias is not None:
        out += bias
    return out.astype(x.dtype)


def linear_backward(grad_output, x, weight):
    """(grad_input, grad_weight, grad_bias) of linear, as sums over the batch in float64."""
    grad_output, x64, weight64 = (a.astype(np.float64) for a in (grad_output, x, weight))
    grad_input = np.einsum("nf,fk->nk", grad_output, weight64)
    grad_weight = np.einsum("nf,nk->fk", grad_output, x64)
    grad_bias = grad_output.sum(axis=0)
    return tuple(a.astype(x.dtype) for a in (grad_input, grad_weight, grad_bias))


# -- element-wise and per-channel work ---------------------------------------------------

def batch_norm(x, mean, var, gamma, beta, eps):
    """gamma * (x - mean) / sqrt(var + eps) + beta, per channel of NCHW x."""
    shape = (1, -1, 1, 1)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * gamma.reshape(shape) \
        + beta.reshape(shape)


def batch_norm_backward(grad_output, x, mean, inverse_std, gamma, batch_statistics):
    """(grad_input, grad_gamma, grad_beta) of batch_norm, written out with NumPy."""
    shape = (1, -1, 1, 1)
    normalised = (x - mean.reshape(shape)) * inverse_std.reshape(shape)
    grad_gamma = np.sum(grad_output * normalised, axis=(0, 2, 3))
    grad_beta = grad_output.sum(axis=(0, 2, 3))
    scale = (gamma * inverse_std).reshape(shape)
    if not batch_statistics:
        return grad_output * scale, grad_gamma, grad_beta
    mean_grad = grad_output.mean(axis=(0, 2, 3), keepdims=True)
    mean_grad_normalised = np.mean(grad_output * normalised, axis=(0, 2, 3), keepdims=True)
    return (scale * (grad_output - mean_grad - normalised * mean_grad_normalised), grad_gamma,
            grad_beta)


def sgd_steps(value, grads, lr, momentum, weight_decay, nesterov):
    """value after one SGD step per gradient, as torch.optim.SGD."""
    value, velocity = value.copy(), None
    for grad in grads:
        grad = grad + weight_decay * value
        if momentum:
            velocity = grad.copy() if velocity is None else momentum * velocity + grad
            grad = grad + momentum * velocity if nesterov else velocity
        value = value - lr * grad
    return value


def adam_steps(value, grads, lr, beta1, beta2, eps, weight_decay, decoupled):
    """value after one Adam (AdamW with decoupled) step per gradient, as torch.optim."""
    value = value.copy()
    m, v = np.zeros_like(value), np.zeros_like(value)
    for step, grad in enumerate(grads, start=1):
        if decoupled:
            value = value - lr * weight_decay * value
        else:
            grad = grad + weight_decay * value
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad * grad
        value = value - lr * (m / (1 - beta1 ** step)) / (np.sqrt(v / (1 - beta2 ** step)) + eps)
    return value
