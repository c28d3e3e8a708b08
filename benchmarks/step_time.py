"""Time per training step of every weighting method, against `equal` and a plain hand-written PyTorch loop.

Same model (MLP trunk 32 -> 256 -> 256 -> 128, one linear head per regression task), same batch (256), same
optimizer (AdamW), T = 3 and T = 8 tasks. Every variant runs blocks of steps in turn (interleaved, so
machine noise hits all alike) and the table reports the median time per step over the blocks, its ratio to
`equal` and to the plain loop, and the backward passes per step. Gradient-based methods are measured with
both gradient sources. Run with `make bench` (or `python benchmarks/step_time.py --help`).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn
from hydra import compose, initialize_config_dir

from mtlrun import schema
from mtlrun.architecture.hard_sharing import HardSharing
from mtlrun.encoder.mlp import MLPEncoder
from mtlrun.instantiate import build
from mtlrun.paths import config_dir
from mtlrun.tasks import Task
from mtlrun.trainer.backward import BackwardEngine
from mtlrun.trainer.step import train_step

IN_DIM, HIDDEN, BATCH = 32, [256, 256, 128], 256


def make_problem(num_tasks: int) -> tuple[dict[str, Task], dict]:
    torch.manual_seed(0)
    tasks = {f"t{i}": Task(name=f"t{i}", kind="regression", target=f"t{i}") for i in range(num_tasks)}
    batch = {"x": torch.randn(BATCH, IN_DIM), "y": {t: torch.randn(BATCH) for t in tasks}}
    return tasks, batch


def weighting_config(option: str, source: str | None):
    overrides = [f"weighting={option}"] + ([f"weighting.grad_source={source}"] if source else [])
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("config", overrides=overrides).weighting


def mtlrun_step(tasks: dict, batch: dict, weighting_cfg) -> tuple[Callable[[], None], BackwardEngine]:
    torch.manual_seed(0)
    model = HardSharing(lambda: MLPEncoder((IN_DIM,), HIDDEN), tasks, {"hidden": []})
    weighting = build(weighting_cfg, "weighting", tasks=tasks)
    weighting.attach(model)
    engine = BackwardEngine(model, weighting)
    optimizer = torch.optim.AdamW([*model.parameters(), *weighting.parameters()], lr=1e-4)
    return (lambda: train_step(model, batch, tasks, engine, optimizer, None)), engine


def plain_step(tasks: dict, batch: dict) -> Callable[[], None]:
    torch.manual_seed(0)
    layers, width = [], IN_DIM
    for h in HIDDEN:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    trunk = nn.Sequential(*layers)
    heads = nn.ModuleList(nn.Linear(width, 1) for _ in tasks)
    optimizer = torch.optim.AdamW([*trunk.parameters(), *heads.parameters()], lr=1e-4)
    targets = [batch["y"][t] for t in tasks]

    def step() -> None:
        features = trunk(batch["x"])
        loss = sum(
            nn.functional.mse_loss(head(features).squeeze(-1), y)
            for head, y in zip(heads, targets, strict=True)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def measure(variants: dict[str, Callable[[], None]], steps: int, repeats: int) -> dict[str, float]:
    for fn in variants.values():  # warm-up
        for _ in range(5):
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per variant (median taken)")
    parser.add_argument("--tasks", type=int, nargs="+", default=[3, 8], help="task counts to measure")
    parser.add_argument(
        "--methods", nargs="*", help="weighting options (default: every conf/weighting option)"
    )
    args = parser.parse_args()
    schema.register()
    methods = args.methods or sorted(p.stem for p in (Path(config_dir()) / "weighting").glob("*.yaml"))
    rows = []
    for num_tasks in args.tasks:
        tasks, batch = make_problem(num_tasks)
        variants, passes, labels = {"plain loop": plain_step(tasks, batch)}, {"plain loop": 1.0}, {}
        for option in methods:
            cfg = weighting_config(option, None)
            gradient_based = "grad_source" in cfg
            for source in ("shared_params", "representation") if gradient_based else (None,):
                name = f"{option} ({source})" if source else option
                step, engine = mtlrun_step(tasks, batch, weighting_config(option, source))
                variants[name], labels[name] = step, (option, source or "-")
                passes[name] = engine
        medians = measure(variants, args.steps, args.repeats)
        equal = medians.get("equal", float("nan"))
        for name, seconds in medians.items():
            engine = passes[name]
            option, source = labels.get(name, ("plain loop", "-"))
            rows.append(
                {
                    "T": num_tasks,
                    "method": option,
                    "grad source": source,
                    "ms/step": 1e3 * seconds,
                    "x equal": seconds / equal,
                    "x plain loop": seconds / medians["plain loop"],
                    "backward passes/step": engine if isinstance(engine, float) else engine.passes_per_step(),
                }
            )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, "
        f"MLP {IN_DIM}->{'->'.join(map(str, HIDDEN))}, median of {args.repeats} blocks x {args.steps} steps"
    )
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".2f"))


if __name__ == "__main__":
    main()
