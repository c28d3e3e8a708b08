"""How long ``data=tabular`` takes to load a large table: read, fit, transform, to tensors.

    python benchmarks/tabular_load.py                 # 1,000,000 rows x 50 feature columns
    python benchmarks/tabular_load.py --rows 200000   # smaller

Writes a seeded table (40 numeric columns, 5 % of their values missing; 10 categorical columns with 5 to
5,000 categories, 2 % missing; a binary and a regression target, the binary one missing on half the rows)
as CSV and Parquet under /tmp, then times each stage of what :class:`mtlrun.data.tabular.TabularData` does,
median of ``--repeats`` runs:

* read: ``read_table`` (pandas with the pyarrow engine, only the declared columns);
* split: the seeded random 80/10/10 split;
* fit: the preprocessing statistics on the training split;
* transform: features, targets and masks of all three splits;
* to tensor: ``torch.from_numpy`` and the ``TensorData`` checks;
* total: ``TabularData(...)`` end to end.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch

from mtlrun.data.base import Split, TensorData
from mtlrun.data.preprocess import TablePreprocessor, TargetSpec
from mtlrun.data.table_io import read_table
from mtlrun.data.tabular import TabularData, split_at_random
from mtlrun.tasks import Task

NUMERIC, CATEGORICAL = 40, 10


def write_tables(rows: int, folder: Path, seed: int = 0) -> dict[str, Path]:
    """The benchmark table as CSV and Parquet (written once per size and reused)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"csv": folder / f"table_{rows}.csv", "parquet": folder / f"table_{rows}.parquet"}
    if all(p.exists() for p in paths.values()):
        return paths
    rng = np.random.default_rng(seed)
    columns: dict[str, pa.Array] = {}
    for i in range(NUMERIC):
        values = rng.normal(i, 1 + i % 5, rows).round(4)
        columns[f"num_{i}"] = pa.array(values, mask=rng.random(rows) < 0.05)
    for i in range(CATEGORICAL):
        cardinality = [5, 20, 100, 1000, 5000][i % 5]
        words = np.array([f"c{i}_{k}" for k in range(cardinality)])
        columns[f"cat_{i}"] = pa.array(
            words[rng.integers(0, cardinality, rows)], mask=rng.random(rows) < 0.02
        )
    columns["clicked"] = pa.array(rng.integers(0, 2, rows), mask=rng.random(rows) < 0.5)
    columns["dwell"] = pa.array(rng.exponential(30.0, rows).round(2))
    table = pa.table(columns)
    pacsv.write_csv(table, paths["csv"])
    pq.write_table(table, paths["parquet"])
    return paths


def tasks() -> dict[str, Task]:
    return {
        "clicked": Task(name="clicked", kind="binary", target="clicked"),
        "dwell": Task(name="dwell", kind="regression", target="dwell", standardize=True),
    }


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def stages(path: Path, repeats: int) -> dict[str, float]:
    numeric = [f"num_{i}" for i in range(NUMERIC)]
    categorical = [f"cat_{i}" for i in range(CATEGORICAL)]
    columns = [*numeric, *categorical, "clicked", "dwell"]
    seconds = {}
    seconds["read"], (frame, source) = median_time(lambda: read_table(str(path), columns), repeats)
    seconds["split"], frames = median_time(lambda: split_at_random(frame, [0.8, 0.1, 0.1], 0), repeats)

    def new_preprocessor() -> TablePreprocessor:
        targets = [TargetSpec.from_task(t) for t in tasks().values()]
        return TablePreprocessor(numeric=numeric, categorical=categorical, targets=targets)

    seconds["fit"], pre = median_time(lambda: new_preprocessor().fit(frames["train"], source), repeats)

    def transform() -> dict:
        return {s: (pre.features(f, source), *pre.transform_targets(f, source)) for s, f in frames.items()}

    seconds["transform"], arrays = median_time(transform, repeats)

    def to_tensor() -> TensorData:
        splits = {
            s: Split(
                torch.from_numpy(x),
                {k: torch.from_numpy(v) for k, v in y.items()},
                {k: torch.from_numpy(v) for k, v in m.items()},
            )
            for s, (x, y, m) in arrays.items()
        }
        return TensorData(splits)

    seconds["to tensor"], _ = median_time(to_tensor, repeats)
    seconds["total"], _ = median_time(
        lambda: TabularData(
            tasks(), str(path), numeric, categorical, fractions=[0.8, 0.1, 0.1], min_category_count=1
        ),
        repeats,
    )
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the table")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per stage (the median is shown)")
    parser.add_argument(
        "--folder", type=Path, default=Path("/tmp/mtlrun-bench-tabular"), help="where to write"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    paths = write_tables(args.rows, args.folder)
    print(
        f"table: {args.rows:,} rows x {NUMERIC + CATEGORICAL} feature columns + 2 targets "
        f"({paths['csv'].stat().st_size / 2**20:.0f} MiB CSV, {paths['parquet'].stat().st_size / 2**20:.0f} MiB "
        f"Parquet; ready in {time.perf_counter() - start:.1f} s); torch threads {torch.get_num_threads()}"
    )
    results = {kind: stages(path, args.repeats) for kind, path in paths.items()}
    table = pd.DataFrame(results).rename_axis("stage (median s)")
    print(table.to_markdown(floatfmt=".2f"))


if __name__ == "__main__":
    main()
