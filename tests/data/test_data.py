"""Data sets: MultiDigits splits and pairs, Kendall's toy noise, MMoE correlation, and TensorData batching."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from mtlrun.data.base import Split, TensorData
from mtlrun.data.kendall_toy import KendallToy
from mtlrun.data.mmoe_synthetic import MMoESynthetic
from mtlrun.data.multidigits import MultiDigits
from mtlrun.errors import ConfigError, DataError

SIZES = {"train_pairs": 40, "val_pairs": 24, "test_pairs": 16}

# ------------------------------------------------------------------------------------ MultiDigits


def test_multidigits_splits_shapes_and_targets():
    data = MultiDigits(**SIZES)
    assert data.sizes() == {"train": 40, "val": 24, "test": 16}
    assert data.input_shape == (1, 10, 10)
    for split in data.splits.values():
        x, y = split.x, split.y
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 10, 10)
        assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.5
        assert y["left"].dtype == torch.int64 and y["left"].min() >= 0 and y["left"].max() <= 9
        assert torch.equal(y["sum"], (y["left"] + y["right"]).float())


def test_multidigits_source_images_are_split_disjointly():
    data = MultiDigits(**SIZES)
    pools = {name: set(indices.tolist()) for name, indices in data.source_indices.items()}
    assert (
        not pools["train"] & pools["val"]
        and not pools["train"] & pools["test"]
        and not pools["val"] & pools["test"]
    )
    assert set().union(*pools.values()) == set(range(1797))
    assert [len(pools[s]) for s in ("train", "val", "test")] == pytest.approx([1078, 359, 360], abs=1)


def test_multidigits_pairs_come_from_their_own_split():
    """With offset 8 the two digits do not overlap, so each example's source images can be read back."""
    data = MultiDigits(**SIZES, offset=8)
    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).flatten(1)
    for name, split in data.splits.items():
        pool = torch.as_tensor(data.source_indices[name])
        for side, patch in (("left", split.x[:, 0, :8, :8]), ("right", split.x[:, 0, 8:, 8:])):
            for i, image in enumerate(patch.flatten(1)):
                matches = (images == image).all(1).nonzero().flatten()
                in_pool = matches[torch.isin(matches, pool)]
                assert len(in_pool) > 0, f"{name} example {i}: {side} digit is not from the {name} images"
                assert (torch.as_tensor(digits.target)[in_pool] == split.y[side][i]).all()


def test_multidigits_overlay_places_the_right_digit_at_the_offset():
    data = MultiDigits(**SIZES, offset=2)
    x = data.splits["train"].x[:, 0]
    assert x[:, 8:, :2].abs().sum() == 0 and x[:, :2, 8:].abs().sum() == 0  # corners neither digit covers


def test_multidigits_same_seed_same_data_other_seed_other_data():
    a, b, c = MultiDigits(**SIZES, seed=3), MultiDigits(**SIZES, seed=3), MultiDigits(**SIZES, seed=4)
    for split in ("train", "val", "test"):
        assert torch.equal(a.splits[split].x, b.splits[split].x)
        assert all(torch.equal(a.splits[split].y[k], b.splits[split].y[k]) for k in a.targets)
        assert not torch.equal(a.splits[split].x, c.splits[split].x)
    assert not np.array_equal(a.source_indices["train"], c.source_indices["train"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source_fractions": [0.5, 0.5]}, "source_fractions"),
        ({"source_fractions": [0.6, 0.3, 0.3]}, "source_fractions"),
        ({"source_fractions": [1.0, 0.0, 0.0]}, "source_fractions"),
        ({"offset": 9}, "offset"),
        ({"offset": -1}, "offset"),
    ],
)
def test_multidigits_rejects_bad_settings(kwargs, message):
    with pytest.raises(ConfigError, match=rf"data\.{message}"):
        MultiDigits(**SIZES, **kwargs)


# ------------------------------------------------------------------------------------ KendallToy


def test_kendall_toy_noise_matches_the_paper():
    data = KendallToy(n_train=40_000, n_val=5, n_test=5)
    x = data.splits["train"].x[:, 0]
    residual_1 = data.splits["train"].y["y1"] - (2 * x + 8)
    residual_2 = data.splits["train"].y["y2"] - (3 * x + 3)
    assert residual_1.std().item() == pytest.approx(10.0, rel=0.03)
    assert residual_2.std().item() == pytest.approx(1.0, rel=0.03)
    assert abs(residual_1.mean().item()) < 0.2 and abs(residual_2.mean().item()) < 0.02
    assert x.std().item() == pytest.approx(1.0, rel=0.03)
    assert data.input_shape == (1,) and data.sizes() == {"train": 40_000, "val": 5, "test": 5}


