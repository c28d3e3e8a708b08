"""An encoder for tables: learned embeddings of the categorical columns, then an MLP.

The input is the one float matrix every architecture passes around (`batch["x"]`, see
`mtlrun.data.preprocess`): numeric features first, then one column per categorical feature holding
its category index. The first stage splits the index columns off, looks each up in its own embedding
table, concatenates the embeddings to the numeric features, and applies the first hidden layer; the other
stages are the MLP's. So the encoder has the same `stages` as `mtlrun.encoder.mlp.MLPEncoder` with the
same `hidden`, and column designs (cross-stitch, sluice, MTAN, soft sharing) work unchanged.

Embedding sizes: `embedding_dims[column]` if given, else `embedding_dim` for every column if given,
else the rule min(`max_embedding_dim`, round(1.6 · n^0.56)), where n is the column's cardinality
(categories seen in training plus the unknown index) — the heuristic of the fast.ai tabular learner:
3 categories → 3 dimensions, 10 → 6, 100 → 21, 1000 → 77 (before the cap).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from mtlrun.encoder.layers import mlp
from mtlrun.errors import ConfigError


def embedding_size(cardinality: int, max_dim: int) -> int:
    """The default embedding width of a column with `cardinality` rows: min(max_dim, round(1.6 n^0.56))."""
    return max(1, min(max_dim, round(1.6 * cardinality**0.56)))


class CategoricalEmbedding(nn.Module):
    """[N, F] floats -> [N, numeric + sum of embedding widths]: the last `len(cardinalities)` columns are
    category indices, each looked up in its own table; the numeric columns pass through."""

    def __init__(self, num_features: int, cardinalities: Sequence[int], dims: Sequence[int]) -> None:
        super().__init__()
        self.num_numeric = num_features - len(cardinalities)
        if self.num_numeric < 0:
            raise ConfigError(
                f"encoder: {len(cardinalities)} categorical columns but only {num_features} input features"
            )
        self.tables = nn.ModuleList(nn.Embedding(n, d) for n, d in zip(cardinalities, dims, strict=True))
        self.out_dim = self.num_numeric + sum(dims)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        if not len(self.tables):
            return x
        codes = x[:, self.num_numeric :].long()
        embedded = [table(codes[:, i]) for i, table in enumerate(self.tables)]
        return torch.cat([x[:, : self.num_numeric], *embedded], dim=1)


class InputStage(nn.Module):
    """The first stage: embeds the categorical columns, then applies `layers` (the first hidden layer)."""

    def __init__(self, embedding: CategoricalEmbedding, *layers: nn.Module) -> None:
        super().__init__()
        self.embedding = embedding
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(self.embedding(x))


class TabularEncoder(nn.Module):
    """Embedding of the categorical columns, then an MLP; `stages`, `stage_shapes`, `in_shape` and `out_dim`
    as `mtlrun.encoder.mlp.MLPEncoder` has them."""

    def __init__(
        self,
        in_shape: tuple[int, ...],
        hidden: list[int],
        activation: str = "ReLU",
        dropout: float = 0.0,
        categorical: list[Mapping] | None = None,
        embedding_dim: int | None = None,
        max_embedding_dim: int = 16,
        embedding_dims: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        columns = list(categorical or [])
        overrides = dict(embedding_dims or {})
        names = [str(c["name"]) for c in columns]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise ConfigError(
                f"encoder.embedding_dims: {unknown} are not categorical columns of the data; "
                f"categorical columns: {names or '(none)'}"
            )
        sizes = [("embedding_dim", embedding_dim), ("max_embedding_dim", max_embedding_dim)]
        sizes += [(f"embedding_dims.{k}", v) for k, v in overrides.items()]
        for key, value in sizes:
            if value is not None and value < 1:
                raise ConfigError(f"encoder.{key}: must be >= 1; got {value}")
        self.embedding_dims = {
            str(c["name"]): int(
                overrides.get(c["name"])
                or embedding_dim
                or embedding_size(int(c["cardinality"]), max_embedding_dim)
            )
            for c in columns
        }
        embedding = CategoricalEmbedding(
            math.prod(self.in_shape),
            [int(c["cardinality"]) for c in columns],
            list(self.embedding_dims.values()),
        )
        width = embedding.out_dim
        self.stages = nn.ModuleList()
        self.stage_shapes: list[tuple[int, ...]] = []
        for i, h in enumerate(hidden):
            layers = list(mlp(width, [h], activation, dropout))
            self.stages.append(InputStage(embedding, *layers) if i == 0 else nn.Sequential(*layers))
            self.stage_shapes.append((h,))
            width = h
        if not hidden:  # no hidden layer: the embedded input is the representation
            self.stages.append(InputStage(embedding))
            self.stage_shapes.append((width,))
        self.out_dim = width

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return x
