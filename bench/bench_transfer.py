"""The transfer-learning figures of BENCHMARKS.md, measured in one run.

    python bench/bench_transfer.py --mnist PATH/mnist.npz [--threads 2]
    python bench/bench_transfer.py --mnist PATH/mnist.npz --quick   # speed only, 1/4 epoch
    python bench/bench_transfer.py --mnist PATH/mnist.npz --speed-only

1. Classic transfer protocol (Keras' mnist_transfer_cnn): pretrain LeNet on
   MNIST 0-4, freeze the convolutional layers, replace the head, fine-tune on
   5-9; test accuracy of both. The pretraining is the `cnncli train` command
   of the shipped lenet-mnist-0-4 and must give its file bit for bit.
2. Full MNIST: the shipped lenet-mnist's command, retrained and compared the
   same way; its test accuracy.
3. Few-label transfer: lenet-mnist fine-tuned on optdigits with 10 labelled
   images per class, against the same LeNet trained from scratch on the same
   images with the same epochs, batch size, optimizer and rate (3 seeds).
4. Speed and peak memory, each run in a fresh process, side by side with an
   equivalent PyTorch CPU model and loop when torch is importable: an epoch
   of MNIST training; an epoch with the backbone frozen; fine-tuning with
   cached backbone features (first epoch, which computes them, and later
   ones). Same batch size (64), threads, optimizer (Adam, lr 1e-3) and
   preprocessing.

The shipped-model checks need a local mnist.npz (--mnist); it is used as
cnncli's cache, so the commands name the dataset `mnist` as a user would.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from peak_memory import run_measured  # noqa: E402
from train_zoo import ZOO, sha256  # noqa: E402

BATCH = 64
FEW_LABEL_SEEDS = (0, 1, 2)
FEW_LABEL_EPOCHS = 20


# ---------------------------------------------------------------------------
# Workers: one measured run each, in a fresh process
# ---------------------------------------------------------------------------


def load_mnist_arrays(path):
    with np.load(path) as archive:
        return (archive["x_train"][:, None], archive["y_train"].astype(np.int64))


def worker_cnncli(path, mode, threads, fraction):
    import cnncli
    from cnncli.architectures import build
    from cnncli.data import batch_transform
    from cnncli.optimizers import Adam
    from cnncli.preprocessing import Preprocessing
    from cnncli.training import fit, predict_outputs
    cnncli.set_num_threads(threads)
    x, y = load_mnist_arrays(path)
    count = int(len(y) * fraction)
    x, y = x[:count], y[:count]
    model = build("lenet", (1, 28, 28), 10, seed=0)
    model.preprocessing = Preprocessing(1, (28, 28), mean=[0.1307], std=[0.3081])
    transform = batch_transform(model.preprocessing, 255)
    times = []
    if mode == "train":
        optimizer = Adam(model.parameters(), lr=1e-3)
        started = time.perf_counter()
        fit(model, x, y, epochs=1, batch_size=BATCH, optimizer=optimizer, transform=transform)
        times.append(time.perf_counter() - started)
    elif mode == "frozen":
        model.freeze(upto=len(model) - 2)
        optimizer = Adam(model.parameters(trainable_only=True), lr=1e-3)
        started = time.perf_counter()
        fit(model, x, y, epochs=1, batch_size=BATCH, optimizer=optimizer, transform=transform)
        times.append(time.perf_counter() - started)
    elif mode == "cached":
        cut = len(model) - 1
        model.freeze(upto=cut - 1)
        started = time.perf_counter()
        features = predict_outputs(model[:cut], x, batch_size=256, transform=transform)
        top = model[cut:]
        optimizer = Adam(top.parameters(), lr=1e-3)
        fit(top, features, y, epochs=1, batch_size=BATCH, optimizer=optimizer, seed=0)
        times.append(time.perf_counter() - started)
        for epoch in range(1, 4):
            started = time.perf_counter()
            fit(top, features, y, epochs=epoch + 1, initial_epoch=epoch, batch_size=BATCH,
                optimizer=optimizer, seed=0)
            times.append(time.perf_counter() - started)
    return times


def worker_torch(path, mode, threads, fraction):
    import torch
    from torch import nn
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x, y = load_mnist_arrays(path)
    count = int(len(y) * fraction)
    x, y = x[:count], y[:count]
    model = nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10))
    if mode == "frozen":
        for parameter in model[:-1].parameters():
            parameter.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss_function = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)

    def batches():
        order = rng.permutation(len(y))
        for first in range(0, len(y), BATCH):
            rows = order[first:first + BATCH]
            images = (x[rows].astype(np.float32) * np.float32(1 / 255) - np.float32(0.1307)) \
                / np.float32(0.3081)
            yield torch.from_numpy(images), torch.from_numpy(y[rows])

    started = time.perf_counter()
    model.train()
    if mode == "frozen":
        model[:-1].eval()
    for images, labels in batches():
        if mode == "frozen":
            with torch.no_grad():
                features = model[:-1](images)
            outputs = model[-1](features)
        else:
            outputs = model(images)
        loss = loss_function(outputs, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return [time.perf_counter() - started]


def measure(framework, mode, mnist, threads, fraction):
    """(epoch times, peak resident memory in MiB) of one worker run in a fresh process."""
    _, peak, out, _ = run_measured([__file__, "--worker", framework, mode, "--mnist", mnist,
                                    "--threads", str(threads), "--fraction", str(fraction)])
    return json.loads(out), peak


# ---------------------------------------------------------------------------
# Accuracy figures, through cnncli's command-line tool
# ---------------------------------------------------------------------------


def cnncli(arguments, env):
    completed = subprocess.run([sys.executable, "-m", "cnncli"] + arguments, env=env,
                               capture_output=True, text=True)
    if completed.returncode:
        sys.exit(f"failed: cnncli {' '.join(arguments)}\n{completed.stderr}")
    return completed.stdout


def test_accuracy(model, data, env, classes=None):
    report = model + ".json"
    cnncli(["eval", model, data, "--json", report, "--force"]
           + (["--classes", classes] if classes else []), env)
    with open(report) as handle:
        return json.load(handle)["accuracy"]


def timed(arguments, env):
    started = time.perf_counter()
    cnncli(arguments, env)
    return time.perf_counter() - started


def accuracy_figures(work, env, threads):
    threads_option = ["--threads", str(threads)]
    rows = []
    # 1. classic protocol
    pretrained = os.path.join(work, "lenet-mnist-0-4.cnn")
    seconds = timed(["train"] + ZOO["lenet-mnist-0-4"][1] + ["-o", pretrained, "-q"]
                    + threads_option, env)
    same = sha256(pretrained) == sha256(os.path.join(ROOT, "models", "lenet-mnist-0-4.cnn"))
    rows.append(("pretrain on MNIST 0-4 (`cnncli train`, 3 epochs)", "test accuracy on 0-4",
                 test_accuracy(pretrained, "mnist", env, "0,1,2,3,4"), ">= 0.990", seconds,
                 "identical" if same else "DIFFERENT"))
    finetuned = os.path.join(work, "mnist-5-9.cnn")
    seconds = timed(["finetune", pretrained, "mnist", "--classes", "5,6,7,8,9", "--freeze",
                     "flatten_1", "--epochs", "5", "--batch-size", "64", "-o", finetuned,
                     "-q"] + threads_option, env)
    rows.append(("fine-tune on 5-9, conv layers frozen (`cnncli finetune`, 5 epochs)",
                 "test accuracy on 5-9", test_accuracy(finetuned, "mnist", env, "5,6,7,8,9"),
                 ">= 0.985", seconds, ""))
    # 2. full MNIST
    full = os.path.join(work, "lenet-mnist.cnn")
    seconds = timed(["train"] + ZOO["lenet-mnist"][1] + ["-o", full, "-q"] + threads_option,
                    env)
    same = sha256(full) == sha256(os.path.join(ROOT, "models", "lenet-mnist.cnn"))
    rows.append(("LeNet on all of MNIST (`cnncli train`, 4 epochs)", "test accuracy",
                 test_accuracy(full, "mnist", env), ">= 0.990", seconds,
                 "identical" if same else "DIFFERENT"))
    return rows


def few_label_figures(work, env, threads):
    common = ["--per-class", "10", "--val-split", "0", "--epochs", str(FEW_LABEL_EPOCHS),
              "--batch-size", "16", "--lr", "1e-3", "--threads", str(threads), "-q"]
    results = {"transfer": [], "scratch": []}
    for seed in FEW_LABEL_SEEDS:
        transfer = os.path.join(work, f"few-transfer-{seed}.cnn")
        cnncli(["finetune", "lenet-mnist", "optdigits", "--freeze", "flatten_1",
                "--seed", str(seed), "-o", transfer] + common, env)
        results["transfer"].append(test_accuracy(transfer, "optdigits", env))
        scratch = os.path.join(work, f"few-scratch-{seed}.cnn")
        cnncli(["train", "optdigits", "--arch", "lenet", "--size", "28x28", "--seed", str(seed),
                "-o", scratch] + common, env)
        results["scratch"].append(test_accuracy(scratch, "optdigits", env))
    return results


# ---------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", required=True, help="a local mnist.npz")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true",
                        help="speed only, on a quarter of an epoch")
    parser.add_argument("--speed-only", action="store_true",
                        help="speed and memory only, on full epochs")
    parser.add_argument("--fraction", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        framework, mode = args.worker
        run = worker_cnncli if framework == "cnncli" else worker_torch
        print(json.dumps(run(args.mnist, mode, args.threads, args.fraction)))
        return

    fraction = 0.25 if args.quick else 1.0
    work = tempfile.mkdtemp(prefix="cnncli-bench-")
    env = dict(os.environ)
    cache = os.path.join(work, "cache")
    os.makedirs(cache)
    os.symlink(os.path.abspath(args.mnist), os.path.join(cache, "mnist.npz"))
    env["CNNCLI_CACHE"] = cache
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    try:
        print(f"# {args.threads} threads, batch {BATCH}, Adam lr 1e-3, float32; "
              f"{'a quarter of ' if args.quick else ''}MNIST's 60000 training images\n")
        print("## Speed and peak memory (each run in a fresh process)\n")
        print("| run | cnncli s | cnncli peak MiB | torch s | torch peak MiB | "
              "cnncli / torch time |")
        print("|---|---|---|---|---|---|")
        speed = {}
        for mode, label in (("train", "training epoch, all layers"),
                            ("frozen", "epoch with the backbone frozen (all but the head)")):
            ours, our_memory = measure("cnncli", mode, args.mnist, args.threads, fraction)
            speed[mode] = ours[0]
            if have_torch:
                theirs, their_memory = measure("torch", mode, args.mnist, args.threads,
                                               fraction)
                print(f"| {label} | {ours[0]:.1f} | {our_memory:.0f} | {theirs[0]:.1f} | "
                      f"{their_memory:.0f} | {ours[0] / theirs[0]:.2f}x |")
            else:
                print(f"| {label} | {ours[0]:.1f} | {our_memory:.0f} | - | - | - |")
        cached, cached_memory = measure("cnncli", "cached", args.mnist, args.threads, fraction)
        print(f"| cached features: first head epoch (computes them) | {cached[0]:.1f} | "
              f"{cached_memory:.0f} | | | |")
        print(f"| cached features: later head epochs (mean of 3) | {np.mean(cached[1:]):.2f} "
              f"| | | | |")
        print(f"\nfrozen epoch / full epoch: {speed['frozen'] / speed['train']:.2f} "
              f"(target <= 0.35); cached head epoch / full epoch: "
              f"{np.mean(cached[1:]) / speed['train']:.3f}\n")
        if args.quick or args.speed_only:
            return

        print("## Transfer protocol and full MNIST (test accuracy)\n")
        print("| step | measured | value | target | seconds | file vs models/ |")
        print("|---|---|---|---|---|---|")
        for row in accuracy_figures(work, env, args.threads):
            print(f"| {row[0]} | {row[1]} | {row[2]:.4f} | {row[3]} | {row[4]:.0f} | "
                  f"{row[5]} |")

        print(f"\n## Few-label transfer: optdigits, 10 labelled images per class, "
              f"{FEW_LABEL_EPOCHS} epochs, test accuracy on its 599 test images\n")
        results = few_label_figures(work, env, args.threads)
        print("| start | " + " | ".join(f"seed {s}" for s in FEW_LABEL_SEEDS) + " | mean |")
        print("|---|" + "---|" * (len(FEW_LABEL_SEEDS) + 1))
        for name, label in (("transfer", "lenet-mnist, conv layers frozen"),
                            ("scratch", "LeNet from scratch")):
            values = results[name]
            print(f"| {label} | " + " | ".join(f"{v:.4f}" for v in values)
                  + f" | {np.mean(values):.4f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
