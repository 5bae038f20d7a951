"""Hostile and broken input, through the library and through every command that takes it.

Each CLI case runs in a subprocess under ``guarded_cli.py``: an address-space
cap (so allocating what a small file declares fails instead of swapping),
and a ban on starting other programs (so handing a file to Ghostscript
shows). Each must end with one line on stderr, the expected exit code, no
traceback, nothing written and nothing started.
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hostile
from cnncli import data, images, jobs
from cnncli.data import DataError, load_dataset
from cnncli.loading import load_model
from cnncli.modelfile import ModelFileError
from cnncli.torchfile import read_torch_file

GUARD = Path(__file__).with_name("guarded_cli.py")
TESTS = str(Path(__file__).parent)

# Address-space caps, in MiB: the interpreter with numpy, scipy and the
# OpenMP runtime reserves about 500 MiB before doing anything.
SMALL = 1024
LARGE = 1536


class Outcome:
    def __init__(self, completed, spawned, peak):
        self.code = completed.returncode
        self.stdout, self.stderr = completed.stdout, completed.stderr
        self.spawned = spawned
        self.peak_mib = peak / 1024


def guarded(args, cwd, limit_mib=SMALL, timeout=120, env=None):
    records = Path(cwd).parent / f"records-{os.getpid()}-{time.monotonic_ns()}"
    records.mkdir()
    environment = dict(os.environ, CNNCLI_TEST_SPAWNED=str(records / "spawned"),
                       CNNCLI_TEST_PEAK=str(records / "peak"), **(env or {}))
    # CNNCLI_TEST_PACKAGE runs the commands on another checkout of cnncli (to see
    # these tests fail on code from before a fix).
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [
        os.environ.get("CNNCLI_TEST_PACKAGE"), TESTS, os.environ.get("PYTHONPATH")]))
    completed = subprocess.run([sys.executable, str(GUARD), str(limit_mib), *map(str, args)],
                               cwd=cwd, capture_output=True, text=True, timeout=timeout,
                               env=environment)
    spawned = (records / "spawned").read_text() if (records / "spawned").exists() else ""
    peak = int((records / "peak").read_text()) if (records / "peak").exists() else 0
    return Outcome(completed, spawned, peak)


def assert_one_line(outcome, fragment, code=1):
    assert outcome.code == code, outcome.stderr
    assert "Traceback" not in outcome.stderr, outcome.stderr
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), outcome.stderr
    assert fragment in lines[0], lines[0]
    assert len(lines[0]) < 600, lines[0]
    assert not outcome.spawned, outcome.spawned


@pytest.fixture
def work(tmp_path):
    """(inputs folder, empty working folder the command runs in)."""
    inputs, folder = tmp_path / "inputs", tmp_path / "work"
    inputs.mkdir()
    folder.mkdir()
    return inputs, folder


def listing(folder):
    return sorted(str(path.relative_to(folder)) for path in Path(folder).rglob("*"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A small grayscale 8x8 model of two classes a, b."""
    return hostile.tiny_model(str(tmp_path_factory.mktemp("model")))


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory):
    return hostile.tiny_model(str(tmp_path_factory.mktemp("rgb")), "rgb.cnn",
                              input_shape=(3, 8, 8))


# ---------------------------------------------------------------------------
# 1. Images are decoded only by the allowed in-process decoders
# ---------------------------------------------------------------------------


@pytest.fixture
def no_subprocess(monkeypatch):
    started = []

    def refuse(*args, **kwargs):
        started.append(args)
        raise AssertionError("a subprocess was started")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    return started


def test_a_postscript_file_under_an_image_name_is_refused_without_running_anything(
        tmp_path, no_subprocess, model):
    path = hostile.eps_image(str(tmp_path))
    with pytest.raises(DataError, match="not a readable image"):
        images.load_image(path, 1, (8, 8))
    root = hostile.image_folder(str(tmp_path / "set"))
    hostile.eps_image(str(tmp_path / "set" / "a"), "evil.png")
    with pytest.raises(DataError, match="evil.png: not a readable image"):
        load_dataset(root)
    assert len(load_dataset(root, skip_bad=True).train) == 8
    with pytest.raises(jobs.JobError, match="not a readable image"):
        jobs.predict(model, [path])
    assert not no_subprocess and not os.path.exists("/tmp/cnncli-eps-ran")


