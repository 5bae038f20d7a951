"""Each pass of each convolution of bench/bench_kernels.py, cnncli against PyTorch's CPU build.

    python bench/bench_passes.py                    # every shape, 3 rounds
    python bench/bench_passes.py --only "LeNet" --rounds 5

bench_speed.py times a forward and a forward+backward; this splits the backward into
grad_input alone ("dx"), grad_weight and grad_bias alone ("dw") and both ("both"), the
way each framework computes them when asked for only those (PyTorch:
aten.convolution_backward with its output mask). Each round runs cnncli and PyTorch in
fresh processes, one after the other; each figure is the median of the calls within
0.6 s, the table the median over rounds with the range of the ratio round by round.
PyTorch is never a dependency of cnncli: ``pip install torch==2.13.0``.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kernels import CONV_SHAPES  # noqa: E402

PASSES = ("fwd", "dx", "dw", "both")


def median_ms(function, seconds=0.6):
    function()
    started = time.perf_counter()
    function()
    calls = max(5, int(seconds / max(time.perf_counter() - started, 1e-5)))
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def cnncli_passes(x, w, b, stride, padding):
    from cnncli import functional as F
    dy = np.random.default_rng(1).standard_normal(
        F.conv2d(x, w, b, stride, padding).shape).astype(np.float32)
    return {"fwd": lambda: F.conv2d(x, w, b, stride, padding),
            "dx": lambda: F.conv2d_backward(dy, x, w, stride, padding, need_weight_grad=False),
            "dw": lambda: F.conv2d_backward(dy, x, w, stride, padding, need_input_grad=False),
            "both": lambda: F.conv2d_backward(dy, x, w, stride, padding)}


def torch_passes(x, w, b, stride, padding):
    import torch
    x, w, b = map(torch.from_numpy, (x, w, b))
    dy = torch.randn_like(torch.nn.functional.conv2d(x, w, b, stride, padding))

    def backward(mask):
        return lambda: torch.ops.aten.convolution_backward(
            dy, x, w, [w.shape[0]], [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], 1, mask)
    return {"fwd": lambda: torch.nn.functional.conv2d(x, w, b, stride, padding),
            "dx": backward([True, False, False]), "dw": backward([False, True, True]),
            "both": backward([True, True, True])}


def worker(framework, only, threads):
    if framework == "torch":
        import torch
        torch.set_num_threads(threads)
        make = torch_passes
    else:
        import cnncli
        cnncli.set_num_threads(threads)
        make = cnncli_passes
    rng = np.random.default_rng(0)
    figures = {}
    for label, N, Cin, Cout, H, K, S, P in CONV_SHAPES:
        if only.lower() not in label.lower():
            continue
        x = rng.standard_normal((N, Cin, H, H), dtype=np.float32)
        w = rng.standard_normal((Cout, Cin, K, K), dtype=np.float32) * 0.1
        b = rng.standard_normal(Cout, dtype=np.float32)
        passes = make(x, w, b, S, P)
        figures[label] = {name: median_ms(passes[name]) for name in PASSES}
    print(json.dumps(figures))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["cnncli", "torch"])
    parser.add_argument("--only", default="", help="shapes whose label contains this")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args()
    if options.worker:
        return worker(options.worker, options.only, options.threads)
    runs = {"cnncli": [], "torch": []}
    for _ in range(options.rounds):
        for framework in runs:
            output = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--worker", framework, "--only",
                 options.only, "--threads", str(options.threads)],
                check=True, capture_output=True, text=True).stdout
            runs[framework].append(json.loads(output.strip().splitlines()[-1]))
    print(f"{options.threads} threads, {options.rounds} rounds; cnncli ms / torch ms = ratio "
          "(range round by round)\n")
    print("| conv layer | " + " | ".join(PASSES) + " |")
    print("|---|" + "---|" * len(PASSES))
    for label in runs["cnncli"][0]:
        cells = []
        for name in PASSES:
            mine = [run[label][name] for run in runs["cnncli"]]
            theirs = [run[label][name] for run in runs["torch"]]
            ratios = [a / b for a, b in zip(mine, theirs)]
            cells.append(f"{statistics.median(mine):.2f} / {statistics.median(theirs):.2f} = "
                         f"{statistics.median(mine) / statistics.median(theirs):.2f}x "
                         f"({min(ratios):.2f}-{max(ratios):.2f})")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
