"""The ResNet figures of BENCHMARKS.md, measured in one run: import parity with PyTorch at
full size, inference throughput and peak memory beside PyTorch, and fine-tuning an imported
ResNet-18 on an image folder at 224x224.

    python bench/bench_resnet.py [--threads 2] [--batch 32] [--repeats 5]

Needs torch (for comparison only: the weights are made and the reference
outputs computed with it). scripts/torch_resnet.py is torchvision's ResNet
under torchvision's names.

1. Parity: ResNet-18 and ResNet-50 with random weights and random BatchNorm
   statistics, saved by torch both as .pt and as .safetensors, imported with
   `cnncli import`, evaluated on the same 224x224 inputs in inference mode;
   the largest difference relative to the largest output.
2. Throughput: images per second of inference at the given batch and
   threads, each framework in its own fresh process (cnncli loads the
   imported model file; PyTorch the same state dict, eval mode, no_grad),
   one warm-up batch then the median of `--repeats` batches; peak resident
   memory of each process.
3. Fine-tuning: `cnncli finetune` of the imported ResNet-18 on the optdigits
   image folder that ships with cnncli (20 images per class, read as RGB and
   resized to 224x224), backbone frozen, so its features are computed once;
   wall time and peak memory of the process, then of `cnncli eval` on the
   599 test images.
"""

import argparse
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


def make_weights(depth, folder):
    """A random torchvision-layout ResNet saved both ways; its outputs on fixed inputs."""
    import torch
    from safetensors.torch import save_file
    from torch_resnet import ResNet, randomize_batchnorm
    torch.manual_seed(depth)
    generator = torch.Generator().manual_seed(depth)
    model = ResNet(depth)
    with torch.no_grad():
        randomize_batchnorm(model, generator)
    model.eval()
    state = model.state_dict()
    paths = {"pt": os.path.join(folder, f"resnet{depth}.pt"),
             "safetensors": os.path.join(folder, f"resnet{depth}.safetensors")}
    torch.save(state, paths["pt"])
    save_file({key: value.contiguous() for key, value in state.items()}, paths["safetensors"])
    inputs = torch.randn(4, 3, 224, 224, generator=generator)
    with torch.no_grad():
        outputs = model(inputs).numpy()
    return paths, inputs.numpy(), outputs


def cnncli_command(arguments):
    completed = subprocess.run([sys.executable, "-m", "cnncli"] + arguments,
                               capture_output=True, text=True)
    if completed.returncode:
        sys.exit(f"failed: cnncli {' '.join(arguments)}\n{completed.stderr}")
    return completed


# ---------------------------------------------------------------------------
# Throughput workers: one framework each, in a fresh process
# ---------------------------------------------------------------------------


def worker_cnncli(path, threads, batch, repeats):
    import cnncli
    from cnncli.loading import load_model
    cnncli.set_num_threads(threads)
    model = load_model(path)
    x = np.random.default_rng(0).normal(size=(batch,) + model.input_shape).astype(np.float32)
    model.forward(x)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.forward(x)
        times.append(time.perf_counter() - started)
    return times


def worker_torch(path, threads, batch, repeats):
    import torch
    from torch_resnet import ResNet
    torch.set_num_threads(threads)
    depth = int(os.path.basename(path)[len("resnet"):].split(".")[0])
    model = ResNet(depth)
    model.load_state_dict(torch.load(path, weights_only=True))
    model.eval()
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(batch, 3, 224, 224))
                         .astype(np.float32))
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(repeats):
            started = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - started)
    return times


def throughput(framework, path, args):
    _, memory, out, _ = run_measured([__file__, "--worker", framework, path, "--threads",
                                      str(args.threads), "--batch", str(args.batch),
                                      "--repeats", str(args.repeats)])
    times = json.loads(out)
    return args.batch / float(np.median(times)), memory


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        framework, path = args.worker
        run = worker_cnncli if framework == "cnncli" else worker_torch
        print(json.dumps(run(path, args.threads, args.batch, args.repeats)))
        return

    import torch
    work = tempfile.mkdtemp(prefix="cnncli-resnet-")
    try:
        print(f"# ResNet: {args.threads} threads, float32, torch {torch.__version__}\n")
        print("## Import parity (random weights and BatchNorm statistics, 4 inputs at "
              "224x224, inference)\n")
        print("| model | from | max abs difference / max abs output | import s |")
        print("|---|---|---|---|")
        from cnncli.loading import load_model
        imported = {}
        for depth in (18, 50):
            paths, inputs, expected = make_weights(depth, work)
            for kind, path in paths.items():
                output = os.path.join(work, f"resnet{depth}-{kind}.cnn")
                started = time.perf_counter()
                cnncli_command(["import", path, "-o", output])
                seconds = time.perf_counter() - started
                outputs = load_model(output).forward(inputs)
                error = np.abs(outputs - expected).max() / np.abs(expected).max()
                print(f"| ResNet-{depth} | .{kind} | {error:.1e} | {seconds:.1f} |")
            imported[depth] = (os.path.join(work, f"resnet{depth}-pt.cnn"), paths["pt"])

        print(f"\n## Inference throughput, batch {args.batch} (median of {args.repeats} "
              "batches after a warm-up; each run in a fresh process)\n")
        print("| model | cnncli img/s | cnncli peak MiB | torch img/s | torch peak MiB | "
              "cnncli / torch throughput |")
        print("|---|---|---|---|---|---|")
        for depth in (18, 50):
            model_file, torch_file = imported[depth]
            ours, our_memory = throughput("cnncli", model_file, args)
            theirs, their_memory = throughput("torch", torch_file, args)
            print(f"| ResNet-{depth} | {ours:.1f} | {our_memory:.0f} | {theirs:.1f} | "
                  f"{their_memory:.0f} | {ours / theirs:.2f}x |")

        print(f"\n## Fine-tuning the imported ResNet-18 on an image folder at 224x224\n")
        output = os.path.join(work, "optdigits-resnet18.cnn")
        seconds, memory, _, err = run_measured(
            ["-m", "cnncli", "finetune", imported[18][0], "optdigits",
             "--per-class", str(args.per_class), "--val-split", "0", "--epochs", "10",
             "--threads", str(args.threads), "-o", output])
        cached = "features once" in err
        eval_seconds, eval_memory, _, _ = run_measured(
            ["-m", "cnncli", "eval", output, "optdigits", "--threads",
             str(args.threads)])
        print("| step | images | wall s (whole command) | peak MiB |")
        print("|---|---|---|---|")
        print(f"| `cnncli finetune resnet18.cnn optdigits --per-class {args.per_class} "
              f"--val-split 0 --epochs 10` (backbone features computed once: "
              f"{'yes' if cached else 'no'}) | {10 * args.per_class} | {seconds:.1f} | "
              f"{memory:.0f} |")
        print(f"| `cnncli eval optdigits-resnet18.cnn optdigits` (test part) | 599 | "
              f"{eval_seconds:.1f} | {eval_memory:.0f} |")
        print("\nThe weights are random (no network here to fetch ImageNet's), so the "
              "accuracy is chance and not reported; the figures are the cost of the pipeline: "
              "decoding, resizing to 224x224 RGB, the frozen backbone once, the head.")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