@pytest.mark.parametrize("command", ["predict", "eval", "train", "finetune", "features"])
def test_postscript_through_every_command(command, work, model):
    inputs, folder = work
    root = hostile.image_folder(str(inputs / "set"))
    eps = hostile.eps_image(str(inputs / "set" / "b"), "evil.png")
    args = {"predict": ["predict", model, eps],
            "eval": ["eval", model, root, "--split", "all"],   # eval decodes only its part
            "train": ["train", root, "-o", "m.cnn", "--epochs", 1],
            "finetune": ["finetune", model, root, "-o", "m.cnn", "--epochs", 1],
            "features": ["show", "features", model, eps, "-o", "maps"]}[command]
    assert_one_line(guarded(args, folder), "not a readable image")
    assert listing(folder) == []


def test_postscript_is_skipped_with_skip_bad(work, model):
    inputs, folder = work
    root = hostile.image_folder(str(inputs / "set"))
    hostile.eps_image(str(inputs / "set" / "b"), "evil.png")
    outcome = guarded(["eval", model, root, "--skip-bad", "--split", "all"], folder)
    assert outcome.code == 0 and not outcome.spawned, outcome.stderr
    assert "skipped 1 bad item(s)" in outcome.stderr and "evil.png" in outcome.stderr


# ---------------------------------------------------------------------------
# 2-3. Pickles, arrays and model files that declare more than they hold
# ---------------------------------------------------------------------------


def test_deep_tuples_in_a_pt_are_refused(tmp_path):
    for path in (hostile.deep_tuple_key(str(tmp_path)), hostile.deep_storage_key(str(tmp_path))):
        with pytest.raises(ModelFileError, match="nests tuples more than 32 deep"):
            read_torch_file(path)


@pytest.mark.parametrize("maker", ["deep_tuple_key", "deep_storage_key"])
def test_deep_pt_through_import(maker, work):
    inputs, folder = work
    path = getattr(hostile, maker)(str(inputs))
    assert_one_line(guarded(["import", path, "-o", "r.cnn"], folder), "nests tuples")
    assert listing(folder) == []


def test_tensors_sharing_a_storage_share_its_memory(tmp_path):
    path = hostile.shared_storage(str(tmp_path), tensors=8, megabytes=1)
    tensors = read_torch_file(path)
    assert len(tensors) == 8
    assert all(np.shares_memory(tensors["t0"], value) for value in tensors.values())


def test_shared_storages_stay_within_memory_through_import(work):
    inputs, folder = work
    # 40 tensors over one 32 MB storage: 1.3 GB if each were copied.
    path = hostile.shared_storage(str(inputs))
    outcome = guarded(["import", path], folder, limit_mib=SMALL)
    assert_one_line(outcome, "not a torchvision ResNet state dict")
    assert outcome.peak_mib < 400, outcome.peak_mib


def test_a_label_of_a_trillion_is_refused(tmp_path, work):
    path = hostile.huge_label(str(tmp_path))
    with pytest.raises(DataError, match="more than cnncli's limit of 100,000"):
        data.load_npz(path)
    assert data.load_npz(path, skip_bad=True).train.classes == ["0", "1"]
    inputs, folder = work
    assert_one_line(guarded(["train", path, "-o", "m.cnn"], folder), "limit of 100,000")
    assert listing(folder) == []


def test_a_compressed_array_is_sized_before_it_is_inflated(tmp_path, work):
    path = hostile.inflating_npz(str(tmp_path))
    assert os.path.getsize(path) < 100_000
    with pytest.raises(DataError, match="CNNCLI_MAX_ARRAY_BYTES"):
        data.load_npz(path)
    inputs, folder = work
    for args in (["train", path, "-o", "m.cnn"], ["eval", hostile.tiny_model(str(inputs)), path],
                 ["predict", hostile.tiny_model(str(inputs)), path]):
        assert_one_line(guarded(args, folder), "more than cnncli's limit")
    assert listing(folder) == []


