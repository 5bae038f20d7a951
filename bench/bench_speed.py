"""cnncli against PyTorch's CPU build on whole workloads, each framework in its own fresh
process, alternating which goes first, with each process's peak memory:

    python bench/bench_speed.py --mnist mnist.npz            # the full table (about 15 min)
    python bench/bench_speed.py --quick                      # a tenth of the epoch, 1 round
    python bench/bench_speed.py --only resnet18_infer1       # one workload
    python bench/bench_speed.py --blas-autodetect ...        # see below
    python bench/bench_speed.py --direct none ...            # cnncli without its direct kernel

Workloads (float32, --threads 2 by default):

- lenet_epoch: one training epoch of the ``lenet`` architecture over MNIST's 60000
  training images (or --fraction of them), batch 64, Adam at 1e-3, pixels scaled and
  normalised per batch on both sides. Without --mnist, random images of MNIST's shape.
- lenet_infer64 / lenet_infer1: LeNet inference, time per call, batch 64 and 1.
- resnet18_infer32 / resnet18_infer1: ResNet-18 inference at 224x224, batch 32 and 1.
- resnet18_train16: a ResNet-18 training step at 112x112, batch 16, 1000 classes, every
  layer trainable (BatchNorm on batch statistics), SGD with momentum 0.9.
- conv: forward and forward+backward of each shape of bench/bench_kernels.py.

Each figure is the median over repeated calls inside the worker (the epoch: one pass);
the table gives the median over --rounds rounds, and the range of the ratio round by
round (the two frameworks' processes of one round run back to back). PyTorch runs in eval mode under
no_grad for inference. It is never a dependency of cnncli: ``pip install
torch==2.13.0``.

--blas-autodetect removes OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE from the workers'
environment (both frameworks), so OpenBLAS picks its kernels for the CPU as it does on
a machine where nobody set them; each worker reports the kernel it ran.
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kernels import CONV_SHAPES  # noqa: E402
from peak_memory import run_measured  # noqa: E402

WORKLOADS = ["lenet_epoch", "lenet_infer64", "lenet_infer1", "resnet18_infer32",
             "resnet18_infer1", "resnet18_train16", "conv"]
BATCH = 64


def conv_calls(multiply_adds):
    """Calls of a convolution per timed block: at least 10, and 2e9 multiply-adds. At 2e8
    (3 to 5 calls of the first layers, 7-12 ms a block) one slow spell of the shared
    machine moved a round's ratio by a third."""
    return max(10, int(2e9 // multiply_adds))


def median_call_ms(function, calls, blocks=5, warmup=3):
    """Median over ``blocks`` blocks of the mean time of ``calls`` back-to-back calls, in ms."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(blocks):
        started = time.perf_counter()
        for _ in range(calls):
            function()
        times.append((time.perf_counter() - started) / calls * 1e3)
    return statistics.median(times)


def mnist_arrays(path, fraction):
    if path:
        with np.load(path) as archive:
            x, y = archive["x_train"][:, None], archive["y_train"].astype(np.int64)
    else:
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (60000, 1, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, 60000).astype(np.int64)
    count = max(BATCH, int(len(y) * fraction))
    return x[:count], y[:count]


def normalise(images):
    return (images.astype(np.float32) * np.float32(1 / 255) - np.float32(0.1307)) \
        / np.float32(0.3081)


# ---------------------------------------------------------------------------
# cnncli
# ---------------------------------------------------------------------------

def cnncli_worker(workload, options):
    import cnncli
    from cnncli import architectures
    from cnncli import functional as F
    cnncli.set_num_threads(options.threads)
    rng = np.random.default_rng(0)
    if workload == "lenet_epoch":
        from cnncli.optimizers import Adam
        from cnncli.training import fit
        x, y = mnist_arrays(options.mnist, options.fraction)
        model = architectures.lenet()
        started = time.perf_counter()
        fit(model, x, y, epochs=1, batch_size=BATCH, optimizer=Adam(model.parameters(), lr=1e-3),
            transform=normalise)
        return {"ms": (time.perf_counter() - started) * 1e3}
    if workload.startswith("lenet_infer"):
        batch = int(workload[len("lenet_infer"):])
        model = architectures.lenet()
        x = rng.standard_normal((batch, 1, 28, 28), dtype=np.float32)
        return {"ms": median_call_ms(lambda: model.forward(x), 200 if batch == 1 else 20)}
    if workload.startswith("resnet18_infer"):
        batch = int(workload[len("resnet18_infer"):])
        model = architectures.resnet18((3, 224, 224), 1000)
        x = rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)
        return {"ms": median_call_ms(lambda: model.forward(x), 5 if batch == 1 else 1,
                                     warmup=2)}
    if workload == "resnet18_train16":
        from cnncli.losses import SoftmaxCrossEntropy
        from cnncli.optimizers import SGD
        model = architectures.resnet18((3, 112, 112), 1000)
        optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss = SoftmaxCrossEntropy()
        x = rng.standard_normal((16, 3, 112, 112), dtype=np.float32)
        y = rng.integers(0, 1000, 16)

        def step():
            outputs = model.forward(x, training=True)
            _, grad = loss(outputs, y)
            optimizer.zero_grad()
            model.backward(grad)
            optimizer.step()
        return {"ms": median_call_ms(step, 1, blocks=7, warmup=2)}
    if workload == "conv":
        figures = {}
        for label, N, Cin, Cout, H, K, S, P in CONV_SHAPES:
            x = rng.standard_normal((N, Cin, H, H), dtype=np.float32)
            w = rng.standard_normal((Cout, Cin, K, K), dtype=np.float32) * 0.1
            b = rng.standard_normal(Cout, dtype=np.float32)
            y = F.conv2d(x, w, b, S, P)
            dy = rng.standard_normal(y.shape, dtype=np.float32)

            def both():
                F.conv2d(x, w, b, S, P)
                F.conv2d_backward(dy, x, w, S, P)
            calls = conv_calls(N * Cout * y.shape[2] * y.shape[3] * Cin * K * K)
            figures[label] = {"fwd": median_call_ms(lambda: F.conv2d(x, w, b, S, P), calls),
                              "fwd+bwd": median_call_ms(both, calls)}
        return {"conv": figures}
    raise ValueError(workload)


# ---------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------

def torch_lenet(nn):
    return nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10))


def torch_worker(workload, options):
    import torch
    from torch import nn
    torch.set_num_threads(options.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    def inference(model, x, calls, warmup=3):
        model.eval()
        with torch.no_grad():
            return median_call_ms(lambda: model(x), calls, warmup=warmup)

    if workload == "lenet_epoch":
        x, y = mnist_arrays(options.mnist, options.fraction)
        model = torch_lenet(nn)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_function = nn.CrossEntropyLoss()
        started = time.perf_counter()
        order = rng.permutation(len(y))
        model.train()
        for first in range(0, len(y), BATCH):
            rows = order[first:first + BATCH]
            outputs = model(torch.from_numpy(normalise(x[rows])))
            loss = loss_function(outputs, torch.from_numpy(y[rows]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return {"ms": (time.perf_counter() - started) * 1e3}
    if workload.startswith("lenet_infer"):
        batch = int(workload[len("lenet_infer"):])
        x = torch.from_numpy(rng.standard_normal((batch, 1, 28, 28), dtype=np.float32))
        return {"ms": inference(torch_lenet(nn), x, 200 if batch == 1 else 20)}
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                    "scripts"))
    from torch_resnet import ResNet
    if workload.startswith("resnet18_infer"):
        batch = int(workload[len("resnet18_infer"):])
        x = torch.from_numpy(rng.standard_normal((batch, 3, 224, 224), dtype=np.float32))
        return {"ms": inference(ResNet(18, 1000), x, 5 if batch == 1 else 1, warmup=2)}
    if workload == "resnet18_train16":
        model = ResNet(18, 1000)
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_function = nn.CrossEntropyLoss()
        x = torch.from_numpy(rng.standard_normal((16, 3, 112, 112), dtype=np.float32))
        y = torch.from_numpy(rng.integers(0, 1000, 16))

        def step():
            loss = loss_function(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return {"ms": median_call_ms(step, 1, blocks=7, warmup=2)}
    if workload == "conv":
        import torch.nn.functional as functional
        figures = {}
        for label, N, Cin, Cout, H, K, S, P in CONV_SHAPES:
            x = torch.from_numpy(rng.standard_normal((N, Cin, H, H), dtype=np.float32))
            w = torch.from_numpy(rng.standard_normal((Cout, Cin, K, K), dtype=np.float32) * 0.1)
            b = torch.from_numpy(rng.standard_normal(Cout, dtype=np.float32))
            xg, wg, bg = (t.clone().requires_grad_(True) for t in (x, w, b))
            with torch.no_grad():
                y = functional.conv2d(x, w, b, S, P)
            dy = torch.from_numpy(rng.standard_normal(tuple(y.shape), dtype=np.float32))

            def forward():
                with torch.no_grad():
                    functional.conv2d(x, w, b, S, P)

            def both():
                functional.conv2d(xg, wg, bg, S, P).backward(dy)
                xg.grad = wg.grad = bg.grad = None
            calls = conv_calls(N * Cout * y.shape[2] * y.shape[3] * Cin * K * K)
            figures[label] = {"fwd": median_call_ms(forward, calls),
                              "fwd+bwd": median_call_ms(both, calls)}
        return {"conv": figures}
    raise ValueError(workload)


def blas_kernels():
    from threadpoolctl import threadpool_info
    return sorted({f"{info.get('internal_api')} {info.get('architecture')}"
                   for info in threadpool_info() if info.get("user_api") == "blas"})


def direct_kernel():
    """Which variant of cnncli's direct convolution kernel runs on this CPU, if any."""
    from cnncli import functional as F
    variant = F.direct_kernel_variant()
    return f"direct kernel ({variant})" if variant != "none" else "im2col + GEMM only"


def worker(framework, workload, options):
    result = (cnncli_worker if framework == "cnncli" else torch_worker)(workload, options)
    result["blas"] = blas_kernels() + ([direct_kernel()] if framework == "cnncli" else [])
    print(json.dumps(result))


# ---------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------

def measure(framework, workload, options, env):
    arguments = [os.path.abspath(__file__), "--worker", framework, workload,
                 "--threads", str(options.threads), "--fraction", str(options.fraction)]
    if options.mnist:
        arguments += ["--mnist", options.mnist]
    _, peak, out, _ = run_measured(arguments, env=env)
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_mib"] = peak
    return result


def ratio_row(label, mine, theirs, rounds, peaks=None):
    """A table row: the medians, their ratio, and the range of the ratio round by round
    (each round's cnncli time over the same round's PyTorch time): on a shared machine a
    single shape's ratio moves by a third between rounds, and the range shows how far."""
    per_round = [a / b for a, b in rounds]
    cells = [label, f"{mine:.2f}", f"{theirs:.2f}", f"{mine / theirs:.2f}x",
             f"{min(per_round):.2f}-{max(per_round):.2f}x"]
    if peaks:
        cells += [f"{peaks[0]:.0f}", f"{peaks[1]:.0f}"]
    return "| " + " | ".join(cells) + " |"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "WORKLOAD"))
    parser.add_argument("--mnist", help="mnist.npz with x_train/y_train")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fraction", type=float, default=1.0,
                        help="part of the MNIST training set the epoch covers")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", action="append", choices=WORKLOADS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--blas-autodetect", action="store_true")
    parser.add_argument("--direct", choices=["auto", "none", "avx2", "avx512"],
                        help="CNNCLI_DIRECT_ISA for cnncli's workers (none: im2col + GEMM only)")
    options = parser.parse_args()
    if options.worker:
        worker(*options.worker, options)
        return
    if options.quick:
        options.fraction, options.rounds = min(options.fraction, 0.1), 1
    env = dict(os.environ)
    if options.blas_autodetect:
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    if options.direct:
        env["CNNCLI_DIRECT_ISA"] = options.direct
    workloads = options.only or WORKLOADS
    results = {workload: {"cnncli": [], "torch": []} for workload in workloads}
    for round_ in range(options.rounds):
        order = ("cnncli", "torch") if round_ % 2 == 0 else ("torch", "cnncli")
        for workload in workloads:
            for framework in order:
                result = measure(framework, workload, options, env)
                results[workload][framework].append(result)
                print(f"round {round_ + 1} {workload} {framework}: "
                      f"{json.dumps(result)}", file=sys.stderr, flush=True)
    report(results, options)


