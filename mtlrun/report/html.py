"""The report as one self-contained HTML page (report.html), readable offline by opening the file.

It shows what summary.md shows: a header (date, inputs, split, run counts), the comparison table (sortable
by clicking a column header: a few lines of inline JavaScript, numbers sorted as numbers), Δm% and its
baseline B, the failed jobs, the unreadable run folders, the Optuna result, the notes and the plots. The
page loads nothing: the CSS and the script are inline and every plot is a base64 ``data:`` URI, so it can be
mailed or copied alone; a Content-Security-Policy forbids any other source. Every string that comes from
the runs (labels, errors, paths, settings) is escaped.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from mtlrun import grouping
from mtlrun.report.markdown import (
    NO_BASELINE,
    arrow,
    auxiliary_note,
    baseline_items,
    baseline_note,
    mean_std,
    metrics_note,
    number,
    optuna_items,
    run_counts,
)
from mtlrun.report.table import Report

# Nothing may be fetched: images only from data: URIs, style and script only inline.
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
       max-width: 1200px; margin: 0 auto; padding: 1rem 1.5rem 3rem; }
h1 { margin: .5rem 0 .25rem; }
h2 { margin-top: 2rem; border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; }
.meta { color: #57606a; margin: 0; }
.meta dt { float: left; clear: left; width: 4.5rem; font-weight: 600; }
.meta dd { margin: 0 0 .1rem 4.5rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 14px; margin: .5rem 0; }
th, td { border: 1px solid #d0d7de; padding: .3rem .6rem; text-align: left; vertical-align: top; }
thead th { background: #f6f8fa; white-space: nowrap; }
tbody tr:nth-child(even) { background: #f9fafb; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td.path { word-break: break-all; font-family: ui-monospace, monospace; font-size: 13px; }
td.error { white-space: pre-wrap; }
th button { all: unset; cursor: pointer; }
th button:focus-visible { outline: 2px solid #0969da; }
th button::after { content: " \\2195"; color: #8c959f; }
th[aria-sort=ascending] button::after { content: " \\25B2"; color: inherit; }
th[aria-sort=descending] button::after { content: " \\25BC"; color: inherit; }
code { font-family: ui-monospace, monospace; font-size: 90%; background: #f6f8fa; padding: 0 .2em; }
figure { margin: 1.5rem 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-size: 13px; margin-top: .2rem; }
.note { color: #57606a; }
"""

# Sort a table by the clicked column: cells with data-sort compare as numbers (blank last either way),
# the others as text with digits compared by value; a second click reverses the order.
SCRIPT = """
function sortKey(row, column) {
  const cell = row.cells[column];
  return cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
}
function compareKeys(a, b, numeric) {
  if (a === "" || b === "") return (a === "") - (b === "");
  return numeric ? Number(a) - Number(b) : a.localeCompare(b, undefined, {numeric: true});
}
for (const table of document.querySelectorAll("table.sortable")) {
  const headers = Array.from(table.tHead.rows[0].cells);
  headers.forEach((header, column) => {
    header.querySelector("button").addEventListener("click", () => {
      const ascending = header.getAttribute("aria-sort") !== "ascending";
      headers.forEach((other) => other.removeAttribute("aria-sort"));
      header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      const numeric = header.dataset.type === "number";
      const body = table.tBodies[0];
      const rows = Array.from(body.rows);
      rows.sort((a, b) => {
        const x = sortKey(a, column), y = sortKey(b, column);
        if (x === "" || y === "") return compareKeys(x, y, numeric);
        return ascending ? compareKeys(x, y, numeric) : compareKeys(y, x, numeric);
      });
      body.append(...rows);
    });
  });
}
"""