def test_the_array_limit_can_be_raised(tmp_path, monkeypatch):
    path = tmp_path / "small.npz"
    np.savez_compressed(path, x=np.zeros((40, 8, 8), np.uint8), y=np.arange(40) % 2)
    monkeypatch.setenv("CNNCLI_MAX_ARRAY_BYTES", "1000")
    with pytest.raises(DataError, match="2,560 bytes, more than cnncli's limit of 1,000"):
        data.load_npz(path)
    monkeypatch.setenv("CNNCLI_MAX_ARRAY_BYTES", "3000")
    assert len(data.load_npz(path).train) == 40
    monkeypatch.setenv("CNNCLI_MAX_ARRAY_BYTES", "lots")
    with pytest.raises(ValueError, match="CNNCLI_MAX_ARRAY_BYTES: expected a positive whole"):
        data.load_npz(path)


def test_a_model_declaring_a_gigantic_input_is_refused_at_load(tmp_path, work):
    path = hostile.huge_input_model(str(tmp_path))
    assert os.path.getsize(path) < 4000
    with pytest.raises(ModelFileError, match="CNNCLI_MAX_ACTIVATION_VALUES"):
        load_model(path)
    inputs, folder = work
    image = inputs / "x.png"
    Image.new("L", (8, 8)).save(image)
    for args in (["predict", path, image], ["summary", path]):
        assert_one_line(guarded(args, folder), "CNNCLI_MAX_ACTIVATION_VALUES")


@pytest.fixture(scope="module")
def large_images(tmp_path_factory):
    return hostile.large_pngs(str(tmp_path_factory.mktemp("large") / "photos" / "a"))


@pytest.mark.slow
@pytest.mark.parametrize("command", ["predict", "eval"])
def test_large_images_are_decoded_one_at_a_time(command, large_images, rgb_model, work):
    _, folder = work
    root = str(Path(large_images).parent)
    args = ["predict", rgb_model, large_images] if command == "predict" else \
        ["eval", rgb_model, root, "--split", "all"]
    outcome = guarded(args, folder, limit_mib=LARGE, timeout=300)
    assert outcome.code == 0, outcome.stderr
    assert "Traceback" not in outcome.stderr and not outcome.spawned
    # Six decoded 8000x8000 RGB images are 1.15 GB; one is 192 MB.
    assert outcome.peak_mib < 900, outcome.peak_mib


def test_an_image_folder_too_large_for_memory_is_refused(tmp_path, monkeypatch):
    root = hostile.image_folder(str(tmp_path / "set"), per_class=3)
    monkeypatch.setenv("CNNCLI_MAX_ARRAY_BYTES", "100")
    with pytest.raises(DataError, match="6 images of 1x8x8 needs 384 bytes.*smaller --size"):
        load_dataset(root)


# ---------------------------------------------------------------------------
# 4. FIFOs and other files that are not regular files
# ---------------------------------------------------------------------------


def test_a_fifo_named_like_an_image_does_not_block(work, model):
    inputs, folder = work
    fifo = inputs / "x.png"
    os.mkfifo(fifo)
    outcome = guarded(["predict", model, fifo], folder, timeout=60)
    assert_one_line(outcome, "not a regular file")
    outcome = guarded(["show", "features", model, fifo], folder, timeout=60)
    assert outcome.code == 1 and "Traceback" not in outcome.stderr


def test_fifos_in_a_class_folder_are_left_out_and_counted(tmp_path):
    root = hostile.image_folder(str(tmp_path / "set"))
    os.mkfifo(tmp_path / "set" / "a" / "pipe.png")
    splits = load_dataset(root)
    assert len(splits.train) == 8
    assert any("pipe.png: not a regular file" in note for note in splits.train.skipped)


