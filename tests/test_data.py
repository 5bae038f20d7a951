"""The data pipeline: image folders, .npz files, built-in datasets, bad-data policy,
splits, statistics, conversion and augmentation."""

import numpy as np
import pytest
from PIL import Image

from cnncli import data
from cnncli.data import DataError, load_dataset
from cnncli.preprocessing import Preprocessing


def write_image(path, pixels, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
    if mode is not None:
        image = image.convert(mode)
    image.save(path)


def image_folder(root, classes=("cat", "dog"), per_class=4, size=(6, 5), rgb=False, seed=0):
    rng = np.random.default_rng(seed)
    for name in classes:
        for index in range(per_class):
            shape = size + (3,) if rgb else size
            write_image(root / name / f"{index}.png", rng.integers(0, 256, shape))
    return root


def test_image_folder_layout_and_class_names(tmp_path):
    root = image_folder(tmp_path / "pets", classes=("dog", "cat", "bird"), per_class=3)
    splits = load_dataset(root)
    train = splits.train
    assert splits.val is None and splits.test is None
    assert train.classes == ["bird", "cat", "dog"]
    assert train.x.shape == (9, 1, 6, 5) and train.x.dtype == np.uint8
    assert train.class_counts().tolist() == [3, 3, 3]
    first = np.asarray(Image.open(root / "bird" / "0.png"))
    assert np.array_equal(train.x[0, 0], first)


def test_train_val_test_layout(tmp_path):
    image_folder(tmp_path / "set" / "train", per_class=4, rgb=True)
    image_folder(tmp_path / "set" / "val", per_class=2, rgb=True, seed=1)
    image_folder(tmp_path / "set" / "test", classes=("dog",), per_class=2, rgb=True, seed=2)
    splits = load_dataset(tmp_path / "set")
    assert len(splits.train) == 8 and len(splits.val) == 4 and len(splits.test) == 2
    assert splits.train.x.shape[1] == 3
    # A test part with only some classes keeps the training class numbering.
    assert splits.test.classes == ["cat", "dog"] and set(splits.test.y) == {1}


def test_mixed_modes_are_converted_to_one_channel_count(tmp_path):
    root = tmp_path / "mixed"
    rng = np.random.default_rng(0)
    write_image(root / "a" / "gray.png", rng.integers(0, 256, (4, 4)))
    write_image(root / "a" / "rgb.png", rng.integers(0, 256, (4, 4, 3)))
    write_image(root / "b" / "rgba.png", rng.integers(0, 256, (4, 4, 4)))
    write_image(root / "b" / "palette.png", rng.integers(0, 256, (4, 4, 3)), mode="P")
    write_image(root / "b" / "photo.jpg", rng.integers(0, 256, (4, 4, 3)))
    splits = load_dataset(root)
    assert splits.train.x.shape == (5, 3, 4, 4)          # colour present: RGB
    gray = load_dataset(root, channels=1, size=(8, 8)).train
    assert gray.x.shape == (5, 1, 8, 8)


def test_all_grayscale_folders_load_as_one_channel(tmp_path):
    root = tmp_path / "g"
    write_image(root / "a" / "0.png", np.full((4, 4), 10))
    write_image(root / "b" / "0.png", np.full((4, 4), 200), mode="P")
    assert load_dataset(root).train.x.shape == (2, 1, 4, 4)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    root = tmp_path / "deep"
    (root / "a").mkdir(parents=True)
    Image.fromarray(np.full((3, 3), 65535, dtype=np.uint16)).save(root / "a" / "white.png")
    Image.fromarray(np.full((3, 3), 32768, dtype=np.uint16)).save(root / "a" / "gray.png")
    x = load_dataset(root).train.x
    assert sorted(x[:, 0, 0, 0].tolist()) == [128, 255]


def test_images_of_different_sizes_need_a_size(tmp_path):
    root = tmp_path / "sizes"
    write_image(root / "a" / "0.png", np.zeros((4, 4)))
    write_image(root / "a" / "1.png", np.zeros((6, 5)))
    with pytest.raises(DataError, match="different sizes.*--size"):
        load_dataset(root)
    assert load_dataset(root, size=(5, 5)).train.x.shape == (2, 1, 5, 5)


BAD_FILES = {
    "corrupt image": ("a/broken.png", lambda path: path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40), "corrupt or unreadable image|not a readable image"),
    "truncated image": ("a/cut.png", None, "corrupt or unreadable image"),
    "non-image file": ("a/notes.txt", lambda path: path.write_text("hello"),
                       "not an image file"),
    "image extension on text": ("a/fake.jpg", lambda path: path.write_text("hello"),
                                "not a readable image"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_files_stop_the_run_or_are_skipped(tmp_path, kind):
    root = image_folder(tmp_path / "set", per_class=3)
    name, write, message = BAD_FILES[kind]
    path = root / name
    if write is None:
        write_image(path, np.random.default_rng(0).integers(0, 256, (64, 64, 3)))
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.parent.mkdir(exist_ok=True)
        write(path)
    with pytest.raises(DataError, match=message) as caught:
        load_dataset(root)
    assert str(path) in str(caught.value) and "--skip-bad" in str(caught.value)
    splits = load_dataset(root, skip_bad=True)
    assert len(splits.train.skipped) == 2 and str(path) in splits.train.skipped[0]
    # The class folder "a" held only the bad file: it is left out too.
    assert splits.train.classes == ["cat", "dog"] and len(splits.train) == 6


def test_empty_class_folder(tmp_path):
    root = image_folder(tmp_path / "set", per_class=2)
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="empty: the class folder has no images"):
        load_dataset(root)
    splits = load_dataset(root, skip_bad=True)
    assert splits.train.classes == ["cat", "dog"]
    assert "empty class folder" in splits.train.skipped[0]


def test_structural_problems(tmp_path):
    (tmp_path / "flat").mkdir()
    write_image(tmp_path / "flat" / "0.png", np.zeros((3, 3)))
    with pytest.raises(DataError, match="no class folders"):
        load_dataset(tmp_path / "flat")
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(tmp_path / "absent")
    (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(DataError, match="not a dataset"):
        load_dataset(tmp_path / "data.csv")


# ---------------------------------------------------------------------------
# .npz
# ---------------------------------------------------------------------------


def test_npz_with_train_and_test_arrays_is_memory_mapped(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "set.npz"
    np.savez(path, x_train=rng.integers(0, 256, (20, 6, 6), dtype=np.uint8),
             y_train=np.arange(20) % 3, x_test=rng.integers(0, 256, (5, 6, 6), dtype=np.uint8),
             y_test=np.arange(5) % 3)
    splits = load_dataset(path)
    assert isinstance(splits.train.x, np.memmap)
    assert splits.train.x.shape == (20, 1, 6, 6) and splits.test.x.shape == (5, 1, 6, 6)
    assert splits.train.classes == ["0", "1", "2"]
    with np.load(path) as arrays:
        assert np.array_equal(splits.train.x[:, 0], arrays["x_train"])


def test_npz_layouts_classes_and_compression(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "hwc.npz"
    np.savez_compressed(path, x=rng.random((6, 5, 4, 3)), y=[0, 1, 1, 0, 1, 0],
                        classes=np.array(["no", "yes"]))
    train = load_dataset(path).train
    assert train.x.shape == (6, 3, 5, 4) and train.classes == ["no", "yes"]
    assert train.pixel_max == 1.0


NPZ_PROBLEMS = {
    "length mismatch": (dict(x=np.zeros((4, 3, 3)), y=[0, 1, 0]), "4 images but 3 labels"),
    "negative label": (dict(x=np.zeros((3, 3, 3)), y=[0, -1, 1]), "label -1 of sample 1"),
    "label beyond the classes": (dict(x=np.zeros((3, 3, 3)), y=[0, 2, 1],
                                      classes=np.array(["a", "b"])), r"label 2 of sample 1 is outside 0\.\.1"),
    "fractional labels": (dict(x=np.zeros((2, 3, 3)), y=[0.5, 1]), "integers"),
    "no arrays": (dict(a=np.zeros(3)), "expected arrays 'x' and 'y'"),
    "bad image shape": (dict(x=np.zeros((3, 3)), y=[0, 1, 0]), "expected images of shape"),
}


@pytest.mark.parametrize("kind", sorted(NPZ_PROBLEMS))
def test_npz_problems_name_the_file(tmp_path, kind):
    arrays, message = NPZ_PROBLEMS[kind]
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as caught:
        load_dataset(path)
    assert str(caught.value).startswith(str(path))


def test_out_of_range_labels_can_be_skipped(tmp_path):
    path = tmp_path / "labels.npz"
    np.savez(path, x=np.arange(4 * 9, dtype=np.uint8).reshape(4, 3, 3), y=[0, 5, 1, 0],
             classes=np.array(["a", "b"]))
    train = load_dataset(path, skip_bad=True).train
    assert train.y.tolist() == [0, 1, 0] and len(train.skipped) == 1
    assert np.asarray(train.x)[1, 0, 0, 0] == 18


def test_classes_named_after_labels_are_the_labels_present(tmp_path):
    # Digits 0-2 and one stray 7: four classes, not eight with four of them empty.
    path = tmp_path / "stray.npz"
    y = np.array([0, 1, 2] * 5 + [7])
    np.savez(path, x_train=np.zeros((16, 3, 3), np.uint8), y_train=y,
             x_test=np.zeros((4, 3, 3), np.uint8), y_test=[2, 1, 0, 7])
    splits = load_dataset(path, skip_bad=True)
    assert splits.train.classes == ["0", "1", "2", "7"]
    assert splits.train.y.tolist() == [0, 1, 2] * 5 + [3]
    assert splits.test.y.tolist() == [2, 1, 0, 3]
    # A label too large for the limit is refused, or left out under skip_bad.
    np.savez(path, x=np.zeros((3, 3, 3), np.uint8), y=[0, 1, 10**9])
    with pytest.raises(DataError, match="label 1000000000"):
        load_dataset(path)
    skipped = load_dataset(path, skip_bad=True).train
    assert skipped.classes == ["0", "1"] and len(skipped) == 2 and len(skipped.skipped) == 1


def test_not_a_zip(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"nonsense")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset(path)


def test_digits_and_mnist_without_network(tmp_path, monkeypatch):
    digits = load_dataset("digits").train
    assert digits.x.shape == (1797, 1, 8, 8) and digits.pixel_max == 16
    monkeypatch.setattr(data, "MNIST_URL", "http://127.0.0.1:9/mnist.npz")
    with pytest.raises(DataError, match="cannot be downloaded.*save it as"):
        load_dataset("mnist", cache_dir=tmp_path)
    # A file placed in the cache is used as it is.
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((3, 28, 28), np.uint8),
             y_train=[1, 2, 3], x_test=np.zeros((2, 28, 28), np.uint8), y_test=[0, 9])
    splits = load_dataset("mnist", cache_dir=tmp_path)
    assert splits.train.classes == [str(d) for d in range(10)] and len(splits.test) == 2


# ---------------------------------------------------------------------------
# Splits, statistics, transforms
# ---------------------------------------------------------------------------


def test_stratified_split_keeps_class_proportions():
    digits = load_dataset("digits").train
    train, val = data.stratified_split(digits, 0.2, seed=0)
    assert len(train) + len(val) == len(digits)
    assert np.abs(val.class_counts() / len(val) - digits.class_counts() / len(digits)).max() < 0.01
    again, _ = data.stratified_split(digits, 0.2, seed=0)
    assert np.array_equal(again.y, train.y)


def test_stratified_split_holds_out_the_fraction_and_keeps_every_class_for_training():
    # Classes of 50, 7 and 2 images: their shares of 20 held out are 16.9, 2.4 and 0.7.
    labels = np.repeat([0, 1, 2], [50, 7, 2])
    images = np.arange(59 * 4, dtype=np.uint8).reshape(59, 1, 2, 2)
    dataset = data.Dataset(images, labels, ["a", "b", "c"], source="t")
    train, val = data.stratified_split(dataset, 20 / 59, seed=3)
    assert len(val) == 20 and len(train) == 39
    assert list(val.class_counts()) == [17, 2, 1] and list(train.class_counts()) == [33, 5, 1]
    assert not set(images_of(train)) & set(images_of(val))
    other, _ = data.stratified_split(dataset, 20 / 59, seed=4)
    assert images_of(other) != images_of(train)


def images_of(dataset):
    return [int(image.reshape(-1)[0]) for image in np.asarray(dataset.x)]


def test_split_of_a_memory_map_stays_lazy(tmp_path):
    np.savez(tmp_path / "m.npz", x=np.arange(40 * 4, dtype=np.uint8).reshape(40, 2, 2),
             y=np.arange(40) % 2)
    dataset = load_dataset(tmp_path / "m.npz").train
    train, val = data.stratified_split(dataset, 0.25)
    assert isinstance(train.x, data.Rows) and train.x.shape == (30, 1, 2, 2)
    rows = np.array([3, 0, 7])
    expected = np.asarray(dataset.x)[train.x.rows[rows]]
    assert np.array_equal(train.x[rows], expected)


def test_channel_statistics_match_numpy():
    x = np.random.default_rng(0).integers(0, 256, (50, 3, 4, 4), dtype=np.uint8)
    mean, std = data.channel_statistics(x, 255, batch_size=7)
    scaled = x / 255
    np.testing.assert_allclose(mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(std, scaled.std(axis=(0, 2, 3)), rtol=1e-8)


def test_batch_transform_converts_rescales_and_normalises():
    preprocessing = Preprocessing(3, (4, 4), mean=[0.5] * 3, std=[0.25] * 3, scale=1 / 255)
    gray = np.full((2, 1, 2, 2), 255, dtype=np.uint8)
    out = data.batch_transform(preprocessing)(gray)
    assert out.shape == (2, 3, 4, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, (1 - 0.5) / 0.25, rtol=1e-5)
    # Data stored as 0..1 floats against a model trained on bytes.
    floats = np.full((1, 3, 4, 4), 1.0)
    np.testing.assert_allclose(data.batch_transform(preprocessing, pixel_max=1.0)(floats), 2.0,
                               rtol=1e-5)


def test_augmentation_shifts_and_flips_reproducibly():
    batch = np.arange(2 * 1 * 4 * 4, dtype=np.float32).reshape(2, 1, 4, 4)
    first = data.Augmentation(shift=1, flip=True, seed=3)(batch)
    second = data.Augmentation(shift=1, flip=True, seed=3)(batch)
    assert np.array_equal(first, second) and first.shape == batch.shape
    assert not np.array_equal(first, batch)
    assert data.Augmentation()(batch) is batch


def test_a_batch_split_over_processes_is_augmented_as_in_one():
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(count, 2, 5, 5)).astype(np.float32) for count in (7, 2)]
    whole = data.Augmentation(shift=2, flip=True, seed=5)
    expected = [whole(batch) for batch in batches]
    # Three ranks, each with its own generator, take their rows of each batch; a rank
    # with none (the second batch) still draws, so later batches stay in step.
    ranks = [data.Augmentation(shift=2, flip=True, seed=5) for _ in range(3)]
    for batch, wanted in zip(batches, expected):
        bounds = [len(batch) * rank // 3 for rank in range(4)]
        pieces = [augmentation(batch[first:stop], shard=(first, len(batch)))
                  for augmentation, first, stop in zip(ranks, bounds, bounds[1:])]
        np.testing.assert_array_equal(np.concatenate(pieces), wanted)


def test_select_classes_relabels_in_the_order_given(tmp_path):
    dataset = load_dataset(image_folder(tmp_path / "set", ("ant", "bee", "cow"), 3)).train
    chosen = data.select_classes(dataset, ["cow", "ant"])
    assert chosen.classes == ["cow", "ant"] and len(chosen) == 6
    np.testing.assert_array_equal(chosen.x[chosen.y == 0], dataset.x[dataset.y == 2])
    np.testing.assert_array_equal(chosen.x[chosen.y == 1], dataset.x[dataset.y == 0])
    with pytest.raises(DataError, match="no class 'dog'"):
        data.select_classes(dataset, ["dog"])
    with pytest.raises(DataError, match="names a class twice"):
        data.select_classes(dataset, ["ant", "ant"])


def test_sample_per_class_is_seeded_and_stays_lazy(tmp_path):
    path = tmp_path / "set.npz"
    np.savez(path, x=np.arange(60, dtype=np.uint8).reshape(15, 2, 2), y=np.arange(15) % 3)
    dataset = data.select_classes(load_dataset(path).train, ["2", "0"])
    sample = data.sample_per_class(dataset, 2, seed=1)
    assert isinstance(sample.x, data.Rows) and isinstance(sample.x.base, np.memmap)
    assert list(sample.class_counts()) == [2, 2]
    again = data.sample_per_class(dataset, 2, seed=1)
    np.testing.assert_array_equal(sample.x[:], again.x[:])
    assert not np.array_equal(sample.x[:], data.sample_per_class(dataset, 2, seed=2).x[:])
    assert len(data.sample_per_class(dataset, 50)) == len(dataset)


def test_a_training_job_decodes_only_the_images_it_uses(monkeypatch):
    from cnncli import imagefolder
    from cnncli.jobs import common
    opened, decoded = [], []
    header, load = imagefolder.image_header, imagefolder.load_image
    monkeypatch.setattr(imagefolder, "image_header",
                        lambda path, *rest: opened.append(path) or header(path, *rest))
    monkeypatch.setattr(imagefolder, "load_image",
                        lambda path, *rest: decoded.append(path) or load(path, *rest))
    # With the model's channels and size known, no header is read; the three images of
    # each class are the only ones decoded, and the test part is left to eval.
    splits = common.load_splits("optdigits", False, channels=1, size=(28, 28), per_class=3,
                                seed=4, parts=common.TRAINING_PARTS)
    assert splits.test is None and not opened and len(decoded) == 30
    assert isinstance(splits.train.x, np.ndarray) and list(splits.train.class_counts()) == [3] * 10
    # The same images as decoding everything and sampling after.
    whole = common.load_splits("optdigits", False, channels=1, size=(28, 28))
    assert len(decoded) == 30 + 1198 + 599
    sample = data.sample_per_class(whole.train, 3, seed=4)
    np.testing.assert_array_equal(splits.train.x, sample.x)
    np.testing.assert_array_equal(splits.train.y, sample.y)


def test_a_bad_file_seen_by_every_part_is_named_once(tmp_path):
    from cnncli.jobs import Reporter, common

    class Messages(Reporter):
        def __init__(self):
            self.lines = []

        def message(self, text):
            self.lines.append(text)

    for part in ("train", "val"):
        image_folder(tmp_path / "set" / part)
    (tmp_path / "set" / "train" / "cat" / "broken.png").write_bytes(b"not an image")
    reporter = Messages()
    splits = common.load_splits(tmp_path / "set", True, reporter=reporter,
                                parts=common.TRAINING_PARTS)
    assert (len(splits.train), len(splits.val)) == (8, 8)
    assert reporter.lines == [reporter.lines[0]] and "skipped 1 bad item(s)" in reporter.lines[0]


def test_the_shipped_optdigits_images_load_by_name():
    assert "optdigits" in data.shipped_datasets()
    splits = load_dataset("optdigits")
    assert (len(splits.train), len(splits.test)) == (1198, 599)
    assert splits.train.classes == [str(d) for d in range(10)]
    assert splits.train.image_shape == (1, 8, 8) and splits.train.x.dtype == np.uint8
    assert min(splits.test.class_counts()) >= 58
    # The PNG files hold scikit-learn's digits, rescaled from 0..16 to 0..255.
    from sklearn.datasets import load_digits
    images = np.rint(load_digits().images * 255 / 16).astype(np.uint8)
    found = {bytes(image.tobytes()) for image in images}
    assert all(bytes(image[0].tobytes()) in found for image in splits.test.x[:50])


def test_a_huge_png_is_refused_in_one_line_without_pillows_warning(tmp_path):
    import warnings
    path = tmp_path / "huge.png"
    Image.new("L", (10000, 10000)).save(path)     # 100 million pixels, a few hundred KB
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataError, match=r"10000x10000\) needs 100,000,000 pixels"):
            data.load_image(path, 1, (28, 28))
    assert not [warning for warning in caught if "Decompression" in str(warning.category)]
