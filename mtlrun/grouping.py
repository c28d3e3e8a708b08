"""Task groupings from a measured inter-task affinity matrix, and ``mtlrun groups RUN [--max-groups K]``.

After Fifty, Amid, Zhao, Yu, Anil & Finn (2021), "Efficiently Identifying Task Groupings for Multi-Task
Learning" (NeurIPS; TAG). A run with ``trainer.affinity_every=N`` writes ``task_affinity.csv``: Ẑ, the
lookahead affinity Ẑ(i→j) of every stepping task i (rows) onto every task j (columns), averaged over the
run (mtlrun/trainer/affinity.py). This module reads it and picks the groups that train well together.

**The score.** The affinity onto task a of a group G ∋ a is the mean of Ẑ(b→a) over the other members
b ∈ G \\ {a}; a task alone in its group gets 0 (nothing transfers to it). A grouping's score is the sum of
these over every task: S(G_1 … G_k) = Σ_g Σ_(a ∈ G_g) mean_(b ∈ G_g, b ≠ a) Ẑ(b→a). Positive affinity onto a
task favours training it with the tasks that give it; negative affinity favours splitting them.

**The search.** For each k, the partition of the T tasks into exactly k non-empty groups with the highest
score. For T ≤ `EXACT_MAX_TASKS` (10) it is exact: a dynamic programme over subsets, best(k, S) =
max over blocks B ⊆ S that hold S's first task of score(B) + best(k − 1, S \\ B), which visits every
partition implicitly in O(k · 3^T) steps (T = 10, every k: under a second). Beyond, a heuristic: start
from single-task groups, merge the pair of groups whose merge raises the score most (or lowers it least)
until k groups are left, then move single tasks between groups while a move raises the score; a local
optimum, not guaranteed the best.

**Departures from the paper.** The paper lets a task sit in several groups (each task then counts at the
group with the highest affinity onto it, and the other networks carry it as an auxiliary task) and searches
with branch and bound. Here the groups are a partition, because `architecture=grouped` trains every task in
exactly one network; the exact search is a subset dynamic programme rather than branch and bound.

This module imports no torch: ``mtlrun groups`` starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mtlrun.errors import DataError, MtlrunError

AFFINITY_FILE = "task_affinity.csv"  # written into the run folder by mtlrun/trainer/affinity.py
HEATMAP_FILE = "task_affinity.png"  # with trainer.plots
MEASUREMENTS = "measurements"  # the CSV's last column: how many measurements the row's means cover
EXACT_MAX_TASKS = 10  # beyond, the heuristic search

Matrix = Sequence[Sequence[float]]


@dataclass
class Affinity:
    """A run's mean affinity matrix: ``values[i][j]`` = Ẑ(i→j); NaN where no measurement was defined."""

    tasks: list[str]
    values: list[list[float]]
    measurements: list[int]  # per stepping task i (row)


def write_affinity(path: Path, affinity: Affinity) -> None:
    """The CSV: a header ``stepping_task,<task>...,measurements``, then one row per stepping task i."""
    lines = [",".join(["stepping_task", *affinity.tasks, MEASUREMENTS])]
    for name, row, count in zip(affinity.tasks, affinity.values, affinity.measurements, strict=True):
        cells = ["" if math.isnan(v) else repr(float(v)) for v in row]
        lines.append(",".join([name, *cells, str(count)]))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def read_affinity(path: str | Path) -> Affinity:
    """The affinity matrix of a run folder (or of a task_affinity.csv itself); a DataError that says what is
    wrong when there is none or it cannot be read."""
    path = Path(path)
    file = path / AFFINITY_FILE if path.is_dir() else path
    if not file.exists():
        where = f"{path} has no {AFFINITY_FILE}" if path.is_dir() else f"{path} does not exist"
        raise DataError(
            f"{where}; train with trainer.affinity_every=N (e.g. 10) to measure the task affinity, "
            "then pass that run's folder"
        )
    try:
        rows = list(csv.reader(file.read_text().splitlines()))
        header, body = rows[0], rows[1:]
        tasks = header[1:-1]
        if header[0] != "stepping_task" or header[-1] != MEASUREMENTS or not tasks:
            raise ValueError("unexpected header")
        if [row[0] for row in body] != tasks or any(len(row) != len(header) for row in body):
            raise ValueError("the rows do not match the header's tasks")
        values = [[float(c) if c else math.nan for c in row[1:-1]] for row in body]
        counts = [int(row[-1]) for row in body]
    except (ValueError, IndexError, UnicodeDecodeError) as err:
        raise DataError(
            f"{file}: not an mtlrun task affinity table ({err}); rerun with trainer.affinity_every=N"
        ) from None
    return Affinity(tasks, values, counts)