def _text(value: object) -> str:
    """Escaped text, with `backquoted` parts as <code> (as in summary.md)."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", escape(str(value)))


def _sort_value(value: object) -> str:
    """The data-sort attribute of a numeric cell: the number, or blank when missing."""
    x = math.nan if value is None else float(value)
    return repr(x) if math.isfinite(x) else ""


@dataclass
class Column:
    """One column of a sortable table: its header, each row's cell (HTML, already escaped) and, for a numeric
    column, each row's sort key (None: a text column); ``css``: the class of a text column's cells."""

    header: str
    cells: list[str]
    keys: list[Any] | None = None
    css: str = ""


def sortable_table(columns: Sequence[Column]) -> str:
    head = "".join(
        f'<th{" data-type=number" if c.keys is not None else ""}><button type="button">'
        f"{escape(c.header)}</button></th>"
        for c in columns
    )
    rows = []
    for i in range(len(columns[0].cells) if columns else 0):
        cells = []
        for c in columns:
            css = "num" if c.keys is not None else c.css
            attrs = f' class="{css}"' if css else ""
            if c.keys is not None:
                attrs += f' data-sort="{_sort_value(c.keys[i])}"'
            cells.append(f"<td{attrs}>{c.cells[i]}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead>'
        f"<tbody>\n{chr(10).join(rows)}\n</tbody></table></div>"
    )


def comparison_columns(report: Report) -> list[Column]:
    """The columns of summary.md's table (configuration, n, each metric's mean ± std, Δm%, mean rank,
    ms/step, wall time) and the status; the best value of each numeric column in bold."""
    table = report.table
    best = [set(marks.split(";")) for marks in table.best_in]

    def numeric(header: str, column: str, texts: Iterable[str], scale: float = 1.0) -> Column:
        mark = column.removesuffix("_mean")
        cells = [
            f"<strong>{escape(text)}</strong>" if text and mark in best[i] else escape(text)
            for i, text in enumerate(texts)
        ]
        return Column(header, cells, [v * scale for v in table[column]])

    columns = [
        Column("configuration", [escape(label) for label in table.label]),
        Column("n", [str(n) for n in table.n_seeds], list(table.n_seeds)),
    ]
    for key in report.metrics:
        aux = " (aux)" if key.partition("/")[0] in report.auxiliary else ""
        header = f"{key}{aux} {arrow(report.higher_is_better.get(key, False))}"
        texts = [
            mean_std(m, s, ".4g", ".2g")
            for m, s in zip(table[f"{key}_mean"], table[f"{key}_std"], strict=True)
        ]
        columns.append(numeric(header, f"{key}_mean", texts))
    if "delta_m_mean" in table:
        texts = [
            mean_std(m, s, "+.2f", ".2f") for m, s in zip(table.delta_m_mean, table.delta_m_std, strict=True)
        ]
        columns.append(numeric("Δm% ↓", "delta_m_mean", texts))
    columns += [
        numeric("mean rank ↓", "mean_rank", [number(v, ".2f") for v in table.mean_rank]),
        numeric(
            "ms/step ↓", "time_per_step_s", [number(v * 1000, ".2f") for v in table.time_per_step_s], 1000
        ),
        Column(
            "wall s (all seeds)",
            [number(v, ".1f") for v in table.wall_time_s_sum],
            list(table.wall_time_s_sum),
        ),
        Column("status", [escape(status) for status in table.status]),
    ]
    return columns


def failed_columns(failed: pd.DataFrame) -> list[Column]:
    return [
        Column("job (overrides)", [escape(v) for v in failed.label]),
        Column("status", [escape(v) for v in failed.status]),
        Column("seed", [escape(v) for v in failed.seeds]),
        Column("error", [escape(v) for v in failed.error], css="error"),
        Column("folder", [escape(v) for v in failed.path], css="path"),
    ]


def _items(items: Iterable[str]) -> str:
    return f"<ul>{''.join(f'<li>{_text(item)}</li>' for item in items)}</ul>"


def _baseline(report: Report) -> list[str]:
    if report.baseline is None:
        return [f"<p>{_text(NO_BASELINE)}</p>"]
    return [f"<p>{_text(baseline_note(report))}</p>", _items(baseline_items(report))]


def _optuna(report: Report) -> list[str]:
    parts = []
    for path, result in report.optuna:
        parts += [
            "<h2>Optuna: best trial</h2>",
            f"<p>From <code>{escape(str(path))}</code>:</p>",
            _items(optuna_items(result)),
        ]
    return parts


def image(path: Path) -> str:
    """A <figure> with the PNG at ``path`` inlined as a data: URI."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{escape(path.stem)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{escape(path.name)}</figcaption></figure>"
    )


def _plots(plots: Sequence[Path], plots_on: bool) -> list[str]:
    if not plots_on:
        return [
            "<p class=note>Plots were not drawn (<code>--no-plots</code> or "
            "<code>trainer.plots=false</code>): the tables only.</p>"
        ]
    if not plots:
        return ["<p class=note>No plot could be drawn (see the log).</p>"]
    return [image(path) for path in plots]


def render_html(
    report: Report, plots: Sequence[Path] = (), plots_on: bool = True, now: datetime | None = None
) -> str:
    """The whole report.html: ``plots`` are the PNGs to inline; ``plots_on=False`` says they were turned
    off (``--no-plots``, ``trainer.plots=false``)."""
    counts = run_counts(report)
    inputs = ", ".join(f"<code>{escape(path)}</code>" for path in report.inputs) or "(not recorded)"
    date = (now or datetime.now()).strftime("%Y-%m-%d %H:%M:%S")
    body = [
        "<header><h1>mtlrun report</h1>",
        f'<dl class="meta"><dt>date</dt><dd>{date}</dd><dt>inputs</dt><dd>{inputs}</dd>'
        f"<dt>split</dt><dd>{escape(report.split)}</dd><dt>runs</dt><dd>{escape(counts)}</dd></dl></header>",
        "<h2>Comparison</h2>",
        f"<p>{escape(metrics_note(report))} Click a column header to sort.</p>",
        *([f"<p>{_text(auxiliary_note(report))}</p>"] if report.auxiliary else []),
        sortable_table(comparison_columns(report))
        if not report.table.empty
        else "<p><em>no completed run</em></p>",
        "<h2>Δm%</h2>",
        *_baseline(report),
    ]
    if not report.failed.empty:
        body += ["<h2>Failed jobs</h2>", sortable_table(failed_columns(report.failed))]
    if report.unreadable:
        items = "".join(f"<li>{escape(bad.problem)}</li>" for bad in report.unreadable)
        body += ["<h2>Unreadable runs</h2>", f"<ul>{items}</ul>"]
    body += _optuna(report)
    body += grouping.report_html([run.path for c in report.configurations for run in c.runs])  # affinity
    if report.notes:
        body += ["<h2>Notes</h2>", f"<ul>{''.join(f'<li>{_text(note)}</li>' for note in report.notes)}</ul>"]
    body += ["<h2>Plots</h2>", *_plots(plots, plots_on)]
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<link rel="icon" href="data:,">',  # no request for a favicon
            f"<title>mtlrun report ({escape(report.split)})</title>",
            f"<style>{STYLE}</style></head><body>",
            *body,
            f"<script>{SCRIPT}</script>",
            "</body></html>",
            "",
        ]
    )
