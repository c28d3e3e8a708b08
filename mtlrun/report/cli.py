"""``mtlrun report PATH... [--baseline PATH] [--out DIR] [--split test|val] [--no-plots]``.

Compares every run found in or under the PATHs (run folders, sweep folders, any mix) and writes
``summary.csv``, ``summary.md``, ``report.html`` (one self-contained page: the tables and the plots) and the
plots (``val_curves.png``, ``task_weights.png``, ``tradeoff.png``, ``cosines.png``): into ``--out DIR``
when given, else into the input folder when there is a single PATH, else into a new
``outputs/reports/<date>/<time>/`` (several inputs have no one folder the report belongs to).
The Markdown is printed too. A run folder whose files cannot be read is left out, with one ``warning:`` line
naming the file and the problem, and listed under "Unreadable runs". Exit code 0 when the report was written
(failed jobs are listed in it), 1 on a bad path, when no run is found, or when no run could be read.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from mtlrun.errors import DataError, MtlrunError
from mtlrun.report.baseline import Baseline, baseline_from, single_task_runs
from mtlrun.report.collect import Run, UnreadableRun, UnreadableRunsError, find_optuna_results, read_runs
from mtlrun.report.html import render_html
from mtlrun.report.markdown import render, to_csv
from mtlrun.report.table import SPLITS, Report, build_report

log = logging.getLogger("mtlrun")

REPORTS_DIR = Path("outputs/reports")


def explicit_baseline(paths: Sequence[str | Path], runs: Sequence[Run], split: str) -> Baseline:
    """B from the runs of the ``--baseline`` paths: their single-task runs, or every completed run there if
    none is one."""
    runs = [run for run in runs if run.completed]
    if not runs:
        raise DataError(f"--baseline {' '.join(map(str, paths))}: no completed run there; pass finished runs")
    named = " ".join(map(str, paths))
    if single_task_runs(runs):
        return baseline_from(runs, split, f"single-task runs in {named}")
    return baseline_from(
        runs, split, f"every completed run in {named} (none is single-task)", single_task=False
    )


def check_readable(
    paths: Sequence[str | Path], runs: Sequence[Run], unreadable: Sequence[UnreadableRun]
) -> None:
    """An UnreadableRunsError when run folders were found under ``paths`` but none could be read."""
    if runs or not unreadable:
        return
    named = " ".join(map(str, paths))
    raise UnreadableRunsError(
        f"{named}: none of its {len(unreadable)} run folder(s) could be read (see the warnings), so there is "
        "nothing to report; fix or remove the files named there",
        unreadable,
    )


def make_report(
    paths: Sequence[str | Path],
    baseline: Sequence[str | Path] = (),
    split: str = "test",
    include_auxiliary: bool = False,
) -> Report:
    """The report of every readable run under ``paths`` (the others are listed in ``Report.unreadable``);
    B from ``baseline`` paths, else from the single-task runs among the inputs (no Δm% when there is
    neither)."""
    runs, unreadable = read_runs(paths)
    check_readable(paths, runs, unreadable)
    if baseline:
        base_runs, base_unreadable = read_runs(baseline)
        check_readable(baseline, base_runs, base_unreadable)
        unreadable += base_unreadable
        base = explicit_baseline(baseline, base_runs, split)
    else:
        base = baseline_from(
            runs, split, "the single-task runs (`architecture=single_task`) among the inputs"
        )
    return build_report(
        runs,
        split=split,
        baseline=base,
        optuna=find_optuna_results(paths),
        unreadable=unreadable,
        inputs=paths,
        include_auxiliary=include_auxiliary,
    )


def default_out_dir(paths: Sequence[str | Path]) -> Path:
    """The input folder itself for one input, else a new ``outputs/reports/<date>/<time>``."""
    if len(paths) == 1:
        path = Path(paths[0])
        return path.parent if path.is_file() else path
    return REPORTS_DIR / datetime.now().strftime("%Y-%m-%d/%H-%M-%S")


def write_report(report: Report, out_dir: Path, plots: bool = True) -> tuple[str, list[Path]]:
    """Write summary.csv, the plots (a plotting error only logs a warning), summary.md and report.html (the
    same with the plots inlined: one file) into ``out_dir``; returns the Markdown and the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    to_csv(report).to_csv(out_dir / "summary.csv", index=False)
    drawn: list[Path] = []
    if plots:
        try:
            from mtlrun.report.plots import plot_report

            drawn = plot_report(report, out_dir)
        except Exception as err:  # a plot must never cost the tables
            log.warning("report plots failed (%s: %s); the tables are written", type(err).__name__, err)
    markdown = render(report, drawn)
    (out_dir / "summary.md").write_text(markdown + "\n")
    (out_dir / "report.html").write_text(render_html(report, drawn, plots_on=plots), encoding="utf-8")
    return markdown, [out_dir / "summary.csv", out_dir / "summary.md", out_dir / "report.html", *drawn]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mtlrun report",
        description="Compare runs and sweeps: per-task metrics (mean ± std over seeds), Δm% against the "
        "single-task baseline, mean rank, time per step; writes summary.csv, summary.md, report.html and plots.",
    )
    p.add_argument("paths", nargs="+", help="run folders and/or sweep folders (searched recursively)")
    p.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="PATH",
        help="a run or sweep whose single-task runs form the Δm%% baseline B (repeatable; default: the "
        "single-task runs among PATHS)",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="folder for the files (default: the one input folder, else outputs/reports/<date>/<time>)",
    )
    p.add_argument(
        "--split", choices=SPLITS, default="test", help="split whose metrics are compared (default: test)"
    )
    p.add_argument("--no-plots", action="store_true", help="write the tables only")
    p.add_argument(
        "--include-auxiliary",
        action="store_true",
        help="also compare the auxiliary tasks' metrics (columns, mean rank, Δm%%); by default they are left out",
    )
    return p


def warn_unreadable(unreadable: Sequence[UnreadableRun]) -> None:
    """One ``warning:`` line on stderr per run folder left out of the report."""
    for bad in unreadable:
        print(bad.warning(), file=sys.stderr)


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    try:
        report = make_report(args.paths, args.baseline, args.split, args.include_auxiliary)
        warn_unreadable(report.unreadable)
        out_dir = args.out or default_out_dir(args.paths)
        markdown, written = write_report(report, out_dir, plots=not args.no_plots)
    except MtlrunError as err:
        warn_unreadable(getattr(err, "unreadable", ()))
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(markdown)
    print(f"\nwritten: {', '.join(str(p) for p in written)}")
    return 0
