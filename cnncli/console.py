"""What the command-line tool prints and how it ends: text made safe for a terminal,
results to stdout, progress and errors to stderr, the exit codes, and the
reporter that draws training progress.
"""

import re

import typer
from rich.console import Console

from cnncli import jobs
from cnncli.data import DataError
from cnncli.limits import LimitError
from cnncli.modelfile import ModelFileError

EXIT_FAILURE = 1
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


# Characters a terminal acts on rather than shows (escape sequences can set
# the window title, clear the screen or fake output), lone surrogates (which
# cannot be printed at all) and the bidirectional overrides that reorder text.
UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
                         "\ud800-\udfff]")


def printable(text, newlines=True):
    """``text`` with every character a terminal would act on written as an escape (``\\x1b``),
    so names and messages taken from files print as they are; tabs and (with ``newlines``)
    line breaks stay."""
    text = str(text)
    if not newlines:
        text = text.replace("\n", "\\n").replace("\r", "\\r")
    return UNPRINTABLE.sub(lambda found: ascii(found.group())[1:-1], text)


def say(text):
    """Print a line of results to stdout."""
    out.print(printable(text), markup=False)


def tell(text):
    """Print a line of progress or warning to stderr."""
    err.print(printable(text), markup=False)


def fail(message, code=EXIT_FAILURE):
    err.print(f"error: {printable(message, newlines=False)}", markup=False)
    raise typer.Exit(code)


class _Run:
    """Runs a job, turning expected failures into one line and an exit code."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is None or isinstance(error, typer.Exit):
            return False
        if isinstance(error, (jobs.JobError, ModelFileError, DataError, FileNotFoundError,
                              FileExistsError, LimitError)):
            fail(str(error))
        if isinstance(error, jobs.TrainingDiverged):
            fail(str(error), EXIT_DIVERGED)
        if isinstance(error, jobs.TrainingInterrupted):
            tell(str(error))
            raise typer.Exit(EXIT_INTERRUPTED)
        if isinstance(error, KeyboardInterrupt):
            tell("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED)
        if isinstance(error, OSError):
            fail(f"{error.filename or ''}: {error.strerror or error}".lstrip(": "))
        return False


class ConsoleReporter(jobs.Reporter):
    """One line per epoch, and a live progress bar with loss and accuracy on a terminal."""

    def __init__(self, quiet=False):
        self.quiet = quiet
        self.progress = None
        self.task = None

    def message(self, text):
        if not self.quiet:
            tell(text)

    def epoch_begin(self, epoch, epochs, batches, phase=""):
        if self.quiet or not err.is_terminal:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
            TimeRemainingColumn
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[logs]}"),
                                 TimeRemainingColumn(), console=err, transient=True)
        label = f"epoch {epoch + 1}/{epochs}" + (f" ({phase})" if phase else "")
        self.task = self.progress.add_task(label, total=batches, logs="")
        self.progress.start()

    def batch_end(self, epoch, batch, batches, logs):
        if self.progress is not None:
            self.progress.update(self.task, completed=batch + 1, logs=metrics_text(logs))

    def epoch_end(self, epoch, epochs, logs, seconds):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if not self.quiet:
            say(f"epoch {epoch + 1}/{epochs}  {metrics_text(logs)}  {seconds:.1f}s")


def metrics_text(logs):
    return "  ".join(f"{key} {value:.4f}" for key, value in logs.items())
