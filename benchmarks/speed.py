"""Speed benchmark of mtlrun: what its training step, its weighting methods, its start-up and its default demo
cost, against hand-written PyTorch and against TorchJD 0.18, as ratios measured side by side.

    python benchmarks/speed.py                      # every section on the CPU (`make bench`), ~8 minutes
    python benchmarks/speed.py --quick              # every section, a few steps each (a smoke run, ~1.5 min)
    python benchmarks/speed.py --only step,methods --tasks 3 8
    python benchmarks/speed.py --device cuda        # on a GPU (scripts/gpu_check.sh runs this)
    python benchmarks/speed.py --save               # also write benchmarks/results/<name>_<section>.csv/.json

Sections (``--only``), each printed as a table under a title that says what its ratios mean:

* ``step``: mtlrun ``weighting=equal`` against a bare hand-written loop on the same model and data: an MLP
  trunk 32 -> 256 -> 256 -> 128 shared by T linear regression heads, batch 256, AdamW, no LR schedule. The
  mtlrun step is the runner's own (`mtlrun.trainer.setup.setup` and `Setup.step`, built from the composed
  config). CPU: CPU time per step with one thread. CUDA: data resident on the device, synchronised only
  around timed blocks, throughput in fp32, bf16 autocast (``trainer.precision=bf16``) and with
  ``trainer.compile=true`` (the bare loop compiled and autocast the same way); the goal is >= 90 % of the
  bare loop's throughput.
* ``methods``: every ``conf/weighting`` option at each T, both ``weighting.grad_source`` values for the
  gradient-based ones, as ratios to ``equal`` and to the bare loop, and the backward passes per step.
* ``torchjd``: mtlrun against TorchJD 0.18 (the ``bench`` extra) for the methods both have, on the same
  model and data. ``grad_source=shared_params`` is set against TorchJD's ``autojac.backward`` over the
  shared parameters, ``representation`` against its ``mtl_backward`` from the features; both then call
  ``jac_to_grad`` with the aggregator. "–": TorchJD has no such aggregator, or it needs packages not
  installed.
* ``memory``: peak memory of a training step of the gradient-based methods at the largest T, above the
  steady state (model, data, AdamW's state), mtlrun against TorchJD. CPU: a fresh process per variant
  (forked from a server that only imported the libraries), its glibc told to return freed blocks of 64 KiB
  or more (``MALLOC_MMAP_THRESHOLD_``) so that resident memory follows what tensors hold; after warm-up
  steps the kernel's high-water mark of resident memory is reset (``/proc/self/clear_refs``) and the
  figure is VmHWM after the measured steps minus VmRSS before them. CUDA:
  ``torch.cuda.max_memory_allocated`` during the measured steps minus the memory allocated before them.
* ``cli``: wall and CPU time (of the child process, from ``os.wait4``) of ``mtlrun --help``,
  ``mtlrun --cfg job`` and a ``debug=smoke`` run, as ratios to ``python -c "import torch"``.
* ``demo``: training samples per second and wall time of the default config (``trainer.epochs=2
  trainer.plots=false``) against a bare script that trains the same network on the same MultiDigits data
  (this file run with ``--_worker demo-bare``), each in its own process.

On the CPU every section runs torch with ``--threads`` threads (1 by default; OMP_NUM_THREADS for the
processes it starts), so that other work on a shared machine disturbs it less.

Every timed section runs its variants in interleaved blocks (the order reversed every other repeat), so
machine noise hits all of them alike; times are medians over the blocks and every ratio is the median of
the ratios within a block. After each table, a ratio that got worse by more than ``--margin`` (1.5x) against
the same row of the saved baseline (``benchmarks/results/<name>_<section>.csv``) prints a WARNING line; it is
a warning, never a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import itertools
import json
import math
import multiprocessing
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from mtlrun.data.base import SPLITS, Split, TensorData

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RESULTS_PAGE = ROOT / "docs" / "results.md"
DOCS_BEGIN = "<!-- speed-results:begin -->"
DOCS_END = "<!-- speed-results:end -->"

IN_DIM, HIDDEN, BATCH, LR = 32, (256, 256, 128), 256, 3e-3
SECTIONS = ("step", "methods", "torchjd", "memory", "cli", "demo")
DEFAULT_TASKS = (3, 8, 40)
MISSING = "–"

# Timed steps per block, blocks (repeats) and warm-up steps before them, per section; --quick uses the
# second set. --steps / --repeats override both. In the full run, the timed sections size each variant's
# blocks to last about BLOCK_S seconds (2 steps at least, the steps above at most), so slow variants (T = 40)
# do not take the run past ~8 minutes on 2 CPU cores while fast ones still get long blocks.
FULL = {
    "step": (200, 9, 5),
    "methods": (50, 5, 3),
    "torchjd": (50, 4, 3),
    "memory": (3, 1, 3),
    "cli": (1, 5, 0),
    "demo": (2, 3, 0),  # epochs, runs
}
BLOCK_S = {"step": 0.25, "methods": 0.15, "torchjd": 0.15}
QUICK = {
    "step": (5, 3, 2),
    "methods": (2, 2, 1),
    "torchjd": (2, 2, 1),
    "memory": (2, 1, 2),
    "cli": (1, 1, 0),
    "demo": (1, 1, 0),
}
QUICK_MEMORY_METHODS = ("upgrad",)

# mtlrun weighting option -> (TorchJD's aggregator as the tables show it, its constructor given T and the
# device). mtlrun's `equal` is the plain sum of the losses, so its counterpart is Sum (Mean costs the same);
# `static` with its default weights (all 1) is Constant(1, ..., 1); RLW's is Random. Settings follow
# conf/weighting/*.yaml where TorchJD has them (CAGrad's c, GradVac's beta). Constructing one raises
# ImportError when a package it needs is missing (Nash-MTL: cvxpy and ecos).
TORCHJD = {
    "equal": ("Sum()", lambda agg, t, d: agg.Sum()),
    "static": ("Constant(ones(T))", lambda agg, t, d: agg.Constant(torch.ones(t, device=d))),
    "rlw": ("Random()", lambda agg, t, d: agg.Random()),
    "upgrad": ("UPGrad()", lambda agg, t, d: agg.UPGrad()),
    "mgda": ("MGDA()", lambda agg, t, d: agg.MGDA()),
    "imtl": ("IMTLG()", lambda agg, t, d: agg.IMTLG()),
    "pcgrad": ("PCGrad()", lambda agg, t, d: agg.PCGrad()),
    "cagrad": ("CAGrad(c=0.4)", lambda agg, t, d: agg.CAGrad(c=0.4)),
    "graddrop": ("GradDrop()", lambda agg, t, d: agg.GradDrop()),
    "aligned_mtl": ("AlignedMTL()", lambda agg, t, d: agg.AlignedMTL()),
    "gradvac": ("GradVac(beta=0.01)", lambda agg, t, d: agg.GradVac(beta=0.01)),
    "nashmtl": ("NashMTL(n_tasks=T)", lambda agg, t, d: agg.NashMTL(n_tasks=t)),
}


def torchjd_aggregator(option: str, num_tasks: int, device: torch.device):
    """TorchJD's aggregator for an mtlrun weighting option (ImportError: TorchJD, or a package the
    aggregator needs, is missing)."""
    from torchjd import aggregation

    return TORCHJD[option][1](aggregation, num_tasks, device)


# ------------------------------------------------------------------------------------------------- the problem


class SyntheticRegression(TensorData):
    """T regression targets on Gaussian inputs: one batch of training rows and a few rows for val/test
    (the benchmark trains on one fixed batch; evaluation is never run)."""

    name = "synthetic_regression"

    def __init__(self, num_tasks: int = 3, in_dim: int = IN_DIM, rows: int = BATCH, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        splits = {}
        for split, n in zip(SPLITS, (rows, 8, 8), strict=True):
            x = torch.randn(n, in_dim, generator=gen)
            splits[split] = Split(x=x, y={f"t{i}": torch.randn(n, generator=gen) for i in range(num_tasks)})
        super().__init__(splits)


def weighting_options() -> list[str]:
    from mtlrun.paths import config_dir

    return sorted(p.stem for p in (Path(config_dir()) / "weighting").glob("*.yaml"))


def compose_config(
    num_tasks: int,
    option: str = "equal",
    source: str | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    compile: bool = False,
    batch: int = BATCH,
):
    """The run config the benchmark's mtlrun steps are built from: the default config with the MLP encoder,
    linear heads, no LR schedule, and the synthetic data set with T regression tasks."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from mtlrun import schema
    from mtlrun.paths import config_dir

    schema.register()
    overrides = [
        f"weighting={option}",
        "encoder=mlp",
        f"encoder.hidden=[{','.join(map(str, HIDDEN))}]",
        "heads.hidden=[]",
        "~optim/scheduler",
        f"optim.optimizer.lr={LR}",
        f"trainer.device={device}",
        f"trainer.precision={precision}",
        f"trainer.compile={str(compile).lower()}",
        f"trainer.batch_size={batch}",
    ]
    if source:
        overrides.append(f"weighting.grad_source={source}")
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with open_dict(cfg):
        cfg.data = {
            "_target_": f"{SyntheticRegression.__module__}.{SyntheticRegression.__qualname__}",
            "num_tasks": num_tasks,
            "in_dim": IN_DIM,
            "rows": batch,
        }
        cfg.tasks = {f"t{i}": {"kind": "regression", "metrics": ["mse"]} for i in range(num_tasks)}
    return cfg


