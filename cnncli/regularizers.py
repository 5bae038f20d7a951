"""Weight penalties: L1 (sparsity) and L2 (weight decay), set per layer.

    Conv2D(32, 3, regularizer=L2(1e-4))

``fit`` adds each trainable layer's penalty to the loss it reports and the
penalty's gradient to the weight's gradient. Biases are not penalised.
"""

import math

import numpy as np

__all__ = ["L1", "L2", "L1L2", "from_config"]


class L1L2:
    """``l1 * sum(|w|) + l2 * sum(w**2)``."""

    def __init__(self, l1=0.0, l2=0.0):
        for name, value in (("l1", l1), ("l2", l2)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not value >= 0 or not math.isfinite(value):
                raise ValueError(f"{name}: expected a finite strength >= 0, got {value!r}")
        self.l1, self.l2 = float(l1), float(l2)

    def penalty(self, weight):
        return float(self.l1 * np.abs(weight).sum() + self.l2 * np.square(weight).sum())

    def gradient(self, weight):
        return (self.l1 * np.sign(weight) + 2 * self.l2 * weight).astype(weight.dtype)

    def get_config(self):
        return {"type": "L1L2", "l1": self.l1, "l2": self.l2}

    def __repr__(self):
        return f"{type(self).__name__}(l1={self.l1}, l2={self.l2})"


class L1(L1L2):
    """``strength * sum(|w|)``: pulls weights towards zero (sparsity); with plain
    gradient steps they hover around zero rather than landing on it."""

    def __init__(self, strength):
        super().__init__(l1=strength)

    def get_config(self):
        return {"type": "L1", "strength": self.l1}

    def __repr__(self):
        return f"L1({self.l1})"


class L2(L1L2):
    """``strength * sum(w**2)``: keeps weights small."""

    def __init__(self, strength):
        super().__init__(l2=strength)

    def get_config(self):
        return {"type": "L2", "strength": self.l2}

    def __repr__(self):
        return f"L2({self.l2})"


def from_config(config):
    """The regularizer a ``get_config()`` dict describes."""
    kinds = {"L1": L1, "L2": L2, "L1L2": L1L2}
    if not isinstance(config, dict) or config.get("type") not in kinds:
        raise ValueError(f"regularizer: expected a dict with 'type' one of {sorted(kinds)}, "
                         f"got {config!r}")
    arguments = {key: value for key, value in config.items() if key != "type"}
    return kinds[config["type"]](**arguments)
