"""LeNet training steps while other processes keep cores busy: cnncli and PyTorch, each in
fresh processes, with 0, 1 and 2 busy background processes on the machine:

    python bench/bench_contention.py                 # 2 threads, 60 steps, batch 64

A busy process is ``while True: pass``. On a 2-core machine, one busy process leaves
2/3 of the CPU time to a 2-thread run and two leave half, so a run that slows in
proportion takes 1.5x and 2x its idle time; an OpenMP runtime that spin-waits for a
descheduled thread slows far more.
"""

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

WORKER = """
import sys, time
import numpy as np
sys.path.insert(0, {bench!r})
framework, threads, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 1, 28, 28), dtype=np.float32)
y = rng.integers(0, 10, 64)
if framework == "cnncli":
    import cnncli
    from cnncli import architectures
    from cnncli.losses import SoftmaxCrossEntropy
    from cnncli.optimizers import Adam
    cnncli.set_num_threads(threads)
    model = architectures.lenet()
    optimizer, loss = Adam(model.parameters(), lr=1e-3), SoftmaxCrossEntropy()
    def step():
        _, grad = loss(model.forward(x, training=True), y)
        optimizer.zero_grad()
        model.backward(grad)
        optimizer.step()
else:
    import torch
    from bench_speed import torch_lenet
    torch.set_num_threads(threads)
    model = torch_lenet(torch.nn)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = torch.nn.CrossEntropyLoss()
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
    def step():
        value = loss(model(inputs), labels)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
for _ in range(5):
    step()
started = time.perf_counter()
for _ in range(steps):
    step()
print(time.perf_counter() - started)
"""


def run(framework, threads, steps):
    script = WORKER.format(bench=os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", script, framework, str(threads), str(steps)],
                         capture_output=True, text=True, check=True).stdout
    return float(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    options = parser.parse_args()
    figures = {}
    for busy in (0, 1, 2):
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(busy)]
        time.sleep(0.5)
        try:
            for framework in (("cnncli", "torch") if busy % 2 == 0 else ("torch", "cnncli")):
                figures[framework, busy] = run(framework, options.threads, options.steps)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
    print(f"{options.steps} LeNet training steps, batch 64, {options.threads} threads\n")
    print("| busy background processes | cnncli s | x idle | torch s | x idle |")
    print("|---|---|---|---|---|")
    for busy in (0, 1, 2):
        cells = [str(busy)]
        for framework in ("cnncli", "torch"):
            seconds = figures[framework, busy]
            cells += [f"{seconds:.2f}", f"{seconds / figures[framework, 0]:.2f}x"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
