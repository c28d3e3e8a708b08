"""Data sets: tensor-resident train/val/test splits with one target per task (see ``base.TensorData``)."""

from mtlrun.data.base import SPLITS, Split, TensorData

__all__ = ["SPLITS", "Split", "TensorData"]
