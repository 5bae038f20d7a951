"""Time cnncli's convolution and pooling kernels beside PyTorch and NumPy im2col.

One run measures every implementation on the same inputs, at each thread
count, and prints milliseconds (median of repeated calls), GFLOP/s and the
ratios as Markdown tables, ready for BENCHMARKS.md. "cnncli im2col" is cnncli with its
direct convolution kernel turned off (the same as cnncli where the CPU has no AVX2):

    python bench/bench_kernels.py                 # full run, 1 and 2 threads
    python bench/bench_kernels.py --quick         # fewer repeats, 2 threads

PyTorch is used only when importable (`pip install torch`); it is never a
dependency of cnncli. Memory: tracemalloc sees every NumPy allocation, so the
peak traced during a cnncli forward, minus its output, is the scratch it
needed (BLAS's own fixed buffers are not included).
"""

import argparse
import statistics
import time
import tracemalloc

import numpy as np
from threadpoolctl import threadpool_limits

import cnncli
from cnncli import functional as F

try:
    import torch
    import torch.nn.functional as torch_functional
except ImportError:
    torch = None

# (label, N, Cin, Cout, H=W, kernel, stride, padding): the shapes the kernel issue names.
CONV_SHAPES = [
    ("LeNet conv1", 64, 1, 32, 28, 5, 1, 2),
    ("LeNet conv2", 64, 32, 64, 14, 5, 1, 2),
    ("VGG 32x32", 32, 64, 64, 32, 3, 1, 1),
    ("VGG 28x28", 16, 128, 128, 28, 3, 1, 1),
    ("ResNet down", 16, 64, 128, 56, 3, 2, 1),
    ("AlexNet conv1", 8, 3, 96, 227, 11, 4, 0),
    ("ResNet 1x1", 32, 256, 64, 14, 1, 1, 0),
    ("digits 8x8", 32, 1, 8, 8, 3, 1, 1),
]
POOLS = [("max", 2, 2), ("max", 3, 2), ("avg", 2, 2), ("avg", 3, 2)]


def median_ms(functions, min_repeats, min_seconds, blocks=3):
    """Median wall time in ms of each function, timed in alternating blocks.

    Calls of one function run back to back within a block: right after another
    library ran, its idle threads still spin for a while and would slow the
    next call, so the first call of every block is not counted. Blocks rotate
    through the functions `blocks` times, so a slow spell of a shared machine
    falls on all of them alike.
    """
    times = {name: [] for name in functions}
    for _ in range(blocks):
        for name, function in functions.items():
            function()
            start = time.perf_counter()
            count = 0
            while count < -(-min_repeats // blocks) or (
                    time.perf_counter() - start < min_seconds / blocks and count < 300):
                begin = time.perf_counter()
                function()
                times[name].append(time.perf_counter() - begin)
                count += 1
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


# --- NumPy im2col baselines ---------------------------------------------------
# "plain": the textbook version a student writes (gather with index arrays,
# scatter back with np.add.at). "strided": the best NumPy does, a strided view
# copied once and a batched matmul, with the same OpenBLAS cnncli calls.

def index_im2col_indices(C, H, W, kernel, stride, padding):
    OH = (H + 2 * padding - kernel) // stride + 1
    OW = (W + 2 * padding - kernel) // stride + 1
    rows = np.repeat(np.arange(kernel), kernel)
    columns = np.tile(np.arange(kernel), kernel)
    channel = np.repeat(np.arange(C), kernel * kernel)[:, None]
    h = np.tile(rows, C)[:, None] + stride * np.repeat(np.arange(OH), OW)[None, :]
    w = np.tile(columns, C)[:, None] + stride * np.tile(np.arange(OW), OH)[None, :]
    return channel, h, w, (OH, OW)


def plain_conv_forward(x, weight, bias, stride, padding):
    N, C, H, W = x.shape
    channel, h, w, (OH, OW) = index_im2col_indices(C, H, W, weight.shape[2], stride, padding)
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    cols = xp[:, channel, h, w].transpose(1, 2, 0).reshape(channel.shape[0], -1)
    out = weight.reshape(weight.shape[0], -1) @ cols + bias[:, None]
    return out.reshape(weight.shape[0], OH, OW, N).transpose(3, 0, 1, 2), cols


