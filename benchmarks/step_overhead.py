"""How much does mtlrun's training step cost over a plain hand-written PyTorch loop?

Same model (MLP trunk 32 -> 256 -> 256 -> 128, one linear head per task), same data (batch 256), same
optimizer (AdamW). Each variant runs blocks of steps in turn, interleaved, and the table reports the
median time per step over the blocks and the ratio to the plain loop. Run with `make bench`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch
import torch.nn as nn

from mtlrun.architecture.hard_sharing import HardSharing
from mtlrun.encoder.mlp import MLPEncoder
from mtlrun.tasks import Task
from mtlrun.trainer.backward import BackwardEngine
from mtlrun.trainer.runner import train_step
from mtlrun.weighting.equal import Equal
from mtlrun.weighting.uncertainty import Uncertainty


def make_problem(num_tasks: int, batch_size: int = 256, in_dim: int = 32):
    torch.manual_seed(0)
    tasks = {f"t{i}": Task(name=f"t{i}", kind="regression", target=f"t{i}") for i in range(num_tasks)}
    batch = {"x": torch.randn(batch_size, in_dim), "y": {t: torch.randn(batch_size) for t in tasks}}
    return tasks, batch


def mtlrun_variant(tasks, batch, weighting_cls):
    torch.manual_seed(0)
    model = HardSharing(lambda: MLPEncoder((32,), [256, 256, 128]), tasks, {"hidden": []})
    weighting = weighting_cls(tasks)
    optimizer = torch.optim.AdamW([*model.parameters(), *weighting.parameters()], lr=1e-3)
    engine = BackwardEngine(model, weighting)
    return lambda: train_step(model, batch, tasks, engine, optimizer, None)


def plain_variant(tasks, batch):
    torch.manual_seed(0)
    trunk = nn.Sequential(
        nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU()
    )
    heads = nn.ModuleList(nn.Linear(128, 1) for _ in tasks)
    optimizer = torch.optim.AdamW([*trunk.parameters(), *heads.parameters()], lr=1e-3)
    targets = [batch["y"][t] for t in tasks]

    def step():
        h = trunk(batch["x"])
        loss = sum(
            nn.functional.mse_loss(head(h).squeeze(-1), y) for head, y in zip(heads, targets, strict=True)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def measure(variants: dict, steps: int, repeats: int) -> dict[str, float]:
    times = {name: [] for name in variants}
    for fn in variants.values():  # warm-up
        for _ in range(10):
            fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=7, help="timed blocks per variant (median taken)")
    args = parser.parse_args()
    rows = []
    for num_tasks in (3, 8):
        tasks, batch = make_problem(num_tasks)
        variants = {
            "plain loop": plain_variant(tasks, batch),
            "mtlrun equal": mtlrun_variant(tasks, batch, Equal),
            "mtlrun uncertainty": mtlrun_variant(tasks, batch, Uncertainty),
        }
        medians = measure(variants, args.steps, args.repeats)
        base = medians["plain loop"]
        rows += [
            {"tasks": num_tasks, "variant": name, "ms/step": 1e3 * t, "vs plain loop": t / base}
            for name, t in medians.items()
        ]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 256, median of {args.repeats} x {args.steps} steps"
    )
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
