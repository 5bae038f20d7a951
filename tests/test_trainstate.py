"""Resuming from damaged checkpoints: the training state is checked as strictly as the model.

A checkpoint's training state (JSON in the header, optimizer moments as
tensors) is mutated at random; every ``train --resume`` from it either
carries on or stops with one JobError line, never another exception.
"""

import copy
import json
import random
import shutil

import numpy as np
import pytest
import safetensors

from cnncli import jobs
from cnncli.modelfile import serialize
from cnncli.trainstate import TrainingStateError, check_training_state

PREFIX = "training_state/"
OPTIONS = dict(arch="lenet", epochs=2, batch_size=16, lr=1e-3, seed=0, shift=1, quiet=None)
ODD_VALUES = [None, True, False, -1, 0, 1, 3, 2**70, -2**70, 0.5, 1e308, "x", "", [], {},
              [1, 2], [[[]]], {"a": 1}, {"bit_generator": "PCG64"}, [None] * 3]


def train_options(**changes):
    options = {key: value for key, value in OPTIONS.items() if key != "quiet"}
    return {**options, **changes}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny dataset and a checkpoint after one of two epochs, with dropout and shifts so
    every part of the state is present."""
    folder = tmp_path_factory.mktemp("state")
    rng = np.random.default_rng(0)
    data = folder / "tiny.npz"
    np.savez(data, x=rng.integers(0, 256, (48, 8, 8)).astype(np.uint8), y=np.arange(48) % 3)
    output = folder / "m.cnn"
    jobs.train(data, output=output, **train_options(epochs=1))
    return data, output, folder / "m-checkpoints"


def read_checkpoint(path):
    with safetensors.safe_open(str(path), framework="numpy") as handle:
        metadata = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    return metadata, tensors


def write_checkpoint(path, metadata, tensors):
    with open(path, "wb") as out:
        out.write(serialize(tensors, metadata))


def paths_of(value, prefix=()):
    """Every (path, value) inside a JSON value."""
    yield prefix, value
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from paths_of(inner, prefix + (key,))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from paths_of(inner, prefix + (index,))


def mutate_state(state, rng):
    state = copy.deepcopy(state)
    for _ in range(rng.randint(1, 3)):
        paths = [path for path, _ in paths_of(state) if path]
        path = rng.choice(paths)
        parent = state
        for step in path[:-1]:
            parent = parent[step]
        choice = rng.random()
        if choice < 0.6:
            parent[path[-1]] = copy.deepcopy(rng.choice(ODD_VALUES))
        elif choice < 0.75 and isinstance(parent, dict):
            del parent[path[-1]]
        elif choice < 0.85 and isinstance(parent, dict):
            parent["unexpected"] = 1
        elif isinstance(parent, list):
            parent.append(copy.deepcopy(parent[path[-1]]))
        else:
            value = parent[path[-1]]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                parent[path[-1]] = value * rng.choice([-1, 2, 10**6]) + rng.choice([0, 1])
    return state


def mutate_arrays(arrays, rng):
    arrays = dict(arrays)
    name = rng.choice(sorted(arrays))
    choice = rng.random()
    if choice < 0.3:
        del arrays[name]
    elif choice < 0.5:
        arrays[name] = arrays[name].reshape(-1)[:max(1, arrays[name].size - 1)].copy()
    elif choice < 0.65:
        arrays[name.replace("/m", "/q")] = arrays.pop(name)
    elif choice < 0.8:
        arrays[PREFIX + "optimizer/nothing.weight/m"] = np.zeros(3, np.float32)
    else:
        broken = arrays[name].copy()
        broken.reshape(-1)[0] = np.nan
        arrays[name] = broken
    return arrays


def test_fuzz_resuming_from_damaged_training_states(run, tmp_path):
    data, output, checkpoints = run
    metadata, tensors = read_checkpoint(checkpoints / "last.cnn")
    state = json.loads(metadata["training_state"])
    arrays = {name: value for name, value in tensors.items() if name.startswith(PREFIX)}
    model_tensors = {name: value for name, value in tensors.items()
                     if not name.startswith(PREFIX)}
    rng = random.Random(7)
    outcomes = {"resumed": 0, "refused": 0}
    folder = tmp_path / "checkpoints"
    for trial in range(300):
        folder.mkdir(exist_ok=True)
        mutated_state = mutate_state(state, rng) if trial % 4 else state
        mutated_arrays = mutate_arrays(arrays, rng) if trial % 4 != 1 else arrays
        if trial % 4 == 0 and mutated_arrays is arrays:
            mutated_arrays = mutate_arrays(arrays, rng)
        entries = dict(metadata, training_state=json.dumps(mutated_state))
        write_checkpoint(folder / "last.cnn", entries, {**model_tensors, **mutated_arrays})
        try:
            jobs.train(data, output=tmp_path / "m.cnn", checkpoints=folder, resume=True,
                       **train_options())
        except jobs.JobError as error:
            assert "\n" not in str(error)
            outcomes["refused"] += 1
        else:
            outcomes["resumed"] += 1
        shutil.rmtree(folder)
    assert outcomes["refused"] > 150 and outcomes["resumed"] > 0, outcomes


def test_an_intact_state_resumes_exactly(run, tmp_path):
    data, output, checkpoints = run
    folder = tmp_path / "checkpoints"
    shutil.copytree(checkpoints, folder)
    resumed = jobs.train(data, output=tmp_path / "r.cnn", checkpoints=folder, resume=True,
                         **train_options())
    whole = jobs.train(data, output=tmp_path / "w.cnn", **train_options())
    for name, value in whole.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[name], value)


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(epochs_done=-1), "epochs_done"),
    (lambda s: s.update(history=[]), "history of 1 epochs"),
    (lambda s: s.update(position={"batch": 0, "totals": [0, 0, 0]}), "position"),
    (lambda s: s["optimizer"].update(lr=[1e-3, 1e-3]), "learning rates"),
    (lambda s: s.update(dropout=[{}]), "dropout generator states"),
    (lambda s: s.update(augmentation={"bit_generator": "MT19937"}), "augmentation"),
    (lambda s: s["optimizer"]["scalars"].update({"conv2d_1.weight": {"step": "x"}}),
     "optimizer scalars"),
])
def test_each_part_of_the_state_is_checked(run, change, message):
    from cnncli.loading import load_model
    from cnncli.modelfile import read_training_state
    data, output, checkpoints = run
    state, arrays = read_training_state(checkpoints / "last.cnn")
    change(state)
    model = load_model(checkpoints / "last.cnn")
    parameters = {name: p.value for name, p in model.named_parameters()}
    from cnncli.data import Augmentation
    from cnncli.layers import Dropout
    with pytest.raises(TrainingStateError, match=message):
        check_training_state(state, arrays, epochs=2, batches=3, optimizer_name="adam",
                             parameters=parameters, groups=1, schedule=None,
                             augmentation=Augmentation(shift=1),
                             dropout_layers=[layer for layer in model
                                             if isinstance(layer, Dropout)])
