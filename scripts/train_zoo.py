"""Train the shipped pretrained models (models/) with cnncli's own command-line tool.

    python scripts/train_zoo.py --mnist PATH/mnist.npz            # write models/
    python scripts/train_zoo.py --mnist PATH/mnist.npz --check    # retrain, compare checksums

Each model is trained by the exact `cnncli train` command written in its
model card, evaluated on the MNIST test images with `cnncli eval`, and
described in models/NAME.md (architecture, data, preprocessing, seed,
command, test accuracy, training time, SHA-256). Training is deterministic:
the same command gives the same file, bit for bit, for any thread count, on
machines whose BLAS runs the same kernels (the same CPU family and library
versions); elsewhere the weights differ in the last bits.

`--mnist` is a local copy of MNIST's mnist.npz: it is placed in a private
cache folder so that the commands name the dataset `mnist`, as a user would.
Without it, the file is taken from cnncli's cache (downloaded on first use).
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
MODELS = os.path.join(ROOT, "models")

# name -> (what it is, arguments of `cnncli train`, classes it is evaluated on)
ZOO = {
    "lenet-mnist-0-4": (
        "LeNet-style CNN trained on the MNIST digits 0 to 4 only: the source network of the "
        "classic transfer protocol (fine-tune it on 5 to 9).",
        ["mnist", "--classes", "0,1,2,3,4", "--epochs", "3", "--batch-size", "64",
         "--seed", "0"],
        "0,1,2,3,4"),
    "lenet-mnist": (
        "LeNet-style CNN trained on all ten MNIST digits: a general handwriting feature "
        "extractor to fine-tune on other digit or glyph data.",
        ["mnist", "--epochs", "4", "--batch-size", "64", "--schedule", "cosine",
         "--seed", "0"],
        None),
}


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def mnist_digest(path):
    """SHA-256 of MNIST's four arrays (values, shapes and dtypes), whatever the .npz packing."""
    digest = hashlib.sha256()
    with np.load(path) as archive:
        for key in ("x_train", "y_train", "x_test", "y_test"):
            array = np.ascontiguousarray(archive[key])
            digest.update(f"{key}{array.shape}{array.dtype.str}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def cnncli(arguments, env):
    command = [sys.executable, "-m", "cnncli"] + arguments
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        sys.exit(f"failed: cnncli {' '.join(arguments)}\n{completed.stderr}")
    return completed.stdout


def card(name, about, command, info, evaluation, seconds, checksum, data_digest):
    preprocessing = info["preprocessing"]
    arch = info["provenance"]["arch"]
    per_class = "\n".join(f"| {row['class']} | {row['precision']:.4f} | {row['recall']:.4f} | "
                          f"{row['support']} |" for row in evaluation["per_class"])
    classes = ", ".join(info["classes"])
    return f"""# {name}

{about}

| | |
|---|---|
| architecture | `{arch}`: conv 5x5 32 (same) - ReLU - max pool 2 - conv 5x5 64 (same) - ReLU - max pool 2 - dense 128 - ReLU - dense {len(info['classes'])} |
| classes | {classes} |
| input | {preprocessing['channels']}x{preprocessing['size'][0]}x{preprocessing['size'][1]}, pixels scaled by {preprocessing['scale']:.6g}, then (x - {preprocessing['mean'][0]:.6f}) / {preprocessing['std'][0]:.6f} |
| data | MNIST training images of these classes ({info['provenance']['dataset_size']} after holding out 10% for validation); arrays' SHA-256 `{data_digest}` |
| seed | {info['provenance']['seed']} |
| test accuracy | **{evaluation['accuracy']:.4f}** on the {evaluation['samples']} MNIST test images of these classes |
| training time | {seconds:.0f} s on 2 cores |
| file SHA-256 | `{checksum}` |

Made by

    cnncli train {' '.join(command)} -o {name}.cnn

and checked with

    cnncli eval {name}.cnn mnist{'' if evaluation['classes'] == [str(d) for d in range(10)] else ' --classes ' + ','.join(evaluation['classes'])}

(`python scripts/train_zoo.py --mnist mnist.npz` runs both for every model
and rewrites this card; `--check` retrains and compares the checksum.)

| class | precision | recall | test images |
|---|---|---|---|
{per_class}
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", help="a local mnist.npz (default: cnncli's cache)")
    parser.add_argument("--check", action="store_true",
                        help="retrain into a temporary folder and compare with models/")
    parser.add_argument("--only", choices=sorted(ZOO), help="one model only")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="cnncli-zoo-")
    env = dict(os.environ)
    try:
        if args.mnist:
            cache = os.path.join(work, "cache")
            os.makedirs(cache)
            os.symlink(os.path.abspath(args.mnist), os.path.join(cache, "mnist.npz"))
            env["CNNCLI_CACHE"] = cache
        from cnncli.data import load_mnist
        mnist_path = os.path.join(env["CNNCLI_CACHE"], "mnist.npz") if args.mnist else \
            load_mnist()
        data_digest = mnist_digest(mnist_path)
        failures = 0
        for name, (about, command, classes) in ZOO.items():
            if args.only and name != args.only:
                continue
            output = os.path.join(work, name + ".cnn")
            started = time.perf_counter()
            cnncli(["train"] + command + ["-o", output, "-q"], env)
            seconds = time.perf_counter() - started
            report = os.path.join(work, name + ".json")
            cnncli(["eval", output, "mnist", "--json", report]
                   + (["--classes", classes] if classes else []), env)
            with open(report) as handle:
                evaluation = json.load(handle)
            checksum = sha256(output)
            print(f"{name}: test accuracy {evaluation['accuracy']:.4f}, {seconds:.0f} s, "
                  f"sha256 {checksum}")
            shipped = os.path.join(MODELS, name + ".cnn")
            if args.check:
                same = os.path.exists(shipped) and sha256(shipped) == checksum
                print(f"  {'identical to' if same else 'DIFFERS from'} {shipped}")
                failures += not same
                continue
            from cnncli.modelfile import read_info
            info = read_info(output)
            shutil.copyfile(output, shipped)
            with open(os.path.join(MODELS, name + ".md"), "w") as handle:
                handle.write(card(name, about, command, info, evaluation, seconds, checksum,
                                  data_digest))
        sys.exit(1 if failures else 0)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
