"""Data-parallel training over MPI, run with mpirun -n 2 and -n 3 on this machine
(oversubscribed is fine): the same weights as one process, the same bits run to run,
rank 0 alone writes, resuming with another number of ranks, a killed rank ends the run."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("mpi4py")

from cnncli import distributed  # noqa: E402
from processes import interrupted  # noqa: E402
from cnncli.loading import load_model  # noqa: E402

MPIEXEC = shutil.which("mpiexec") or os.path.join(os.path.dirname(sys.executable), "mpiexec")
pytestmark = pytest.mark.skipif(not os.path.exists(MPIEXEC), reason="no mpiexec")

TRAINING = """
import sys
import numpy as np
from sklearn.datasets import load_digits
from cnncli.distributed import world
from cnncli.layers import BatchNorm2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU
from cnncli.model import Sequential
from cnncli.optimizers import SGD
from cnncli.training import fit

dtype = np.dtype(sys.argv[2])
digits = load_digits()
x, y = (digits.images[:230, None] / 16).astype(dtype), digits.target[:230]
layers = [Conv2D(4, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(), Dense(10)]
if sys.argv[3] in ("batchnorm", "sync"):
    layers.insert(1, BatchNorm2D())
model = Sequential(layers, input_shape=(1, 8, 8), seed=0, dtype=dtype)
comm = world()
history = fit(model, x, y, epochs=2, batch_size=32, seed=4, validation_data=(x[:50], y[:50]),
              optimizer=SGD(model.named_parameters(), lr=0.1, momentum=0.9), comm=comm,
              sync_batchnorm=sys.argv[3] == "sync")
arrays = model.state_dict()
arrays["history"] = np.array([[e["loss"], e["accuracy"], e["val_loss"]] for e in history.epochs])
np.savez(sys.argv[1] + f"-{0 if comm is None else comm.rank}.npz", **arrays)
"""


def run_ranks(ranks, arguments, cwd, timeout=180, **options):
    command = [sys.executable, *arguments] if ranks == 1 else \
        [MPIEXEC, "-n", str(ranks), sys.executable, *arguments]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          **options)


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "training.py"
    path.write_text(TRAINING)
    return path


def trained(script, tmp_path, ranks, dtype="float64", layers="plain", tag=None):
    prefix = tmp_path / (tag or f"k{ranks}")
    done = run_ranks(ranks, [script, prefix, dtype, layers], tmp_path)
    assert done.returncode == 0, done.stderr
    return [dict(np.load(f"{prefix}-{rank}.npz")) for rank in range(ranks)]


def test_two_and_three_ranks_give_the_weights_of_one_process(script, tmp_path):
    alone = trained(script, tmp_path, 1)[0]
    for ranks in (2, 3):
        results = trained(script, tmp_path, ranks)
        for name, expected in alone.items():
            scale = np.abs(expected).max()
            for rank in results:
                np.testing.assert_allclose(rank[name], expected, rtol=1e-12,
                                           atol=1e-12 * scale, err_msg=name)
        # Every rank holds the same weights and metrics, bit for bit.
        for rank in results[1:]:
            for name in alone:
                assert np.array_equal(rank[name], results[0][name]), name


def test_float32_runs_give_the_same_bits_every_time(script, tmp_path):
    first = trained(script, tmp_path, 2, "float32", tag="a")[0]
    second = trained(script, tmp_path, 2, "float32", tag="b")[0]
    for name in first:
        assert np.array_equal(first[name], second[name]), name


def test_batchnorm_running_statistics_agree_across_ranks(script, tmp_path):
    results = trained(script, tmp_path, 2, layers="batchnorm")
    for name in results[0]:
        assert np.array_equal(results[0][name], results[1][name]), name
    assert "batch_norm2d_1.running_mean" in results[0]


def test_synchronized_batchnorm_gives_the_weights_of_one_process(script, tmp_path):
    alone = trained(script, tmp_path, 1, layers="sync")[0]
    per_rank = trained(script, tmp_path, 2, layers="batchnorm", tag="own")[0]
    for ranks in (2, 3):
        result = trained(script, tmp_path, ranks, layers="sync")[0]
        for name, expected in alone.items():
            # A convolution's bias before a BatchNorm has no gradient: it stays at ~1e-15
            # of rounding, so the comparison is absolute there.
            np.testing.assert_allclose(result[name], expected, rtol=1e-10, atol=1e-10,
                                       err_msg=name)
    # Without synchronisation each rank normalises by its own shard's statistics.
    assert not np.allclose(per_rank["conv2d_1.weight"], alone["conv2d_1.weight"], rtol=1e-6)


def cli(ranks, *arguments, cwd, **options):
    return run_ranks(ranks, ["-m", "cnncli", *map(str, arguments)], cwd, **options)


def test_mpirun_train_writes_once_and_resumes_with_another_number_of_ranks(tmp_path):
    done = cli(2, "train", "digits", "--epochs", 1, "--seed", 3, "-o", "m.cnn", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("saved m.cnn") == 1 and done.stdout.count("epoch 1/1") == 1
    assert sorted(os.listdir(tmp_path)) == ["m-checkpoints", "m.cnn", "m.history.json"]
    again = cli(2, "train", "digits", "--epochs", 1, "-o", "m.cnn", cwd=tmp_path)
    assert again.returncode == 1 and again.stderr.count("already exists") == 1
    resumed = cli(3, "train", "digits", "--epochs", 2, "--seed", 3, "-o", "m.cnn", "--resume",
                  "--force", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from m-checkpoints/last.cnn after epoch 1" in resumed.stderr
    alone = cli(1, "train", "digits", "--epochs", 2, "--seed", 3, "-o", "one.cnn", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    a = load_model(tmp_path / "m.cnn").state_dict()
    b = load_model(tmp_path / "one.cnn").state_dict()
    for name in a:   # float32: the same training, summed in another order
        np.testing.assert_allclose(a[name], b[name], rtol=1e-3, atol=1e-4, err_msg=name)


def test_a_killed_rank_ends_every_rank_and_leaves_a_resumable_checkpoint(tmp_path):
    process = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, "-m", "cnncli", "train",
                                "digits", "--epochs", "200", "-o", "k.cnn"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("epoch 2/200"):
            break
    # The rank processes are the Python children of the launcher's proxy.
    ranks = subprocess.run(["pgrep", "-f", "-P", str(process.pid), "."], capture_output=True,
                           text=True).stdout.split()
    children = [pid for proxy in ranks for pid in subprocess.run(
        ["pgrep", "-P", proxy], capture_output=True, text=True).stdout.split()] or ranks
    started = time.monotonic()
    os.kill(int(children[-1]), signal.SIGKILL)
    process.wait(timeout=60)
    process.stdout.close()
    process.stderr.close()
    assert process.returncode != 0 and time.monotonic() - started < 30
    last = tmp_path / "k-checkpoints" / "last.cnn"
    done = load_model(last).provenance["epochs"]
    resumed = cli(1, "train", "digits", "--epochs", done + 1, "-o", "k.cnn", "--resume",
                  cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr


def test_without_mpi4py_the_command_names_the_extra(monkeypatch, tmp_path):
    from typer.testing import CliRunner
    from cnncli.cli import app
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setattr(distributed, "_WORLD", [])
    result = CliRunner().invoke(app, ["train", "digits", "-o", str(tmp_path / "m.cnn")])
    assert result.exit_code == 1
    assert 'pip install "cnncli[mpi]"' in result.stderr and result.stderr.count("\n") == 1


def test_mpirun_finetune_matches_one_process(tmp_path):
    split = cli(3, "finetune", "lenet-mnist", "digits", "--classes", "0,1,2", "-o", "k3.cnn",
                "--unfreeze-epochs", 1, cwd=tmp_path)
    assert split.returncode == 0, split.stderr
    assert split.stdout.count("saved k3.cnn") == 1
    alone = cli(1, "finetune", "lenet-mnist", "digits", "--classes", "0,1,2", "-o", "k1.cnn",
                "--unfreeze-epochs", 1, cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    a = load_model(tmp_path / "k3.cnn").state_dict()
    b = load_model(tmp_path / "k1.cnn").state_dict()
    # The same training up to the order of float32 sums (three ranks' gradients summed
    # in a ring, or one batch's at once), which two epochs of Adam amplify in a few
    # weights: compared tensor by tensor, as a whole. The 540 images train on shifted
    # copies (few labels), each rank taking its rows of the whole batch's shifts.
    for name in a:
        assert np.linalg.norm(a[name] - b[name]) <= 1e-3 * np.linalg.norm(b[name]), name


def test_ctrl_c_on_the_launcher_saves_from_rank_0_and_exits_130(tmp_path):
    code, stderr = interrupted([MPIEXEC, "-n", "2", sys.executable, "-m", "cnncli", "train",
                                "digits", "--epochs", "100", "--batch-size", "8", "-o",
                                "c.cnn"], tmp_path, "epoch 1/100", timeout=60)
    assert code == 130, stderr
    assert stderr.count("continue with --resume") == 1
    load_model(tmp_path / "c-checkpoints" / "last.cnn")
    assert not (tmp_path / "c.cnn").exists()


def test_a_rank_that_fails_alone_ends_every_rank(tmp_path):
    # A bug (or a full disk) on one rank: the command ends all ranks at once, with the
    # failing rank's message and a non-zero exit, instead of leaving the others waiting.
    script = tmp_path / "fails.py"
    script.write_text(
        "import time\n"
        "from cnncli.console import _Run\n"
        "from cnncli.distributed import world\n"
        "comm = world()\n"
        "with _Run():\n"
        "    if comm.rank == 1:\n"
        "        raise RuntimeError('disk on fire')\n"
        "    comm.sum(__import__('numpy').zeros(1))\n"
        "    time.sleep(60)\n")
    started = time.monotonic()
    done = run_ranks(2, [script], tmp_path, timeout=60)
    assert done.returncode != 0 and time.monotonic() - started < 30
    assert "error: rank 1: RuntimeError: disk on fire" in done.stderr


def test_the_ranks_of_a_machine_decode_an_image_folder_once_together(tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    for index in range(120):
        folder = tmp_path / "images" / str(digits.target[index] % 3)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[index] * 255 / 16).astype(np.uint8)).save(
            folder / f"{index}.png")
    cache = tmp_path / "cache"
    cache.mkdir()
    environment = dict(os.environ, CNNCLI_CACHE=str(cache))
    split = cli(2, "train", "images", "--epochs", 2, "-o", "two.cnn", cwd=tmp_path,
                env=environment)
    assert split.returncode == 0, split.stderr
    alone = cli(1, "train", "images", "--epochs", 2, "-o", "one.cnn", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    a = load_model(tmp_path / "two.cnn").state_dict()
    b = load_model(tmp_path / "one.cnn").state_dict()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-3, atol=1e-4, err_msg=name)
    assert os.listdir(cache) == []          # the shared decoded images went with the ranks
    # A file whose header reads but whose pixels do not: found while the ranks decode.
    image = tmp_path / "images" / "1" / "truncated.png"
    Image.fromarray((digits.images[0] * 255 / 16).astype(np.uint8)).resize((64, 64)).save(image)
    image.write_bytes(image.read_bytes()[:200])
    broken = cli(2, "train", "images", "--epochs", 1, "-o", "three.cnn", cwd=tmp_path,
                 env=environment)
    assert broken.returncode == 1 and broken.stderr.count("truncated.png") == 1, broken.stderr
    skipped = cli(2, "train", "images", "--epochs", 1, "-o", "four.cnn", "--skip-bad",
                  "--size", "8x8", cwd=tmp_path, env=environment)
    assert skipped.returncode == 0, skipped.stderr
    assert "skipped 1 bad item(s)" in skipped.stderr and "truncated.png" in skipped.stderr
    assert os.listdir(cache) == []


def test_shifted_copies_on_ranks_left_without_rows_stay_in_step(tmp_path):
    # 14 images at batch 4: each epoch's last batch has 2 rows, none for the first of 3
    # ranks; its shifts must still be drawn, or its later batches are shifted unlike one
    # process's.
    options = ("train", "digits", "--classes", "0,1", "--per-class", 7, "--batch-size", 4,
               "--shift", 1, "--epochs", 3, "--val-split", 0)
    for ranks in (3, 1):
        done = cli(ranks, *options, "-o", f"s{ranks}.cnn", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    a = load_model(tmp_path / "s3.cnn").state_dict()
    b = load_model(tmp_path / "s1.cnn").state_dict()
    for name in a:
        assert np.linalg.norm(a[name] - b[name]) <= 1e-4 * np.linalg.norm(b[name]), name

