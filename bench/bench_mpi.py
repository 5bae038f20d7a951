"""Data-parallel training over MPI: epoch time on one machine, the bytes each step
communicates, and a model of the step time on K machines.

    python bench/bench_mpi.py --mnist PATH/mnist.npz [--fraction 0.25]

1. A LeNet epoch on MNIST (batch 64, Adam), each in a fresh process (or set of ranks):
   1 process x 2 threads, then 2 ranks x 1 thread (mpiexec -n 2).
2. The gradient bytes summed per step, for LeNet and ResNet-18 (1000 classes). The sum
   runs around a ring of the ranks (reduce-scatter, then all-gather, each chunk always
   added in the same order, so the result is the same bits every run): each rank sends
   and receives 2 (K - 1) / K copies of the gradients.
3. The step time on K machines on a 10 Gb/s network, from the measured single-process
   step (LeNet at batch 64; ResNet-18 at 112x112, batch 16): compute / K plus that
   communication, with 2 (K - 1) messages of latency (50 us each) on top.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 64
NETWORK_BYTES_PER_S = 10e9 / 8
LATENCY_S = 50e-6

WORKER = """
import sys, time
import numpy as np
from cnncli import architectures
from cnncli.distributed import world
from cnncli.optimizers import Adam
from cnncli.training import fit
path, fraction, threads = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
import cnncli
cnncli.set_num_threads(threads)
with np.load(path) as archive:
    count = int(len(archive["y_train"]) * fraction)
    x = (archive["x_train"][:count, None] / 255.0).astype(np.float32)
    y = archive["y_train"][:count].astype(np.int64)
model = architectures.build("lenet", (1, 28, 28), 10, seed=0)
comm = world()
started = time.perf_counter()
fit(model, x, y, epochs=1, batch_size=%d, optimizer=Adam(model.named_parameters(), lr=1e-3),
    comm=comm)
seconds = time.perf_counter() - started
if comm is None or comm.rank == 0:
    print(f"{seconds:.3f}")
""" % BATCH


def epoch_seconds(mnist, fraction, ranks, threads):
    script = os.path.join(ROOT, "bench", ".mpi_worker.py")
    with open(script, "w") as handle:
        handle.write(WORKER)
    try:
        command = [sys.executable, script, mnist, str(fraction), str(threads)]
        if ranks > 1:
            mpiexec = shutil.which("mpiexec") or os.path.join(os.path.dirname(sys.executable),
                                                              "mpiexec")
            command = [mpiexec, "-n", str(ranks)] + command
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        return float(done.stdout.split()[-1])
    finally:
        os.remove(script)


def gradient_bytes(arch, input_shape, classes):
    from cnncli import architectures
    model = architectures.build(arch, input_shape, classes, seed=0)
    return sum(p.size for p in model.parameters()) * 4


def step_seconds(arch, input_shape, classes, batch, steps=3):
    from cnncli import architectures
    from cnncli.losses import SoftmaxCrossEntropy
    from cnncli.optimizers import SGD
    model = architectures.build(arch, input_shape, classes, seed=0)
    optimizer = SGD(model.named_parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch,) + input_shape).astype(np.float32)
    y = rng.integers(0, classes, batch)
    loss = SoftmaxCrossEntropy()
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        outputs = model.forward(x, training=True)
        _, grad = loss(outputs, y)
        optimizer.zero_grad()
        model.backward(grad)
        optimizer.step()
        times.append(time.perf_counter() - started)
    return float(np.median(times[1:]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", required=True)
    parser.add_argument("--fraction", type=float, default=1.0)
    args = parser.parse_args()
    print(f"## LeNet epoch on {args.fraction:.0%} of MNIST, batch {BATCH}, Adam\n")
    print("| processes | threads each | seconds |")
    print("|---|---|---|")
    for ranks, threads in ((1, 2), (2, 1), (1, 2), (2, 1)):
        seconds = epoch_seconds(args.mnist, args.fraction, ranks, threads)
        print(f"| {ranks} | {threads} | {seconds:.1f} |", flush=True)
    print("\n## Communication per step and a model of K machines on 10 Gb/s\n")
    print("| model | gradient MB | compute s/step (1 process) | K | compute/K s | "
          "sum s | step s | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for name, arch, shape, classes, batch in (("LeNet", "lenet", (1, 28, 28), 10, BATCH),
                                               ("ResNet-18", "resnet18", (3, 112, 112),
                                                1000, 16)):
        size = gradient_bytes(arch, shape, classes)
        compute = step_seconds(arch, shape, classes, batch)
        for machines in (1, 2, 4, 8, 16):
            communicate = 2 * (machines - 1) * (size / machines / NETWORK_BYTES_PER_S
                                                + LATENCY_S)
            step = compute / machines + communicate
            print(f"| {name} | {size / 1e6:.2f} | {compute:.3f} | {machines} | "
                  f"{compute / machines:.3f} | {communicate:.3f} | {step:.3f} | "
                  f"{compute / step:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
