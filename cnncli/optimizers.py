"""Optimizers and learning-rate schedules.

    optimizer = SGD(model.named_parameters(), lr=0.01, momentum=0.9)
    # or, pretrained layers at a tenth of the head's rate:
    optimizer = Adam([{"params": model[:-1].named_parameters(), "lr": 1e-4},
                      {"params": model[-1:].named_parameters()}], lr=1e-3)
    ...
    model.backward(grad)
    optimizer.step()          # frozen parameters are skipped, checked at every step
    optimizer.zero_grad()

The update rules are PyTorch's, so results can be compared formula for
formula. A schedule scales every group's base rate: ``StepLR``, ``CosineLR``
and ``OneCycleLR`` are called once per epoch (or per step for one-cycle).
"""

import math

import numpy as np

from cnncli import functional as F

__all__ = ["SGD", "Adam", "AdamW", "StepLR", "CosineLR", "OneCycleLR"]


def _non_negative(name, value):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0 \
            or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite value >= 0, got {value!r}")
    return float(value)


class Optimizer:
    """Base class: parameter groups, per-parameter state, the frozen check."""

    def __init__(self, params, **hyper):
        for key, value in hyper.items():
            hyper[key] = _non_negative(key, value) if key != "nesterov" else bool(value)
        if isinstance(params, dict):
            params = list(params.items())
        elif not isinstance(params, (list, tuple, str)) and hasattr(params, "__iter__"):
            params = list(params)
        if isinstance(params, (list, tuple)) and params and not isinstance(params[0], dict):
            params = [{"params": params}]
        if not isinstance(params, (list, tuple)) or not params:
            raise ValueError("params: expected parameters (e.g. model.parameters()) or a "
                             f"non-empty list of groups, got {type(params).__name__}")
        self.groups = []
        seen = set()
        for index, group in enumerate(params):
            members = group["params"]
            members = list(members.items()) if isinstance(members, dict) else list(members)
            # (name, parameter) pairs keep their names; bare parameters are numbered.
            named = [member if isinstance(member, tuple) else (f"{index}.{i}", member)
                     for i, member in enumerate(members)]
            for _, parameter in named:
                if id(parameter) in seen:
                    raise ValueError("params: a parameter appears in more than one group")
                seen.add(id(parameter))
            settings = dict(hyper)
            for key, value in group.items():
                if key == "params":
                    continue
                if key not in settings:
                    raise ValueError(f"params: unknown group setting {key!r}; expected one of "
                                     f"{sorted(settings)}")
                settings[key] = _non_negative(key, value) if key != "nesterov" else bool(value)
            self.groups.append({"params": named, "base_lr": settings["lr"], **settings})
        self.state = {}
        self.steps = 0

    def zero_grad(self):
        for group in self.groups:
            for _, parameter in group["params"]:
                parameter.grad = None

    def step(self):
        """Update every trainable parameter that has a gradient."""
        self.steps += 1
        for group in self.groups:
            for name, parameter in group["params"]:
                if not parameter.trainable or parameter.grad is None:
                    continue
                grad = np.asarray(parameter.grad, dtype=parameter.value.dtype)
                if grad.shape != parameter.value.shape:
                    raise ValueError(f"{name}: gradient of shape {grad.shape} for a parameter "
                                     f"of shape {parameter.value.shape}")
                self._update(parameter, grad, self.state.setdefault(id(parameter), {}), group)

    def state_dict(self):
        """What resuming needs: the step count, each group's rate, and the per-parameter
        state by parameter name (``{"conv2d_1.weight": {"m": array, "v": array, "step": 3}}``).
        """
        by_id = {id(p): name for group in self.groups for name, p in group["params"]}
        return {"steps": self.steps, "lr": [group["lr"] for group in self.groups],
                "parameters": {by_id[key]: {slot: (value.copy() if isinstance(value, np.ndarray)
                                                   else value)
                                            for slot, value in state.items()}
                               for key, state in self.state.items() if key in by_id}}

    def load_state_dict(self, state):
        """Restore what ``state_dict`` returned, for an optimizer over the same parameters."""
        parameters = {name: p for group in self.groups for name, p in group["params"]}
        unknown = sorted(set(state["parameters"]) - set(parameters))
        if unknown or len(state["lr"]) != len(self.groups):
            raise ValueError(f"optimizer state: does not match these parameters "
                             f"(unknown {unknown[:5]}, {len(state['lr'])} groups for "
                             f"{len(self.groups)})")
        restored = {}
        for name, slots in state["parameters"].items():
            parameter = parameters[name]
            restored[id(parameter)] = {}
            for slot, value in slots.items():
                if isinstance(value, np.ndarray):
                    if value.shape != parameter.value.shape:
                        raise ValueError(f"optimizer state: {name}.{slot} has shape "
                                         f"{value.shape}, the parameter {parameter.value.shape}")
                    value = value.astype(parameter.value.dtype, copy=True)
                restored[id(parameter)][slot] = value
        self.state = restored
        self.steps = int(state["steps"])
        for group, lr in zip(self.groups, state["lr"]):
            group["lr"] = float(lr)

    def set_lr_factor(self, factor):
        """Scale every group's rate to ``factor`` times its base rate (used by schedules)."""
        for group in self.groups:
            group["lr"] = group["base_lr"] * factor

    @property
    def lr(self):
        return self.groups[0]["lr"]


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, Nesterov momentum and weight decay.

    ``g = grad + weight_decay * p``; ``v = momentum * v + g``;
    ``p -= lr * (g + momentum * v if nesterov else v)``.
    """

    def __init__(self, params, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        if nesterov and not momentum:
            raise ValueError("nesterov: needs a momentum > 0")
        super().__init__(params, lr=lr, momentum=momentum, nesterov=nesterov,
                         weight_decay=weight_decay)

    def _update(self, parameter, grad, state, group):
        velocity, first_step = None, False
        if group["momentum"]:
            velocity = state.get("velocity")
            if velocity is None:
                velocity = state["velocity"] = np.empty_like(parameter.value)
                first_step = True
        F.sgd_update(parameter.value, grad, velocity, group["lr"], group["momentum"],
                     group["weight_decay"], group["nesterov"], first_step)


class Adam(Optimizer):
    """Adam, with bias-corrected first and second moments.

    ``weight_decay`` adds ``weight_decay * p`` to the gradient (L2, as
    PyTorch's Adam); ``AdamW`` decouples it instead.
    """

    decoupled = False

    def __init__(self, params, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
        if not (beta1 < 1 and beta2 < 1):
            raise ValueError(f"beta1, beta2: expected values in [0, 1), got {beta1}, {beta2}")
        super().__init__(params, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                         weight_decay=weight_decay)

    def _update(self, parameter, grad, state, group):
        if not state:
            state["step"] = 0
            state["m"] = np.zeros_like(parameter.value)
            state["v"] = np.zeros_like(parameter.value)
        state["step"] += 1
        F.adam_update(parameter.value, grad, state["m"], state["v"], state["step"], group["lr"],
                      group["beta1"], group["beta2"], group["eps"], group["weight_decay"],
                      self.decoupled)


class AdamW(Adam):
    """Adam with decoupled weight decay: ``p -= lr * weight_decay * p`` before the Adam step."""

    decoupled = True

    def __init__(self, params, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                         weight_decay=weight_decay)


def _count(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return value


class _Schedule:
    """Sets the optimizer's rate factor for step 0, then again at every ``step()``.

    ``fit`` calls ``step()`` after every epoch, or after every batch for
    schedules with ``per_batch = True`` (one-cycle).
    """

    per_batch = False

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.count = 0
        optimizer.set_lr_factor(self.factor(0))

    def step(self):
        self.count += 1
        self.optimizer.set_lr_factor(self.factor(self.count))

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = _count("count", state["count"], minimum=0)
        self.optimizer.set_lr_factor(self.factor(self.count))


class StepLR(_Schedule):
    """Multiply the rate by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size = _count("step_size", step_size)
        self.gamma = _non_negative("gamma", gamma)
        super().__init__(optimizer)

    def factor(self, count):
        return self.gamma ** (count // self.step_size)


class CosineLR(_Schedule):
    """Cosine decay from the base rate to ``min_factor`` times it over ``total`` epochs."""

    def __init__(self, optimizer, total, min_factor=0.0):
        self.total = _count("total", total)
        self.min_factor = _non_negative("min_factor", min_factor)
        super().__init__(optimizer)

    def factor(self, count):
        progress = min(count, self.total) / self.total
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


class OneCycleLR(_Schedule):
    """One cycle over ``total`` steps: warm up from base/div to the base rate, then anneal.

    The first ``warmup`` fraction rises along a cosine from ``1/div`` to 1,
    the rest falls along a cosine to ``1/(div * final_div)``.
    """

    per_batch = True

    def __init__(self, optimizer, total, warmup=0.3, div=25.0, final_div=1e4):
        _count("total", total, minimum=2)
        if not 0 < warmup < 1:
            raise ValueError(f"warmup: expected a fraction in (0, 1), got {warmup!r}")
        self.total, self.warmup = total, float(warmup)
        self.div, self.final_div = float(div), float(final_div)
        super().__init__(optimizer)

    def factor(self, count):
        peak = max(1, round(self.warmup * (self.total - 1)))
        count = min(count, self.total - 1)

        def cosine(start, end, progress):
            return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))

        if count <= peak:
            return cosine(1 / self.div, 1.0, count / peak)
        return cosine(1.0, 1 / (self.div * self.final_div),
                      (count - peak) / (self.total - 1 - peak))
