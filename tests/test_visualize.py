"""Pictures of a network: the grids show exactly the kernels and activations the model has,
the plots decode at their size, and `cnncli show` writes where it says."""

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits
from typer.testing import CliRunner

from cnncli import architectures, jobs, visualize
from cnncli.cli import app
from cnncli.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from cnncli.model import Sequential
from cnncli.preprocessing import Preprocessing

FIXTURES = Path(__file__).parent / "fixtures" / "torchvision"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def cell_pixels(grid, index):
    left, top, right, bottom = grid.cells[index]
    pixels = np.asarray(grid.image)[top:bottom, left:right]
    # Cells are enlarged by a whole factor: sample one pixel per value.
    return pixels[::grid.scale, ::grid.scale]


def expected_pixels(values):
    return np.round(visualize.normalise(values) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """LeNet trained for two epochs on digits by the CLI: a model, its history, an image."""
    folder = tmp_path_factory.mktemp("run")
    result = invoke("train", "digits", "--epochs", "2", "-o", folder / "digits.cnn", "-q")
    assert result.exit_code == 0, result.output
    image = folder / "seven.png"
    Image.fromarray((load_digits().images[7] * 16).astype(np.uint8)).save(image)
    return folder, folder / "digits.cnn", image


# -- filters -------------------------------------------------------------------------------


def test_a_32_filter_layer_gives_32_cells_showing_each_normalised_kernel(trained):
    from cnncli.loading import load_model
    _, model_path, _ = trained
    model = load_model(model_path)
    grid = visualize.filter_grid(model)
    weight = model["conv2d_1"].weight.value
    assert weight.shape == (32, 1, 5, 5) and len(grid.cells) == 32
    assert grid.title == "conv2d_1: 32 filters 5x5 (gray)"
    for index in range(32):
        pixels = cell_pixels(grid, index)
        assert pixels.shape == (5, 5, 3)
        np.testing.assert_array_equal(pixels[..., 0], expected_pixels(weight[index, 0]))
        np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])     # gray
    # Cells do not overlap and lie inside the image.
    width, height = grid.image.size
    boxes = grid.cells
    assert all(0 <= l < r <= width and 0 <= t < b <= height for l, t, r, b in boxes)
    assert len({(l, t) for l, t, _, _ in boxes}) == 32


def test_rgb_filters_are_drawn_in_colour_and_other_layers_by_name():
    model = architectures.resnet18(input_shape=(3, 32, 32), classes=3, width=8)
    grid = visualize.filter_grid(model)
    weight = model["conv1"].weight.value            # (8, 3, 7, 7)
    assert len(grid.cells) == 8 and "RGB" in grid.title
    for index in range(8):
        np.testing.assert_array_equal(cell_pixels(grid, index),
                                      expected_pixels(weight[index]).transpose(1, 2, 0))
    inner = visualize.filter_grid(model, "layer2_0.body.conv1")
    kernels = model["layer2_0"].body["conv1"].weight.value          # (16, 8, 3, 3)
    assert len(inner.cells) == 16 and "mean of 8 input channels" in inner.title
    np.testing.assert_array_equal(cell_pixels(inner, 5)[..., 1],
                                  expected_pixels(kernels[5].mean(axis=0)))
    chosen = visualize.filter_grid(model, "layer2_0.body.conv1", channel=3)
    np.testing.assert_array_equal(cell_pixels(chosen, 5)[..., 1], expected_pixels(kernels[5, 3]))
    with pytest.raises(ValueError, match="channel: expected 0 to 7"):
        visualize.filter_grid(model, "layer2_0.body.conv1", channel=8)
    with pytest.raises(ValueError, match="bn1 is a BatchNorm2D, not a convolutional layer"):
        visualize.filter_grid(model, "bn1")
    with pytest.raises(KeyError, match="no layer named 'nope'"):
        visualize.filter_grid(model, "nope")


# -- feature maps --------------------------------------------------------------------------


