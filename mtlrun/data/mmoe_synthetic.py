"""The synthetic regression pair of Ma et al. (2018, MMoE), with a controllable task correlation.

Two orthogonal unit vectors u1, u2 in R^d; w1 = c * u1 and w2 = c * (rho * u1 + sqrt(1 - rho^2) * u2), so
cos(w1, w2) = rho. With x ~ N(0, I_d):

    y_k = w_k . x + sum_{i=1..m} sin(alpha_i * (w_k . x) + beta_i) + eps_k,    eps_k ~ N(0, noise_std^2)

alpha_i and beta_i are drawn once per data set from N(0, 1) (the paper leaves them as given parameters);
the sinusoids make the label correlation fall below rho, the non-linearity that separates MMoE from a
shared bottom. Everything is drawn from ``seed``.
"""

from __future__ import annotations

import math

import torch

from mtlrun.data.base import SPLITS, Split, TensorData
from mtlrun.errors import ConfigError


class MMoESynthetic(TensorData):
    name = "mmoe_synthetic"

    def __init__(
        self,
        correlation: float = 0.9,
        input_dim: int = 100,
        scale: float = 1.0,
        num_sinusoids: int = 10,
        noise_std: float = 0.1,
        n_train: int = 8000,
        n_val: int = 1000,
        n_test: int = 1000,
        seed: int = 0,
    ) -> None:
        if not -1.0 <= correlation <= 1.0:
            raise ConfigError(f"data.correlation: must lie in [-1, 1]; got {correlation}")
        if input_dim < 2:
            raise ConfigError(
                f"data.input_dim: need at least 2 dimensions for two orthogonal vectors; got {input_dim}"
            )
        gen = torch.Generator().manual_seed(seed)
        basis, _ = torch.linalg.qr(torch.randn(input_dim, 2, generator=gen))  # orthonormal columns
        u1, u2 = basis[:, 0], basis[:, 1]
        w1 = scale * u1
        w2 = scale * (correlation * u1 + math.sqrt(1.0 - correlation**2) * u2)
        alpha = torch.randn(num_sinusoids, generator=gen)
        beta = torch.randn(num_sinusoids, generator=gen)

        def label(z: torch.Tensor, n: int) -> torch.Tensor:
            wave = torch.sin(alpha * z[:, None] + beta).sum(1)
            return z + wave + noise_std * torch.randn(n, generator=gen)

        splits = {}
        for split, n in zip(SPLITS, (n_train, n_val, n_test), strict=True):
            x = torch.randn(n, input_dim, generator=gen)
            splits[split] = Split(x=x, y={"y1": label(x @ w1, n), "y2": label(x @ w2, n)})
        self.weights = (w1, w2)
        super().__init__(splits)