def test_kendall_toy_is_seeded():
    a, b = KendallToy(seed=1), KendallToy(seed=1)
    assert torch.equal(a.splits["test"].y["y1"], b.splits["test"].y["y1"])
    assert not torch.equal(a.splits["test"].y["y1"], KendallToy(seed=2).splits["test"].y["y1"])


# ------------------------------------------------------------------------------------ MMoESynthetic

MMOE_SMALL = {"n_train": 20, "n_val": 5, "n_test": 5}


@pytest.mark.parametrize("correlation", [0.5, 0.9, 1.0, -0.3])
def test_mmoe_weight_vectors_have_the_configured_cosine(correlation):
    data = MMoESynthetic(correlation=correlation, scale=2.0, **MMOE_SMALL)
    w1, w2 = (w.double() for w in data.weights)
    assert torch.nn.functional.cosine_similarity(w1, w2, dim=0).item() == pytest.approx(correlation, abs=1e-5)
    assert w1.norm().item() == pytest.approx(2.0, abs=1e-5) and w2.norm().item() == pytest.approx(
        2.0, abs=1e-5
    )


def test_mmoe_label_correlation_grows_with_the_task_correlation():
    def label_correlation(rho, noise_std=0.1):
        y = (
            MMoESynthetic(correlation=rho, noise_std=noise_std, n_train=5000, n_val=5, n_test=5)
            .splits["train"]
            .y
        )
        return torch.corrcoef(torch.stack([y["y1"], y["y2"]]))[0, 1].item()

    low, mid, high = label_correlation(0.2), label_correlation(0.5), label_correlation(0.9)
    assert low < mid < high < label_correlation(1.0)
    assert high - low > 0.3
    assert label_correlation(1.0, noise_std=0.0) == pytest.approx(1.0, abs=1e-5)  # the same function twice


def test_mmoe_shapes():
    data = MMoESynthetic(input_dim=12, **MMOE_SMALL)
    assert data.input_shape == (12,) and data.targets == ["y1", "y2"]
    assert data.sizes() == {"train": 20, "val": 5, "test": 5}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"correlation": 1.5}, "correlation"),
        ({"correlation": -1.01}, "correlation"),
        ({"input_dim": 1}, "input_dim"),
    ],
)
def test_mmoe_rejects_bad_settings(kwargs, message):
    with pytest.raises(ConfigError, match=rf"data\.{message}"):
        MMoESynthetic(**kwargs, **MMOE_SMALL)


# ------------------------------------------------------------------------------------ TensorData


def numbered(n):
    """A data set whose row i has x = i and y = 2i, so batches show which rows they hold."""
    x = torch.arange(n, dtype=torch.float32)[:, None]
    split = Split(x=x, y={"t": 2 * x[:, 0]})
    return TensorData({"train": split, "val": split, "test": split})


@pytest.mark.parametrize(("n", "batch_size"), [(23, 5), (20, 5), (3, 8)])
def test_shuffled_batches_cover_every_row_once_per_epoch(n, batch_size):
    data = numbered(n)
    gen = torch.Generator().manual_seed(0)
    orders = []
    for _ in range(3):  # three epochs from one generator
        batches = list(data.batches("train", batch_size, shuffle=True, generator=gen))
        assert len(batches) == data.num_batches("train", batch_size) == -(-n // batch_size)
        assert all(len(b["x"]) == batch_size for b in batches[:-1])
        rows = torch.cat([b["x"][:, 0] for b in batches])
        assert sorted(rows.long().tolist()) == list(range(n))
        for b in batches:  # targets stay aligned with their inputs
            assert torch.equal(b["y"]["t"], 2 * b["x"][:, 0])
        orders.append(rows.tolist())
    if n > 5:
        assert orders[0] != list(range(n)) and orders[0] != orders[1]  # shuffled, and differently each epoch


def test_unshuffled_batches_keep_the_order():
    rows = torch.cat([b["x"][:, 0] for b in numbered(11).batches("val", 4)])
    assert rows.tolist() == list(range(11))


def test_shuffle_is_reproducible_from_the_generator_seed():
    data = numbered(30)

    def order(seed):
        gen = torch.Generator().manual_seed(seed)
        return torch.cat(
            [b["x"][:, 0] for b in data.batches("train", 7, shuffle=True, generator=gen)]
        ).tolist()

    assert order(5) == order(5) and order(5) != order(6)


def test_tensor_data_rejects_bad_splits():
    good = Split(x=torch.zeros(3, 2), y={"t": torch.zeros(3)})
    with pytest.raises(DataError, match="missing split"):
        TensorData({"train": good, "val": good})
    with pytest.raises(DataError, match="'val' is empty"):
        TensorData({"train": good, "val": Split(torch.zeros(0, 2), {"t": torch.zeros(0)}), "test": good})
    with pytest.raises(DataError, match="target 't' has 2 rows"):
        TensorData({"train": good, "val": good, "test": Split(torch.zeros(3, 2), {"t": torch.zeros(2)})})
