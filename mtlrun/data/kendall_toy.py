"""The two-task regression toy of Kendall, Gal & Cipolla (2018), from the authors' public notebook.

x ~ N(0, 1) (one feature); y1 = 2x + 8 + sigma1 * eps, y2 = 3x + 3 + sigma2 * eps, eps ~ N(0, 1), with
sigma1 = 10 and sigma2 = 1 by default. A model that learns the noise (uncertainty weighting) should find
sigma close to these values: the noisier task gets the larger sigma and the smaller weight.
"""

from __future__ import annotations

import torch

from mtlrun.data.base import SPLITS, Split, TensorData


class KendallToy(TensorData):
    name = "kendall_toy"

    def __init__(
        self,
        n_train: int = 100,
        n_val: int = 100,
        n_test: int = 1000,
        slopes: list[float] | None = None,
        intercepts: list[float] | None = None,
        noise_std: list[float] | None = None,
        seed: int = 0,
    ) -> None:
        slopes = list(slopes or [2.0, 3.0])
        intercepts = list(intercepts or [8.0, 3.0])
        noise_std = list(noise_std or [10.0, 1.0])
        gen = torch.Generator().manual_seed(seed)
        splits = {}
        for split, n in zip(SPLITS, (n_train, n_val, n_test), strict=True):
            x = torch.randn(n, 1, generator=gen)
            y = {}
            for i, (a, b, s) in enumerate(zip(slopes, intercepts, noise_std, strict=True)):
                y[f"y{i + 1}"] = a * x[:, 0] + b + s * torch.randn(n, generator=gen)
            splits[split] = Split(x=x, y=y)
        super().__init__(splits)
