"""The activations computed with NumPy alone (``softmax``, ``sigmoid``), each written so
that no input overflows; ``cnncli.functional`` exports them beside the compiled ones."""

from typing import Optional

import numpy as np

__all__ = ["softmax", "sigmoid"]


def softmax(input: np.ndarray, dim: int = -1, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``exp(x - max) / sum(exp(x - max))`` along ``dim``: finite for any finite input;
    ``out`` (which may be ``input`` itself) receives the result in place."""
    input = np.asarray(input)
    out = np.empty_like(input) if out is None else out
    np.subtract(input, input.max(axis=dim, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=dim, keepdims=True)
    return out


def sigmoid(input: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))``, exponentiating only non-positive numbers: no overflow."""
    negative_part = np.exp(-np.abs(input))
    return np.where(input >= 0, 1 / (1 + negative_part), negative_part / (1 + negative_part))
