"""MultiMNIST / MultiFashion from IDX files: the reader, the Sener & Koltun construction, splits, cache, errors.

Every file here is generated in tmp_path in the real IDX format (headers, plain and gzip); nothing is
downloaded.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_cfg, write_mnist_files

from mtlrun.data import multimnist
from mtlrun.data.idx import read_idx, write_idx
from mtlrun.data.multimnist import MultiMNIST, combine
from mtlrun.errors import ConfigError, DataError
from mtlrun.instantiate import build

EXPECTED_NAMES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


def label_coded_files(root: Path, n_train: int = 60, n_test: int = 12, seed: int = 0) -> np.ndarray:
    """MNIST files whose every image is one flat grey level that names its label (10 + 20 * label), so a
    built example's pixels tell which labels it was made from. Returns the training labels."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    train_labels = rng.integers(0, 10, n_train).astype(np.uint8)
    for prefix, labels in (("train", train_labels), ("t10k", rng.integers(0, 10, n_test).astype(np.uint8))):
        images = np.broadcast_to((10 + 20 * labels)[:, None, None], (len(labels), 28, 28))
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images.astype(np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels)
    return train_labels.astype(np.int64)


def build_small(root: Path, **kwargs) -> MultiMNIST:
    return MultiMNIST(root=str(root), **{"val_size": 20, "cache": False, **kwargs})


# ------------------------------------------------------------------------------------------- the IDX reader


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([7, 0, 9], dtype=np.uint8),
        np.array([[-300, 2], [5, 30000]], dtype=np.int16),
        np.array([1.5, -2.25], dtype=np.float32),
    ],
    ids=["images", "labels", "int16", "float32"],
)
def test_idx_round_trips(tmp_path, suffix, array):
    path = write_idx(tmp_path / f"a-idx{suffix}", array)
    back = read_idx(path, ndim=None, dtype_code=None)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_idx_header_is_the_mnist_layout(tmp_path):
    path = write_idx(tmp_path / "images", np.zeros((5, 28, 27), dtype=np.uint8))
    raw = path.read_bytes()
    assert raw[:16] == bytes.fromhex("00000803000000050000001c0000001b")  # magic, N, rows, cols
    assert len(raw) == 16 + 5 * 28 * 27
    labels = write_idx(tmp_path / "labels.gz", np.arange(3, dtype=np.uint8))
    assert gzip.decompress(labels.read_bytes()) == bytes.fromhex("0000080100000003000102")


def test_idx_rejects_a_bad_magic_number_naming_the_file(tmp_path):
    path = tmp_path / "not-idx"
    path.write_bytes(b"\x12\x34\x08\x03" + bytes(12))
    with pytest.raises(DataError, match="magic number 0x12340803") as err:
        read_idx(path, ndim=3)
    assert str(path) in str(err.value)


