"""Finite-difference gradient checks.

A backward pass is right when it agrees with the slope of its forward pass.
``numerical_gradient`` measures that slope by central differences; use it in
float64, where the truncation and rounding errors stay far below the
tolerance of the comparison.
"""

import numpy as np

__all__ = ["numerical_gradient", "check_gradient"]


def numerical_gradient(function, array, grad_output, eps=1e-6):
    """Gradient of ``sum(function() * grad_output)`` with respect to ``array``.

    Parameters
    ----------
    function : callable
        Takes no argument and reads ``array``, which is perturbed in place one
        element at a time (and restored).
    array : ndarray, C-contiguous, float64
    grad_output : ndarray
        Weights of the function's outputs: the upstream gradient.
    eps : float
        Half the finite-difference step.

    Returns
    -------
    ndarray of float64, the shape of ``array``.
    """
    if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
        raise ValueError("array: expected a C-contiguous numpy.ndarray to perturb in place")
    if not array.flags.writeable:
        raise ValueError("array: expected a writable array to perturb in place")
    flat = array.reshape(-1)
    gradient = np.empty(flat.shape, dtype=np.float64)
    for i in range(flat.size):
        original = flat[i]
        flat[i] = original + eps
        above = np.sum(function() * grad_output, dtype=np.float64)
        flat[i] = original - eps
        below = np.sum(function() * grad_output, dtype=np.float64)
        flat[i] = original
        gradient[i] = (above - below) / (2 * eps)
    return gradient.reshape(array.shape)


def check_gradient(function, array, analytic, grad_output, eps=1e-6, rtol=1e-5, atol=1e-7):
    """Raise AssertionError unless ``analytic`` matches the numerical gradient.

    The message names the worst element and both values.
    """
    numeric = numerical_gradient(function, array, grad_output, eps)
    analytic = np.asarray(analytic, dtype=np.float64)
    if analytic.shape != numeric.shape:
        raise AssertionError(f"gradient shape {analytic.shape} != input shape {numeric.shape}")
    error = np.abs(analytic - numeric) - (atol + rtol * np.abs(numeric))
    if error.size and error.max() > 0:
        worst = np.unravel_index(np.argmax(error), error.shape)
        raise AssertionError(f"gradient mismatch at {worst}: analytic {analytic[worst]!r}, "
                             f"numerical {numeric[worst]!r}")
