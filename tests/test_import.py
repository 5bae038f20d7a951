"""Importing torchvision-format ResNet weights: parity with PyTorch's outputs (fixtures made
once with torch by scripts/make_import_fixtures.py), name mapping, the report, the CLI, and
fine-tuning an imported ResNet on a folder of photos."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file
from typer.testing import CliRunner

from cnncli import architectures, jobs
from cnncli.cli import app
from cnncli.importer import (IMAGENET_PREPROCESSING, WeightsImportError, _torchvision_name,
                             imagenet_classes, import_weights)
from cnncli.loading import load_model
from cnncli.modelfile import ModelFileError
from cnncli.preprocessing import Preprocessing

from torch_archive import arrays_to_archive, write_archive

FIXTURES = Path(__file__).parent / "fixtures" / "torchvision"
EXPECTED = np.load(FIXTURES / "expected.npz")
FIXTURE_INPUT = Preprocessing(3, (64, 64))
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def relative_error(ours, theirs):
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.mark.parametrize("name", ["resnet18_w8", "resnet50_w4"])
@pytest.mark.parametrize("extension", ["pt", "safetensors"])
def test_imported_outputs_match_pytorch(name, extension):
    model, report = import_weights(FIXTURES / f"{name}.{extension}",
                                   preprocessing=FIXTURE_INPUT)
    outputs = model.forward(EXPECTED["inputs"])
    assert relative_error(outputs, EXPECTED[name]) < 1e-4
    assert not report.not_placed
    # Every BatchNorm's counter was found and set aside, nothing else.
    batchnorms = [n for n in model.buffers() if n.endswith("running_mean")]
    assert len(report.set_aside) == len(batchnorms)
    assert all(n.endswith("num_batches_tracked") for n in report.set_aside)


def test_the_recognised_architecture_and_width():
    model, report = import_weights(FIXTURES / "resnet50_w4.pt", preprocessing=FIXTURE_INPUT)
    assert model.name == "resnet50" and report.architecture == "resnet50 (width 4)"
    assert model["conv1"].filters == 4 and model["fc"].units == 10
    assert model.classes is None           # 10 outputs: not ImageNet's, no names known
    assert model.provenance["imported_from"] == "resnet50_w4.pt"


def test_batchnorm_statistics_land_in_the_right_place():
    model, _ = import_weights(FIXTURES / "resnet18_w8.safetensors", preprocessing=FIXTURE_INPUT)
    from safetensors.numpy import load_file
    source = load_file(FIXTURES / "resnet18_w8.safetensors")
    block = model["layer2_0"]
    np.testing.assert_array_equal(block.shortcut["bn"].running_var,
                                  source["layer2.0.downsample.1.running_var"])
    np.testing.assert_array_equal(block.body["bn2"].gamma.value, source["layer2.0.bn2.weight"])
    np.testing.assert_array_equal(block.body["bn2"].beta.value, source["layer2.0.bn2.bias"])
    np.testing.assert_array_equal(model["bn1"].running_mean, source["bn1.running_mean"])


def test_name_mapping():
    assert _torchvision_name("bn1.gamma") == "bn1.weight"
    assert _torchvision_name("layer3_1.body.conv2.weight") == "layer3.1.conv2.weight"
    assert _torchvision_name("layer3_1.body.bn2.beta") == "layer3.1.bn2.bias"
    assert _torchvision_name("layer2_0.shortcut.conv.weight") == "layer2.0.downsample.0.weight"
    assert _torchvision_name("layer2_0.shortcut.bn.running_var") == \
        "layer2.0.downsample.1.running_var"
    assert _torchvision_name("fc.weight") == "fc.weight"


def torchvision_state(model):
    """A cnncli ResNet's tensors under torchvision's names, with the BatchNorm counters."""
    state = {_torchvision_name(name): np.array(value)
             for name, value in model.state_arrays().items()}
    for name in list(state):
        if name.endswith(".running_mean"):
            state[name.replace("running_mean", "num_batches_tracked")] = np.array(5, np.int64)
    return state


@pytest.fixture(scope="module")
def imagenet_resnet_file(tmp_path_factory):
    """A narrow ResNet-34 with a 1000-class head, under torchvision's names."""
    model = architectures.resnet34(input_shape=(3, 32, 32), width=2, seed=3)
    rng = np.random.default_rng(0)
    for array in model.state_arrays().values():
        array[...] = rng.normal(size=array.shape) * 0.1 + (array.mean() if array.size else 0)
    for name, array in model.buffers().items():
        if name.endswith("running_var"):
            array[...] = rng.random(array.shape) + 0.5
    path = tmp_path_factory.mktemp("imagenet") / "resnet34.safetensors"
    save_file(torchvision_state(model), str(path))
    return model, path