def plain_conv_backward(grad_output, x, weight, cols, stride, padding):
    N, C, H, W = x.shape
    channel, h, w, _ = index_im2col_indices(C, H, W, weight.shape[2], stride, padding)
    dy = grad_output.transpose(1, 2, 3, 0).reshape(weight.shape[0], -1)
    grad_weight = (dy @ cols.T).reshape(weight.shape)
    grad_bias = grad_output.sum(axis=(0, 2, 3))
    dcols = (weight.reshape(weight.shape[0], -1).T @ dy).reshape(channel.shape[0], -1, N)
    dxp = np.zeros((N, C, H + 2 * padding, W + 2 * padding), dtype=x.dtype)
    np.add.at(dxp, (slice(None), channel, h, w), dcols.transpose(2, 0, 1))
    return dxp[:, :, padding:padding + H, padding:padding + W], grad_weight, grad_bias


def numpy_im2col(x, kernel, stride, padding):
    N, C, H, W = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    OH = (H + 2 * padding - kernel) // stride + 1
    OW = (W + 2 * padding - kernel) // stride + 1
    s = xp.strides
    windows = np.lib.stride_tricks.as_strided(
        xp, (N, C, kernel, kernel, OH, OW),
        (s[0], s[1], s[2], s[3], s[2] * stride, s[3] * stride))
    return windows.reshape(N, C * kernel * kernel, OH * OW), (OH, OW)


def numpy_conv_forward(x, weight, bias, stride, padding):
    cols, (OH, OW) = numpy_im2col(x, weight.shape[2], stride, padding)
    out = np.matmul(weight.reshape(weight.shape[0], -1), cols) + bias[:, None]
    return out.reshape(x.shape[0], weight.shape[0], OH, OW), cols


def numpy_conv_backward(grad_output, x, weight, cols, stride, padding):
    N, C, H, W = x.shape
    Fo, _, K, _ = weight.shape
    OH, OW = grad_output.shape[2:]
    dy = grad_output.reshape(N, Fo, OH * OW)
    grad_weight = np.matmul(dy, cols.transpose(0, 2, 1)).sum(axis=0).reshape(weight.shape)
    grad_bias = grad_output.sum(axis=(0, 2, 3))
    dcols = np.matmul(weight.reshape(Fo, -1).T, dy).reshape(N, C, K, K, OH, OW)
    dxp = np.zeros((N, C, H + 2 * padding, W + 2 * padding), dtype=x.dtype)
    for kh in range(K):
        for kw in range(K):
            dxp[:, :, kh:kh + stride * OH:stride, kw:kw + stride * OW:stride] += dcols[:, :, kh, kw]
    return dxp[:, :, padding:padding + H, padding:padding + W], grad_weight, grad_bias


# --- one measurement per implementation ------------------------------------

def conv_timings(shape, threads, repeats, seconds, rng):
    _, N, Cin, Cout, H, K, S, P = shape
    x = rng.standard_normal((N, Cin, H, H), dtype=np.float32)
    weight = rng.standard_normal((Cout, Cin, K, K), dtype=np.float32) * 0.1
    bias = rng.standard_normal(Cout, dtype=np.float32)
    out = F.conv2d(x, weight, bias, stride=S, padding=P)
    grad_output = rng.standard_normal(out.shape, dtype=np.float32)
    forward = {"cnncli": lambda: F.conv2d(x, weight, bias, stride=S, padding=P)}
    step = {}

    def cnncli_step():
        F.conv2d(x, weight, bias, stride=S, padding=P)
        F.conv2d_backward(grad_output, x, weight, stride=S, padding=P)
    step["cnncli"] = cnncli_step

    def im2col_only(function):
        """cnncli with its direct kernel turned off: im2col + GEMM for every pass."""
        def run():
            previous = F.use_direct_convolution(False)
            try:
                function()
            finally:
                F.use_direct_convolution(previous)
        return run
    forward["im2col"] = im2col_only(forward["cnncli"])
    step["im2col"] = im2col_only(cnncli_step)

    for name, numpy_forward, numpy_backward in (
            ("numpy", plain_conv_forward, plain_conv_backward),
            ("strided", numpy_conv_forward, numpy_conv_backward)):
        forward[name] = lambda f=numpy_forward: f(x, weight, bias, S, P)

        def numpy_step(f=numpy_forward, b=numpy_backward):
            _, cols = f(x, weight, bias, S, P)
            b(grad_output, x, weight, cols, S, P)
        step[name] = numpy_step
    np.testing.assert_allclose(plain_conv_forward(x, weight, bias, S, P)[0], out,
                               rtol=1e-3, atol=1e-3 * np.abs(out).max())

    if torch is not None:
        tx, tw, tb, tg = (torch.from_numpy(a) for a in (x, weight, bias, grad_output))
        gx, gw, gb = (t.clone().requires_grad_(True) for t in (tx, tw, tb))

        def torch_forward():
            with torch.no_grad():
                torch_functional.conv2d(tx, tw, tb, stride=S, padding=P)
        forward["torch"] = torch_forward
        step["torch"] = lambda: torch_functional.conv2d(gx, gw, gb, stride=S,
                                                        padding=P).backward(tg)
        check = torch_functional.conv2d(tx, tw, tb, stride=S, padding=P).numpy()
        np.testing.assert_allclose(out, check, rtol=1e-3, atol=1e-3 * np.abs(check).max())
        torch.set_num_threads(threads)

    # Each library is held at `threads`: cnncli by its own setting, NumPy's
    # BLAS by threadpoolctl, PyTorch by set_num_threads.
    timings = {}
    with cnncli.threads(threads), threadpool_limits(threads):
        for name, milliseconds in median_ms(forward, repeats, seconds).items():
            timings[name, "fwd"] = milliseconds
        for name, milliseconds in median_ms(step, repeats, seconds).items():
            timings[name, "fwd+bwd"] = milliseconds
    return timings, out