# ----------------------------------------------------------------------------------------------- the score


def _value(z: Matrix, i: int, j: int) -> float:
    v = z[i][j]
    return 0.0 if math.isnan(v) else v  # a pair never measured counts as no transfer


def onto(z: Matrix, group: Sequence[int], a: int) -> float:
    """The affinity onto task ``a`` of ``group`` (which holds it): the mean of Ẑ(b→a) over the others."""
    others = [b for b in group if b != a]
    return sum(_value(z, b, a) for b in others) / len(others) if others else 0.0


def group_score(z: Matrix, group: Sequence[int]) -> float:
    """Σ over the group's tasks a of the affinity onto a of the group."""
    return sum(onto(z, group, a) for a in group)


def partition_score(z: Matrix, groups: Sequence[Sequence[int]]) -> float:
    return sum(group_score(z, g) for g in groups)


def check_partition(groups: Sequence[Sequence[int]], n: int) -> None:
    """A ValueError unless ``groups`` are non-empty and hold each of 0 … n − 1 exactly once."""
    flat = [t for g in groups for t in g]
    if any(not g for g in groups) or sorted(flat) != list(range(n)):
        raise ValueError(f"not a partition of {n} tasks: {groups}")


# ---------------------------------------------------------------------------------------------- the search


def _members(mask: int) -> list[int]:
    return [t for t in range(mask.bit_length()) if mask >> t & 1]


def exact_partitions(z: Matrix, max_groups: int) -> dict[int, tuple[list[list[int]], float]]:
    """{k: (the best partition into exactly k groups, its score)} for k = 1 … max_groups, by the subset
    dynamic programme of the module docstring."""
    n = len(z)
    full = (1 << n) - 1
    block = [group_score(z, _members(mask)) if mask else 0.0 for mask in range(full + 1)]
    best: list[dict[int, tuple[float, int]]] = [{}]  # best[k][S] = (score, the block holding S's first task)
    best.append({mask: (block[mask], mask) for mask in range(1, full + 1)})
    for k in range(2, max_groups + 1):
        table: dict[int, tuple[float, int]] = {}
        previous = best[k - 1]
        for mask in range(1, full + 1):
            if mask.bit_count() < k:
                continue
            low = mask & -mask
            rest = mask ^ low
            top = (-math.inf, 0)
            sub = rest
            while True:  # every block low | sub with sub ⊆ rest, the rest covered by k - 1 groups
                others = rest ^ sub
                if others in previous:
                    value = block[low | sub] + previous[others][0]
                    if value > top[0]:
                        top = (value, low | sub)
                if sub == 0:
                    break
                sub = (sub - 1) & rest
            table[mask] = top
        best.append(table)
    result = {}
    for k in range(1, max_groups + 1):
        if full not in best[k]:
            continue
        groups, mask = [], full
        for level in range(k, 0, -1):
            chosen = best[level][mask][1]
            groups.append(_members(chosen))
            mask ^= chosen
        result[k] = (groups, best[k][full][0])
    return result