def test_a_1000_class_head_gets_imagenet_names_and_preprocessing(imagenet_resnet_file):
    original, path = imagenet_resnet_file
    model, report = import_weights(path)
    assert model.name == "resnet34" and len(model.classes) == 1000
    assert model.classes[:3] == ["tench", "goldfish", "great white shark"]
    assert model.classes == imagenet_classes() and len(set(model.classes)) == 1000
    assert model.preprocessing == IMAGENET_PREPROCESSING
    assert model.input_shape == (3, 224, 224)
    # The same weights give the same outputs as the model they came from.
    resized = import_weights(path, preprocessing=Preprocessing(3, (32, 32)))[0]
    x = np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(resized.forward(x), original.forward(x))


def test_names_and_preprocessing_can_be_overridden(imagenet_resnet_file):
    _, path = imagenet_resnet_file
    names = [f"c{i}" for i in range(1000)]
    preprocessing = Preprocessing(3, (160, 160), mean=(0.5,) * 3, std=(0.25,) * 3)
    model, _ = import_weights(path, classes=names, preprocessing=preprocessing)
    assert model.classes == names and model.preprocessing == preprocessing
    assert model.input_shape == (3, 160, 160)
    with pytest.raises(WeightsImportError, match="3 class names for a head with 1000 outputs"):
        import_weights(path, classes=["a", "b", "c"])
    with pytest.raises(WeightsImportError, match="take 3-channel images but the preprocessing "
                                                 "gives 1"):
        import_weights(path, preprocessing=Preprocessing(1, (32, 32)))


def _write(tmp_path, state, name="w.safetensors"):
    path = tmp_path / name
    save_file(state, str(path))
    return path


def test_leftover_tensors_are_reported_and_missing_ones_stop_the_import(tmp_path):
    model = architectures.resnet18(input_shape=(3, 32, 32), classes=4, width=2)
    state = torchvision_state(model)
    extra = dict(state, **{"aux.weight": np.ones(3, np.float32)})
    imported, report = import_weights(_write(tmp_path, extra), preprocessing=Preprocessing(
        3, (32, 32)))
    assert report.not_placed == ["aux.weight"]
    assert "not placed (1): aux.weight" in str(report)

    missing = {k: v for k, v in state.items() if k != "layer3.1.bn1.running_var"}
    with pytest.raises(WeightsImportError, match=r"missing layer3\.1\.bn1\.running_var"):
        import_weights(_write(tmp_path, missing, "m.safetensors"))
    shaped = dict(state, **{"layer1.0.conv2.weight": np.ones((2, 2, 1, 1), np.float32)})
    with pytest.raises(WeightsImportError, match=r"layer1\.0\.conv2\.weight has shape "
                                                 r"\(2, 2, 1, 1\), resnet18 needs "
                                                 r"\(2, 2, 3, 3\)"):
        import_weights(_write(tmp_path, shaped, "s.safetensors"))
    integers = dict(state, **{"fc.bias": np.ones(4, np.int64)})
    with pytest.raises(WeightsImportError, match="fc.bias holds int64"):
        import_weights(_write(tmp_path, integers, "i.safetensors"))


