"""Checks of argument values shared by every room: one wording, one rule."""

import numpy as np

__all__ = ["is_positive_int", "positive_int"]


def is_positive_int(value):
    """Whether ``value`` is an int >= 1 (numpy ints count; bools do not)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) \
        and value >= 1


def positive_int(name, value, limit=None):
    """``value`` as an int, if it is a positive int (at most ``limit``); else ValueError
    ``"<name>: expected a positive int, got <value>"``."""
    if not is_positive_int(value) or (limit is not None and value > limit):
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return int(value)