def heuristic_partition(z: Matrix, k: int) -> tuple[list[list[int]], float]:
    """Greedy merging from single-task groups down to ``k`` groups, then single-task moves while one raises
    the score (module docstring)."""
    groups = [[t] for t in range(len(z))]
    while len(groups) > k:
        pairs = [(a, b) for a in range(len(groups)) for b in range(a + 1, len(groups))]

        def gain(pair: tuple[int, int]) -> float:
            a, b = pair
            merged = group_score(z, groups[a] + groups[b])
            return merged - group_score(z, groups[a]) - group_score(z, groups[b])

        a, b = max(pairs, key=gain)
        groups[a] = sorted(groups[a] + groups[b])
        del groups[b]
    improved = True
    while improved:
        improved = False
        for source in range(len(groups)):
            for task in list(groups[source]):
                if len(groups[source]) == 1:
                    break  # moving it would leave k - 1 groups
                for target in range(len(groups)):
                    if target == source:
                        continue
                    before = group_score(z, groups[source]) + group_score(z, groups[target])
                    left = [t for t in groups[source] if t != task]
                    joined = sorted([*groups[target], task])
                    if group_score(z, left) + group_score(z, joined) > before + 1e-12:
                        groups[source], groups[target] = left, joined
                        improved = True
                        break
    groups.sort(key=lambda g: g[0])
    return groups, partition_score(z, groups)


def best_partitions(z: Matrix, max_groups: int | None = None) -> dict[int, tuple[list[list[int]], float]]:
    """{k: (groups as lists of task indices, score)} for every k up to ``max_groups`` (default: T)."""
    n = len(z)
    max_groups = n if max_groups is None else min(max_groups, n)
    if n <= EXACT_MAX_TASKS:
        found = exact_partitions(z, max_groups)
    else:
        found = {k: heuristic_partition(z, k) for k in range(1, max_groups + 1)}
    return {
        k: (sorted((sorted(g) for g in groups), key=lambda g: g[0]), s) for k, (groups, s) in found.items()
    }


# ------------------------------------------------------------------------------------------ the command


def groups_override(groups: Sequence[Sequence[str]]) -> str:
    """The Hydra value of ``architecture.groups`` for ``groups``, e.g. ``[[a,b],[c]]``."""
    return "[" + ",".join("[" + ",".join(g) + "]" for g in groups) + "]"