def report(results, options):
    import cnncli
    print(f"cnncli {cnncli.__version__}, {options.threads} threads, {options.rounds} rounds, "
          f"epoch fraction {options.fraction}; BLAS: "
          + "; ".join(f"{framework} {', '.join(runs[framework][0]['blas'])}"
                      for runs in list(results.values())[:1] for framework in runs))
    print()
    print("| workload | cnncli ms | torch ms | cnncli / torch | per round | cnncli peak MiB | "
          "torch peak MiB |")
    print("|---|---|---|---|---|---|---|")
    for workload, runs in results.items():
        if workload == "conv":
            continue
        mine = statistics.median(run["ms"] for run in runs["cnncli"])
        theirs = statistics.median(run["ms"] for run in runs["torch"])
        peaks = (max(run["peak_mib"] for run in runs["cnncli"]),
                 max(run["peak_mib"] for run in runs["torch"]))
        rounds = [(a["ms"], b["ms"]) for a, b in zip(runs["cnncli"], runs["torch"])]
        print(ratio_row(workload, mine, theirs, rounds, peaks))
    if "conv" in results:
        print()
        print("| conv layer | pass | cnncli ms | torch ms | cnncli / torch | per round |")
        print("|---|---|---|---|---|---|")
        ratios = {"fwd": [], "fwd+bwd": []}
        runs = results["conv"]
        for label in runs["cnncli"][0]["conv"]:
            for kind in ("fwd", "fwd+bwd"):
                mine = statistics.median(run["conv"][label][kind] for run in runs["cnncli"])
                theirs = statistics.median(run["conv"][label][kind] for run in runs["torch"])
                ratios[kind].append(mine / theirs)
                rounds = [(a["conv"][label][kind], b["conv"][label][kind])
                          for a, b in zip(runs["cnncli"], runs["torch"])]
                print(ratio_row(f"{label} | {kind}", mine, theirs, rounds))
        for kind, values in ratios.items():
            print(f"\ngeometric mean cnncli / torch, {kind}: "
                  f"{float(np.exp(np.mean(np.log(values)))):.2f}x, worst {max(values):.2f}x")


if __name__ == "__main__":
    main()
