"""The command-line tool, end to end: CliRunner in-process, and the console script in
subprocesses for signals."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.loading import load_model
from cnncli.modelfile import read_training_state

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def cnncli_process(*args, cwd=None, **options):
    return subprocess.Popen([sys.executable, "-m", "cnncli", *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options)


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    """Digits as an .npz with train and test parts."""
    data = load_digits()
    x = data.images.astype(np.uint8)
    path = tmp_path_factory.mktemp("npz") / "digits.npz"
    np.savez(path, x_train=x[:1400], y_train=data.target[:1400], x_test=x[1400:],
             y_test=data.target[1400:])
    return path


@pytest.fixture(scope="module")
def digit_images(tmp_path_factory):
    """Digits 0, 1 and 2 as PNG files in root/<class>/ folders, 30 per class."""
    data = load_digits()
    root = tmp_path_factory.mktemp("images") / "digits"
    for digit in range(3):
        folder = root / f"digit{digit}"
        folder.mkdir(parents=True)
        for index, image in enumerate(data.images[data.target == digit][:30]):
            Image.fromarray((image * 255 / 16).astype(np.uint8)).save(folder / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A LeNet trained on digits for two epochs, through the CLI."""
    folder = tmp_path_factory.mktemp("trained")
    result = invoke("train", "digits", "--epochs", 2, "--lr", 0.003, "-o", folder / "d.cnn",
                    "--quiet")
    assert result.exit_code == 0, result.output
    return folder / "d.cnn"


def test_train_writes_the_model_and_checkpoints(trained):
    model = load_model(trained)
    assert model.classes == [str(d) for d in range(10)]
    assert model.preprocessing.size == (8, 8) and model.preprocessing.scale == 1 / 16
    assert model.provenance["command"] == "train" and model.provenance["arch"] == "lenet"
    folder = trained.parent / "d-checkpoints"
    assert load_model(folder / "last.cnn").provenance["epochs"] == 2
    assert load_model(folder / "best.cnn").provenance["metrics"]["val_accuracy"] > 0.8


def test_train_prints_one_line_per_epoch(tmp_path):
    result = invoke("train", "digits", "--epochs", 2, "-o", tmp_path / "m.cnn", "--val-split",
                    0.2)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and "val_accuracy" in lines[1]
    assert "saved" in result.stdout


def test_nothing_is_overwritten_without_force(trained, tmp_path):
    before = trained.read_bytes()
    result = invoke("train", "digits", "--epochs", 1, "-o", trained)
    assert result.exit_code == 1
    assert "already exists; pass --force" in result.stderr
    assert trained.read_bytes() == before
    # Checkpoints of an earlier run are not silently replaced either.
    target = tmp_path / "other.cnn"
    (tmp_path / "other-checkpoints").mkdir()
    (tmp_path / "other-checkpoints" / "last.cnn").write_bytes(trained.read_bytes())
    result = invoke("train", "digits", "--epochs", 1, "-o", target)
    assert result.exit_code == 1 and "--resume" in result.stderr


def test_resume_after_an_interruption_gives_the_same_weights(tmp_path):
    common = ("train", "digits", "--epochs", 3, "--lr", 0.003, "--schedule", "cosine",
              "--shift", 1, "--seed", 5)
    whole = invoke(*common, "-o", tmp_path / "whole.cnn")
    assert whole.exit_code == 0, whole.output

    process = cnncli_process(*common, "-o", tmp_path / "cut.cnn", cwd=tmp_path)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("epoch 1/3"):
            process.send_signal(signal.SIGINT)
            break
    process.wait(timeout=120)
    stderr = process.stderr.read()
    assert process.returncode == 130, stderr
    assert "interrupted in epoch 2 after batch" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "cut.cnn").exists()
    # The checkpoint holds the point inside epoch 2 where Ctrl-C stopped.
    state, _ = read_training_state(tmp_path / "cut-checkpoints" / "last.cnn")
    assert state["epochs_done"] == 1 and state["position"]["batch"] >= 1

    resumed = invoke(*common, "-o", tmp_path / "cut.cnn", "--resume")
    assert resumed.exit_code == 0, resumed.output
    a = load_model(tmp_path / "whole.cnn").state_dict()
    b = load_model(tmp_path / "cut.cnn").state_dict()
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def test_resume_refuses_different_settings(trained):
    result = invoke("train", "digits", "--epochs", 3, "--lr", 0.1, "-o", trained, "--resume")
    assert result.exit_code == 1
    assert "checkpoint was made with lr=0.003" in result.stderr