def test_a_fifo_as_a_model_or_dataset_does_not_block(work):
    inputs, folder = work
    os.mkfifo(inputs / "m.cnn")
    os.mkfifo(inputs / "d.npz")
    assert_one_line(guarded(["summary", inputs / "m.cnn"], folder, timeout=60),
                    "not a regular file")
    assert_one_line(guarded(["train", inputs / "d.npz"], folder, timeout=60),
                    "not a regular file")


# ---------------------------------------------------------------------------
# 5. Broken data: one line, not a traceback
# ---------------------------------------------------------------------------


def npz(folder, name, **arrays):
    path = os.path.join(folder, name)
    np.savez(path, **arrays)
    return path


BROKEN_NPZ = {
    "NaN label": (dict(x=np.zeros((3, 8, 8), np.uint8), y=np.array([0, np.nan, 1])),
                  "label nan of sample 1 is not a class number"),
    "NaN pixels": (dict(x=np.where(np.eye(8) > 0, np.nan, 0.5)[None].repeat(3, 0),
                        y=np.array([0, 1, 1])), "sample 0 has NaN or infinite pixels"),
    "infinite pixels": (dict(x=np.full((3, 8, 8), np.inf), y=np.array([0, 1, 1])),
                        "NaN or infinite pixels"),
    "timedelta pixels": (dict(x=np.zeros((3, 8, 8), "m8[s]"), y=np.array([0, 1, 1])),
                         "expected numeric pixels, got timedelta64"),
    "complex pixels": (dict(x=np.zeros((3, 8, 8), complex), y=np.array([0, 1, 1])),
                       "expected numeric pixels"),
    "duplicate class names": (dict(x=np.zeros((3, 8, 8), np.uint8), y=np.array([0, 1, 1]),
                                   classes=np.array(["cat", "cat"])), "named twice"),
    "lone surrogate": (dict(x=np.zeros((3, 8, 8), np.uint8), y=np.array([0, 1, 1]),
                            classes=np.array(["ok", "bad\udcff"])), "lone surrogate"),
    "string labels": (dict(x=np.zeros((3, 8, 8), np.uint8), y=np.array(["a", "b", "c"])),
                      "labels must be class numbers"),
    "one class": (dict(x=np.zeros((4, 8, 8), np.uint8), y=np.zeros(4, int)),
                  "training needs at least 2"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_NPZ))
def test_broken_arrays_through_train(case, work):
    inputs, folder = work
    arrays, fragment = BROKEN_NPZ[case]
    path = npz(str(inputs), "bad.npz", **arrays)
    assert_one_line(guarded(["train", path, "-o", "m.cnn", "--epochs", 1], folder), fragment)
    assert listing(folder) == []


def test_bad_samples_are_skipped_with_skip_bad(tmp_path):
    x = np.full((4, 8, 8), 0.5)
    x[1, 2, 3] = np.nan
    path = npz(str(tmp_path), "some.npz", x=x, y=np.array([0, 1, np.nan, 1]))
    train = data.load_npz(path, skip_bad=True).train
    assert len(train) == 2 and train.y.tolist() == [0, 1]
    assert len(train.skipped) == 2


def test_evaluating_zero_samples_is_one_line(work, model):
    inputs, folder = work
    path = npz(str(inputs), "empty.npz", x=np.zeros((0, 8, 8), np.uint8),
               y=np.zeros(0, int), classes=np.array(["a", "b"]))
    assert_one_line(guarded(["eval", model, path, "--split", "all"], folder),
                    "no samples to evaluate")


def lab_tiff(path):
    Image.new("LAB", (8, 8)).save(path)
    return path


def test_an_unsupported_colour_mode_is_a_bad_file(tmp_path):
    root = hostile.image_folder(str(tmp_path / "set"))
    lab_tiff(tmp_path / "set" / "a" / "lab.tif")
    with pytest.raises(DataError, match="colour mode LAB is not supported"):
        load_dataset(root)
    assert len(load_dataset(root, skip_bad=True).train) == 8