def test_idx_rejects_the_wrong_kind_of_file(tmp_path):
    labels = write_idx(tmp_path / "labels", np.arange(4, dtype=np.uint8))
    with pytest.raises(DataError, match="declares 1 dimension.*expected 3") as err:
        read_idx(labels, ndim=3)
    assert str(labels) in str(err.value)
    floats = write_idx(tmp_path / "floats", np.zeros(4, dtype=np.float32))
    with pytest.raises(DataError, match="type code 0x0D.*expected 0x08"):
        read_idx(floats, ndim=1)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_rejects_a_truncated_file_naming_the_file(tmp_path, suffix):
    path = write_idx(tmp_path / f"images{suffix}", np.ones((3, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    message = "truncated: the header declares shape \\[3, 28, 28\\]" if not suffix else "damaged gzip"
    with pytest.raises(DataError, match=message) as err:
        read_idx(path, ndim=3)
    assert str(path) in str(err.value)


def test_idx_rejects_a_short_header_and_trailing_bytes(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(bytes.fromhex("0000080300000001"))  # three dimensions declared, one size given
    with pytest.raises(DataError, match="truncated header"):
        read_idx(path, ndim=3)
    path.write_bytes(bytes.fromhex("0000080100000002010203"))
    with pytest.raises(DataError, match="trailing bytes"):
        read_idx(path, ndim=1)


# ------------------------------------------------------------------------------------------- the construction


def test_combine_places_left_top_left_and_right_shifted_hand_computed():
    # Output pixel i reads canvas pixel floor((i + 0.5) * 36 / 28): rows/columns 0..21 read canvas 0..27
    # (the left digit), 5..25 read canvas 7..32 (inside the right digit's 6..33), 26..27 read 34..35 (empty).
    left = np.full((1, 28, 28), 10, dtype=np.uint8)
    right = np.full((1, 28, 28), 200, dtype=np.uint8)
    expected = np.zeros((28, 28), dtype=np.uint8)
    expected[:22, :22] = 10
    expected[5:26, 5:26] = 200  # the brighter digit wins where they overlap
    np.testing.assert_array_equal(combine(left, right)[0], expected)
    swapped = np.zeros((28, 28), dtype=np.uint8)
    swapped[5:26, 5:26] = 10
    swapped[:22, :22] = 200
    np.testing.assert_array_equal(combine(right, left)[0], swapped)


def naive_example(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The paper's recipe, pixel by pixel: 36x36 canvas, a at (0, 0), b at (6, 6), max, nearest to 28x28."""
    canvas = np.zeros((36, 36))
    canvas[:28, :28] = a
    for r in range(28):
        for c in range(28):
            canvas[r + 6, c + 6] = max(canvas[r + 6, c + 6], b[r, c])
    pick = [int((i + 0.5) * 36 / 28) for i in range(28)]
    return np.array([[canvas[i, j] for j in pick] for i in pick])


def test_built_examples_are_the_paper_construction_of_their_source_digits(tmp_path):
    root = write_mnist_files(tmp_path / "mnist", n_train=40, n_test=10)
    data = build_small(root, val_size=10)
    images = read_idx(root / "train-images-idx3-ubyte", ndim=3)
    labels = read_idx(root / "train-labels-idx1-ubyte", ndim=1)
    split = data.splits["train"]
    assert split.x.shape == (30, 1, 28, 28) and split.x.dtype == torch.float32
    assert split.x.min() >= 0.0 and split.x.max() <= 1.0
    left, right = data.source_indices["train"]["left"], data.source_indices["train"]["right"]
    assert (left != right).all()  # two different source images
    np.testing.assert_array_equal(split.y["left"].numpy(), labels[left])
    np.testing.assert_array_equal(split.y["right"].numpy(), labels[right])
    for k in range(3):
        expected = naive_example(images[left[k]], images[right[k]]) / 255.0
        np.testing.assert_allclose(split.x[k, 0].numpy(), expected, atol=1e-6)


def test_labels_are_those_of_the_digits_in_the_picture(tmp_path):
    label_coded_files(tmp_path / "mnist")
    data = build_small(tmp_path / "mnist")
    for name, split in data.splits.items():
        pixels = (split.x[:, 0] * 255).round().long()
        # (0, 0) only the left digit covers; (24, 24) only the right one (see the hand-computed test above)
        assert torch.equal((pixels[:, 0, 0] - 10) // 20, split.y["left"]), name
        assert torch.equal((pixels[:, 24, 24] - 10) // 20, split.y["right"]), name
        for task in ("left", "right"):
            assert split.y[task].dtype == torch.int64
            assert split.y[task].min() >= 0 and split.y[task].max() <= 9


def test_val_is_carved_from_train_disjoint_and_every_image_is_a_left_digit_once(tmp_path):
    root = write_mnist_files(tmp_path / "mnist", n_train=60, n_test=12)
    data = build_small(root, val_size=20)
    assert data.sizes() == {"train": 40, "val": 20, "test": 12}
    idx = data.source_indices
    train_pool, val_pool = set(idx["train"]["left"]), set(idx["val"]["left"])
    assert len(train_pool) == 40 and len(val_pool) == 20  # each source image is one example's left digit
    assert train_pool.isdisjoint(val_pool) and train_pool | val_pool == set(range(60))
    assert set(idx["train"]["right"]) <= train_pool and set(idx["val"]["right"]) <= val_pool
    assert set(idx["test"]["left"]) == set(range(12)) and set(idx["test"]["right"]) <= set(range(12))


def test_pairs_are_seeded_and_split_sizes_are_independent(tmp_path):
    root = write_mnist_files(tmp_path / "mnist", n_train=60, n_test=12)
    first, again = build_small(root), build_small(root)
    other_seed = build_small(root, seed=1)
    fewer = build_small(root, n_train=10, n_test=5)
    for split in ("train", "val", "test"):
        assert torch.equal(first.splits[split].x, again.splits[split].x)
        assert torch.equal(first.splits[split].y["right"], again.splits[split].y["right"])
    assert not torch.equal(first.splits["train"].x, other_seed.splits["train"].x)
    assert fewer.sizes() == {"train": 10, "val": 20, "test": 5}
    assert len(set(fewer.source_indices["train"]["left"])) == 10  # distinct left digits
    assert torch.equal(fewer.splits["val"].x, first.splits["val"].x)  # val untouched by n_train, n_test


def test_sizes_beyond_the_pools_are_config_errors(tmp_path):
    root = write_mnist_files(tmp_path / "mnist", n_train=60, n_test=12)
    with pytest.raises(ConfigError, match=r"data\.n_train: 41 examples asked.*40 source images"):
        build_small(root, n_train=41)
    with pytest.raises(ConfigError, match=r"data\.val_size: 59 of the 60"):
        build_small(root, val_size=59)
    with pytest.raises(ConfigError, match=r"data\.n_test: 0"):
        build_small(root, n_test=0)


def test_second_build_loads_the_cache_and_changed_parameters_rebuild(tmp_path, monkeypatch):
    root = write_mnist_files(tmp_path / "mnist", n_train=60, n_test=12)
    first = MultiMNIST(root=str(root), val_size=20)
    assert not first.from_cache and first.cache_path.is_file()
    assert first.cache_path.parent == root / ".mtlrun_cache" and first.cache_path.name.startswith(
        "multimnist-"
    )

    def no_parsing(*args, **kwargs):
        raise AssertionError("a cache hit must not read the IDX files")

    monkeypatch.setattr(multimnist, "read_idx", no_parsing)
    second = MultiMNIST(root=str(root), val_size=20)
    assert second.from_cache and second.cache_path == first.cache_path
    for split in ("train", "val", "test"):
        assert torch.equal(second.splits[split].x, first.splits[split].x)
        assert torch.equal(second.splits[split].y["left"], first.splits[split].y["left"])
    np.testing.assert_array_equal(second.source_indices["val"]["right"], first.source_indices["val"]["right"])
    with pytest.raises(AssertionError, match="must not read"):  # other parameters: a new build
        MultiMNIST(root=str(root), val_size=20, n_train=8)
    monkeypatch.undo()
    changed = MultiMNIST(root=str(root), val_size=20, n_train=8)
    assert not changed.from_cache and changed.cache_path != first.cache_path
    assert len(list((root / ".mtlrun_cache").glob("multimnist-*.pt"))) == 2


def test_cache_dir_and_changed_files_and_cache_off(tmp_path):
    root = write_mnist_files(tmp_path / "mnist", n_train=60, n_test=12)
    data = MultiMNIST(root=str(root), val_size=20, cache_dir=str(tmp_path / "cache"))
    assert data.cache_path.parent == tmp_path / "cache" and data.cache_path.is_file()
    write_mnist_files(root, n_train=60, n_test=12, seed=1)  # new files: new sizes or times, a new key
    stat = (root / "train-images-idx3-ubyte").stat()
    os.utime(root / "train-images-idx3-ubyte", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    rebuilt = MultiMNIST(root=str(root), val_size=20, cache_dir=str(tmp_path / "cache"))
    assert not rebuilt.from_cache and not torch.equal(rebuilt.splits["train"].x, data.splits["train"].x)
    off = MultiMNIST(root=str(root), val_size=20, cache=False)
    assert off.cache_path is None and not off.from_cache and not (root / ".mtlrun_cache").exists()


def test_relative_root_is_resolved_against_the_launch_directory(tmp_path, monkeypatch):
    write_mnist_files(tmp_path / "data" / "mnist", n_train=30, n_test=4)
    monkeypatch.chdir(tmp_path)
    data = MultiMNIST(root="data/mnist", val_size=10, cache=False)
    assert data.root == tmp_path / "data" / "mnist" and data.sizes() == {"train": 20, "val": 10, "test": 4}


# ------------------------------------------------------------------------------------------- errors users meet


def test_missing_files_name_the_directory_the_expected_files_and_where_to_get_them(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        MultiMNIST(root=str(tmp_path / "empty"))
    message = str(err.value)
    assert str(tmp_path / "empty") in message and "downloads nothing" in message
    assert all(f"{name}[.gz]" in message for name in EXPECTED_NAMES)
    assert "yann.lecun.com" in message
    with pytest.raises(DataError, match="not a directory") as err:
        MultiMNIST(root=str(tmp_path / "nowhere"), name="multifashion")
    assert str(tmp_path / "nowhere") in str(err.value) and "fashion-mnist" in str(err.value)


def test_one_missing_file_is_named(tmp_path):
    root = write_mnist_files(tmp_path / "mnist", n_train=30, n_test=4)
    (root / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"has no t10k-labels-idx1-ubyte\[\.gz\];"):
        MultiMNIST(root=str(root), val_size=10)


def test_mismatched_or_bad_source_files_are_data_errors(tmp_path):
    root = write_mnist_files(tmp_path / "mnist", n_train=30, n_test=4)
    write_idx(root / "t10k-labels-idx1-ubyte", np.zeros(5, dtype=np.uint8))
    with pytest.raises(DataError, match="5 labels for 4 images"):
        build_small(root, val_size=10)
    write_idx(root / "t10k-labels-idx1-ubyte", np.array([0, 1, 2, 10], dtype=np.uint8))
    with pytest.raises(DataError, match="label 10 outside 0..9"):
        build_small(root, val_size=10)
    write_idx(root / "t10k-images-idx3-ubyte", np.zeros((4, 32, 32), dtype=np.uint8))
    with pytest.raises(DataError, match="32x32.*needs 28x28"):
        build_small(root, val_size=10)


# ------------------------------------------------------------------------------------------- configs and the CLI


@pytest.mark.parametrize("option", ["multimnist", "multifashion"])
def test_config_builds_the_data_set_and_the_cnn_takes_28x28(tmp_path, option):
    cfg = compose_cfg(
        [f"data={option}", f"data.root={write_mnist_files(tmp_path / option)}", "data.val_size=48"]
    )
    data = build(cfg.data, "data")
    assert data.name == option and data.input_shape == (1, 28, 28) and list(cfg.tasks) == ["left", "right"]
    assert data.cache_path.name.startswith(f"{option}-")
    encoder = build(cfg.encoder, "encoder", in_shape=data.input_shape)
    assert encoder.stage_shapes == [(32, 14, 14), (64, 7, 7), (128,)]  # two conv stages: 28 -> 14 -> 7
    assert encoder(data.splits["train"].x[:4]).shape == (4, 128)


def test_the_runner_trains_on_multimnist_files(tmp_path, monkeypatch):
    """In-process (the runner `mtlrun data=multimnist data.root=mnist` calls), from where mtlrun starts."""
    from mtlrun.trainer.runner import run

    write_mnist_files(tmp_path / "mnist", n_train=200, n_test=64)
    monkeypatch.chdir(tmp_path)  # the relative data.root is read from where mtlrun starts
    cfg = compose_cfg(["data=multimnist", "data.root=mnist", "data.val_size=64", "debug=smoke"])
    (tmp_path / "run").mkdir()
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert summary["data"] == {"name": "multimnist", "sizes": {"train": 136, "val": 64, "test": 64}}
    assert set(summary["test"]) == {"left", "right"}
    assert len(list((tmp_path / "mnist" / ".mtlrun_cache").glob("multimnist-*.pt"))) == 1


def test_a_missing_root_reaches_the_user_as_a_data_error_not_a_hydra_wrapper(tmp_path):
    cfg = compose_cfg(["data=multimnist", f"data.root={tmp_path / 'nowhere'}"])
    with pytest.raises(DataError, match="not a directory"):  # the CLI prints it as one `error:` line
        build(cfg.data, "data")
