"""Training histories: ``NAME.history.json`` beside a model, per-epoch metrics and phase.
"""

import json
import math
import os


from cnncli.files import atomic_write, read_json_file
from cnncli.modelfile import ModelFileError, read_training_state
from cnncli.jobs.common import JobError


HISTORY_FORMAT = "cnncli-history/1"


def history_path(model_path):
    """Where the history of the run that wrote ``model_path`` lives: beside it,
    ``digits.cnn`` -> ``digits.history.json``."""
    root, extension = os.path.splitext(os.fspath(model_path))
    return (root if extension == ".cnn" else os.fspath(model_path)) + ".history.json"


def write_history(model_path, command, history, phases):
    """Write the per-epoch metrics of a run next to its model, atomically."""
    epochs = [{"epoch": number, "phase": phase, **metrics}
              for number, (metrics, phase) in enumerate(zip(history, phases), start=1)]
    document = {"format": HISTORY_FORMAT, "model": os.path.basename(os.fspath(model_path)),
                "command": command, "epochs": epochs}
    path = history_path(model_path)
    atomic_write(path, (json.dumps(document, indent=1) + "\n").encode("utf-8"))
    return path


def read_history(run):
    """The per-epoch metrics of a run, from its history file, a model file beside one, or a
    checkpoint (``last.cnn`` keeps the history of the epochs it has done)."""
    run = os.fspath(run)
    if not os.path.exists(run):
        raise JobError(f"{run}: no such file")
    candidates = [run] if run.endswith(".json") else [history_path(run)]
    for path in candidates:
        if os.path.isfile(path):
            return _parse_history(path)
    try:
        state = read_training_state(run)
    except ModelFileError as error:
        raise JobError(f"{run}: no history beside it ({candidates[0]}) and {error}") from None
    if state is None or not state[0].get("history"):
        raise JobError(f"{run}: no history beside it ({candidates[0]}) and no training state "
                       "in it; train and finetune write one next to the model")
    history = state[0]["history"]
    _check_epochs(history, run)
    return [dict(metrics, epoch=number, phase="train")
            for number, metrics in enumerate(history, start=1)]


def _check_epochs(epochs, path):
    """A history's epochs: a list of {name: finite number}, with a text ``phase``."""
    if not isinstance(epochs, list) or not epochs or not all(
            isinstance(epoch, dict) and isinstance(epoch.get("phase", ""), str) and all(
                isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value) for key, value in epoch.items() if key != "phase")
            for epoch in epochs):
        raise JobError(f"{path}: the history has no epochs, or values that are not finite "
                       "numbers")


def _parse_history(path):
    try:
        document = read_json_file(path, "history file")
    except ValueError as error:
        raise JobError(str(error)) from None
    if not isinstance(document, dict) or document.get("format") != HISTORY_FORMAT:
        raise JobError(f"{path}: not a cnncli history file (expected format "
                       f"{HISTORY_FORMAT!r})")
    epochs = document.get("epochs")
    _check_epochs(epochs, path)
    return epochs
