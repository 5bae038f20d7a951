"""The ``summary``, ``models`` and ``demo`` jobs: a model or architecture to describe, the
shipped models to list, and transfer learning on shipped defaults."""

import os
import shutil
import tempfile

from cnncli import architectures
from cnncli.jobs.common import JobError, Reporter, open_model
from cnncli.jobs.evaluator import evaluate
from cnncli.jobs.finetuner import finetune
from cnncli.resources import zoo_models

# The demo: a shipped model fine-tuned on a shipped dataset with the default
# options, as a user would with `cnncli finetune`; the CLI's help shows the
# same two commands.
DEMO_MODEL = "lenet-mnist"
DEMO_DATA = "optdigits"
DEMO_SETTINGS = dict(seed=0)


def describe(name, input_shape=None, classes=10):
    """The model ``summary`` shows: a model file, a pretrained model's name, or the
    architecture ``name`` built for ``input_shape`` ("C,H,W"; default its usual input)
    and ``classes`` outputs."""
    if name not in architectures.ARCHITECTURES or os.path.exists(name):
        try:
            return open_model(name)
        except JobError as error:
            if "no such model file" not in str(error):
                raise
            pretrained = ", ".join(zoo_name for zoo_name, _, _ in zoo_models()) or "none"
            raise JobError(f"{name}: no such model file, pretrained model or architecture "
                           f"(pretrained: {pretrained}; architectures: "
                           f"{', '.join(architectures.ARCHITECTURES)})") from None
    options = {}
    if input_shape is not None:
        try:
            options["input_shape"] = tuple(int(v) for v in input_shape.split(","))
        except ValueError:
            raise JobError(f"--input-shape: expected C,H,W, got {input_shape!r}") from None
    try:
        return architectures.ARCHITECTURES[name](classes=classes, **options)
    except ValueError as error:
        raise JobError(f"{name}: {error}") from None


def list_models():
    """[(name, what it is)] of the shipped pretrained models: the first paragraph of each
    model card after its title."""
    return [(name, next((line.strip() for line in card.splitlines()
                         if line.strip() and not line.startswith("#")), ""))
            for name, _, card in zoo_models()]


def demo(output=None, threads=None, force=False, reporter=None):
    """Fine-tune DEMO_MODEL on DEMO_DATA with DEMO_SETTINGS, then evaluate it on the test
    part; returns the Evaluation. The model is kept at ``output`` if given, else it is
    written in a temporary folder that is removed."""
    reporter = reporter or Reporter()
    folder = None
    if output is None:
        folder = tempfile.mkdtemp(prefix="cnncli-demo-")
        output = os.path.join(folder, "optdigits.cnn")
    try:
        finetune(DEMO_MODEL, DEMO_DATA, output=output, threads=threads, force=force,
                 reporter=reporter, **DEMO_SETTINGS)
        return evaluate(output, DEMO_DATA, reporter=reporter)
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
