"""The report as Markdown (summary.md and the terminal) and as CSV (summary.csv)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mtlrun import grouping
from mtlrun.report.table import Report


def number(value: float, fmt: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def mean_std(mean: float, std: float, fmt: str, std_fmt: str | None = None) -> str:
    text = number(mean, fmt)
    spread = number(std, std_fmt or fmt)
    return f"{text} ± {spread}" if text and spread else text


def arrow(higher: bool) -> str:
    return "↑" if higher else "↓"


def comparison_table(report: Report) -> str:
    """The table of configurations in Markdown; the best value of each column in bold."""
    table = report.table
    if table.empty:
        return "_no completed run_"
    columns: dict[str, list[str]] = {"configuration": list(table.label), "n": [str(n) for n in table.n_seeds]}
    header_of: dict[str, str] = {}  # numeric column -> its Markdown header
    for key in report.metrics:
        aux = " (aux)" if key.partition("/")[0] in report.auxiliary else ""
        header_of[f"{key}_mean"] = f"{key}{aux} {arrow(report.higher_is_better.get(key, False))}"
        columns[header_of[f"{key}_mean"]] = [
            mean_std(m, s, ".4g", ".2g")
            for m, s in zip(table[f"{key}_mean"], table[f"{key}_std"], strict=True)
        ]
    if "delta_m_mean" in table:
        header_of["delta_m_mean"] = "Δm% ↓"
        columns["Δm% ↓"] = [
            mean_std(m, s, "+.2f", ".2f") for m, s in zip(table.delta_m_mean, table.delta_m_std, strict=True)
        ]
    header_of |= {"mean_rank": "mean rank ↓", "time_per_step_s": "ms/step ↓"}
    columns["mean rank ↓"] = [number(v, ".2f") for v in table.mean_rank]
    columns["ms/step ↓"] = [number(v * 1000, ".2f") for v in table.time_per_step_s]
    columns["wall s (all seeds)"] = [number(v, ".1f") for v in table.wall_time_s_sum]
    for column, header in header_of.items():
        mark = column.removesuffix("_mean")
        cells = columns[header]
        for i, marks in enumerate(table.best_in):
            if mark in marks.split(";") and cells[i]:
                cells[i] = f"**{cells[i]}**"
    return pd.DataFrame(columns).to_markdown(index=False, disable_numparse=True)


def failed_table(report: Report) -> str:
    rows = report.failed.assign(error=report.failed.error.str.replace("|", "/").str.replace("\n", " "))
    rows = rows.rename(columns={"label": "job (overrides)", "seeds": "seed", "path": "folder"})
    return rows.to_markdown(index=False, disable_numparse=True)


def unreadable_list(report: Report) -> list[str]:
    """One Markdown item per run folder that could not be read: the file and the problem."""
    return [f"- {bad.problem}" for bad in report.unreadable]


# The report's sentences, shared by summary.md and report.html (which turns `code` into <code>).
NO_BASELINE = "No single-task baseline (`architecture=single_task` runs or `--baseline PATH`): no Δm%."
DELTA_M = "Δm% = mean over metrics k of (−1)^{higher_is_better_k} · (M_k − B_k) / |B_k| · 100"


def run_counts(report: Report) -> str:
    n_configs = len(report.configurations)
    n_done = sum(len(c.runs) for c in report.configurations)
    return (
        f"{report.n_runs} run(s): {n_done} completed in {n_configs} configuration(s), "
        f"{len(report.failed)} failed or incomplete."
        + (f" {len(report.unreadable)} more could not be read (left out)." if report.unreadable else "")
    )


def auxiliary_note(report: Report) -> str:
    """Which tasks were auxiliary (and in how many runs), and whether the table shows them; "" if none."""
    if not report.auxiliary:
        return ""
    named = ", ".join(f"`{task}` ({n} run(s))" for task, n in report.auxiliary.items())
    if report.include_auxiliary:
        return f"Auxiliary tasks: {named}; included (`--include-auxiliary`): columns marked (aux), in Δm%."
    return (
        f"Auxiliary tasks: {named}; left out of the columns, mean rank and Δm% "
        "(`mtlrun report --include-auxiliary` shows them)."
    )


def metrics_note(report: Report) -> str:
    return (
        f"Metrics: {report.split} split at the epoch each run selected on validation; mean ± sample std "
        "(ddof=1, 2 significant digits) over seeds (no ± with one seed); n = seeds; ↑/↓ = higher/lower "
        "is better; best in bold. Mean rank: the average over metrics of each configuration's rank "
        "(1 = best). Wall time: all seeds together."
    )


def baseline_note(report: Report) -> str:
    """How Δm% is computed, and against which runs (a report with a baseline)."""
    assert report.baseline is not None
    return (
        f"{DELTA_M}, per run, then mean ± sample std over seeds; lower is better, negative = better than "
        f"single-task. B: {report.baseline.source}; mean over all of their seeds, per data set:"
    )


def baseline_items(report: Report) -> list[str]:
    """B per data set: ``<data set> (<n> run(s)): <metric> <value>, ...``."""
    assert report.baseline is not None
    return [
        f"{dataset} ({report.baseline.counts[dataset]} run(s)): "
        + ", ".join(f"{k} {v:.4g}" for k, v in values.items())
        for dataset, values in report.baseline.values.items()
    ]


def optuna_items(result: dict) -> list[str]:
    """An Optuna study's best trial (or Pareto solutions), one line each."""
    items = []
    if "best_params" in result:
        items.append(f"best value: {result.get('best_value')}")
        items += [f"`{key}={value}`" for key, value in (result.get("best_params") or {}).items()]
    for solution in result.get("solutions") or []:
        params = " ".join(f"{k}={v}" for k, v in (solution.get("params") or {}).items())
        items.append(f"values {solution.get('values')}: `{params}`")
    return items