@functools.cache
def is_gradient_based(option: str) -> bool:
    return "grad_source" in compose_config(1, option).weighting


@dataclass
class Built:
    step: Callable[[], None]  # one training step
    passes: Callable[[], float] = lambda: 1.0  # backward passes per step so far


def mtlrun_step(*config, **settings) -> Built:
    """One training step of mtlrun as the runner takes it: `setup(cfg)` of ``compose_config(*config,
    **settings)``, then `Setup.step` on a batch of the device-resident data."""
    from mtlrun.trainer.setup import setup

    s = setup(compose_config(*config, **settings))
    s.model.train()
    fixed = next(s.data.batches("train", s.batch_size))
    counter = itertools.count()

    def step() -> None:
        s.step(fixed, where=(1, next(counter)))

    engine = s.engine
    passes = getattr(engine, "passes_per_step", None)
    return Built(step, passes if callable(passes) else (lambda: float("nan")))


class BareModel(nn.Module):
    """The same network written by hand: the trunk and one linear head per task."""

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        layers, width = [], IN_DIM
        for h in HIDDEN:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(width, 1) for _ in range(num_tasks))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = self.trunk(x)
        return features, [head(features).squeeze(-1) for head in self.heads]


def bare_inputs(batch: dict, num_tasks: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return batch["x"], [batch["y"][f"t{i}"] for i in range(num_tasks)]


def bare_step(
    batch: dict, num_tasks: int, device: str = "cpu", precision: str = "fp32", compile: bool = False
) -> Built:
    """The hand-written loop: forward, the summed MSE losses, backward, AdamW."""
    torch.manual_seed(0)
    model = BareModel(num_tasks).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    forward = torch.compile(model) if compile else model
    x, targets = bare_inputs(batch, num_tasks)
    autocast = (
        torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if precision == "bf16" else None
    )

    def step() -> None:
        with autocast or contextlib.nullcontext():
            _, predictions = forward(x)
        loss = sum(F.mse_loss(p.float(), y) for p, y in zip(predictions, targets, strict=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return Built(step)


def torchjd_step(batch: dict, num_tasks: int, option: str, route: str, device: str = "cpu") -> Built:
    """The bare loop with TorchJD's backward: ``route`` "backward" (the Jacobian of the losses over the shared
    parameters; the heads get their ordinary gradients from one pass through the heads only) or
    "mtl_backward" (TorchJD's MTL entry point, from the features); then ``jac_to_grad`` with the aggregator."""
    from torchjd.autojac import backward, jac_to_grad, mtl_backward

    aggregator = torchjd_aggregator(option, num_tasks, torch.device(device))
    torch.manual_seed(0)
    model = BareModel(num_tasks).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    shared = list(model.trunk.parameters())
    per_task = [list(head.parameters()) for head in model.heads]
    heads = [p for params in per_task for p in params]
    x, targets = bare_inputs(batch, num_tasks)

    def step() -> None:
        features, predictions = model(x)
        losses = [F.mse_loss(p, y) for p, y in zip(predictions, targets, strict=True)]
        optimizer.zero_grad(set_to_none=True)
        if route == "backward":
            torch.autograd.backward(losses, inputs=heads, retain_graph=True)
            backward(losses, inputs=shared)
        else:
            mtl_backward(losses, features=features, tasks_params=per_task, shared_params=shared)
        jac_to_grad(shared, aggregator)
        optimizer.step()

    return Built(step)


def reference_batch(num_tasks: int, device: str, batch: int = BATCH) -> dict:
    """The batch every variant trains on: the synthetic data set's training rows, on the device."""
    data = SyntheticRegression(num_tasks, IN_DIM, batch).to(device)
    return next(data.batches("train", batch))


# ------------------------------------------------------------------------------------------------------ timing


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed_block(step: Callable[[], None], steps: int, device: str) -> float:
    """Seconds per step over a block of ``steps``: CPU time of the process on the CPU, wall time between two
    synchronisations on CUDA."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / steps
    start = time.process_time()
    for _ in range(steps):
        step()
    return (time.process_time() - start) / steps


def measure(
    variants: dict[str, Callable[[], None]],
    steps: int,
    repeats: int,
    warmup: int,
    device: str,
    block_s: float | None = None,
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Per-block seconds per step of each variant, blocks interleaved (order reversed every other repeat);
    and the variants that failed, with their error. Blocks have ``steps`` steps, or, with ``block_s``, as
    many as take about ``block_s`` seconds (from one step timed after the warm-up), 2 to ``steps``."""
    failed: dict[str, str] = {}
    live, length = {}, {}
    for name, fn in variants.items():
        try:
            for _ in range(warmup):
                fn()
            synchronize(device)
            length[name] = steps
            if block_s:
                length[name] = max(2, min(steps, round(block_s / timed_block(fn, 1, device))))
            live[name] = fn
        except Exception as err:  # a broken method must not stop the benchmark
            failed[name] = f"{type(err).__name__}: {err}".splitlines()[0][:200]
    times: dict[str, list[float]] = {name: [] for name in live}
    names = list(live)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            if name in failed:
                continue
            try:
                times[name].append(timed_block(live[name], length[name], device))
            except Exception as err:
                failed[name] = f"{type(err).__name__}: {err}".splitlines()[0][:200]
    return {n: t for n, t in times.items() if n not in failed and t}, failed


def ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over blocks of a's time / b's time in the same block."""
    if a not in times or b not in times:
        return float("nan")
    return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))


def median_ms(times: dict[str, list[float]], name: str) -> float:
    return 1e3 * statistics.median(times[name]) if name in times else float("nan")


def sig(x: float, digits: int = 3) -> float | str:
    """``x`` rounded to ``digits`` significant digits (an int from 10^(digits-1) up); NaN -> "–"."""
    if isinstance(x, str):
        return x
    if x is None or not math.isfinite(x):
        return MISSING
    if x == 0:
        return 0.0
    decimals = digits - 1 - int(math.floor(math.log10(abs(x))))
    return round(x, decimals) if decimals > 0 else int(round(x, decimals))


def report_failures(failed: dict[str, str]) -> dict[str, str]:
    for name, error in failed.items():
        print(f"  failed: {name}: {error}")
    return failed


# ------------------------------------------------------------------------------------------------------ tables


@dataclass
class Table:
    section: str
    title: str  # printed above the table and saved as its caption
    rows: list[dict]
    keys: tuple[str, ...]  # the columns that name a row (matched against the baseline)
    ratios: dict[str, str]  # ratio column -> "lower" or "higher" (which way is better)
    conditions: str = ""
    notes: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # variant -> error (its cells show "–")

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def show(table: Table) -> None:
    print(f"\n## {table.section}: {table.title}")
    if table.conditions:
        print(f"({table.conditions})")
    frame = table.frame()
    if frame.empty:
        print("(no rows)")
    else:
        print(frame.to_markdown(index=False))
    for note in table.notes:
        print(f"note: {note}")


def as_number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def row_key(row: dict, keys: Sequence[str]) -> tuple[str, ...]:
    return tuple(str(row.get(k, "")).strip() for k in keys)


def compare_to_baseline(
    rows: Iterable[dict],
    baseline: Iterable[dict],
    keys: Sequence[str],
    ratios: dict[str, str],
    margin: float = 1.5,
    section: str = "",
) -> list[str]:
    """WARNING lines for every ratio that is worse than the baseline's same row by more than ``margin``
    (for a "lower" ratio: new > margin x old; for a "higher" one: new < old / margin). Rows or values
    missing from either side are skipped."""
    old = {row_key(r, keys): r for r in baseline}
    warnings = []
    for row in rows:
        key = row_key(row, keys)
        if key not in old:
            continue
        for column, better in ratios.items():
            new_value, old_value = as_number(row.get(column)), as_number(old[key].get(column))
            if new_value is None or old_value is None or old_value <= 0 or new_value <= 0:
                continue
            worse = new_value / old_value if better == "lower" else old_value / new_value
            if worse > margin:
                name = ", ".join(f"{k}={v}" for k, v in zip(keys, key, strict=True))
                warnings.append(
                    f"WARNING: {section} [{name}] {column}: {new_value:g} against {old_value:g} in the "
                    f"baseline ({worse:.2f}x worse, margin {margin:g}x)"
                )
    return warnings


def read_baseline(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records")


# ---------------------------------------------------------------------------------------------------- sections


@dataclass
class Options:
    device: str
    tasks: list[int]
    methods: list[str]
    quick: bool
    steps: int | None
    repeats: int | None
    batch: int
    threads: int

    def plan(self, section: str) -> tuple[int, int, int]:
        steps, repeats, warmup = (QUICK if self.quick else FULL)[section]
        return self.steps or steps, self.repeats or repeats, warmup

    def block_s(self, section: str) -> float | None:
        """Seconds a timed block should last (None: blocks of a fixed number of steps)."""
        return None if self.quick or self.steps else BLOCK_S.get(section)

    @property
    def cuda(self) -> bool:
        return torch.device(self.device).type == "cuda"

    def env(self) -> dict[str, str]:
        """The environment of the processes a section starts: on the CPU, torch's thread count set to
        ``--threads`` through OMP_NUM_THREADS (mtlrun and the bare script alike)."""
        return os.environ | ({} if self.cuda else {"OMP_NUM_THREADS": str(self.threads)})

    def timing(self, section: str) -> str:
        steps, repeats, warmup = self.plan(section)
        block_s = self.block_s(section)
        blocks = f"{steps} steps" if block_s is None else f"about {block_s:g} s (2 to {steps} steps)"
        clock = (
            "wall time between torch.cuda.synchronize() calls"
            if self.cuda
            else f"CPU time of the process, {self.threads} thread(s)"
        )
        return (
            f"{clock}; median of {repeats} interleaved blocks of {blocks} after {warmup} warm-up "
            f"steps; batch {self.batch}, MLP {IN_DIM}->{'->'.join(map(str, HIDDEN))}, linear heads, AdamW"
        )


def section_step(o: Options) -> Table:
    steps, repeats, warmup = o.plan("step")
    plan = [(t, "fp32", False) for t in o.tasks]
    if o.cuda:  # compiling takes long: the compiled rows are measured at the smallest T only
        plan = [(t, p, False) for t in o.tasks for p in ("fp32", "bf16")]
        plan += [(min(o.tasks), p, True) for p in ("fp32", "bf16")]
    rows, failures = [], {}
    for num_tasks, precision, compiled in plan:
        fixed = reference_batch(num_tasks, o.device, o.batch)
        variants = {}
        try:
            variants["bare"] = bare_step(fixed, num_tasks, o.device, precision, compiled).step
            variants["mtlrun"] = mtlrun_step(
                num_tasks, "equal", None, o.device, precision, compiled, o.batch
            ).step
        except Exception as err:
            failures[f"T={num_tasks} {precision} compile={compiled}"] = f"{type(err).__name__}: {err}"
        times, failed = measure(variants, steps, repeats, warmup, o.device, o.block_s("step"))
        failures |= {f"T={num_tasks} {precision} compile={compiled} {k}": v for k, v in failed.items()}
        bare_ms, mtlrun_ms = median_ms(times, "bare"), median_ms(times, "mtlrun")
        over = ratio(times, "mtlrun", "bare")
        rows.append(
            {
                "T": num_tasks,
                "precision": precision,
                "compile": "yes" if compiled else "no",
                "bare ms/step": sig(bare_ms),
                "mtlrun ms/step": sig(mtlrun_ms),
                "bare samples/s": sig(1e3 * o.batch / bare_ms, 4),
                "mtlrun samples/s": sig(1e3 * o.batch / mtlrun_ms, 4),
                "mtlrun × bare": sig(over),
                "mtlrun % of bare throughput": sig(100 / over) if math.isfinite(over) else MISSING,
            }
        )
    report_failures(failures)
    goal = " Goal on a GPU: mtlrun at >= 90 % of the bare loop's throughput." if o.cuda else ""
    return Table(
        "step",
        "mtlrun `weighting=equal` (the runner's setup and Setup.step) against a bare hand-written PyTorch loop "
        "on the same model, data and optimizer. `mtlrun × bare` = mtlrun's time per step / the bare loop's "
        "(1.00: no overhead; lower is better); `% of bare throughput` is its inverse." + goal,
        rows,
        ("T", "precision", "compile"),
        {"mtlrun × bare": "lower"},
        o.timing("step"),
        failures=failures,
    )


def section_methods(o: Options) -> Table:
    steps, repeats, warmup = o.plan("methods")
    rows, failures = [], {}
    for num_tasks in o.tasks:
        fixed = reference_batch(num_tasks, o.device, o.batch)
        variants = {"bare loop": bare_step(fixed, num_tasks, o.device).step}
        passes: dict[str, Callable[[], float]] = {"bare loop": lambda: 1.0}
        labels = {"bare loop": ("bare loop", "-")}
        for option in ["equal", *[m for m in o.methods if m != "equal"]]:
            sources = ("shared_params", "representation") if is_gradient_based(option) else (None,)
            for source in sources:
                name = f"{option} ({source})" if source else option
                labels[name] = (option, source or "-")
                try:
                    built = mtlrun_step(num_tasks, option, source, o.device, batch=o.batch)
                except Exception as err:
                    failures[f"T={num_tasks} {name}"] = f"{type(err).__name__}: {err}".splitlines()[0]
                    continue
                variants[name], passes[name] = built.step, built.passes
        times, failed = measure(variants, steps, repeats, warmup, o.device, o.block_s("methods"))
        failures |= {f"T={num_tasks} {k}": v for k, v in failed.items()}
        for name, (option, source) in labels.items():
            rows.append(
                {
                    "T": num_tasks,
                    "method": option,
                    "grad source": source,
                    "ms/step": sig(median_ms(times, name)),
                    "× equal": sig(ratio(times, name, "equal")),
                    "× bare loop": sig(ratio(times, name, "bare loop")),
                    "backward passes/step": sig(passes[name]()) if name in times else MISSING,
                }
            )
    report_failures(failures)
    return Table(
        "methods",
        "Time per step of every weighting method (conf/weighting), both gradient sources for the "
        "gradient-based ones. `× equal` = the method's time per step / `equal`'s, `× bare loop` = / the bare "
        "hand-written loop's (lower is better).",
        rows,
        ("T", "method", "grad source"),
        {"× equal": "lower", "× bare loop": "lower"},
        o.timing("methods"),
        failures=failures,
    )


def torchjd_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torchjd")
    except PackageNotFoundError:
        return None


def torchjd_missing_note(option: str, num_tasks: int, device: str) -> str | None:
    """Why TorchJD cannot run ``option`` here, or None when it can."""
    if option not in TORCHJD:
        return "TorchJD 0.18 has no such aggregator"
    try:
        torchjd_aggregator(option, num_tasks, torch.device(device))
    except ImportError as err:
        return str(err).splitlines()[0]
    return None


SOURCES_TO_ROUTES = {"shared_params": "backward", "representation": "mtl_backward"}


def section_torchjd(o: Options) -> Table:
    steps, repeats, warmup = o.plan("torchjd")
    version = torchjd_version()
    notes = [
        "`mtl_backward` aggregates the Jacobian of the shared parameters (reached through the features), "
        "the same update as mtlrun's `shared_params`; mtlrun's `representation` aggregates the gradients "
        "of the representation instead (cheaper, and another update). The `representation` rows therefore "
        "compare each library's cheaper route, not the same arithmetic."
    ]
    rows, failures = [], {}
    if version is None:
        notes.append("TorchJD is not installed: pip install -e '.[bench]' (torchjd==0.18.0)")
        return Table("torchjd", "skipped", [], ("T", "method", "grad source"), {}, notes=notes)
    for num_tasks in o.tasks:
        fixed = reference_batch(num_tasks, o.device, o.batch)
        for option in o.methods:
            gradient = is_gradient_based(option)
            missing = torchjd_missing_note(option, num_tasks, o.device)
            for source, route in SOURCES_TO_ROUTES.items():
                row = {
                    "T": num_tasks,
                    "method": option,
                    "grad source": source if gradient else "-",
                    "TorchJD": f"{route} + {TORCHJD.get(option, (MISSING,))[0]}",
                    "mtlrun ms/step": MISSING,
                    "TorchJD ms/step": MISSING,
                    "mtlrun / TorchJD": MISSING,
                }
                if missing:
                    row["TorchJD"] = MISSING
                    if source == "shared_params":
                        if num_tasks == o.tasks[0]:
                            notes.append(f"{option}: {missing}")
                        rows.append(row | {"grad source": "-"})
                    continue
                variants = {}
                try:
                    variants["mtlrun"] = mtlrun_step(
                        num_tasks, option, source if gradient else None, o.device, batch=o.batch
                    ).step
                    variants["torchjd"] = torchjd_step(fixed, num_tasks, option, route, o.device).step
                except Exception as err:
                    failures[f"T={num_tasks} {option} {source}"] = f"{type(err).__name__}: {err}"
                times, failed = measure(variants, steps, repeats, warmup, o.device, o.block_s("torchjd"))
                failures |= {f"T={num_tasks} {option} {source} {k}": v for k, v in failed.items()}
                rows.append(
                    row
                    | {
                        "mtlrun ms/step": sig(median_ms(times, "mtlrun")),
                        "TorchJD ms/step": sig(median_ms(times, "torchjd")),
                        "mtlrun / TorchJD": sig(ratio(times, "mtlrun", "torchjd")),
                    }
                )
    report_failures(failures)
    return Table(
        "torchjd",
        f"mtlrun against TorchJD {version} on the same model and data, for the methods both have. "
        "`mtlrun / TorchJD` = mtlrun's time per step / TorchJD's (below 1: mtlrun is faster). "
        "`shared_params` is set against TorchJD's `backward` over the shared parameters, `representation` "
        "against `mtl_backward` from the features; loss-based methods (grad source -) against both. "
        f"{MISSING}: TorchJD lacks the method here.",
        rows,
        ("T", "method", "grad source", "TorchJD"),
        {"mtlrun / TorchJD": "lower"},
        o.timing("torchjd") + "; TorchJD's own loop: hand-written forward, its backward, jac_to_grad, AdamW",
        notes,
        failures=failures,
    )


# memory


def rss_kb() -> tuple[int | None, int | None]:
    """(VmRSS, VmHWM) of this process in kB, from /proc/self/status; (None, None) where there is none."""
    values = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values.get("VmRSS"), values.get("VmHWM")


def reset_peak() -> bool:
    """Reset the kernel's high-water mark of this process's resident memory (Linux >= 4.0)."""
    before, _ = rss_kb()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    rss, hwm = rss_kb()
    if None in (before, rss, hwm):
        return False
    if hwm > max(before, rss) + 1024:  # the mark did not move: the kernel ignored the request
        print(f"reset_peak: VmRSS {before} -> {rss} kB, VmHWM {hwm} kB", file=sys.stderr)
        return False
    return True


def build_variant(spec: dict) -> Built:
    num_tasks, device = spec["T"], spec["device"]
    if spec["kind"] == "mtlrun":
        return mtlrun_step(num_tasks, spec["option"], spec.get("source"), device, batch=spec["batch"])
    fixed = reference_batch(num_tasks, device, spec["batch"])
    if spec["kind"] == "bare":
        return bare_step(fixed, num_tasks, device)
    return torchjd_step(fixed, num_tasks, spec["option"], spec["route"], device)


def measure_memory(spec: dict) -> dict:
    """Peak memory of ``spec``'s training steps above the steady state (MB): after ``warmup`` steps (one-time
    allocations: library buffers, AdamW's state), the peak during ``steps`` more minus the memory held
    before them."""
    built = build_variant(spec)
    device = spec["device"]
    for _ in range(spec["warmup"]):
        built.step()
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(spec["steps"]):
            built.step()
        torch.cuda.synchronize()
        return {"mb": (torch.cuda.max_memory_allocated() - base) / 2**20, "how": "max_memory_allocated"}
    if reset_peak():
        base, _ = rss_kb()
        for _ in range(spec["steps"]):
            built.step()
        _, peak = rss_kb()
        return {"mb": (peak - base) / 1024, "how": "VmHWM"}
    # no resettable high-water mark: ru_maxrss only grows, so this counts from the build, warm-up included
    raise RuntimeError("cannot reset the peak resident memory (/proc/self/clear_refs): no measurement")


# The memory workers' glibc returns every block of 64 KiB or more to the system when it is freed, so the
# resident memory follows what tensors hold instead of what the allocator keeps for reuse.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def memory_child(spec: dict, threads: int) -> dict:
    torch.set_num_threads(threads)
    return measure_memory(spec)


class MemoryWorkers:
    """A fresh process for each measurement: forked from a server that imported torch, mtlrun and TorchJD
    once and ran nothing (multiprocessing's forkserver), which saves the imports; a new interpreter each
    time where there is no forkserver. Both start with MALLOC_ENV and --threads."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.pool = None
        main_file = getattr(sys.modules["__main__"], "__file__", None)
        if (
            "forkserver" in multiprocessing.get_all_start_methods()
            and main_file
            and Path(main_file).resolve() == Path(__file__).resolve()
        ):
            ctx = multiprocessing.get_context("forkserver")
            preload = ["__main__", "mtlrun.trainer.setup"] + (
                ["torchjd.autojac"] if torchjd_version() else []
            )
            ctx.set_forkserver_preload(preload)
            saved = dict(os.environ)
            os.environ.update(MALLOC_ENV | {"OMP_NUM_THREADS": str(threads)})  # read when the server starts
            try:
                self.pool = ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=1)
                self.pool.submit(int).result()  # starts the server with that environment
            finally:
                os.environ.clear()
                os.environ.update(saved)

    def __call__(self, spec: dict) -> dict:
        if self.pool is not None:
            return self.pool.submit(memory_child, spec, self.threads).result(timeout=600)
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--_worker", "memory", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=600,
            env=os.environ | MALLOC_ENV | {"OMP_NUM_THREADS": str(self.threads)},
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"worker exited {done.returncode}: {tail}")
        return json.loads(lines[-1])

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def section_memory(o: Options) -> Table:
    steps, _, warmup = o.plan("memory")
    num_tasks = max(o.tasks)
    methods = [m for m in o.methods if is_gradient_based(m)]
    if o.quick and o.methods == weighting_options():
        methods = [m for m in methods if m in QUICK_MEMORY_METHODS]
    have_torchjd = torchjd_version() is not None
    hows, failures, rows = set(), {}, []
    # on CUDA the allocator's own counters need no fresh process
    workers = None if o.cuda else MemoryWorkers(o.threads)

    def peak(spec: dict) -> float:
        spec = {"T": num_tasks, "device": o.device, "batch": o.batch, "warmup": warmup, "steps": steps} | spec
        try:
            result = workers(spec) if workers else measure_memory(spec)
        except Exception as err:
            failures[json.dumps(spec)] = f"{type(err).__name__}: {err}".splitlines()[0][:200]
            return float("nan")
        hows.add(result["how"])
        return result["mb"]

    for label, spec in (("bare loop", {"kind": "bare"}), ("equal", {"kind": "mtlrun", "option": "equal"})):
        rows.append(
            {
                "T": num_tasks,
                "method": label,
                "grad source": "-",
                "TorchJD": MISSING,
                "mtlrun MB": sig(peak(spec)),
                "TorchJD MB": MISSING,
                "mtlrun / TorchJD": MISSING,
            }
        )
    for option in methods:
        missing = None if have_torchjd else "TorchJD not installed"
        missing = missing or torchjd_missing_note(option, num_tasks, o.device)
        for source, route in SOURCES_TO_ROUTES.items():
            ours = peak({"kind": "mtlrun", "option": option, "source": source})
            theirs = float("nan") if missing else peak({"kind": "torchjd", "option": option, "route": route})
            rows.append(
                {
                    "T": num_tasks,
                    "method": option,
                    "grad source": source,
                    "TorchJD": MISSING if missing else f"{route} + {TORCHJD[option][0]}",
                    "mtlrun MB": sig(ours),
                    "TorchJD MB": sig(theirs),
                    "mtlrun / TorchJD": sig(ours / theirs) if theirs > 0 else MISSING,
                }
            )
    if workers:
        workers.close()
    report_failures(failures)
    how = {
        "VmHWM": "a fresh process per variant (forked from a server that only imported the libraries), "
        "glibc set to return freed blocks of 64 KiB or more "
        "(MALLOC_MMAP_THRESHOLD_); after the warm-up steps the kernel's high-water mark of resident memory "
        "is reset (/proc/self/clear_refs): the figure is that mark after the measured steps (VmHWM) minus "
        "the resident memory before them (VmRSS)",
        "max_memory_allocated": "after the warm-up steps, torch.cuda.max_memory_allocated during the "
        "measured steps minus the memory allocated before them",
    }
    conditions = "; ".join(how[h] for h in sorted(hows)) or "no measurement"
    return Table(
        "memory",
        f"Peak memory of a training step at T = {num_tasks} above the steady state (the model, data and "
        "AdamW's state, held between steps): activations, gradients, and the per-task gradients or "
        "Jacobian. mtlrun against TorchJD; `mtlrun / TorchJD` below 1: mtlrun needs less.",
        rows,
        ("T", "method", "grad source"),
        {"mtlrun / TorchJD": "lower"},
        f"{conditions}; {warmup} warm-up and {steps} measured steps, batch {o.batch}",
        failures=failures,
    )


# start-up


def mtlrun_command() -> list[str]:
    beside = Path(sys.executable).with_name("mtlrun")
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "mtlrun"]


def run_timed(argv: list[str], cwd: Path, env: dict | None = None) -> tuple[float, float, str]:
    """(wall s, CPU s of the child, stdout) of one command; RuntimeError when it fails."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        if child.returncode != 0:
            said = err.read().decode(errors="replace").strip() or stdout.strip()
            tail = said.splitlines() or ["no output"]
            raise RuntimeError(f"{shlex.join(argv)} exited {child.returncode}: {tail[-1]}")
    return wall, usage.ru_utime + usage.ru_stime, stdout


def section_cli(o: Options) -> Table:
    _, repeats, _ = o.plan("cli")
    work = Path(tempfile.mkdtemp(prefix="mtlrun-bench-cli-"))
    mtlrun = mtlrun_command()
    commands = {
        'python -c "import torch"': lambda r: [sys.executable, "-c", "import torch"],
        "mtlrun --help": lambda r: [*mtlrun, "--help"],
        "mtlrun --cfg job": lambda r: [*mtlrun, "--cfg", "job"],
        "mtlrun debug=smoke": lambda r: [
            *mtlrun,
            "debug=smoke",
            f"trainer.device={o.device}",
            f"hydra.run.dir={work / f'smoke-{r}'}",
        ],
    }
    names = list(commands)
    walls: dict[str, list[float]] = {n: [] for n in names}
    cpus: dict[str, list[float]] = {n: [] for n in names}
    failures = {}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            if name in failures:
                continue
            try:
                wall, cpu, _ = run_timed(commands[name](r), work, o.env())
            except Exception as err:
                failures[name] = str(err)
                continue
            walls[name].append(wall)
            cpus[name].append(cpu)
    report_failures(failures)
    reference = names[0]
    rows = []
    for name in names:
        ok = name not in failures and reference not in failures
        rows.append(
            {
                "command": name,
                "wall s": sig(statistics.median(walls[name])) if walls[name] else MISSING,
                "CPU s": sig(statistics.median(cpus[name])) if cpus[name] else MISSING,
                "wall × import torch": sig(ratio(walls, name, reference)) if ok else MISSING,
                "CPU × import torch": sig(ratio(cpus, name, reference)) if ok else MISSING,
            }
        )
    with contextlib.suppress(OSError):
        import shutil

        shutil.rmtree(work)
    return Table(
        "cli",
        "Start-up of the command line: wall time and CPU time (user + system of the child process) of each "
        'command, as ratios to `python -c "import torch"` (lower is better). The smoke run trains 2 epochs '
        "of 3 small batches.",
        rows,
        ("command",),
        {"wall × import torch": "lower", "CPU × import torch": "lower"},
        f"median of {repeats} interleaved runs, each in a fresh process; {os.cpu_count()} CPU cores"
        + ("" if o.cuda else f", OMP_NUM_THREADS={o.threads}"),
        failures=failures,
    )


# the default demo


def multidigits_settings() -> dict:
    from omegaconf import OmegaConf

    from mtlrun.paths import config_dir

    data = OmegaConf.to_container(OmegaConf.load(Path(config_dir()) / "data" / "multidigits.yaml"))["data"]
    return {k: v for k, v in data.items() if k != "_target_"}


def bare_demo(epochs: int, device: str) -> dict:
    """The default demo written by hand: MultiDigits with the config's settings, the same CNN trunk (two conv
    stages 32 and 64, a 128-unit linear stage) and heads (one hidden layer of 64), AdamW at 3e-3 with the
    cosine schedule, batches of 256 reshuffled every epoch, validation and test after each epoch."""
    from mtlrun.data.multidigits import MultiDigits

    torch.manual_seed(0)
    data = MultiDigits(**multidigits_settings()).to(device)
    train = data.splits["train"]

    def stage(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
        )

    c = train.x.shape[1]
    trunk = nn.Sequential(stage(c, 32), stage(32, 64), nn.Flatten())
    with torch.no_grad():
        width = trunk(train.x[:1].cpu()).shape[1]
    trunk = nn.Sequential(*trunk, nn.Linear(width, 128), nn.ReLU()).to(device)
    outputs = {"left": 10, "right": 10, "sum": 1}
    heads = nn.ModuleDict(
        {t: nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, k)) for t, k in outputs.items()}
    ).to(device)
    params = [*trunk.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    batch_size = 256
    steps_per_epoch = -(-len(train) // batch_size)
    total = steps_per_epoch * epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )

    def losses(x: torch.Tensor, y: dict) -> torch.Tensor:
        features = trunk(x)
        out = {t: head(features) for t, head in heads.items()}
        return (
            F.cross_entropy(out["left"], y["left"])
            + F.cross_entropy(out["right"], y["right"])
            + F.mse_loss(out["sum"].squeeze(-1), y["sum"].float())
        )

    train_time = 0.0
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        trunk.train()
        heads.train()
        synchronize(device)
        start = time.perf_counter()
        order = torch.randperm(len(train), generator=gen).to(train.x.device)
        for i in range(0, len(train), batch_size):
            index = order[i : i + batch_size]
            loss = losses(train.x[index], {k: v[index] for k, v in train.y.items()})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        synchronize(device)
        train_time += time.perf_counter() - start
        trunk.eval()
        heads.eval()
        with torch.no_grad():
            for split in ("val", "test"):
                values = data.splits[split]
                for i in range(0, len(values), 2048):
                    features = trunk(values.x[i : i + 2048])
                    _ = {t: head(features).float().cpu() for t, head in heads.items()}
    return {"train_time_s": train_time, "samples": epochs * len(train)}


def section_demo(o: Options) -> Table:
    epochs, repeats, _ = o.plan("demo")
    if o.steps:  # --steps sets the epochs here
        epochs = o.steps
    work = Path(tempfile.mkdtemp(prefix="mtlrun-bench-demo-"))
    speeds: dict[str, list[float]] = {"mtlrun": [], "bare": []}
    walls: dict[str, list[float]] = {"mtlrun": [], "bare": []}
    failures = {}

    def run_mtlrun(r: int) -> float:
        folder = work / f"run-{r}"
        run_timed(
            [
                *mtlrun_command(),
                f"trainer.epochs={epochs}",
                "trainer.plots=false",
                "trainer.progress=false",
                f"trainer.device={o.device}",
                f"hydra.run.dir={folder}",
            ],
            work,
            o.env(),
        )
        summary = json.loads((folder / "summary.json").read_text())
        samples = summary["epochs_completed"] * summary["data"]["sizes"]["train"]
        return samples / summary["train_time_s"]

    def run_bare(r: int) -> float:
        argv = [sys.executable, str(Path(__file__).resolve()), "--_worker", "demo-bare"]
        _, _, out = run_timed([*argv, json.dumps({"epochs": epochs, "device": o.device})], work, o.env())
        result = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
        return result["samples"] / result["train_time_s"]

    runners = {"mtlrun": run_mtlrun, "bare": run_bare}
    for r in range(repeats):
        for name in ("mtlrun", "bare") if r % 2 == 0 else ("bare", "mtlrun"):
            if name in failures:
                continue
            start = time.perf_counter()
            try:
                speed = runners[name](r)
            except Exception as err:
                failures[name] = f"{type(err).__name__}: {err}"
                continue
            walls[name].append(time.perf_counter() - start)
            speeds[name].append(speed)
    report_failures(failures)
    ok = not failures
    rows = []
    for name, label in (("mtlrun", "mtlrun (default config)"), ("bare", "bare script")):
        rows.append(
            {
                "variant": label,
                "epochs": epochs,
                "train samples/s": sig(statistics.median(speeds[name]), 4) if speeds[name] else MISSING,
                "wall s": sig(statistics.median(walls[name])) if walls[name] else MISSING,
                "samples/s % of bare": sig(100 * ratio(speeds, name, "bare")) if ok else MISSING,
                "wall × bare": sig(ratio(walls, name, "bare")) if ok else MISSING,
            }
        )
    with contextlib.suppress(OSError):
        import shutil

        shutil.rmtree(work)
    return Table(
        "demo",
        f"The default demo (`mtlrun trainer.epochs={epochs} trainer.plots=false`, MultiDigits, CNN, hard "
        "sharing, equal weighting) against a bare script training the same network on the same data. "
        "`train samples/s` counts the training loop only (mtlrun: summary.json's train_time_s); `wall s` is "
        "the whole process (start-up, data, evaluation, mtlrun's checkpoints and tables). "
        "`samples/s % of bare` (higher is better) and `wall × bare` (lower is better) compare them.",
        rows,
        ("variant", "epochs"),
        {"samples/s % of bare": "higher", "wall × bare": "lower"},
        f"median of {repeats} interleaved runs, each in a fresh process; device {o.device}"
        + ("" if o.cuda else f"; {o.threads} thread(s) (OMP_NUM_THREADS) in both"),
        failures=failures,
    )


SECTION_RUNNERS: dict[str, Callable[[Options], Table]] = {
    "step": section_step,
    "methods": section_methods,
    "torchjd": section_torchjd,
    "memory": section_memory,
    "cli": section_cli,
    "demo": section_demo,
}


# --------------------------------------------------------------------------------------------- saving results


def git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = f"{cores} CPU cores ({cpu}), {platform.system()}, Python {platform.python_version()}, torch {torch.__version__}"
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(torch.device(device))
        text = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}); " + text
    return text


def gpu_slug(device: str) -> str:
    """A short name of the GPU for file names: "NVIDIA H100 80GB HBM3" -> "h100_80gb"."""
    try:
        name = torch.cuda.get_device_name(torch.device(device)).lower()
    except Exception:
        return "gpu"
    words = [w for w in re.split(r"[^a-z0-9]+", name) if w and w not in ("nvidia", "geforce", "tesla")]
    return "_".join(words[:2]) or "gpu"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def record(table: Table, o: Options, argv: list[str], started_load: str) -> dict:
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    result = {
        "caption": table.title,
        "date": date.today().isoformat(),
        "commit": commit,
        "machine": machine(o.device),
        "command": "python benchmarks/speed.py " + shlex.join(argv),
        "conditions": (
            f"{table.conditions}. Load average (1, 5, 15 min) {started_load} at the start, "
            f"{load_average()} at the end."
            + (" Quick mode: few steps, read the ratios loosely." if o.quick else "")
            + "".join(f" {n}" for n in table.notes)
            + "".join(f" Failed: {k}: {v}." for k, v in table.failures.items())
        ),
    }
    if dirty:
        result["commit_note"] = "with uncommitted changes on top of it"
    return result


def save(table: Table, name: str, folder: Path, meta: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    table.frame().to_csv(folder / f"{name}_{table.section}.csv", index=False)
    (folder / f"{name}_{table.section}.json").write_text(
        json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )


SECTION_HEADINGS = {
    "step": "Step time: mtlrun against a bare loop",
    "methods": "Step time of every weighting method",
    "torchjd": "Against TorchJD",
    "memory": "Peak memory against TorchJD",
    "cli": "Command-line start-up",
    "demo": "The default demo against a bare script",
}


def sync_docs(results: Path = RESULTS, page: Path = RESULTS_PAGE) -> bool:
    """Rewrite the block of ``page`` between the speed-results markers: a heading and a results directive for
    every ``speed*_<section>.csv`` saved in ``results``, so the docs show every saved table (and the docs
    test, which checks that, passes). Returns whether the page changed."""
    text = page.read_text(encoding="utf-8")
    if DOCS_BEGIN not in text or DOCS_END not in text:
        print(f"note: {page} has no {DOCS_BEGIN} ... {DOCS_END} block; the tables are not listed there")
        return False
    found = sorted(p.stem for p in results.glob("speed*_*.csv") if (results / f"{p.stem}.json").exists())
    order = {s: i for i, s in enumerate(SECTIONS)}
    entries = []
    for stem in found:
        name, _, section = stem.rpartition("_")
        if section in order:
            entries.append((name != "speed", name, order[section], section, stem))
    lines = [DOCS_BEGIN]
    if not entries:
        lines += ["", "*No measurement saved yet: `make bench BENCH_ARGS=--save` writes them.*", ""]
    for _, name, _, section, stem in sorted(entries):
        where = "CPU" if name == "speed" else name.removeprefix("speed_").replace("_", " ")
        lines += ["", f"### {SECTION_HEADINGS[section]} ({where}) {{ #{stem.replace('_', '-')} }}", ""]
        lines.append(f"<!-- mtlrun:results {stem} -->")
    lines += ["", DOCS_END] if entries else [DOCS_END]
    before, _, rest = text.partition(DOCS_BEGIN)
    _, _, after = rest.partition(DOCS_END)
    new = before + "\n".join(lines) + after
    if new != text:
        page.write_text(new, encoding="utf-8")
    return new != text


# ------------------------------------------------------------------------------------------------------ workers


def worker(kind: str, payload: str) -> None:
    spec = json.loads(payload)
    if kind == "memory":
        if torch.device(spec["device"]).type == "cpu":
            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        print(json.dumps(measure_memory(spec)), flush=True)
    elif kind == "demo-bare":
        print(json.dumps(bare_demo(spec["epochs"], spec["device"])), flush=True)
    else:
        raise SystemExit(f"unknown worker {kind}")


# --------------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0].replace("\n", " "),
        epilog="Sections: " + ", ".join(SECTIONS) + ". The module docstring says what each measures.",
    )
    parser.add_argument("--quick", action="store_true", help="few steps and repeats: a smoke run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--tasks", type=int, nargs="+", default=list(DEFAULT_TASKS), help="task counts T (default 3 8 40)"
    )
    parser.add_argument("--only", help="comma-separated sections (default: all): " + ",".join(SECTIONS))
    parser.add_argument("--methods", nargs="+", help="weighting options (default: every conf/weighting one)")
    parser.add_argument("--steps", type=int, help="timed steps per block (demo: epochs), every section")
    parser.add_argument("--repeats", type=int, help="interleaved blocks (cli, demo: runs), every section")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"batch size (default {BATCH})")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads on the CPU, in every section (default 1)"
    )
    parser.add_argument(
        "--save", action="store_true", help="write <name>_<section>.csv/.json and list them in the docs"
    )
    parser.add_argument("--name", help="results name (default: speed on the CPU, speed_cuda_<gpu> on CUDA)")
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS, help="where --save writes (and baselines are read)"
    )
    parser.add_argument("--baseline-dir", type=Path, help="where baselines are read (default: --results-dir)")
    parser.add_argument("--margin", type=float, default=1.5, help="warn when a ratio is this much worse")
    parser.add_argument(
        "--budget-s", type=float, help="skip the sections that would start after this many seconds"
    )
    parser.add_argument(
        "--sync-docs", action="store_true", help="only list the saved tables in docs/results.md"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_worker"]:
        worker(argv[1], argv[2])
        return 0
    args = parse_args(argv)
    if args.sync_docs:
        changed = sync_docs(args.results_dir)
        print(f"{RESULTS_PAGE.relative_to(ROOT)}: {'updated' if changed else 'already up to date'}")
        return 0
    sections = SECTIONS if not args.only else tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"--only: unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    options = weighting_options()
    methods = args.methods or options
    bad = [m for m in methods if m not in options]
    if bad:
        raise SystemExit(f"--methods: unknown weighting option(s) {bad}; choose from {', '.join(options)}")
    o = Options(
        device=args.device,
        tasks=args.tasks,
        methods=methods,
        quick=args.quick,
        steps=args.steps,
        repeats=args.repeats,
        batch=args.batch,
        threads=args.threads,
    )
    cuda = torch.device(args.device).type == "cuda"
    if not cuda:
        torch.set_num_threads(args.threads)
    name = args.name or (f"speed_cuda_{gpu_slug(args.device)}" if cuda else "speed")
    baselines = args.baseline_dir or args.results_dir
    started, load = time.perf_counter(), load_average()
    print(
        f"mtlrun speed benchmark: device {args.device}, T = {' '.join(map(str, args.tasks))}, "
        f"{'quick' if args.quick else 'full'} mode, sections {','.join(sections)}; torch {torch.__version__}, "
        f"TorchJD {torchjd_version() or 'not installed'}; baselines {baselines}/{name}_<section>.csv",
        flush=True,
    )
    warnings = []
    for section in sections:
        if args.budget_s is not None and time.perf_counter() - started > args.budget_s:
            print(f"\n## {section}: skipped, the time budget ({args.budget_s:g} s) is spent", flush=True)
            continue
        clock = time.perf_counter()
        try:
            table = SECTION_RUNNERS[section](o)
        except Exception:
            print(f"\n## {section}: failed\n{traceback.format_exc()}", flush=True)
            continue
        show(table)
        baseline = read_baseline(baselines / f"{name}_{section}.csv")
        found = compare_to_baseline(table.rows, baseline, table.keys, table.ratios, args.margin, section)
        for line in found:
            print(line)
        warnings += found
        if not baseline:
            print(f"(no baseline {name}_{section}.csv to compare with)")
        print(f"({section}: {time.perf_counter() - clock:.0f} s)", flush=True)
        if args.save and table.rows:
            save(table, name, args.results_dir, record(table, o, argv, load))
            failed = (
                f" ({len(table.failures)} failed variant(s): see its conditions)" if table.failures else ""
            )
            print(f"saved {args.results_dir / f'{name}_{section}.csv'} and .json{failed}", flush=True)
    if args.save and args.results_dir.resolve() == RESULTS.resolve():
        sync_docs(args.results_dir)
    print(
        f"\ndone in {time.perf_counter() - started:.0f} s; "
        f"{len(warnings)} regression warning(s) against the baseline (margin {args.margin:g}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
