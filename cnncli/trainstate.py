"""Checking the training state of a checkpoint before a run resumes from it.

A checkpoint (``last.cnn``) is an ordinary model file whose header also
holds the training state: epochs done, the position inside an interrupted
epoch, the history, the best epoch, the optimizer's step count, rates and
per-parameter scalars, the schedule, and the random generators of dropout
and augmentation; the optimizer's moment arrays are tensors named
``training_state/optimizer/<parameter>/<slot>``. The file is as untrusted
as any model file: ``check_training_state`` verifies every entry's type,
range and shape against the run about to resume, so a damaged or hostile
state is refused with one line (``TrainingStateError``) instead of failing
deep inside training.
"""

import math

import numpy as np

__all__ = ["check_training_state", "TrainingStateError", "OPTIMIZER_SLOTS"]

# The per-parameter state each optimizer keeps: arrays, and integer counters.
OPTIMIZER_SLOTS = {"sgd": ({"velocity"}, set()), "adam": ({"m", "v"}, {"step"}),
                   "adamw": ({"m", "v"}, {"step"})}
TOP_KEYS = {"epochs_done", "position", "settings", "history", "best", "optimizer", "schedule",
            "augmentation", "dropout"}


class TrainingStateError(ValueError):
    """A checkpoint's training state that this run cannot resume from."""


def _fail(message):
    raise TrainingStateError(f"the training state {message}")


def _is_int(value, low=0, high=2**62):
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _metrics(value, where):
    if not isinstance(value, dict) or not all(
            isinstance(key, str) and _is_number(number) for key, number in value.items()):
        _fail(f"has {where} that are not names with numbers")


def _generator_state(value, generator, where):
    """A bit generator's state of the same kind as ``generator``'s, as numpy would take it."""
    expected = generator.bit_generator.state
    if not isinstance(value, dict) or set(value) != set(expected) \
            or value.get("bit_generator") != expected["bit_generator"]:
        _fail(f"has a bad random generator state for {where}")
    probe = type(generator.bit_generator)()
    try:
        probe.state = value
    except (TypeError, ValueError, KeyError, OverflowError):
        _fail(f"has a bad random generator state for {where}")


def check_training_state(state, arrays, *, epochs, batches, optimizer_name, parameters,
                         groups, schedule, augmentation, dropout_layers):
    """Raise TrainingStateError unless ``state`` (the JSON dict) and ``arrays`` (name ->
    array) are a training state this run can resume from.

    ``parameters`` maps parameter names to arrays, ``groups`` is the number
    of the optimizer's parameter groups (None: the run starts a fresh
    optimizer and schedule, so neither is checked), ``schedule`` and
    ``augmentation`` the run's (or None), ``dropout_layers`` its Dropout
    layers in order.
    """
    if not isinstance(state, dict) or set(state) != TOP_KEYS:
        _fail(f"must be an object with exactly the entries {sorted(TOP_KEYS)}")
    done = state["epochs_done"]
    if not _is_int(done, 0, epochs):
        _fail(f"has epochs_done {str(done)[:40]}, expected 0 to {epochs}")
    position = state["position"]
    if position is not None:
        if not isinstance(position, dict) or set(position) != {"batch", "totals"} \
                or not _is_int(position["batch"], 1, batches - 1) \
                or not isinstance(position["totals"], list) or len(position["totals"]) != 3:
            _fail(f"has a bad position inside an epoch (expected a batch in 1..{batches - 1} "
                  "and three running totals)")
        loss, correct, seen = position["totals"]
        if not (_is_number(loss) and _is_int(seen, 1)
                and (correct is None or _is_int(correct, 0, seen))) or done >= epochs:
            _fail("has bad running totals inside an epoch")
    if not isinstance(state["settings"], dict):
        _fail("has no settings")
    history = state["history"]
    if not isinstance(history, list) or len(history) != done:
        _fail(f"must have a history of {done} epochs")
    for metrics in history:
        _metrics(metrics, "history entries")
    best = state["best"]
    if best is not None:
        if not isinstance(best, dict) or set(best) != {"epoch", "value", "metrics"} \
                or not _is_int(best["epoch"], 1, max(done, 1)) or not _is_number(best["value"]):
            _fail("has a bad best epoch")
        _metrics(best["metrics"], "best metrics")
    if groups is not None:
        _check_optimizer(state["optimizer"], arrays, optimizer_name, parameters, groups)
        _check_schedule(state["schedule"], schedule)
    if (augmentation is None) != (state["augmentation"] is None):
        _fail("does not match this run's augmentation")
    if augmentation is not None:
        _generator_state(state["augmentation"], augmentation.rng, "augmentation")
    if not isinstance(state["dropout"], list) or len(state["dropout"]) != len(dropout_layers):
        _fail(f"must have {len(dropout_layers)} dropout generator states")
    for layer, generator in zip(dropout_layers, state["dropout"]):
        _generator_state(generator, layer.rng, f"layer {layer.name}")


def _check_schedule(saved, schedule):
    if (schedule is None) != (saved is None):
        _fail("does not match this run's schedule")
    if schedule is not None and (not isinstance(saved, dict)
                                 or set(saved) != set(schedule.state_dict())):
        _fail("has a bad schedule state")


def _check_optimizer(optimizer, arrays, name, parameters, groups):
    array_slots, counter_slots = OPTIMIZER_SLOTS[name]
    if not isinstance(optimizer, dict) or set(optimizer) != {"steps", "lr", "scalars"}:
        _fail("has a bad optimizer entry")
    if not _is_int(optimizer["steps"]):
        _fail("has a bad optimizer step count")
    rates = optimizer["lr"]
    if not isinstance(rates, list) or len(rates) != groups or not all(
            _is_number(rate) and rate >= 0 for rate in rates):
        _fail(f"must have {groups} optimizer learning rates")
    scalars = optimizer["scalars"]
    if not isinstance(scalars, dict):
        _fail("has bad optimizer scalars")
    for parameter, slots in scalars.items():
        if parameter not in parameters or not isinstance(slots, dict) or not all(
                slot in counter_slots and _is_int(value) for slot, value in slots.items()):
            _fail(f"has bad optimizer scalars for {str(parameter)[:80]!r}")
    for key, array in arrays.items():
        parts = key.split("/")
        if len(parts) != 3 or parts[0] != "optimizer" or parts[1] not in parameters \
                or parts[2] not in array_slots:
            _fail(f"has an unexpected tensor {key[:80]!r}")
        if array.shape != parameters[parts[1]].shape:
            _fail(f"tensor {key[:80]!r} has shape {array.shape}, the parameter "
                  f"{parameters[parts[1]].shape}")
    # Each parameter's state is all or nothing: the optimizer steps with every slot.
    for parameter in parameters:
        present = {slot for slot in array_slots if f"optimizer/{parameter}/{slot}" in arrays}
        counters = set(scalars.get(parameter, {}))
        if present and (present != array_slots or counters != counter_slots) \
                or (counters and not present):
            _fail(f"has an incomplete optimizer state for {parameter!r}")
    if not np.all([np.isfinite(array).all() for array in arrays.values()]):
        _fail("holds NaN or infinite optimizer values")
