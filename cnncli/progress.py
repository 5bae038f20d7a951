"""Keras-style progress of ``fit(verbose=1 or 2)``: the one place where training prints.

``verbose=1`` keeps one line per epoch up to date as batches finish (rewritten
in place on a terminal, written once at the epoch's end otherwise);
``verbose=2`` writes one line per epoch.
"""

import sys
import time

from cnncli.callbacks import Callback

__all__ = ["ProgressPrinter"]


def _metrics(logs):
    return "  ".join(f"{key} {value:.4f}" for key, value in logs.items())


class ProgressPrinter(Callback):
    """Prints progress to ``stream`` (standard output by default)."""

    def __init__(self, epochs, verbose=1, stream=None):
        if verbose not in (1, 2):
            raise ValueError(f"verbose: expected 0, 1 or 2, got {verbose!r}")
        self.epochs, self.verbose = epochs, verbose
        self.stream = stream or sys.stdout
        self.live = self.verbose == 1 and getattr(self.stream, "isatty", lambda: False)()

    def on_epoch_begin(self, epoch, batches, model):
        self.started = time.perf_counter()

    def on_batch_end(self, epoch, batch, batches, logs):
        if self.live:
            self.stream.write(f"\rEpoch {epoch + 1}/{self.epochs}  {batch + 1}/{batches}  "
                              f"{_metrics(logs)}")
            self.stream.flush()

    def on_epoch_end(self, epoch, logs, model):
        seconds = time.perf_counter() - self.started
        start = "\r" if self.live else ""
        self.stream.write(f"{start}Epoch {epoch + 1}/{self.epochs}  {_metrics(logs)}  "
                          f"{seconds:.1f}s\n")
        self.stream.flush()
