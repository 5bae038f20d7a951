"""Two builds of the convolution kernels in one process, call by call: the way to see a
change of a few percent on a machine whose speed drifts.

    git worktree add /tmp/base HEAD~1 && (cd /tmp/base && python setup.py build_ext --inplace)
    python bench/bench_ab.py /tmp/base/cnncli/_conv.*.so                  # every layer
    python bench/bench_ab.py /tmp/base/cnncli/_conv.*.so --only "512@4,down" --calls 40
    python bench/bench_ab.py /tmp/base/cnncli/_conv.*.so --only "AlexNet conv1" --passes fwd --calls 300
    python bench/bench_ab.py /tmp/base/cnncli/_conv.*.so --resnet18 1  # whole inference

The other build's `_conv` extension is loaded beside this checkout's; each pass (forward,
grad_input, grad_weight with grad_bias) of each layer is called alternately through
both, `--calls` times (with `--resnet18 BATCH`, a ResNet-18 inference at 224x224
instead, cnncli.functional switched between the two builds' kernels call by call),
OpenBLAS held to one thread as cnncli.functional holds it. Printed:
each build's best time, and the median over calls of this build's time divided by the
other's in the same round (below 1.0: this build is faster), with "differs" where the
two builds' results are not the same bits. Best-of and paired ratios, because on a
shared VM whole spells run slower (BENCHMARKS.md, eighth part): a median over separate
runs mixes spells, a call-by-call pairing does not.
"""

import argparse
import importlib.util
import time

import numpy as np

from cnncli import _conv as this_build
from cnncli.geometry import conv_geometry
from cnncli.parallelism import get_num_threads, single_threaded_blas

# name: (batch, channels, size, filters, kernel, stride, padding)
LAYERS = {
    "LeNet conv1": (64, 1, 28, 32, 5, 1, 2),
    "LeNet conv2": (64, 32, 14, 64, 5, 1, 2),
    "LeNet conv2 b1": (1, 32, 14, 64, 5, 1, 2),
    "VGG 32x32": (32, 64, 32, 64, 3, 1, 1),
    "AlexNet conv1": (8, 3, 227, 96, 11, 4, 0),
    "down": (16, 64, 56, 128, 3, 2, 1),
    "64@28": (16, 64, 28, 64, 3, 1, 1),
    "64->128 s2": (16, 64, 28, 128, 3, 2, 1),
    "128@14": (16, 128, 14, 128, 3, 1, 1),
    "128->256 s2": (16, 128, 14, 256, 3, 2, 1),
    "256@7": (16, 256, 7, 256, 3, 1, 1),
    "256->512 s2": (16, 256, 7, 512, 3, 2, 1),
    "512@4": (16, 512, 4, 512, 3, 1, 1),
    "64->96 s2": (16, 64, 28, 96, 3, 2, 1),
    "32->96": (32, 32, 16, 96, 3, 1, 1),
    "96 5x5": (8, 96, 27, 96, 5, 1, 2),
    "48@32": (16, 32, 32, 48, 3, 1, 1),
    "1x1 256->64": (32, 256, 14, 64, 1, 1, 0),
    "1x1 64->256": (32, 64, 14, 256, 1, 1, 0),
    "1x1 64@56": (16, 64, 56, 64, 1, 1, 0),
    "1x1 1024->256": (16, 1024, 14, 256, 1, 1, 0),
    "1x1 2048->512": (8, 2048, 7, 512, 1, 1, 0),
    "1x1 512->2048": (8, 512, 7, 2048, 1, 1, 0),
    "1x1 64->128 s2@56": (32, 64, 56, 128, 1, 2, 0),
    "1x1 64->128 s2": (16, 64, 28, 128, 1, 2, 0),
    "1x1 128->256 s2": (16, 128, 14, 256, 1, 2, 0),
    "1x1 256->512 s2": (16, 256, 7, 512, 1, 2, 0),
}