def test_feature_maps_in_the_picture_are_the_layer_outputs(trained):
    from cnncli.loading import load_model
    folder, model_path, image = trained
    model = load_model(model_path)
    pixels = np.asarray(Image.open(image))[None, None]
    x = model.preprocessing(pixels)
    grids = visualize.feature_grids(model, x[0])
    assert list(grids) == ["conv2d_1", "max_pool2d_1", "conv2d_2", "max_pool2d_2"]
    # The activations, computed independently layer by layer.
    value, expected = x, {}
    for layer in model:
        value = layer.forward(value)
        expected[layer.name] = value[0]
    for name, grid in grids.items():
        maps = expected[name]
        assert len(grid.cells) == maps.shape[0]
        assert grid.title == f"{name}: {'x'.join(map(str, maps.shape))}"
        for index in range(maps.shape[0]):
            np.testing.assert_array_equal(cell_pixels(grid, index)[..., 0],
                                          expected_pixels(maps[index]), err_msg=name)


def test_feature_maps_inside_residual_blocks_and_a_cap_on_maps():
    model = architectures.resnet18(input_shape=(3, 32, 32), classes=3, width=8)
    x = np.random.default_rng(0).normal(size=(3, 32, 32)).astype(np.float32)
    grids = visualize.feature_grids(model, x)
    assert "layer1_0.body.conv2" in grids and "layer2_0.shortcut.conv" in grids
    assert list(grids)[:2] == ["conv1", "maxpool"]
    block = model["layer2_0"]
    # The input of layer2_0 is the output of stage 1, computed layer by layer.
    inner = block.body["conv1"].forward(
        model["layer1_1_relu"].forward(model["layer1_1"].forward(model["layer1_0_relu"].forward(
            model["layer1_0"].forward(model["maxpool"].forward(model["relu"].forward(
                model["bn1"].forward(model["conv1"].forward(x[None])))))))))
    grid = grids["layer2_0.body.conv1"]
    for index in range(inner.shape[1]):
        np.testing.assert_array_equal(cell_pixels(grid, index)[..., 0],
                                      expected_pixels(inner[0, index]))
    named = visualize.feature_grids(model, x, ["layer4_1"], max_maps=10)
    assert len(named["layer4_1"].cells) == 10
    assert named["layer4_1"].title == "layer4_1: 64x1x1 (first 10 maps)"
    with pytest.raises(ValueError, match="avgpool outputs \\(64,\\), not feature maps"):
        visualize.feature_grids(model, x, ["avgpool"])
    with pytest.raises(ValueError, match="image: expected shape \\(3, 32, 32\\)"):
        visualize.feature_grids(model, x[:1])


# -- history and confusion -----------------------------------------------------------------


def test_train_writes_its_history_beside_the_model(trained):
    folder, model_path, _ = trained
    document = json.loads((folder / "digits.history.json").read_text())
    assert document["format"] == "cnncli-history/1" and document["command"] == "train"
    epochs = document["epochs"]
    assert [epoch["epoch"] for epoch in epochs] == [1, 2]
    assert set(epochs[0]) >= {"loss", "accuracy", "val_loss", "val_accuracy", "phase"}
    # The same history as the checkpoint's training state.
    assert jobs.read_history(folder / "digits-checkpoints" / "last.cnn")[1]["loss"] == \
        epochs[1]["loss"]


def test_finetune_history_marks_its_phases(tmp_path, trained):
    _, model_path, _ = trained
    output = tmp_path / "tuned.cnn"
    jobs.finetune(model_path, "digits", output=output, epochs=2, unfreeze_epochs=1,
                  classes="0,1,2")
    epochs = jobs.read_history(output)
    assert [epoch["phase"] for epoch in epochs] == ["probe", "top", "top", "all layers"]
    png = visualize.history_png(epochs)
    assert Image.open(io.BytesIO(png)).size == (1000, 400)


