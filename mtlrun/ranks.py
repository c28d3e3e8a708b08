"""Which process of a data-parallel run this is, from the environment torchrun sets (without importing torch)."""

from __future__ import annotations

import os


def launched() -> tuple[int, int]:
    """(rank, world size) torchrun gave this process (``RANK``, ``WORLD_SIZE``); (0, 1) when it did not."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    """The process's index on its machine (``LOCAL_RANK``): which GPU it trains on."""
    return int(os.environ.get("LOCAL_RANK", 0))