def test_a_killed_run_leaves_a_loadable_checkpoint(tmp_path):
    process = cnncli_process("train", "digits", "--epochs", 50, "-o", tmp_path / "k.cnn",
                             cwd=tmp_path)
    for line in process.stdout:
        if line.startswith("epoch 2/50"):
            break
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    process.stdout.close()
    process.stderr.close()
    last = load_model(tmp_path / "k-checkpoints" / "last.cnn")
    assert last.provenance["epochs"] >= 2
    resumed = invoke("train", "digits", "--epochs", last.provenance["epochs"] + 1, "-o",
                     tmp_path / "k.cnn", "--resume", "--quiet")
    assert resumed.exit_code == 0, resumed.output


def test_a_diverging_loss_stops_with_its_own_exit_code(tmp_path):
    result = invoke("train", "digits", "--epochs", 3, "--optimizer", "sgd", "--lr", 1e12,
                    "-o", tmp_path / "nan.cnn", "--quiet")
    assert result.exit_code == 3, result.output
    assert "loss became" in result.stderr and "last good checkpoint" in result.stderr
    assert not (tmp_path / "nan.cnn").exists()
    load_model(tmp_path / "nan-checkpoints" / "last.cnn")


def test_eval_json_matches_scikit_learn_on_predict_output(trained, digits_npz, tmp_path):
    metrics_path = tmp_path / "metrics.json"
    result = invoke("eval", trained, digits_npz, "--json", metrics_path, "--top-k", 3)
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.stdout and "most confused" in result.stdout
    metrics = json.loads(metrics_path.read_text())

    predicted = invoke("predict", trained, digits_npz, "--top-k", 1)
    assert predicted.exit_code == 0, predicted.output
    labels = [int(line.split(": ")[1].split()[0]) for line in predicted.stdout.splitlines()]
    with np.load(digits_npz) as arrays:
        truth = arrays["y_test"]
    assert metrics["samples"] == len(truth) == len(labels)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(truth, labels))
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, labels, labels=range(10), zero_division=0)
    for row, p, r, f, s in zip(metrics["per_class"], precision, recall, f1, support):
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == \
            pytest.approx((p, r, f, s))
    assert metrics["confusion_matrix"] == confusion_matrix(truth, labels).tolist()
    assert metrics["top_3_accuracy"] >= metrics["accuracy"]


def test_eval_metrics_match_scikit_learn_where_a_class_is_never_predicted_or_absent():
    from cnncli.jobs.evaluator import Evaluation
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)             # class 4 is absent from the labels
    probabilities = rng.random((300, 5))
    probabilities[:, 2] = 0                      # class 2 is never predicted
    evaluation = Evaluation([str(k) for k in range(5)], labels, probabilities, 3, "t")
    predicted = probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=range(5), zero_division=0)
    for row, p, r, f, s in zip(evaluation.per_class, precision, recall, f1, support):
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == \
            pytest.approx((p, r, f, s))
    assert evaluation.confusion.tolist() == confusion_matrix(labels, predicted,
                                                             labels=range(5)).tolist()


def test_finetune_on_an_image_folder(trained, digit_images, tmp_path):
    output = tmp_path / "three.cnn"
    # 90 images would train on shifted copies by default (recomputing the features);
    # unshifted, the frozen layers' features are computed once.
    result = invoke("finetune", trained, digit_images, "-o", output, "--epochs", 3,
                    "--lr", 0.01, "--val-split", 0.2, "--shift", 0)
    assert result.exit_code == 0, result.output
    assert "features once" in result.stderr and "shifted" not in result.stderr
    model = load_model(output)
    assert model.classes == ["digit0", "digit1", "digit2"]
    assert not model["conv2d_1"].trainable and model.head.trainable
    evaluation = invoke("eval", output, digit_images, "--json", tmp_path / "m.json")
    assert evaluation.exit_code == 0, evaluation.output
    assert json.loads((tmp_path / "m.json").read_text())["accuracy"] >= 0.8

    # Then unfreeze everything for one epoch at a lower rate for the backbone.
    again = invoke("finetune", trained, digit_images, "-o", tmp_path / "all.cnn",
                   "--epochs", 1, "--unfreeze-epochs", 1, "--quiet")
    assert again.exit_code == 0, again.output
    assert load_model(tmp_path / "all.cnn")["conv2d_1"].trainable