def render(report: Report, plots: Sequence[Path] = ()) -> str:
    """The whole summary.md: what was compared and how, the table, the baseline, failures, Optuna, plots."""
    lines = [
        "# mtlrun report",
        "",
        run_counts(report),
        metrics_note(report),
        *([auxiliary_note(report)] if report.auxiliary else []),
        "",
        comparison_table(report),
        "",
    ]
    if report.baseline is None:
        lines += [NO_BASELINE, ""]
    else:
        lines += [baseline_note(report), "", *[f"- {item}" for item in baseline_items(report)], ""]
    if not report.failed.empty:
        lines += ["## Failed jobs", "", failed_table(report), ""]
    if report.unreadable:
        lines += ["## Unreadable runs", "", *unreadable_list(report), ""]
    for path, result in report.optuna:
        lines += [
            "## Optuna: best trial",
            "",
            f"From `{path}`:",
            "",
            *[f"- {i}" for i in optuna_items(result)],
            "",
        ]
    lines += grouping.report_lines([run.path for c in report.configurations for run in c.runs])  # affinity
    if report.notes:
        lines += ["## Notes", "", *[f"- {note}" for note in report.notes], ""]
    if plots:
        lines += ["## Plots", "", *[f"![{p.stem}]({p.name})" for p in plots], ""]
    return "\n".join(lines)


def unreadable_rows(report: Report) -> pd.DataFrame:
    """The unreadable run folders as rows of summary.csv: status ``unreadable``, the problem as the error."""
    rows = [
        {
            "label": bad.path.name,
            "status": "unreadable",
            "seeds": "",
            "error": bad.problem,
            "path": str(bad.path),
        }
        for bad in report.unreadable
    ]
    return pd.DataFrame(rows, columns=report.failed.columns)


def to_csv(report: Report) -> pd.DataFrame:
    """summary.csv: the configuration rows, then one row per failed or incomplete run (status, error), then
    one per unreadable run folder."""
    parts = [part for part in (report.table, report.failed, unreadable_rows(report)) if not part.empty]
    if len(parts) <= 1:
        return parts[0] if parts else report.table
    table = pd.concat(parts, ignore_index=True)
    return table.astype({"n_seeds": "Int64"}) if "n_seeds" in table else table  # blank, not 1.0, elsewhere