def pool_timings(kind, kernel, stride, x, threads, repeats, seconds, rng):
    out = (F.max_pool2d if kind == "max" else F.avg_pool2d)(x, kernel, stride)
    grad_output = rng.standard_normal(out.shape, dtype=np.float32)
    if kind == "max":
        def cnncli_step():
            _, indices = F.max_pool2d(x, kernel, stride, return_indices=True)
            F.max_pool2d_backward(grad_output, x, kernel, stride, indices=indices)
        forward = {"cnncli": lambda: F.max_pool2d(x, kernel, stride)}
    else:
        def cnncli_step():
            F.avg_pool2d(x, kernel, stride)
            F.avg_pool2d_backward(grad_output, x, kernel, stride)
        forward = {"cnncli": lambda: F.avg_pool2d(x, kernel, stride)}
    step = {"cnncli": cnncli_step}
    if torch is not None:
        torch.set_num_threads(threads)
        pool = torch_functional.max_pool2d if kind == "max" else torch_functional.avg_pool2d
        tx, tg = torch.from_numpy(x), torch.from_numpy(grad_output)
        gx = tx.clone().requires_grad_(True)

        def torch_forward():
            with torch.no_grad():
                pool(tx, kernel, stride)
        forward["torch"] = torch_forward
        step["torch"] = lambda: pool(gx, kernel, stride).backward(tg)
    timings = {}
    with cnncli.threads(threads):
        for name, milliseconds in median_ms(forward, repeats, seconds).items():
            timings[name, "fwd"] = milliseconds
        for name, milliseconds in median_ms(step, repeats, seconds).items():
            timings[name, "fwd+bwd"] = milliseconds
    return timings