def test_predict_images_and_folders(trained, digit_images):
    image = digit_images / "digit1" / "0.png"
    result = invoke("predict", trained, image, digit_images / "digit2", "--top-k", 2)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 31 and lines[0].startswith(f"{image}: ")
    assert len(lines[0].split(", ")) == 2


def test_summary_and_models(trained):
    result = invoke("summary", trained)
    assert result.exit_code == 0 and "Trainable params" in result.stdout
    assert "Classes: 0, 1" in result.stdout
    alexnet = invoke("summary", "alexnet", "--classes", 1000)
    assert "(None, 96, 55, 55)" in alexnet.stdout and "34,944" in alexnet.stdout
    assert "62,378,344" in alexnet.stdout
    assert invoke("models").exit_code == 0


@pytest.mark.parametrize("args, message", [
    (("eval", "absent.cnn", "digits"), "absent.cnn: no such model file"),
    (("predict", "{trained}", "absent.png"), "absent.png: no such file"),
    (("train", "absent-folder"), "absent-folder: no such file or folder"),
    (("train", "digits", "--arch", "resnet9000"), "--arch: expected one of"),
    (("train", "digits", "--optimizer", "rmsprop"), "--optimizer: expected one of"),
    (("train", "digits", "--size", "big"), "--size: expected HEIGHTxWIDTH"),
    (("train", "digits", "--arch", "alexnet"), "does not fit inputs of shape (1, 8, 8)"),
    (("eval", "{bad_model}", "digits"), "not a valid model file"),
    (("eval", "{trained}", "{images}"), "classes ['digit0', 'digit1', 'digit2'] are not among"),
    (("finetune", "{trained}", "digits", "--freeze", "nope", "-o", "{tmp}/f.cnn"),
     "--freeze: no layer named 'nope'"),
])
def test_expected_failures_print_one_line(args, message, trained, digit_images, tmp_path):
    bad_model = tmp_path / "bad.cnn"
    bad_model.write_bytes(b"not a model")
    values = {"trained": trained, "bad_model": bad_model, "images": digit_images,
              "tmp": tmp_path}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = invoke(*[str(a).format(**values) for a in args])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 1, result.output
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_bad_images_stop_or_are_skipped(trained, digit_images, tmp_path):
    import shutil
    root = tmp_path / "images"
    shutil.copytree(digit_images, root)
    (root / "digit1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    result = invoke("finetune", trained, root, "-o", tmp_path / "f.cnn")
    assert result.exit_code == 1
    assert "broken.png: " in result.stderr and "--skip-bad" in result.stderr
    result = invoke("finetune", trained, root, "-o", tmp_path / "f.cnn", "--skip-bad",
                    "--epochs", 1)
    assert result.exit_code == 0, result.output
    assert "skipped 1 bad item(s)" in result.stderr
    # Every bad file is named, however many there are.
    for index in range(30):
        (root / "digit2" / f"broken{index}.png").write_bytes(b"not an image")
    result = invoke("finetune", trained, root, "-o", tmp_path / "g.cnn", "--skip-bad",
                    "--epochs", 1)
    assert result.exit_code == 0, result.output
    assert "skipped 31 bad item(s)" in result.stderr
    assert all(f"broken{index}.png: " in result.stderr for index in range(30))


def test_eval_decodes_only_the_part_it_evaluates(trained, digit_images, tmp_path):
    import shutil
    root = tmp_path / "parts"
    for part in ("train", "test"):
        for digit in range(3):
            shutil.copytree(digit_images / f"digit{digit}", root / part / str(digit))
    (root / "train" / "1" / "broken.png").write_bytes(b"not an image")
    result = invoke("eval", trained, root)
    assert result.exit_code == 0, result.output
    assert "(test): 90 samples" in result.stdout and "broken" not in result.stderr
    result = invoke("eval", trained, root, "--split", "train")
    assert result.exit_code == 1 and "broken.png: " in result.stderr
    result = invoke("eval", trained, root, "--split", "train", "--skip-bad")
    assert result.exit_code == 0 and "skipped 1 bad item(s)" in result.stderr


def test_summary_of_an_unknown_name_lists_what_it_could_be():
    result = invoke("summary", "foo")
    assert result.exit_code == 1
    assert "architectures: lenet, vgg-small, alexnet, resnet18" in result.stderr
    assert "pretrained: " in result.stderr and "lenet-mnist" in result.stderr


def test_eval_seed_help_speaks_of_the_split():
    result = invoke("eval", "--help")
    text = " ".join(result.stdout.split())
    assert "Seed of the validation split" in text and "augmentation" not in text


def test_console_script_and_module_entry_points():
    for command in (["cnncli", "--help"], [sys.executable, "-m", "cnncli", "--help"]):
        completed = subprocess.run(command, capture_output=True, text=True)
        assert completed.returncode == 0, completed.stderr
        assert "finetune" in completed.stdout
    completed = subprocess.run([sys.executable, "-m", "cnncli", "train", "--help"],
                               capture_output=True, text=True)
    assert "Examples" in completed.stdout and "--resume" in completed.stdout


def test_pretrained_models_are_found_by_name(trained, digit_images, tmp_path, monkeypatch):
    from cnncli import resources
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "lenet-digits.cnn").write_bytes(trained.read_bytes())
    (zoo / "lenet-digits.md").write_text("# lenet-digits\n\nLeNet on scikit-learn's digits.\n")
    monkeypatch.setattr(resources, "zoo_folder", lambda: str(zoo))
    listing = invoke("models")
    assert "lenet-digits: LeNet on scikit-learn's digits." in listing.stdout
    result = invoke("finetune", "lenet-digits", digit_images, "-o", tmp_path / "f.cnn",
                    "--epochs", 1, "--quiet")
    assert result.exit_code == 0, result.output
    assert load_model(tmp_path / "f.cnn").provenance["pretrained"] == "lenet-digits"
    missing = invoke("finetune", "lenet-nothing", digit_images, "-o", tmp_path / "g.cnn")
    assert missing.exit_code == 1 and "pretrained: lenet-digits" in missing.stderr


