"""The size limits cnncli holds untrusted input to, and how to raise them.

Every size a file declares (an image's pixels, an array's shape, a model's
input, a pickle's nesting) is checked against one of these before anything
of that size is allocated, so a small hostile file cannot make the tool take
gigabytes or run for hours. Each limit can be raised (or lowered) with an
environment variable ``CNNCLI_<NAME>``, read every time the limit is used:

    CNNCLI_MAX_ARRAY_BYTES=8589934592 cnncli train big.npz

The defaults are far above what the shipped models and datasets need.
"""

import os

__all__ = ["Limit", "LimitError", "MAX_IMAGE_PIXELS", "MAX_ARRAY_BYTES", "MAX_ACTIVATION_VALUES",
           "MAX_THREADS", "MAX_CLASSES", "MAX_JSON_BYTES", "LIMITS", "cut"]


class LimitError(ValueError):
    """A limit's environment variable holds something other than a positive whole number."""


class Limit:
    """A named upper bound with a default, overridable by ``CNNCLI_<name>``."""

    def __init__(self, name, default, meaning):
        self.name = name
        self.default = default
        self.meaning = meaning

    @property
    def variable(self):
        return f"CNNCLI_{self.name}"

    @property
    def value(self):
        text = os.environ.get(self.variable, "").strip()
        if not text:
            return self.default() if callable(self.default) else self.default
        if not text.isdigit() or int(text) < 1:
            raise LimitError(f"{self.variable}: expected a positive whole number, got "
                             f"{text[:40]!r}")
        return int(text)

    def exceeded(self, amount, what):
        """The one-line message for ``what`` needing ``amount``, or None within the limit."""
        limit = self.value
        if amount <= limit:
            return None
        return (f"{what} needs {amount:,} {self.meaning}, more than cnncli's limit of "
                f"{limit:,}; set {self.variable} to raise it")


def _threads_per_machine():
    return 4 * (os.cpu_count() or 1)


MAX_IMAGE_PIXELS = Limit("MAX_IMAGE_PIXELS", 64_000_000, "pixels")
MAX_ARRAY_BYTES = Limit("MAX_ARRAY_BYTES", 2 << 30, "bytes")
# Per sample, in any layer's input or output: 2**28 float32 values are 1 GiB.
MAX_ACTIVATION_VALUES = Limit("MAX_ACTIVATION_VALUES", 1 << 28, "values per sample")
MAX_THREADS = Limit("MAX_THREADS", _threads_per_machine, "threads")
MAX_CLASSES = Limit("MAX_CLASSES", 100_000, "classes")
MAX_JSON_BYTES = Limit("MAX_JSON_BYTES", 64 << 20, "bytes")

LIMITS = (MAX_IMAGE_PIXELS, MAX_ARRAY_BYTES, MAX_ACTIVATION_VALUES, MAX_THREADS, MAX_CLASSES,
          MAX_JSON_BYTES)


def cut(text, length=200):
    """``text`` (an exception's message, a header...) shortened to ``length`` characters, so
    a message quoting a file's contents stays one readable line."""
    text = " ".join(str(text).split())
    return text if len(text) <= length else text[:length - 3] + "..."