def describe(affinity: Affinity, max_groups: int | None = None) -> str:
    """What ``mtlrun groups`` prints: the matrix, the best grouping for each k, the commands to train them."""
    names = affinity.tasks
    width = max(len(n) for n in [*names, "i \\ j"])
    lines = [
        f"task affinity Z(i->j), rows i = the stepping task, columns j; "
        f"{min(affinity.measurements)} measurement(s):",
        " ".join(["i \\ j".ljust(width), *(n.rjust(max(9, len(n))) for n in names)]),
    ]
    for name, row in zip(names, affinity.values, strict=True):
        cells = ("nan" if math.isnan(v) else f"{v:+.4f}" for v in row)
        lines.append(
            " ".join(
                [name.ljust(width), *(c.rjust(max(9, len(n))) for c, n in zip(cells, names, strict=True))]
            )
        )
    method = "exact" if len(names) <= EXACT_MAX_TASKS else "heuristic (greedy merges, then moves)"
    lines += [
        "",
        f"best partition into k groups ({method}; score = sum over tasks of the mean affinity onto it "
        "from the rest of its group):",
    ]
    found = best_partitions(affinity.values, max_groups)
    named = {k: [[names[t] for t in g] for g in groups] for k, (groups, _) in found.items()}
    for k, (_, score) in found.items():
        shown = " ".join("[" + ", ".join(g) + "]" for g in named[k])
        lines.append(f"k={k}: {shown}  score {score:.4g}")
    best_k = max(found, key=lambda k: found[k][1])
    lines += [
        "",
        f"highest score: k={best_k}. Train it (add the run's own data and settings):",
        f"  mtlrun architecture=grouped 'architecture.groups={groups_override(named[best_k])}'",
        "Compare every k in one sweep (k=1 is hard sharing, one group per task is the single-task baseline):",
        "  mtlrun -m architecture=grouped 'architecture.groups="
        + ",".join(groups_override(named[k]) for k in found)
        + "'",
    ]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mtlrun groups",
        description="Suggest task groups from a run's measured task affinity (trainer.affinity_every=N): the "
        "best partition into k groups for every k, and the commands to train them.",
    )
    p.add_argument("run", help="a run folder holding task_affinity.csv (or the file itself)")
    p.add_argument(
        "--max-groups",
        type=int,
        metavar="K",
        help="search k = 1 … K groups (default: every k up to the number of tasks)",
    )
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    try:
        if args.max_groups is not None and args.max_groups < 1:
            raise DataError(f"--max-groups: must be >= 1, got {args.max_groups}")
        print(describe(read_affinity(args.run), args.max_groups))
    except MtlrunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _report_items(run_folders: Sequence[Path]) -> list[tuple[Path, Affinity | None, str]]:
    """(folder, its matrix or None when unreadable, a sentence) for each run folder holding the table."""
    items = []
    for folder in map(Path, run_folders):
        if not (folder / AFFINITY_FILE).exists():
            continue
        try:
            affinity = read_affinity(folder)
        except DataError as err:
            items.append((folder, None, str(err)))
            continue
        found = best_partitions(affinity.values, min(len(affinity.tasks), 4))
        k = max(found, key=lambda key: found[key][1])
        shown = " ".join("[" + ", ".join(affinity.tasks[t] for t in g) + "]" for g in found[k][0])
        sentence = (
            f"{min(affinity.measurements)} measurement(s); rows: the stepping task i, columns: task j. "
            f"Best grouping (k ≤ 4): {shown}, score {found[k][1]:.4g} (`mtlrun groups {folder}`)."
        )
        items.append((folder, affinity, sentence))
    return items


def _cells(row: Sequence[float]) -> list[str]:
    return ["" if math.isnan(v) else f"{v:+.4f}" for v in row]


def report_lines(run_folders: Sequence[Path]) -> list[str]:
    """The "Task affinity" section of summary.md: each run that measured it (`trainer.affinity_every`), its
    matrix Ẑ(i→j) and best grouping; nothing when no run did."""
    lines: list[str] = []
    for folder, affinity, sentence in _report_items(run_folders):
        if affinity is None:
            lines += [f"- {sentence}", ""]
            continue
        names = affinity.tasks
        lines += [f"`{folder}`: {sentence}", "", "| i \\ j | " + " | ".join(names) + " |"]
        lines += ["|---" * (len(names) + 1) + "|"]
        lines += [
            f"| {n} | " + " | ".join(_cells(row)) + " |"
            for n, row in zip(names, affinity.values, strict=True)
        ]
        lines.append("")
    return ["## Task affinity", "", *lines] if lines else []


def report_html(run_folders: Sequence[Path]) -> list[str]:
    """The same section for report.html, with each run's heatmap inlined when it was drawn."""
    import base64
    from html import escape

    parts: list[str] = []
    for folder, affinity, sentence in _report_items(run_folders):
        text = escape(sentence).replace("`", "")
        if affinity is None:
            parts.append(f"<p>{text}</p>")
            continue
        head = "".join(f"<th>{escape(n)}</th>" for n in ["i \\ j", *affinity.tasks])
        rows = "".join(
            f"<tr><th>{escape(n)}</th>" + "".join(f'<td class="num">{c}</td>' for c in _cells(row)) + "</tr>"
            for n, row in zip(affinity.tasks, affinity.values, strict=True)
        )
        parts += [
            f"<p><code>{escape(str(folder))}</code>: {text}</p>",
            f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>',
        ]
        png = folder / HEATMAP_FILE
        if png.exists():
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="task affinity" src="data:image/png;base64,{data}"></figure>')
    return ["<h2>Task affinity</h2>", *parts] if parts else []
