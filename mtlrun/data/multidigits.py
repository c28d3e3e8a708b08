"""MultiDigits: a MultiMNIST-style two-digit data set built from scikit-learn's bundled 8x8 digits.

Two digits are overlapped on a (8 + offset) x (8 + offset) canvas: the left digit at the top-left corner,
the right digit shifted by ``offset`` pixels down and right, combined by pixel-wise max (as in Sener &
Koltun's MultiMNIST). Targets: ``left`` and ``right`` (digit classes) and ``sum`` (their sum, 0..18, a
regression target whose loss has another scale than the classifiers').

The 1,797 source images are split into train/val/test first, and pairs are drawn within each split, so no
source image appears in two splits. Everything is drawn from ``seed``; nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import torch

from mtlrun.data.base import SPLITS, Split, TensorData
from mtlrun.errors import ConfigError


def overlay(left: np.ndarray, right: np.ndarray, offset: int) -> np.ndarray:
    """Overlap [N, 8, 8] image stacks on a canvas: ``left`` at the origin, ``right`` shifted by ``offset``."""
    n, h, w = left.shape
    canvas = np.zeros((n, h + offset, w + offset), dtype=np.float32)
    canvas[:, :h, :w] = left
    canvas[:, offset:, offset:] = np.maximum(canvas[:, offset:, offset:], right)
    return canvas


def source_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 bundled 8x8 digits: images [N, 8, 8] in [0, 1] (float32) and labels [N] (int64).

    Read straight from the file scikit-learn ships (digits.csv.gz: 64 pixel values 0..16, then the label, per
    row), which spares importing scikit-learn (about 0.5 s of CPU per run); through `load_digits` where the
    file is not where or what it was."""
    import gzip
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")
    table = None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        try:
            with gzip.open(Path(folder) / "datasets" / "data" / "digits.csv.gz", "rt") as file:
                table = np.loadtxt(file, delimiter=",", dtype=np.float32)
        except (OSError, ValueError):
            continue
    if table is None or table.shape != (1797, 65):
        from sklearn.datasets import load_digits

        digits = load_digits()
        table = np.concatenate([digits.data, digits.target[:, None]], axis=1).astype(np.float32)
    return table[:, :64].reshape(-1, 8, 8) / 16.0, table[:, 64].astype(np.int64)


class MultiDigits(TensorData):
    name = "multidigits"

    def __init__(
        self,
        train_pairs: int = 10000,
        val_pairs: int = 2000,
        test_pairs: int = 2000,
        source_fractions: list[float] | None = None,
        offset: int = 2,
        seed: int = 0,
    ) -> None:
        fractions = list(source_fractions or [0.6, 0.2, 0.2])
        if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
            raise ConfigError(
                f"data.source_fractions: need three positive fractions (train, val, test) summing to 1; "
                f"got {fractions}"
            )
        if not 0 <= offset <= 8:
            raise ConfigError(f"data.offset: must lie in 0..8 pixels; got {offset}")
        images, labels = source_digits()

        rng = np.random.default_rng(seed)
        order = rng.permutation(len(images))
        cuts = np.cumsum([int(round(f * len(images))) for f in fractions[:2]])
        sources = dict(zip(SPLITS, np.split(order, cuts), strict=True))
        sizes = {"train": train_pairs, "val": val_pairs, "test": test_pairs}

        splits = {}
        for split in SPLITS:
            pool = sources[split]
            left = rng.choice(pool, size=sizes[split])
            right = rng.choice(pool, size=sizes[split])
            x = overlay(images[left], images[right], offset)[:, None]  # [N, 1, H, W]
            y_left, y_right = labels[left], labels[right]
            splits[split] = Split(
                x=torch.from_numpy(x),
                y={
                    "left": torch.from_numpy(y_left),
                    "right": torch.from_numpy(y_right),
                    "sum": torch.from_numpy((y_left + y_right).astype(np.float32)),
                },
            )
        self.source_indices = sources
        super().__init__(splits)
