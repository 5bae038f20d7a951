"""The jobs behind the command-line tool: train, finetune, evaluate, predict, import, show.

Each job takes plain arguments, reports progress through a ``Reporter`` and
returns a result object; none prints. The CLI turns arguments into a call
and results into text. Each job is a module of its own (``trainer``,
``finetuner``, ``evaluator``, ``predictor``, ``conversion``, ``pictures``);
what they share is in ``common``, checkpoints in ``checkpoints``, run
histories in ``history``.

Checkpoints. ``train`` writes two files in its checkpoint folder after every
epoch, atomically: ``last.cnn`` (the model with its training state:
optimizer moments, schedule, epoch, history, the random generators of
dropout and augmentation, and the run's settings) and ``best.cnn`` (the best
model by validation accuracy, or training loss without validation). Both are
ordinary model files. ``resume=True`` continues from ``last.cnn``: the
shuffling order of epoch e comes from (seed, e), so a resumed run ends with
the same weights as an uninterrupted one. Ctrl-C saves ``last.cnn`` after
the current batch with the position inside the epoch (batches done, running
totals), and a resumed run carries on from that batch. Every run holds a
lock on its output and checkpoint folder (``cnncli.files.RunLock``); a
checkpoint whose epochs are all done, but whose final model was never
written, gives the final model on ``--resume``.
"""

from cnncli.jobs.common import (JobError, Reporter, TrainingDiverged, TrainingInterrupted,
                                TrainResult, open_model, resolve_model)
from cnncli.jobs.conversion import ImportResult, import_model
from cnncli.jobs.describer import DEMO_DATA, DEMO_MODEL, demo, describe, list_models
from cnncli.jobs.evaluator import Evaluation, evaluate
from cnncli.jobs.featurizer import FeatureResult, features
from cnncli.jobs.finetuner import finetune
from cnncli.jobs.history import history_path, read_history, write_history
from cnncli.jobs.pictures import show_confusion, show_features, show_filters, show_history
from cnncli.jobs.predictor import Prediction, predict
from cnncli.jobs.trainer import train
from cnncli.resources import zoo_models

__all__ = ["train", "finetune", "evaluate", "predict", "import_model", "show_filters",
           "show_features", "show_history", "show_confusion", "read_history", "write_history",
           "history_path", "Reporter", "JobError", "TrainingDiverged", "TrainingInterrupted",
           "TrainResult", "Evaluation", "Prediction", "ImportResult", "zoo_models",
           "open_model", "resolve_model", "describe", "list_models", "demo", "DEMO_MODEL",
           "DEMO_DATA", "features", "FeatureResult"]