def test_the_installed_zoo_folder_is_the_models_folder():
    from cnncli import resources
    assert os.path.isfile(os.path.join(resources.zoo_folder(), "README.md"))


def test_cached_features_train_the_head_as_the_full_model_would(trained, digit_images, tmp_path):
    from cnncli import jobs
    results = [jobs.finetune(trained, digit_images, output=tmp_path / f"{cache}.cnn", epochs=2,
                             shift=0, cache_features=cache) for cache in (True, False)]
    assert results[0].cached_features and not results[1].cached_features
    cached, full = (r.model.state_dict() for r in results)
    for name in cached:
        np.testing.assert_allclose(cached[name], full[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arrays, message", [
    (dict(x=np.zeros((4, 8, 8), np.uint8), y=[0, 1, 2]), "4 images but 3 labels"),
    (dict(x=np.zeros((3, 8, 8), np.uint8), y=[0, 1, 12], classes=np.array(["a", "b"])),
     "label 12 of sample 2 is outside 0..1"),
])
def test_bad_arrays_through_the_cli(arrays, message, trained, tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    result = invoke("train", path, "-o", tmp_path / "m.cnn")
    assert result.exit_code == 1 and message in result.stderr
    assert result.stderr.count("\n") == 1


def test_empty_class_folder_and_non_image_through_the_cli(digit_images, tmp_path):
    import shutil
    root = tmp_path / "images"
    shutil.copytree(digit_images, root)
    (root / "empty").mkdir()
    result = invoke("train", root, "-o", tmp_path / "m.cnn")
    assert result.exit_code == 1 and "the class folder has no images" in result.stderr
    (root / "empty" / "notes.txt").write_text("not an image")
    result = invoke("train", root, "-o", tmp_path / "m.cnn")
    assert result.exit_code == 1 and "notes.txt: not an image file" in result.stderr
    result = invoke("train", root, "-o", tmp_path / "m.cnn", "--skip-bad", "--epochs", 1,
                    "--quiet")
    assert result.exit_code == 0, result.output
    assert load_model(tmp_path / "m.cnn").classes == ["digit0", "digit1", "digit2"]


def test_classes_and_per_class_select_the_data(tmp_path):
    model_path = tmp_path / "m.cnn"
    result = invoke("train", "digits", "--classes", "3,1", "--per-class", 20, "--val-split", 0,
                    "--epochs", 1, "-o", model_path, "--quiet")
    assert result.exit_code == 0, result.output
    model = load_model(model_path)
    assert model.classes == ["3", "1"]
    assert model.provenance["dataset_size"] == 40 and model.provenance["per_class"] == 20
    report = invoke("eval", model_path, "digits", "--classes", "1,3", "--split", "all")
    assert report.exit_code == 0, report.output
    assert "digits (all): 365 samples" in report.stdout
    refused = invoke("eval", model_path, "digits")
    assert refused.exit_code == 1 and "not among the model's classes" in refused.stderr
    unknown = invoke("train", "digits", "--classes", "1,x", "-o", tmp_path / "n.cnn")
    assert unknown.exit_code == 1 and "no class 'x'" in unknown.stderr


def test_demo_fine_tunes_the_shipped_model_on_shipped_data(tmp_path):
    """The README's main job: no download, no argument, an evaluation report."""
    process = cnncli_process("demo", cwd=tmp_path)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    report = next(line for line in stdout.splitlines() if line.startswith("accuracy "))
    assert float(report.split()[1]) >= 0.97, stdout
    assert "optdigits (test): 599 samples" in stdout and "most confused" in stdout
    assert os.listdir(tmp_path) == []
    kept = invoke("demo", "-o", tmp_path / "kept.cnn", "--quiet")
    assert kept.exit_code == 0, kept.output
    assert load_model(tmp_path / "kept.cnn").provenance["pretrained"] == "lenet-mnist"
    again = invoke("demo", "-o", tmp_path / "kept.cnn")
    assert again.exit_code == 1 and "already exists" in again.stderr


def test_the_shipped_models_match_their_cards():
    import hashlib
    from cnncli import jobs
    shipped = {name: (path, card) for name, path, card in jobs.zoo_models()}
    assert {"lenet-mnist", "lenet-mnist-0-4"} <= set(shipped)
    listing = invoke("models").stdout
    expected_classes = {"lenet-mnist": [str(d) for d in range(10)],
                        "lenet-mnist-0-4": ["0", "1", "2", "3", "4"]}
    for name, classes in expected_classes.items():
        path, card = shipped[name]
        assert f"{name}: LeNet-style CNN" in listing
        digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
        assert f"file SHA-256 | `{digest}`" in card
        for field in ("architecture", "input", "data", "seed", "test accuracy",
                      "training time", "cnncli train mnist"):
            assert field in card, (name, field)
        model = load_model(path)
        assert model.classes == classes and model.input_shape == (1, 28, 28)
        assert model.provenance["command"] == "train" and model.provenance["data"] == "mnist"
        accuracy = float(card.split("test accuracy | **")[1].split("**")[0])
        assert accuracy >= 0.99


def test_pretrained_names_work_from_any_folder(tmp_path):
    process = cnncli_process("summary", "lenet-mnist-0-4", cwd=tmp_path)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "Classes: 0, 1, 2, 3, 4" in stdout


def test_eval_json_is_not_overwritten_without_force(trained, digits_npz, tmp_path):
    metrics_path = tmp_path / "metrics.json"
    metrics_path.write_text("keep me")
    result = invoke("eval", trained, digits_npz, "--json", metrics_path)
    assert result.exit_code == 1 and "already exists; pass --force" in result.stderr
    assert metrics_path.read_text() == "keep me"
    result = invoke("eval", trained, digits_npz, "--json", metrics_path, "--force")
    assert result.exit_code == 0 and json.loads(metrics_path.read_text())["samples"] == 397


def test_version_names_the_kernels_variant():
    from cnncli import functional as F
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert f"convolution kernel: {F.direct_kernel_variant()}" in result.output
    assert ("OpenMP: yes" if F.openmp_enabled() else "OpenMP: no") in result.output