def test_data_parallel_prefixes_are_stripped(tmp_path):
    model = architectures.resnet18(input_shape=(3, 32, 32), classes=4, width=2)
    state = {f"module.{k}": v for k, v in torchvision_state(model).items()}
    imported, report = import_weights(_write(tmp_path, state),
                                      preprocessing=Preprocessing(3, (32, 32)))
    assert len(report.placed) == len(model.state_arrays()) and not report.not_placed


def test_weights_that_are_not_a_resnet(tmp_path):
    path = write_archive(tmp_path / "lenet.pt", *arrays_to_archive(
        {"features.0.weight": np.ones((6, 1, 5, 5), np.float32)}))
    with pytest.raises(WeightsImportError, match="not a torchvision ResNet state dict "
                                                 r"\(no 'conv1.weight'"):
        import_weights(path)
    model = architectures.resnet18(input_shape=(3, 32, 32), classes=4, width=2)
    state = {k: v for k, v in torchvision_state(model).items() if not k.startswith("layer4.1.")}
    with pytest.raises(WeightsImportError, match=r"basic blocks \(2, 2, 2, 1\) per stage"):
        import_weights(_write(tmp_path, state))
    with pytest.raises(WeightsImportError, match="--arch is resnet50 but the weights are a "
                                                 "resnet18"):
        import_weights(FIXTURES / "resnet18_w8.pt", architecture="resnet50")
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(ModelFileError, match="neither a PyTorch archive"):
        import_weights(other)


# -- the CLI -------------------------------------------------------------------------------


def test_cli_import_then_predict(tmp_path):
    output = tmp_path / "r18.cnn"
    result = invoke("import", FIXTURES / "resnet18_w8.pt", "-o", output, "--size", "64",
                    "--classes", ",".join(f"k{i}" for i in range(10)))
    assert result.exit_code == 0, result.output
    assert "resnet18 (width 8), 102 tensors placed" in result.stdout
    assert "set aside 20 BatchNorm num_batches_tracked counters" in result.stdout
    assert f"saved {output}" in result.stdout and "input 3x64x64, 10 classes" in result.stdout
    model = load_model(output)
    assert model.classes[0] == "k0" and model.preprocessing.size == (64, 64)
    assert model.preprocessing.mean == IMAGENET_PREPROCESSING.mean
    # The imported model reproduces PyTorch's outputs after a save and load.
    assert relative_error(model.forward(EXPECTED["inputs"]), EXPECTED["resnet18_w8"]) < 1e-4

    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100, 3), np.uint8)).save(
        image)
    predicted = invoke("predict", output, image)
    assert predicted.exit_code == 0, predicted.output
    assert predicted.stdout.startswith(f"{image}: k")


def test_cli_import_options_and_files(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"name {i}" for i in range(10)) + "\n")
    result = invoke("import", FIXTURES / "resnet50_w4.safetensors", "-o", tmp_path / "m.cnn",
                    "--classes", labels, "--mean", "0.5,0.5,0.5", "--std", "0.2,0.2,0.2",
                    "--arch", "resnet50")
    assert result.exit_code == 0, result.output
    model = load_model(tmp_path / "m.cnn")
    assert model.classes[9] == "name 9" and model.preprocessing.std == (0.2, 0.2, 0.2)
    assert model.input_shape == (3, 224, 224)
    # By default the output is named after the source, in the current folder.
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert invoke("import", FIXTURES / "resnet18_w8.pt").exit_code == 0
    finally:
        os.chdir(cwd)
    assert (tmp_path / "resnet18_w8.cnn").exists()


