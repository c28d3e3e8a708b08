"""What the experiment trackers cost a run: the same small run without a tracker, with ``logger=tensorboard``,
``logger=mlflow`` (local SQLite store) and both, side by side in one process.

    python benchmarks/logging_cost.py                      # 5 repeats of 10 epochs x 20 steps per variant
    python benchmarks/logging_cost.py --repeats 3 --epochs 5

Each repeat runs every variant once, in turn (interleaved, so machine noise hits all alike), into a fresh
folder; the table reports medians over the repeats:

* train ms/step: summary.json's time per step, the training loop alone (the trackers are never called
  inside it: the rows go to them after each epoch, with metrics.csv);
* tracker ms/epoch: time spent in the trackers' ``log_rows`` (3 calls an epoch: train, val, test rows);
* start + finish ms: the trackers' ``start`` (MLflow: experiment, run, params) and ``finish`` (MLflow:
  artifacts, status; TensorBoard: flush and close);
* wall ms/step: the whole run (setup, training, evaluation, trackers) divided by its steps, and its ratio to
  the run without a tracker.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir

from mtlrun import schema
from mtlrun.loggers import base
from mtlrun.paths import config_dir
from mtlrun.trainer import runner

VARIANTS = {
    "none": [],
    "tensorboard": ["logger=tensorboard"],
    "mlflow": ["logger=mlflow"],
    "tensorboard + mlflow": ["logger=[tensorboard,mlflow]"],
}

SPENT: dict[str, float] = defaultdict(float)  # seconds in each tracker method, for the run in progress


def timed_each(original):
    def each(self, method, *args):
        start = time.perf_counter()
        try:
            return original(self, method, *args)
        finally:
            SPENT[method] += time.perf_counter() - start

    return each


def available(overrides: list[str]) -> bool:
    """Whether the packages of the trackers ``overrides`` choose are installed."""
    try:
        for package in ("tensorboard", "mlflow"):
            if package in " ".join(overrides):
                __import__(package)
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per variant (median taken)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per run (each logs 3 row sets)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per epoch")
    args = parser.parse_args()
    schema.register()
    variants = {}
    for name, overrides in VARIANTS.items():
        if available(overrides):
            variants[name] = overrides
        else:
            print(f"skipping {name}: its package is missing (pip install -e '.[tensorboard,mlflow]')")
    base.Loggers._each = timed_each(base.Loggers._each)
    root = Path(tempfile.mkdtemp(prefix="mtlrun-logging-cost-"))
    common = [
        "debug=smoke",
        f"trainer.epochs={args.epochs}",
        f"trainer.limit_train_batches={args.steps}",
        "trainer.checkpoint=false",  # no checkpoint writes: only the trackers differ
    ]
    store = [f"logger.mlflow.tracking_uri=sqlite:///{root}/mlflow.db"]  # not the outputs/ of the cwd
    results: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in variants}
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        configs = {
            name: compose("config", overrides=[*common, *o, *(store if "mlflow" in " ".join(o) else [])])
            for name, o in variants.items()
        }
    for repeat in range(args.repeats + 1):  # the first round warms up (imports, the MLflow database)
        for name, cfg in configs.items():
            folder = root / f"{name.replace(' ', '')}-{repeat}"
            folder.mkdir()
            SPENT.clear()
            start = time.perf_counter()
            summary = runner.run(cfg.copy(), folder)
            wall = time.perf_counter() - start
            if repeat == 0:
                continue
            steps = summary["steps"]
            results[name]["train"].append(summary["time_per_step_s"])
            results[name]["wall"].append(wall / steps)
            results[name]["rows"].append(SPENT["log_rows"] / args.epochs)
            results[name]["ends"].append(SPENT["start"] + SPENT["finish"])
    medians = {name: {k: statistics.median(v) for k, v in r.items()} for name, r in results.items()}
    none = medians.get("none")
    rows = []
    for name, m in medians.items():
        rows.append(
            {
                "logger": name,
                "train ms/step": 1e3 * m["train"],
                "x none (train)": m["train"] / none["train"] if none else float("nan"),
                "tracker ms/epoch": 1e3 * m["rows"],
                "start + finish ms": 1e3 * m["ends"],
                "wall ms/step": 1e3 * m["wall"],
                "x none (wall)": m["wall"] / none["wall"] if none else float("nan"),
            }
        )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; debug=smoke with {args.epochs} epochs x "
        f"{args.steps} steps, evaluation every epoch, no checkpoints; median of {args.repeats} runs per variant"
    )
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".2f"))


if __name__ == "__main__":
    main()
