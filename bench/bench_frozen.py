"""Cost of a training step with the backbone frozen, against unfrozen and a plain forward.

    python bench/bench_frozen.py [--threads 2] [--batch 64]

A LeNet-style CNN (conv 5x5 32 -> pool -> conv 5x5 64 -> pool -> dense 128 ->
dense 10) on 28x28 inputs. "frozen" freezes everything but the head: the
backward pass stops at the head, and the frozen layers keep nothing for it,
so the step should cost about one forward pass.
"""

import argparse
import statistics
import time

import numpy as np

import cnncli
from cnncli.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from cnncli.losses import SoftmaxCrossEntropy
from cnncli.model import Sequential
from cnncli.optimizers import SGD


def lenet():
    return Sequential([Conv2D(32, 5, padding=2), ReLU(), MaxPool2D(2),
                       Conv2D(64, 5, padding=2), ReLU(), MaxPool2D(2), Flatten(),
                       Dense(128), ReLU(), Dense(10)], input_shape=(1, 28, 28), seed=0)


def median_ms(functions, repeats=5, blocks=3):
    """Median time of each function, in blocks that rotate through them."""
    times = {name: [] for name in functions}
    for _ in range(blocks):
        for name, function in functions.items():
            function()
            for _ in range(repeats):
                start = time.perf_counter()
                function()
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    cnncli.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, args.batch)
    loss = SoftmaxCrossEntropy()
    unfrozen, frozen = lenet(), lenet()
    frozen.freeze(upto="flatten_1")

    def step(model):
        optimizer = SGD(model.parameters(), lr=0.01)

        def run():
            _, grad = loss(model.forward(x, training=True), y)
            optimizer.zero_grad()
            model.backward(grad)
            optimizer.step()
        return run

    timings = median_ms({"forward (inference)": lambda: unfrozen.forward(x),
                         "training step, unfrozen": step(unfrozen),
                         "training step, backbone frozen": step(frozen)})
    full = timings["training step, unfrozen"]
    forward = timings["forward (inference)"]
    print(f"LeNet-style CNN, batch {args.batch}, {args.threads} threads, float32\n")
    print("| pass | ms | / unfrozen step | / forward |")
    print("|---|---|---|---|")
    for name, ms in timings.items():
        print(f"| {name} | {ms:.2f} | {ms / full:.2f} | {ms / forward:.2f} |")


if __name__ == "__main__":
    main()