@pytest.mark.parametrize("arguments, message", [
    (("missing.pt",), "missing.pt: no such file"),
    ((FIXTURES / "resnet18_w8.pt", "--arch", "vgg"), "--arch: expected resnet18, resnet34 or "
                                                     "resnet50, got 'vgg'"),
    ((FIXTURES / "resnet18_w8.pt", "--arch", "resnet34"), "--arch is resnet34 but the weights "
                                                          "are a resnet18"),
    ((FIXTURES / "resnet18_w8.pt", "--mean", "0.5"), "--mean: expected 3 comma-separated "
                                                     "numbers, got '0.5'"),
    ((FIXTURES / "resnet18_w8.pt", "--std", "1,0,1"), "std: expected positive finite numbers"),
    ((FIXTURES / "resnet18_w8.pt", "--classes", "a,b"), "2 class names for a head with 10 "
                                                        "outputs"),
    ((FIXTURES / "expected.npz",), "not a PyTorch archive: expected one <folder>/data.pkl"),
])
def test_cli_import_failures_are_one_line_and_write_nothing(tmp_path, arguments, message):
    output = tmp_path / "out.cnn"
    result = invoke("import", *arguments, "-o", output)
    assert result.exit_code == 1
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert not output.exists() and os.listdir(tmp_path) == []


def test_cli_import_refuses_a_hostile_file(tmp_path):
    from torch_archive import PROTO2, REDUCE, STOP, global_, text, tuple_
    marker = tmp_path / "pwned"
    payload = PROTO2 + global_("os", "system") + tuple_(text(f"touch {marker}")) + REDUCE + STOP
    hostile = write_archive(tmp_path / "hostile.pth", payload, {})
    result = invoke("import", hostile, "-o", tmp_path / "out.cnn")
    assert result.exit_code == 1
    assert "asks for os.system, which a weights file may not use" in result.stderr
    assert not marker.exists() and not (tmp_path / "out.cnn").exists()


# -- fine-tuning an imported ResNet on photos ----------------------------------------------


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """Two classes of RGB photos of assorted sizes: reddish and bluish noise."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for part, count in (("train", 12), ("test", 6)):
        for label, channel in (("red", 0), ("blue", 2)):
            folder = root / part / label
            folder.mkdir(parents=True)
            for index in range(count):
                height, width = rng.integers(150, 300, size=2)
                pixels = rng.integers(0, 120, (height, width, 3), dtype=np.uint8)
                pixels[..., channel] += 120
                Image.fromarray(pixels).save(folder / f"{index}.jpg", quality=90)
    return root


def test_finetune_an_imported_resnet_on_a_photo_folder_at_224(tmp_path, photo_folder):
    imported = tmp_path / "resnet18.cnn"
    assert invoke("import", FIXTURES / "resnet18_w8.pt", "-o", imported).exit_code == 0
    result = jobs.finetune(imported, photo_folder, output=tmp_path / "photos.cnn", epochs=15,
                           lr=1e-2, val_split=0)
    # A frozen backbone without augmentation: its features were computed once.
    assert result.cached_features
    model = load_model(tmp_path / "photos.cnn")
    assert model.input_shape == (3, 224, 224) and model.classes == ["blue", "red"]
    assert model["fc"].units == 2 and model["layer4_1"].trainable is False
    assert model["fc"].trainable
    # The backbone is exactly the imported one.
    original = load_model(imported)
    np.testing.assert_array_equal(model["layer3_0"].body["conv1"].weight.value,
                                  original["layer3_0"].body["conv1"].weight.value)
    evaluation = jobs.evaluate(tmp_path / "photos.cnn", photo_folder)
    assert evaluation.count == 12 and evaluation.accuracy >= 0.9


def test_a_safetensors_header_length_starting_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    from safetensors.numpy import save
    from cnncli.importer import read_state_dict
    state = {"w": np.ones(3, np.float32)}
    for padding in range(200):
        data = save(state, metadata={"note": "x" * padding})
        if data[0] == 0x80:
            break
    assert data[0] == 0x80
    path = tmp_path / "w.safetensors"
    path.write_bytes(data)
    np.testing.assert_array_equal(read_state_dict(path)["w"], np.ones(3))
