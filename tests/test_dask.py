"""Evaluation, prediction and feature extraction on a Dask LocalCluster: the local run's
results bit for bit, also when a worker is killed mid-run."""

import os
import signal
import sys
import threading

import numpy as np
import pytest

pytest.importorskip("distributed")

from cnncli import jobs  # noqa: E402
from cnncli.jobs import cluster  # noqa: E402
from cnncli.jobs.predictor import npz_rows  # noqa: E402


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    from sklearn.datasets import load_digits
    digits = load_digits()
    path = tmp_path_factory.mktemp("dask") / "digits.npz"
    np.savez(path, x=(digits.images * 255 / 16).astype(np.uint8), y=digits.target)
    return path


def test_eval_features_and_predict_equal_the_local_run(digits_npz, tmp_path):
    local = jobs.evaluate("lenet-mnist", digits_npz, split="all")
    spread = jobs.evaluate("lenet-mnist", digits_npz, split="all", dask="local:2")
    assert np.array_equal(local.probabilities, spread.probabilities)
    assert spread.accuracy == local.accuracy and spread.count == 1797
    jobs.features("lenet-mnist", digits_npz, output=tmp_path / "a.npz")
    jobs.features("lenet-mnist", digits_npz, output=tmp_path / "b.npz", dask="local:2")
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert all(np.array_equal(a[key], b[key]) for key in a.files)
    assert a["features"].shape == (1797, 128) and str(a["layer"]) == "re_lu_3"
    here = jobs.predict("lenet-mnist", [digits_npz])
    there = jobs.predict("lenet-mnist", [digits_npz], dask="local:2")
    assert np.array_equal(here.probabilities, there.probabilities)


def test_a_killed_worker_has_its_shards_recomputed(digits_npz):
    model = jobs.resolve_model("lenet-mnist")
    recipe = cluster.DatasetRecipe(npz_rows, str(digits_npz))
    expected = jobs.predict("lenet-mnist", [digits_npz], batch_size=8).probabilities
    with cluster.connect("local:2") as client:
        pids = client.run(os.getpid)
        started = threading.Event()
        original = client.submit

        def submit_then_kill(*args, **kwargs):
            future = original(*args, **kwargs)
            if not started.is_set():
                started.set()
                # Kill a worker as the first shard is handed out: its work is lost.
                os.kill(list(pids.values())[-1], signal.SIGKILL)
            return future

        client.submit = submit_then_kill
        result = cluster.shard_results(client, model, recipe, 1797, batch_size=8)
    assert started.is_set()
    assert np.array_equal(result, expected)


def test_without_dask_the_option_names_the_extra(monkeypatch, digits_npz):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(jobs.JobError, match=r'pip install "cnncli\[dask\]"'):
        jobs.evaluate("lenet-mnist", digits_npz, dask="local:1")


def test_a_bad_address_is_one_line(digits_npz):
    with pytest.raises(jobs.JobError, match="expected local:N"):
        jobs.evaluate("lenet-mnist", digits_npz, dask="local:many")


def test_a_corrupt_image_on_a_worker_is_one_line(tmp_path):
    import subprocess
    from PIL import Image
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("L", (8, 8)).save(folder / "good.png")
    (folder / "bad.png").write_bytes(b"not an image")
    done = subprocess.run([sys.executable, "-m", "cnncli", "predict", "lenet-mnist", folder,
                           "--dask", "local:1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {folder / 'bad.png'}: not a readable image (not one of PNG, JPEG, BMP, GIF, "
        "TIFF, WEBP, PPM, or corrupt)"]


def test_an_image_folder_is_decoded_by_the_workers_only(tmp_path, monkeypatch):
    from PIL import Image
    from sklearn.datasets import load_digits
    from cnncli import images, imagefolder
    digits = load_digits()
    for index in range(60):
        folder = tmp_path / "digits" / str(digits.target[index])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[index] * 255 / 16).astype(np.uint8)).save(
            folder / f"{index}.png")
    local = jobs.evaluate("lenet-mnist", tmp_path / "digits", split="all")
    decoded = []
    original = images.load_image
    monkeypatch.setattr(imagefolder, "load_image",
                        lambda *args: decoded.append(args) or original(*args))
    spread = jobs.evaluate("lenet-mnist", tmp_path / "digits", split="all", dask="local:2")
    assert decoded == []                 # this process read headers only
    assert np.array_equal(local.probabilities, spread.probabilities)


def test_a_dataset_larger_than_a_workers_memory_limit(tmp_path):
    import zipfile
    from distributed import Client, LocalCluster
    from cnncli.layers import Dense, Flatten
    from cnncli.model import Sequential
    from cnncli.preprocessing import Preprocessing
    model = Sequential([Flatten(input_shape=(1, 64, 64)), Dense(2)], seed=0)
    model.preprocessing = Preprocessing(1, (64, 64), mean=[0.5], std=[0.25], scale=1 / 255)
    model.save(tmp_path / "tiny.cnn")
    count = 50000                                         # 205 MB of pixels
    pixels = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.uint8,
                                       shape=(count, 64, 64))
    for start in range(0, count, 5000):
        pixels[start:start + 5000] = (np.arange(5000 * 4096) % 251).reshape(5000, 64, 64)
    pixels.flush()
    del pixels
    np.save(tmp_path / "y.npy", np.arange(count) % 2)
    path = tmp_path / "big.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.write(tmp_path / "x.npy", "x.npy")
        archive.write(tmp_path / "y.npy", "y.npy")
    (tmp_path / "x.npy").unlink()
    recipe = cluster.DatasetRecipe(npz_rows, str(path))
    with LocalCluster(n_workers=1, threads_per_worker=1, memory_limit="160MB",
                      dashboard_address=None) as local, Client(local) as client:
        result = cluster.shard_results(client, str(tmp_path / "tiny.cnn"), recipe, count, 256)
        peak = client.run(lambda: int(next(line.split()[1] for line in open("/proc/self/status")
                                           if line.startswith("VmHWM:"))) / 1024)
    assert list(peak.values())[0] < 160
    expected = jobs.predict(str(tmp_path / "tiny.cnn"), [path]).probabilities
    assert np.array_equal(result, expected)
