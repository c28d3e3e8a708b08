"""A few optimisation steps of several configs, in one process or as one rank of a torchrun job; rank 0 (or the
single process) saves every config's parameters afterwards. Used by test_distributed.py:

    python ddp_steps.py OUT.pt STEPS NAME=override,override ...
"""

from __future__ import annotations

import sys

import torch
from hydra import compose, initialize_config_dir

from mtlrun import schema
from mtlrun.paths import config_dir
from mtlrun.trainer.setup import setup


def parameters_after(overrides: list[str], steps: int) -> dict[str, dict[str, torch.Tensor]]:
    """{"before": parameters at initialisation, "after": after ``steps`` steps}."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    schema.validate(cfg)
    s = setup(cfg)
    before = {k: p.detach().cpu().clone() for k, p in s.model.named_parameters()}
    batches = s.data.batches("train", cfg.trainer.batch_size, shuffle=True, generator=s.shuffle)
    for step, batch in zip(range(steps), batches, strict=False):
        s.step(batch, where=(1, step))
    named = dict(s.model.named_parameters()) | {
        f"weighting.{k}": p for k, p in s.weighting.named_parameters()
    }
    return {"before": before, "after": {k: p.detach().cpu().clone() for k, p in named.items()}}


def main() -> None:
    out, steps, *specs = sys.argv[1:]
    torch.set_num_threads(1)
    schema.register()
    results = {}
    for spec in specs:
        name, _, overrides = spec.partition("=")
        results[name] = parameters_after(overrides.split(","), int(steps))
    if rank() == 0:
        torch.save(results, out)


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


if __name__ == "__main__":
    main()
