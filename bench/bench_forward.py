"""LeNet inference time per call at batch 1 and 64, best of 5 repeats, for comparing two
checkouts of cnncli in alternating processes:

    python bench/bench_forward.py                          # this checkout
    PYTHONPATH=/path/to/other/checkout python bench/bench_forward.py
"""

import argparse
import time

import numpy as np

from cnncli import architectures
from cnncli.functional import set_num_threads


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args()
    set_num_threads(options.threads)
    model = architectures.lenet()
    for batch, calls in ((1, 400), (64, 60)):
        x = np.random.default_rng(0).standard_normal((batch, 1, 28, 28)).astype(np.float32)
        for _ in range(10):
            model.forward(x)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(calls):
                model.forward(x)
            times.append((time.perf_counter() - start) / calls * 1e3)
        print(f"LeNet forward, batch {batch}: {min(times):.3f} ms")


if __name__ == "__main__":
    main()
