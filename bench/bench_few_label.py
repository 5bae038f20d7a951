"""Few-label fine-tuning (10 labelled images per class of optdigits), judged over seeds.

    python bench/bench_few_label.py [--seeds 10] ['{"shift": 0}' ...]

Each argument is a set of `finetune` options (JSON; none: the defaults). For each seed
the run labels 10 images per class of optdigits' training part (chosen by the seed, as
`--per-class 10 --seed S` chooses them) and is scored twice: on the rest of the training
part, which it never saw (the development set, by which defaults are chosen), and on the
test part (reported, never chosen by).
"""

import argparse
import json
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cnncli import data as datasets  # noqa: E402
from cnncli.jobs import Reporter  # noqa: E402
from cnncli.jobs.common import load_splits, model_image_format, open_model  # noqa: E402
from cnncli.jobs.finetuner import finetune  # noqa: E402
from cnncli.training import predict_outputs  # noqa: E402

PER_CLASS = 10


def accuracy(model, dataset, rows=None):
    x, y = (dataset.x, dataset.y) if rows is None else (dataset.x[rows], dataset.y[rows])
    transform = datasets.batch_transform(model.preprocessing, dataset.pixel_max)
    return float(np.mean(predict_outputs(model, x, transform=transform).argmax(1) == y))


def scores(options, seeds, splits, folder):
    """(development accuracies, test accuracies), one per seed."""
    train, development, test = splits.train, [], []
    for seed in seeds:
        unseen = np.setdiff1d(np.arange(len(train)), labelled_rows(train, seed))
        result = finetune("lenet-mnist", "optdigits", output=os.path.join(folder, "f.cnn"),
                          per_class=PER_CLASS, seed=seed, force=True, reporter=Reporter(),
                          **options)
        development.append(accuracy(result.model, train, unseen))
        test.append(accuracy(result.model, splits.test))
    return development, test


def labelled_rows(train, seed):
    """The rows of ``train`` that ``--per-class 10 --seed`` labels: the same sampling run
    on a dataset whose images are their row numbers."""
    numbers = datasets.Dataset(np.arange(len(train)).reshape(-1, 1, 1, 1), train.y,
                               train.classes)
    return np.asarray(datasets.sample_per_class(numbers, PER_CLASS, seed).x).ravel()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", default=["{}"])
    parser.add_argument("--seeds", type=int, default=10)
    arguments = parser.parse_args()
    splits = load_splits("optdigits", False, **model_image_format(open_model("lenet-mnist")))
    seeds = range(arguments.seeds)
    print("| options | part | " + " | ".join(str(seed) for seed in seeds) + " | mean |")
    print("|---|---|" + "---|" * (len(seeds) + 1))
    with tempfile.TemporaryDirectory() as folder:
        for variant in arguments.variants:
            for part, values in zip(("development", "test"),
                                    scores(json.loads(variant), seeds, splits, folder)):
                print(f"| `{variant}` | {part} | " + " | ".join(f"{v:.4f}" for v in values) +
                      f" | {np.mean(values):.4f} |", flush=True)


if __name__ == "__main__":
    main()
