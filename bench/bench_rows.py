"""The row kernel against the direct kernel (or im2col + GEMM where that takes the layer), in
one process: each call alternates between the two, and the figure is the median of the
paired ratios, so a slow spell of a shared machine slows both sides of a pair alike.

    python bench/bench_rows.py [SHAPE,SHAPE,...]        # CNNCLI_NUM_THREADS sets the threads
"""

import sys
import time

import numpy as np

from cnncli import functional as F

# name: (input shape, weight shape, padding), stride 1
SHAPES = {
    "lenet64": ((64, 1, 28, 28), (32, 1, 5, 5), 2),       # LeNet's first layer
    "lenet1": ((1, 1, 28, 28), (32, 1, 5, 5), 2),         # the same at batch 1
    "lenet6": ((64, 1, 28, 28), (6, 1, 5, 5), 2),         # the classic 6 filters
    "vgg3": ((32, 3, 32, 32), (64, 3, 3, 3), 1),          # a first 3x3 layer on colour
    "c2k5": ((16, 2, 32, 32), (32, 2, 5, 5), 2),          # 50 taps
    "c3k5": ((16, 3, 64, 64), (32, 3, 5, 5), 2),          # 75 taps
    "c8k3": ((16, 8, 32, 32), (32, 8, 3, 3), 1),          # 72 taps
    "c4k5": ((16, 4, 32, 32), (32, 4, 5, 5), 2),          # 100 taps
    "c1k3": ((64, 1, 28, 28), (32, 1, 3, 3), 1),          # 9 taps: against im2col + GEMM
    "c1k3b8": ((8, 1, 28, 28), (32, 1, 3, 3), 1),         # 9 taps over 6272 positions
    "digits128": ((128, 1, 8, 8), (8, 1, 3, 3), 1),       # 9 taps over 8192 positions
    "c16k3": ((16, 16, 32, 32), (32, 16, 3, 3), 1),       # 144 taps: not taken
    "c1k3b1": ((1, 1, 28, 28), (32, 1, 3, 3), 1),         # 9 taps over 784: not taken
}


def main():
    names = sys.argv[1].split(",") if len(sys.argv) > 1 else list(SHAPES)
    rng = np.random.default_rng(0)
    print(f"{F.get_num_threads()} threads, {F.direct_kernel_variant()} variant; "
          "median ms of 60 calls each, median of the paired ratios")
    for name in names:
        x_shape, w_shape, padding = SHAPES[name]
        x = rng.standard_normal(x_shape, dtype=np.float32)
        weight = rng.standard_normal(w_shape, dtype=np.float32)
        bias = rng.standard_normal(w_shape[0], dtype=np.float32)
        times = {True: [], False: []}
        for call in range(63):
            for rows in (True, False):
                F.use_row_kernel(rows)
                started = time.perf_counter()
                F.conv2d(x, weight, bias, padding=padding)
                if call >= 3:
                    times[rows].append(time.perf_counter() - started)
        F.use_row_kernel(True)
        taken = F.conv2d_paths(x_shape, w_shape, padding=padding)["rows"] == ("forward",)
        ratio = np.median(np.array(times[True]) / np.array(times[False]))
        with_rows, without = (np.median(times[rows]) * 1e3 for rows in (True, False))
        print(f"{name:8s} row kernel {'takes it' if taken else 'not taken':9s} "
              f"{with_rows:7.3f} ms, without {without:7.3f} ms: {ratio:.2f}x")


if __name__ == "__main__":
    main()