def test_lab_tiff_through_the_cli(work, model):
    inputs, folder = work
    root = hostile.image_folder(str(inputs / "set"))
    lab = lab_tiff(inputs / "set" / "a" / "lab.tif")
    assert_one_line(guarded(["predict", model, lab], folder), "colour mode LAB")
    outcome = guarded(["predict", model, lab, inputs / "set" / "b", "--skip-bad"], folder)
    assert outcome.code == 0 and "Traceback" not in outcome.stderr, outcome.stderr
    outcome = guarded(["train", root, "-o", "m.cnn", "--epochs", 1, "--skip-bad", "-q"], folder)
    assert outcome.code == 0, outcome.stderr


def test_a_class_folder_named_in_another_encoding(tmp_path, work):
    root = hostile.image_folder(str(tmp_path / "set"), classes=("a", "b", "c"))
    os.rename(os.path.join(root, "c"), os.path.join(os.fsencode(root), b"caf\xe9"))
    with pytest.raises(DataError, match="not valid text"):
        load_dataset(root)
    assert load_dataset(root, skip_bad=True).train.classes == ["a", "b"]
    _, folder = work
    assert_one_line(guarded(["train", root, "-o", "m.cnn"], folder), "not valid text")


def test_one_class_left_cannot_train(tmp_path, work):
    one = hostile.image_folder(str(tmp_path / "one"), classes=("only",))
    two = hostile.image_folder(str(tmp_path / "two"))
    for name in os.listdir(os.path.join(two, "b")):
        hostile.eps_image(os.path.join(two, "b"), name)
    _, folder = work
    assert_one_line(guarded(["train", one, "-o", "m.cnn"], folder), "training needs at least 2")
    outcome = guarded(["train", two, "-o", "m.cnn", "--skip-bad"], folder)
    # The skipped files are listed first, as progress; the failure is the last line.
    assert outcome.code == 1 and "Traceback" not in outcome.stderr
    assert outcome.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "training needs at least 2" in outcome.stderr.strip().splitlines()[-1]
    assert listing(folder) == []


def test_a_symlink_loop_in_a_class_folder_is_a_bad_item(tmp_path):
    root = hostile.image_folder(str(tmp_path / "set"))
    os.symlink("loop.png", os.path.join(root, "a", "loop.png"))
    with pytest.raises(DataError, match="loop.png: cannot be read"):
        load_dataset(root)
    assert len(load_dataset(root, skip_bad=True).train) == 8


def test_histories_that_are_too_deep_or_not_finite(work):
    inputs, folder = work
    deep = inputs / "deep.history.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    nan = inputs / "nan.history.json"
    nan.write_text(json.dumps({"format": "cnncli-history/1", "epochs": [{"loss": 1.0}]})
                   .replace("1.0", "NaN"))
    assert_one_line(guarded(["show", "history", deep], folder), "nested too deeply")
    assert_one_line(guarded(["show", "history", nan], folder), "NaN is not allowed")
    assert listing(folder) == []


# ---------------------------------------------------------------------------
# 6-7. Threads and terminal escapes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [2000, 100_000])
def test_too_many_threads_are_refused(threads, work, model):
    inputs, folder = work
    image = inputs / "x.png"
    Image.new("L", (8, 8)).save(image)
    assert_one_line(guarded(["predict", model, image, "--threads", threads], folder),
                    "more than cnncli's limit")


@pytest.mark.parametrize("option, value, message", [
    ("--channels", 2, "expected 1 (grayscale) or 3 (RGB)"),
    ("--size", "0x8", "expected HEIGHTxWIDTH"),
    ("--size", "100000x100000", "smaller --size"),
])
def test_impossible_arguments_are_one_line(option, value, message, work):
    inputs, folder = work
    root = hostile.image_folder(str(inputs / "set"))
    assert_one_line(guarded(["train", root, "-o", "m.cnn", option, value], folder), message)
    assert listing(folder) == []


def test_the_thread_limit_is_stated_and_can_be_raised(monkeypatch):
    from cnncli import functional
    before = functional.get_num_threads()
    with pytest.raises(ValueError, match="CNNCLI_MAX_THREADS"):
        functional.set_num_threads(4 * (os.cpu_count() or 1) + 1)
    monkeypatch.setenv("CNNCLI_MAX_THREADS", "4096")
    functional.set_num_threads(4096)
    functional.set_num_threads(before)