def forward_temporaries(N, Cin, Cout, H, K, S, P):
    """(peak bytes of temporaries during a cnncli forward, bytes of input + output)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, Cin, H, H), dtype=np.float32)
    weight = rng.standard_normal((Cout, Cin, K, K), dtype=np.float32)
    tracemalloc.start()
    tracemalloc.reset_peak()
    out = F.conv2d(x, weight, stride=S, padding=P)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak - out.nbytes, x.nbytes + out.nbytes


def numpy_forward_temporaries(N, Cin, Cout, H, K, S, P):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, Cin, H, H), dtype=np.float32)
    weight = rng.standard_normal((Cout, Cin, K, K), dtype=np.float32)
    bias = np.zeros(Cout, dtype=np.float32)
    tracemalloc.start()
    tracemalloc.reset_peak()
    out, cols = numpy_conv_forward(x, weight, bias, S, P)
    del cols
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak - out.nbytes


# --- report ------------------------------------------------------------------

def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "-"


def geometric_mean(values):
    values = [v for v in values if v]
    return float(np.exp(np.mean(np.log(values)))) if values else 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 2 threads only")
    parser.add_argument("--repeats", type=int, default=None, help="minimum timed calls per entry")
    parser.add_argument("--layers", default="", help="only layers whose label contains this text")
    args = parser.parse_args()
    shapes = [shape for shape in CONV_SHAPES if args.layers.lower() in shape[0].lower()]
    thread_counts = [2] if args.quick and args.threads == "1,2" else \
        [int(t) for t in args.threads.split(",")]
    repeats = args.repeats or (3 if args.quick else 7)
    seconds = 0.2 if args.quick else 1.0
    rng = np.random.default_rng(0)

    print(f"cnncli {cnncli.__version__}, OpenMP {'on' if cnncli.openmp_enabled() else 'OFF'}, "
          f"numpy {np.__version__}, torch {torch.__version__ if torch else 'not installed'}")
    print(f"median of >= {repeats} calls and >= {seconds:.1f} s per entry, in 3 alternating blocks; float32; "
          "ratio = cnncli time / other time (below 1: cnncli is faster)\n")

    for threads in thread_counts:
        print(f"### Convolution, {threads} thread{'s' if threads > 1 else ''}\n")
        print("| layer (N, Cin->Cout, HxW, k/s/p) | pass | cnncli ms | GFLOP/s | cnncli im2col "
              "ms | torch ms | numpy plain ms | numpy strided ms | vs torch | plain/cnncli "
              "| strided/cnncli |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        conv_ratios = {"fwd": [], "fwd+bwd": []}
        pool_inputs = []
        for shape in shapes:
            label, N, Cin, Cout, H, K, S, P = shape
            timings, out = conv_timings(shape, threads, repeats, seconds, rng)
            pool_inputs.append((label, out))
            OH = out.shape[2]
            flops = 2 * N * Cout * OH * OH * Cin * K * K
            for step, multiple in (("fwd", 1), ("fwd+bwd", 3)):
                ours = timings["cnncli", step]
                theirs = timings.get(("torch", step))
                conv_ratios[step].append(ours / theirs if theirs else None)
                print(f"| {label} ({N}, {Cin}->{Cout}, {H}x{H}, {K}/{S}/{P}) | {step} "
                      f"| {ours:.3f} | {multiple * flops / ours / 1e6:.1f} "
                      f"| {timings['im2col', step]:.3f} "
                      f"| {f'{theirs:.3f}' if theirs else '-'} | {timings['numpy', step]:.3f} "
                      f"| {timings['strided', step]:.3f} | {ratio(ours, theirs)} "
                      f"| {timings['numpy', step] / ours:.2f} "
                      f"| {timings['strided', step] / ours:.2f} |")
        if torch is not None:
            for step in ("fwd", "fwd+bwd"):
                print(f"\nGeometric mean of cnncli/torch, {step}: "
                      f"{geometric_mean(conv_ratios[step]):.2f}")

        print(f"\n### Pooling on those outputs, {threads} thread{'s' if threads > 1 else ''}\n")
        print("| input (N, C, H, W) | pool | cnncli fwd ms | torch fwd ms | cnncli fwd+bwd ms "
              "| torch fwd+bwd ms | vs torch (fwd+bwd) |")
        print("|---|---|---|---|---|---|---|")
        pool_ratios = []
        for label, x in pool_inputs:
            for kind, kernel, stride in POOLS:
                if min(x.shape[2:]) < kernel:
                    continue
                t = pool_timings(kind, kernel, stride, x, threads, repeats, seconds, rng)
                theirs = t.get(("torch", "fwd+bwd"))
                theirs_forward = t.get(("torch", "fwd"))
                pool_ratios.append(t["cnncli", "fwd+bwd"] / theirs if theirs else None)
                print(f"| {label} {x.shape} | {kind} {kernel}x{kernel}/{stride} "
                      f"| {t['cnncli', 'fwd']:.3f} "
                      f"| {f'{theirs_forward:.3f}' if theirs_forward else '-'} "
                      f"| {t['cnncli', 'fwd+bwd']:.3f} | {f'{theirs:.3f}' if theirs else '-'} "
                      f"| {ratio(t['cnncli', 'fwd+bwd'], theirs)} |")
        if torch is not None:
            print(f"\nGeometric mean of cnncli/torch, pooling fwd+bwd: "
                  f"{geometric_mean(pool_ratios):.2f}; worst: {max(pool_ratios):.2f}")
        print()

    print("### Forward scratch memory (tracemalloc peak minus the output)\n")
    print("| layer | input + output MB | cnncli temporaries MB | ratio | numpy im2col temporaries MB |")
    print("|---|---|---|---|---|")
    for label, N, Cin, Cout, H, K, S, P in [("VGG 32x32 at batch 256", 256, 64, 64, 32, 3, 1, 1)] + \
            [(f"{s[0]} at batch {s[1]}",) + s[1:] for s in shapes]:
        temporaries, in_out = forward_temporaries(N, Cin, Cout, H, K, S, P)
        numpy_temporaries = numpy_forward_temporaries(N, Cin, Cout, H, K, S, P)
        print(f"| {label} | {in_out / 2**20:.1f} | {temporaries / 2**20:.2f} "
              f"| {temporaries / in_out:.3f} | {numpy_temporaries / 2**20:.1f} |")


if __name__ == "__main__":
    main()