def load_other(path):
    spec = importlib.util.spec_from_file_location("_conv", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def passes(module, x, weight, bias, out, grad_output, grad_input, grad_weight, grad_bias,
           geometry, threads):
    arguments = (geometry.stride, geometry.padding, geometry.dilation, 1, threads)
    return {
        "fwd": (lambda: module.conv2d_forward(x, weight, bias, out, *arguments[:4], threads,
                                              False, None), out),
        "dx": (lambda: module.conv2d_backward(grad_output, x, weight, grad_input, None, None,
                                              *arguments), grad_input),
        "dw": (lambda: module.conv2d_backward(grad_output, x, weight, None, grad_weight,
                                              grad_bias, *arguments), grad_weight),
    }


def timed(function):
    with single_threaded_blas:
        started = time.perf_counter()
        function()
        return time.perf_counter() - started


def compare(other, name, calls, rng, labels=("fwd", "dx", "dw")):
    N, C, H, F, K, S, P = LAYERS[name]
    x = rng.standard_normal((N, C, H, H), dtype=np.float32)
    weight = rng.standard_normal((F, C, K, K), dtype=np.float32) * 0.1
    bias = rng.standard_normal(F, dtype=np.float32)
    geometry = conv_geometry(x, weight, S, P, 1, 1)
    out = np.empty((N, F) + geometry.output_size, np.float32)
    buffers = (out, rng.standard_normal(out.shape, dtype=np.float32), np.empty_like(x),
               np.empty_like(weight), np.empty(F, np.float32))
    threads = get_num_threads()
    mine = passes(this_build, x, weight, bias, *buffers, geometry, threads)
    theirs = passes(other, x, weight, bias, *buffers, geometry, threads)
    cells = []
    for label in labels:
        (run_mine, result), (run_theirs, _) = mine[label], theirs[label]
        timed(run_theirs)
        expected = result.copy()
        timed(run_mine)
        same = np.array_equal(expected, result)
        times_mine, times_theirs = [], []
        for call in range(calls):
            # Each build goes first in every other pair, so neither gains from its place.
            if call % 2:
                times_mine.append(timed(run_mine))
                times_theirs.append(timed(run_theirs))
            else:
                times_theirs.append(timed(run_theirs))
                times_mine.append(timed(run_mine))
        ratios = sorted(a / b for a, b in zip(times_mine, times_theirs))
        cells.append(f"{label} {min(times_theirs) * 1e3:.2f} -> {min(times_mine) * 1e3:.2f} ms, "
                     f"{ratios[len(ratios) // 2]:.2f}x" + ("" if same else " differs"))
    print(f"{name:13s} " + " | ".join(cells), flush=True)


def compare_resnet18(other, batch, calls, rng):
    import statistics
    from cnncli import architectures, functional
    model = architectures.resnet18((3, 224, 224), 1000)
    x = rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)
    builds = {"other": other, "this": this_build}
    times = {name: [] for name in builds}
    outputs = {}
    try:
        for round_ in range(calls + 2):
            for name, module in builds.items():
                functional._conv = module
                started = time.perf_counter()
                outputs[name] = model.forward(x)
                if round_ >= 2:
                    times[name].append(time.perf_counter() - started)
    finally:
        functional._conv = this_build
    ratios = sorted(a / b for a, b in zip(times["this"], times["other"]))
    print(f"ResNet-18 inference, batch {batch}: other {statistics.median(times['other']) * 1e3:.2f}"
          f" ms -> this {statistics.median(times['this']) * 1e3:.2f} ms (medians), "
          f"{ratios[len(ratios) // 2]:.2f}x paired"
          + ("" if np.array_equal(outputs["this"], outputs["other"]) else ", outputs differ"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("other", help="the other build's _conv extension (.so)")
    parser.add_argument("--only", help="comma-separated layer names (default: all)")
    parser.add_argument("--calls", type=int, default=25)
    parser.add_argument("--resnet18", type=int, metavar="BATCH",
                        help="time a whole ResNet-18 inference at this batch instead")
    parser.add_argument("--passes", default="fwd,dx,dw",
                        help="comma-separated passes to time (default: fwd,dx,dw)")
    options = parser.parse_args()
    other = load_other(options.other)
    if options.resnet18:
        compare_resnet18(other, options.resnet18, options.calls, np.random.default_rng(0))
        return
    names = options.only.split(",") if options.only else list(LAYERS)
    rng = np.random.default_rng(0)
    print(f"{get_num_threads()} threads; each pass: other build's best -> this build's best, "
          f"median ratio this / other over {options.calls} paired calls")
    for name in names:
        compare(other, name, options.calls, rng, options.passes.split(","))


if __name__ == "__main__":
    main()