def test_escape_sequences_from_a_model_are_printed_escaped(tmp_path, work):
    path = hostile.escape_model(str(tmp_path))
    inputs, folder = work
    image = inputs / "x.png"
    Image.new("L", (8, 8)).save(image)
    for args in (["predict", path, image], ["summary", path]):
        outcome = guarded(args, folder)
        assert outcome.code == 0, outcome.stderr
        assert "\x1b" not in outcome.stdout and "\x07" not in outcome.stdout
        assert "\\x1b]0;pwned\\x07cat" in outcome.stdout


def test_escape_sequences_in_file_names_and_errors(work):
    inputs, folder = work
    name = inputs / "\x1b[2Jevil.npz"
    name.write_bytes(b"not a zip")
    outcome = guarded(["train", name], folder)
    assert_one_line(outcome, "\\x1b[2Jevil.npz")
    assert "\x1b" not in outcome.stderr


# ---------------------------------------------------------------------------
# 8. Recoverability: final saves, stale temporary files, two runs, one output
# ---------------------------------------------------------------------------


def test_resume_writes_the_final_model_when_its_save_failed(tmp_path, monkeypatch):
    from cnncli.jobs import trainer
    output = tmp_path / "d.cnn"
    real_save = trainer.save_model

    def disk_full(model, path, *args, **kwargs):
        if os.fspath(path) == os.fspath(output):
            raise OSError(28, "No space left on device")
        return real_save(model, path, *args, **kwargs)

    monkeypatch.setattr(trainer, "save_model", disk_full)
    with pytest.raises(OSError, match="No space left"):
        jobs.train("digits", output=output, epochs=2, lr=3e-3)
    assert not output.exists()
    monkeypatch.setattr(trainer, "save_model", real_save)
    result = jobs.train("digits", output=output, epochs=2, lr=3e-3, resume=True)
    last = load_model(tmp_path / "d-checkpoints" / "last.cnn")
    model = load_model(output)
    assert len(result.history) == 2
    for name, value in last.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[name], value)
    assert (tmp_path / "d.history.json").exists()


def test_stale_partial_files_are_removed_on_the_next_save(tmp_path):
    from cnncli.files import atomic_write
    target = tmp_path / "m.cnn"
    stale = tmp_path / ".m.cnn.0123456789ab.partial"
    stale.write_bytes(b"half a model")
    other = tmp_path / ".other.cnn.0123456789ab.partial"
    other.write_bytes(b"someone else's")
    atomic_write(target, b"whole")
    assert target.read_bytes() == b"whole" and not stale.exists() and other.exists()


