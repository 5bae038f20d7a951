"""What the command-line tool prints and how it ends: text made safe for a terminal,
results to stdout, progress and errors to stderr, the exit codes, and the
reporter that draws training progress.
"""

import re

import typer
from rich.console import Console

from cnncli import distributed, jobs
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


def _silent_rank():
    """Whether this is a rank other than 0 of a data-parallel run: rank 0 prints."""
    comm = distributed.current()
    return comm is not None and comm.rank != 0


def say(text):
    """Print a line of results to stdout."""
    if not _silent_rank():
        out.print(printable(text), markup=False)


def tell(text):
    """Print a line of progress or warning to stderr."""
    if not _silent_rank():
        err.print(printable(text), markup=False)


def fail(message, code=EXIT_FAILURE):
    if not _silent_rank():
        err.print(f"error: {printable(message, newlines=False)}", markup=False)
    raise typer.Exit(code)


# Expected failures: a one-line message and an exit code. In a data-parallel run
# every rank meets them together (the same data, options and files; the summed loss
# and Ctrl-C flag), so rank 0 alone reports them and every rank exits.
EXPECTED = (jobs.JobError, ModelFileError, DataError, FileNotFoundError, FileExistsError,
            LimitError)


def _outcome(error):
    """(message, exit code, whether every rank of a data-parallel run meets it together)
    of an exception, or None for a bug."""
    if isinstance(error, EXPECTED):
        return str(error), EXIT_FAILURE, True
    if isinstance(error, jobs.TrainingDiverged):
        return str(error), EXIT_DIVERGED, True
    if isinstance(error, jobs.TrainingInterrupted):
        return str(error), EXIT_INTERRUPTED, True
    if isinstance(error, KeyboardInterrupt):
        return "interrupted", EXIT_INTERRUPTED, False
    if isinstance(error, OSError):
        return f"{error.filename or ''}: {error.strerror or error}".lstrip(": "), \
            EXIT_FAILURE, False
    return None


class _Run:
    """Runs a job, turning expected failures into one line and an exit code.

    In a data-parallel run a failure of one rank alone (a bug, a full disk,
    a second Ctrl-C) ends every rank at once (MPI_Abort) with its message and
    code, instead of leaving the others waiting for it.
    """

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is None or isinstance(error, typer.Exit):
            return False
        outcome = _outcome(error)
        comm = distributed.current()
        if comm is not None and (outcome is None or not outcome[2]):
            message, code = (f"{type(error).__name__}: {error}", EXIT_FAILURE) \
                if outcome is None else outcome[:2]
            err.print(f"error: rank {comm.rank}: {printable(message, newlines=False)}",
                      markup=False)
            comm.abort(code)
        if outcome is None:
            return False
        message, code, _ = outcome
        if code == EXIT_INTERRUPTED:
            tell(message)
            raise typer.Exit(code)
        fail(message, code)


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
