"""Fine-tuning with default options: test accuracy and time of each target of BENCHMARKS.md,
through the command-line tool, against an earlier version's defaults.

    python bench/bench_finetune.py --mnist PATH/mnist.npz --baseline DIR [--rounds 3]

Each task is one `cnncli finetune` command with default options only, run in a fresh
process; its test accuracy comes from `cnncli eval` of the file it wrote. With
``--baseline`` (a checkout of an earlier cnncli with its extensions built in place:
``python setup.py build_ext --inplace``) the same commands run on that version too, the
two alternating, so "as fast as the earlier default" is measured side by side. Models
and data are named by path, so both versions read the same files.

Tasks:
1. lenet-mnist fine-tuned on optdigits (the PNG dataset in data/);
2. lenet-mnist-0-4 fine-tuned on MNIST's digits 5-9 (needs --mnist);
3. few-label: lenet-mnist on optdigits with 10 labelled images per class, seeds 0-2.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from peak_memory import run_measured  # noqa: E402

OPTDIGITS = os.path.join(ROOT, "data", "optdigits")
LENET = os.path.join(ROOT, "models", "lenet-mnist.cnn")
LENET_0_4 = os.path.join(ROOT, "models", "lenet-mnist-0-4.cnn")


def tasks(mnist):
    found = [("optdigits", [LENET, OPTDIGITS], [OPTDIGITS])]
    if mnist:
        classes = ["--classes", "5,6,7,8,9"]
        found.append(("mnist 5-9", [LENET_0_4, mnist] + classes, [mnist] + classes))
    for seed in (0, 1, 2):
        found.append((f"optdigits, 10 per class, seed {seed}",
                      [LENET, OPTDIGITS, "--per-class", "10", "--seed", str(seed)], [OPTDIGITS]))
    return found


def run(version, arguments, folder, threads):
    """(seconds, peak MiB, test accuracy) of one finetune command with ``version``'s code."""
    env = dict(os.environ)
    if version != "current":
        # Run from a folder of its own, so the checkout's copy is the one imported.
        env["PYTHONPATH"] = version
    output = os.path.join(folder, "tuned.cnn")
    finetune, eval_arguments = arguments
    seconds, peak, _, stderr = run_measured(
        ["-m", "cnncli", "finetune", *finetune, "-o", output, "--force", "--quiet",
         "--threads", str(threads)], env=env, cwd=folder)
    metrics = os.path.join(folder, "metrics.json")
    _, _, _, eval_stderr = run_measured(["-m", "cnncli", "eval", output, *eval_arguments,
                                         "--json", metrics, "--force"], env=env, cwd=folder)
    with open(metrics) as handle:
        accuracy = json.load(handle)["accuracy"]
    return seconds, peak, accuracy


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", help="a local mnist.npz (task 2 is skipped without it)")
    parser.add_argument("--baseline", help="a checkout of an earlier cnncli, built in place")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    versions = ["current"] + ([os.path.abspath(args.baseline)] if args.baseline else [])
    print(f"| task | version | test accuracy | seconds (median of {args.rounds}) | "
          "peak MiB |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name, finetune, eval_arguments in tasks(args.mnist):
            results = {version: [] for version in versions}
            for _ in range(args.rounds):
                for version in versions:
                    results[version].append(run(version, (finetune, eval_arguments), folder,
                                                args.threads))
            for version in versions:
                times = [seconds for seconds, _, _ in results[version]]
                accuracies = {round(accuracy, 4) for _, _, accuracy in results[version]}
                label = "this version" if version == "current" else "baseline"
                print(f"| {name} | {label} | {', '.join(map(str, sorted(accuracies)))} | "
                      f"{statistics.median(times):.2f} ({min(times):.2f}-{max(times):.2f}) | "
                      f"{max(peak for _, peak, _ in results[version]):.0f} |", flush=True)


if __name__ == "__main__":
    main()
