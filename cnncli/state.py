"""Loading named arrays into a model: strict by default, and partial loading that tells
a replaced head (expected) from a mismatched backbone (refused unless asked).
"""

import numpy as np

__all__ = ["load_state", "LoadReport", "IncompatibleWeightsError"]


def load_state(model, state, strict, allow_backbone_mismatch):
    """``Sequential.load_state_dict``: see its docstring."""
    if not isinstance(state, dict):
        raise ValueError(f"state: expected a dict of arrays by name, got "
                         f"{type(state).__name__}")
    targets = model.state_arrays()
    report = LoadReport()
    accepted = {}
    for name, value in state.items():
        if name not in targets:
            report.unexpected.append(name)
            continue
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.floating) and not np.issubdtype(value.dtype,
                                                                             np.integer):
            raise ValueError(f"state[{name!r}]: expected numbers, got dtype {value.dtype}")
        if value.shape != targets[name].shape:
            report.skipped[name] = (value.shape, targets[name].shape)
            continue
        accepted[name] = value
    report.missing = [name for name in targets if name not in state]
    report.loaded = list(accepted)
    if strict and not report.complete:
        raise IncompatibleWeightsError(f"weights do not fit the model: {report.problems()}; "
                                       "pass strict=False to load what fits")
    if not strict and not allow_backbone_mismatch:
        outside = _outside_head(model, report, state)
        if outside:
            raise IncompatibleWeightsError(
                f"weights do not fit the model outside its head: {', '.join(outside)}; "
                "pass allow_backbone_mismatch=True to load what fits anyway")
    for name, value in accepted.items():
        targets[name][...] = value
    return report


def _outside_head(model, report, state):
    """Mismatched names that belong neither to the model's head nor to the state's."""
    heads = set()
    if model.head is not None:
        heads.add(model.head.name)
    if state:
        heads.add(list(state)[-1].split(".")[0])
    return [name for name in report.mismatched() if name.split(".")[0] not in heads]


class IncompatibleWeightsError(ValueError):
    """Weights whose names or shapes do not fit the model they are loaded into."""


class LoadReport:
    """What ``load_state_dict`` did: names loaded, skipped (shape mismatch), missing, unexpected.

    ``skipped`` maps a name to (shape in the source, shape in the model).
    """

    def __init__(self):
        self.loaded = []
        self.skipped = {}
        self.missing = []
        self.unexpected = []

    @property
    def complete(self):
        """True when every tensor of the model was loaded and nothing was left over."""
        return not (self.skipped or self.missing or self.unexpected)

    def mismatched(self):
        return list(self.skipped) + self.missing + self.unexpected

    def problems(self):
        parts = []
        if self.missing:
            parts.append("missing " + ", ".join(self.missing))
        if self.unexpected:
            parts.append("unexpected " + ", ".join(self.unexpected))
        if self.skipped:
            parts.append("mis-shaped " + ", ".join(
                f"{name} (given {tuple(given)}, model has {tuple(own)})"
                for name, (given, own) in self.skipped.items()))
        return "; ".join(parts) or "none"

    def __str__(self):
        return f"loaded {len(self.loaded)} tensors; problems: {self.problems()}"

    __repr__ = __str__
