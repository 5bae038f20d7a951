"""How fast each core runs one convolution on its own and with the other core busy:
what a two-thread figure on a shared VM is made of.

    python bench/bench_cores.py                       # AlexNet's first layer, 5 rounds
    python bench/bench_cores.py --layer "LeNet conv2" --rounds 3

Each round runs a worker process pinned to one core (one OpenMP thread), first alone on
core 0, then alone on core 1, then one on each core at the same time; each worker
reports the best and median GFLOP/s of its forward calls. When both cores are as fast
alone but one of them slows once both work, the two threads of a two-thread run finish
unevenly, and work handed out in fixed halves waits for the slower core.
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

SHAPES = {label: shape for label, *shape in CONV_SHAPES}


def worker(label, seconds):
    os.environ["CNNCLI_NUM_THREADS"] = "1"
    from cnncli import functional as F
    N, C, Fo, H, K, S, P = SHAPES[label]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, H), dtype=np.float32)
    w = rng.standard_normal((Fo, C, K, K), dtype=np.float32) * 0.1
    b = rng.standard_normal(Fo, dtype=np.float32)
    y = F.conv2d(x, w, b, S, P)
    flops = 2 * y.size * C * K * K
    times = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        call = time.perf_counter()
        F.conv2d(x, w, b, S, P)
        times.append(time.perf_counter() - call)
    print(json.dumps({"best": flops / min(times) / 1e9,
                      "median": flops / statistics.median(times) / 1e9}))


def launch(core, options):
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--layer", options.layer,
               "--seconds", str(options.seconds)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.sched_setaffinity(0, {core}))


def result(process):
    output, _ = process.communicate()
    if process.returncode != 0:
        sys.exit(f"a worker failed (exit code {process.returncode})")
    return json.loads(output.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layer", default="AlexNet conv1", choices=sorted(SHAPES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        worker(options.layer, options.seconds)
        return
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        sys.exit("this benchmark needs two cores it may pin processes to")
    first, second = sorted(os.sched_getaffinity(0))[:2]
    print(f"{options.layer}, one thread per process, GFLOP/s best / median of "
          f"{options.seconds:g} s of calls")
    print("| round | core 0 alone | core 1 alone | core 0, both busy | core 1, both busy |")
    print("|---|---|---|---|---|")
    for round_ in range(options.rounds):
        alone = [result(launch(core, options)) for core in (first, second)]
        together = [launch(core, options) for core in (first, second)]
        together = [result(process) for process in together]
        cells = [f"{r['best']:.0f} / {r['median']:.0f}" for r in alone + together]
        print(f"| {round_ + 1} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