def test_a_partial_file_being_written_is_left_alone(tmp_path):
    import fcntl
    from cnncli.files import atomic_write
    live = tmp_path / ".m.cnn.0123456789ab.partial"
    with open(live, "wb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        atomic_write(tmp_path / "m.cnn", b"whole")
        assert live.exists()


def test_a_killed_save_leaves_no_partial_file_behind(tmp_path):
    script = ("import cnncli.files as f\nf.WRITE_CHUNK = 1\n"
              f"f.atomic_write({str(tmp_path / 'm.cnn')!r}, b'x' * 10_000_000)\n")
    process = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob(".m.cnn.*.partial")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert list(tmp_path.glob(".m.cnn.*.partial"))
    from cnncli.files import atomic_write
    atomic_write(tmp_path / "m.cnn", b"whole")
    assert not list(tmp_path.glob(".m.cnn.*.partial"))


def test_two_runs_writing_one_output_the_second_is_refused(tmp_path):
    first = subprocess.Popen([sys.executable, "-m", "cnncli", "train", "digits", "-o", "m.cnn",
                              "--epochs", "50", "--quiet"], cwd=tmp_path, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / ".m.cnn.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-m", "cnncli", "train", "digits", "-o",
                                 "m.cnn", "--epochs", "1"], cwd=tmp_path, capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 1
        assert "another cnncli run is writing it" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        first.kill()
        first.wait()
    # The lock of a killed run is released by the system.
    third = subprocess.run([sys.executable, "-m", "cnncli", "train", "digits", "-o", "m.cnn",
                            "--epochs", "1", "--force", "--quiet"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr
    assert not (tmp_path / ".m.cnn.lock").exists()


def test_run_locks_refuse_a_second_holder_and_release(tmp_path):
    from cnncli.files import OutputLocked, RunLock
    target = tmp_path / "out.cnn"
    with RunLock(target):
        with pytest.raises(OutputLocked, match=f"process {os.getpid()}"):
            with RunLock(target):
                pass
        holder = []

        def other_thread():
            try:
                with RunLock(target):
                    holder.append("got it")
            except OutputLocked:
                holder.append("refused")

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert holder == ["refused"]
    with RunLock(target):
        pass
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------
# 9. Smaller things
# ---------------------------------------------------------------------------


def test_an_unreadable_model_says_permission_denied(tmp_path, monkeypatch):
    path = hostile.tiny_model(str(tmp_path))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda where, mode: False if os.fspath(where) == path
                        else real_access(where, mode))
    with pytest.raises(ModelFileError, match="permission denied"):
        load_model(path)


def test_a_preprocessing_that_overflows_is_refused_at_load(tmp_path):
    path = hostile.tiny_model(str(tmp_path))
    preprocessing = json.loads(hostile.model_metadata_of(path)["preprocessing"])
    preprocessing["scale"] = 1e308
    hostile.rewrite_metadata(path, preprocessing=preprocessing)
    with pytest.raises(ModelFileError, match="beyond"):
        load_model(path)


def test_non_finite_outputs_are_an_error_not_a_prediction(tmp_path):
    from cnncli.modelfile import save_model
    from cnncli.preprocessing import Preprocessing
    path = hostile.tiny_model(str(tmp_path))
    model = load_model(path)
    # Finite weights and preprocessing, but a white pixel (11 after
    # preprocessing) overflows the weights.
    model.preprocessing = Preprocessing(1, (8, 8), mean=[-10])
    model[-1].weight.value[...] = np.float32(3e38)
    save_model(model, path)
    image = tmp_path / "x.png"
    Image.new("L", (8, 8), 255).save(image)
    with pytest.raises(jobs.JobError, match="NaN or infinite outputs for 1 of 1 inputs"):
        jobs.predict(path, [image])


def test_a_malformed_array_header_is_cut_to_one_short_line(tmp_path, work):
    path = hostile.malformed_npz_header(str(tmp_path))
    with pytest.raises(DataError) as caught:
        data.load_npz(path)
    assert len(str(caught.value)) < 400
    _, folder = work
    assert_one_line(guarded(["train", path], folder), "cannot read its arrays")


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.arange(12, dtype=np.uint8).reshape(2, 6) * 20
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION] = 6       # shown turned 90 degrees clockwise
    path = tmp_path / "turned.png"
    Image.fromarray(pixels).save(path, exif=exif)
    assert images.image_header(str(path))[:2] == (6, 2)
    np.testing.assert_array_equal(images.load_image(str(path), 1, (6, 2))[0],
                                  np.rot90(pixels, -1))
    jpeg = tmp_path / "turned.jpg"
    Image.fromarray(np.repeat(np.repeat(pixels, 8, 0), 8, 1)).save(jpeg, exif=exif,
                                                                  quality=100)
    assert images.image_header(str(jpeg))[:2] == (48, 16)


def test_an_imported_network_is_sized_before_it_is_built(monkeypatch):
    from cnncli import importer
    fixture = Path(__file__).parent / "fixtures" / "torchvision" / "resnet18_w8.pt"
    monkeypatch.setenv("CNNCLI_MAX_ARRAY_BYTES", "100000")
    with pytest.raises(importer.WeightsImportError,
                       match="a resnet18 of width 8 with .* more than cnncli's limit"):
        importer.import_weights(fixture, preprocessing=hostile_preprocessing())


def hostile_preprocessing():
    from cnncli.preprocessing import Preprocessing
    return Preprocessing(3, (32, 32), mean=[0.5] * 3, std=[0.25] * 3)