def test_history_and_confusion_pictures_decode_at_their_size():
    epochs = [{"loss": 1.0 / n, "accuracy": 1 - 0.5 / n, "val_loss": 1.2 / n} for n in
              range(1, 6)]
    image = Image.open(io.BytesIO(visualize.history_png(epochs, "run")))
    assert image.format == "PNG" and image.size == (1000, 400)
    matrix = np.array([[5, 1, 0], [0, 6, 0], [2, 0, 4]])
    image = Image.open(io.BytesIO(visualize.confusion_png(matrix, ["a", "b", "c"])))
    assert image.format == "PNG" and image.size == (650, 500)
    big = Image.open(io.BytesIO(visualize.confusion_png(np.eye(40, dtype=int),
                                                        [str(i) for i in range(40)])))
    assert big.size == (2150, 2000)
    with pytest.raises(ValueError, match="expected \\(3, 3\\) for 3 classes"):
        visualize.confusion_png(np.ones((2, 2)), ["a", "b", "c"])
    with pytest.raises(ValueError, match="no epochs"):
        visualize.history_png([])


# -- the CLI -------------------------------------------------------------------------------


def test_cli_show_writes_pngs_beside_the_model_and_says_where(trained, tmp_path):
    folder, model_path, image = trained
    result = invoke("show", "filters", model_path)
    assert result.exit_code == 0, result.output
    written = folder / "digits-filters.png"
    assert f"wrote {written}" in result.stdout and "32 cells" in result.stdout
    assert Image.open(written).format == "PNG"
    # Nothing is overwritten without --force.
    again = invoke("show", "filters", model_path)
    assert again.exit_code == 1 and "already exists; pass --force" in again.stderr
    assert invoke("show", "filters", model_path, "--force").exit_code == 0

    result = invoke("show", "features", model_path, image)
    assert result.exit_code == 0, result.output
    pictures = sorted(os.listdir(folder / "digits-features-seven"))
    assert pictures == ["01-conv2d_1.png", "02-max_pool2d_1.png", "03-conv2d_2.png",
                        "04-max_pool2d_2.png"]
    assert result.stdout.count("wrote ") == 4
    named = invoke("show", "features", model_path, image, "--layer", "conv2d_2", "-o",
                   tmp_path / "maps")
    assert named.exit_code == 0, named.output
    assert os.listdir(tmp_path / "maps") == ["01-conv2d_2.png"]

    result = invoke("show", "history", model_path, "-o", tmp_path / "curves.png")
    assert result.exit_code == 0, result.output
    assert "(2 epochs)" in result.stdout
    assert Image.open(tmp_path / "curves.png").size == (1000, 400)

    result = invoke("show", "confusion", model_path, "digits", "--normalize")
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.stdout and f"wrote {folder / 'digits-confusion.png'}" in \
        result.stdout
    # 10 classes: 0.45 inch a class plus margins, at 100 dpi.
    assert Image.open(folder / "digits-confusion.png").size == (800, 650)


def test_cli_show_on_a_shipped_model_writes_in_the_current_folder(tmp_path):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = invoke("show", "filters", "lenet-mnist")
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "lenet-mnist-filters.png").exists()


@pytest.mark.parametrize("arguments, message", [
    (("filters", "missing.cnn"), "missing.cnn: no such model file"),
    (("filters", "MODEL", "--layer", "dense_1"), "dense_1 is a Dense, not a convolutional"),
    (("filters", "MODEL", "--layer", "nope"), "--layer: no layer named 'nope'"),
    (("features", "MODEL", "missing.png"), "missing.png: no such image file"),
    (("features", "MODEL", "NOTIMAGE"), "notes.png: not a readable image"),
    (("features", "MODEL", "IMAGE", "--layer", "flatten_1"), "flatten_1 outputs (256,), not "
                                                             "feature maps"),
    (("history", "missing.cnn"), "missing.cnn: no such file"),
    (("history", "NOTIMAGE"), "no history beside it"),
    (("confusion", "MODEL", "nowhere/"), "nowhere/: no such file or folder"),
])
def test_cli_show_failures_are_one_line_and_write_nothing(tmp_path, trained, arguments,
                                                          message):
    _, model_path, image = trained
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    replace = {"MODEL": model_path, "IMAGE": image, "NOTIMAGE": not_image}
    arguments = [replace.get(a, a) for a in arguments]
    before = set(os.listdir(tmp_path))
    result = invoke("show", *arguments, "-o", tmp_path / "out.png")
    assert result.exit_code == 1, result.output
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert set(os.listdir(tmp_path)) == before
