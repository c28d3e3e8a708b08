"""Task affinity, branch grouping and the branching tree of `adaptive_branching` (its module docstring
explains the method; this module holds the parts that need no network).

* `task_affinity`: A(i, j), the probability that an example is difficult for tasks i and j together or
  easy for both, from per-example losses.
* `branch_affinity`: the affinity between two branches (sets of tasks), from A.
* `best_grouping`: the grouping of a junction's children that minimises separation + α · (d − 1).
* `Branching`: the tree itself, as one partition of the tasks per encoder stage, each refining the one
  below; it renders as JSON and as indented text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Group = tuple[int, ...]


def difficult_examples(losses: Tensor, labelled: Tensor) -> Tensor:
    """[N, T] bool: example n is difficult for task t when its loss is at least task t's mean loss over the
    batch's labelled examples (the paper's rule: an error above the task's average)."""
    weights = labelled.to(losses.dtype)
    mean = (losses * weights).sum(0) / weights.sum(0).clamp_min(1)
    return losses >= mean


class AffinityCounter:
    """Accumulates, over batches, how often two tasks agree on an example being difficult."""

    def __init__(self, num_tasks: int) -> None:
        self.agree = torch.zeros(num_tasks, num_tasks, dtype=torch.float64)
        self.pairs = torch.zeros(num_tasks, num_tasks, dtype=torch.float64)

    def add(self, losses: Tensor, labelled: Tensor) -> None:
        """`losses` [N, T] per-example losses, `labelled` [N, T] bool (False: no label, not counted)."""
        known = labelled.double()
        hard = difficult_examples(losses.detach(), labelled).double() * known
        easy = (1 - hard) * known
        # [T, T]: examples labelled for both tasks that are difficult for both or easy for both
        self.agree += (hard.T @ hard + easy.T @ easy).cpu()
        self.pairs += (known.T @ known).cpu()

    def affinity(self) -> Tensor:
        """[T, T] A(i, j) ∈ [0, 1]; 0.5 (no information) for a pair with no example labelled for both."""
        return torch.where(
            self.pairs > 0, self.agree / self.pairs.clamp_min(1), torch.full_like(self.pairs, 0.5)
        )


def task_affinity(losses: Tensor, labelled: Tensor | None = None) -> Tensor:
    """A(i, j) = P(e_i = e_j) over the examples of one batch, e_t the difficulty indicator."""
    counter = AffinityCounter(losses.shape[1])
    counter.add(losses, torch.ones_like(losses, dtype=torch.bool) if labelled is None else labelled)
    return counter.affinity()


def branch_affinity(affinity: Tensor, branches: Sequence[Sequence[int]]) -> Tensor:
    """[B, B]: A_b(k, l) = (Ã(k, l) + Ã(l, k)) / 2, with Ã(k, l) = mean over i in k of min over j in l of
    A(i, j): how well the least similar task of l suits each task of k, averaged."""
    size = len(branches)
    one_way = torch.zeros(size, size, dtype=torch.float64)
    for k, first in enumerate(branches):
        for m, second in enumerate(branches):
            block = affinity[list(first)][:, list(second)].double()
            one_way[k, m] = block.min(dim=1).values.mean()
    return (one_way + one_way.T) / 2


def diameter(distance: Tensor, group: Sequence[int]) -> float:
    """The largest distance between two members of `group` (0 for a single member)."""
    index = list(group)
    return float(distance[index][:, index].max()) if len(index) > 1 else 0.0


def separation(distance: Tensor, groups: Sequence[Sequence[int]]) -> float:
    """The task-separation cost: the mean over groups of each group's diameter."""
    return sum(diameter(distance, g) for g in groups) / len(groups)


def agglomerate(distance: Tensor) -> dict[int, list[Group]]:
    """Complete-linkage grouping of the B children for every d = B … 1: start with singletons and merge,
    each time, the two groups whose union has the smallest diameter (ties: the first pair in index order).
    Returns {d: groups}, each group sorted, groups ordered by their first member."""
    groups: list[Group] = [(i,) for i in range(distance.shape[0])]
    by_count = {len(groups): list(groups)}
    while len(groups) > 1:
        best: tuple[float, int, int] | None = None
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                cost = diameter(distance, groups[a] + groups[b])
                if best is None or cost < best[0] - 1e-12:
                    best = (cost, a, b)
        _, a, b = best
        merged = tuple(sorted(groups[a] + groups[b]))
        groups = sorted([g for i, g in enumerate(groups) if i not in (a, b)] + [merged])
        by_count[len(groups)] = list(groups)
    return by_count


@dataclass(frozen=True)
class GroupingChoice:
    """The outcome of one junction's grouping: the chosen groups and the loss of every candidate d."""

    groups: list[Group]
    losses: dict[int, float]  # d -> separation(g_d) + α (d − 1)


def best_grouping(affinity: Tensor, cost: float, max_groups: int | None = None) -> GroupingChoice:
    """Group B children with pairwise affinity [B, B] into d ≤ `max_groups` groups minimising
    L(d) = separation(g_d) + cost · (d − 1), where g_d is the complete-linkage grouping with d groups and
    distances are 1 − affinity; ties go to the smaller d."""
    distance = 1 - affinity.double()
    candidates = agglomerate(distance)
    limit = len(candidates) if max_groups is None else min(max_groups, len(candidates))
    losses = {d: separation(distance, candidates[d]) + cost * (d - 1) for d in range(1, limit + 1)}
    chosen = min(losses, key=lambda d: (round(losses[d], 12), d))
    return GroupingChoice(candidates[chosen], losses)


@dataclass
class Branching:
    """A tree of branches over encoder stages: `levels[k]` partitions the task indices into the branches of
    stage k (groups sorted, ordered by first member). Stage k + 1's partition refines stage k's: branches only
    split going up. `tasks` names the task indices."""

    tasks: list[str]
    levels: list[list[Group]]

    @classmethod
    def shared(cls, tasks: Sequence[str], stages: int) -> Branching:
        """Every stage shared by all tasks (hard sharing)."""
        return cls(list(tasks), [[tuple(range(len(tasks)))] for _ in range(stages)])

    @classmethod
    def from_codes(cls, tasks: Sequence[str], codes: Tensor) -> Branching:
        """From [stages, T] branch indices (task t is in branch codes[k, t] of stage k)."""
        levels = []
        for row in codes.tolist():
            groups: dict[int, list[int]] = {}
            for t, code in enumerate(row):
                groups.setdefault(int(code), []).append(t)
            levels.append(sorted(tuple(g) for g in groups.values()))
        return cls(list(tasks), levels)

    def codes(self) -> Tensor:
        """[stages, T] long: the index of each task's branch at each stage."""
        out = torch.zeros(len(self.levels), len(self.tasks), dtype=torch.long)
        for k, groups in enumerate(self.levels):
            for b, group in enumerate(groups):
                out[k, list(group)] = b
        return out

    def check(self) -> None:
        """ValueError unless every stage partitions all tasks and each stage refines the one below."""
        everyone = set(range(len(self.tasks)))
        for k, groups in enumerate(self.levels):
            members = [t for g in groups for t in g]
            if sorted(members) != sorted(everyone) or len(members) != len(everyone):
                raise ValueError(f"stage {k}: {groups} is not a partition of tasks {sorted(everyone)}")
            if k and any(not any(set(g) <= set(p) for p in self.levels[k - 1]) for g in groups):
                raise ValueError(f"stage {k}: {groups} does not refine stage {k - 1}'s {self.levels[k - 1]}")

    def parent(self, stage: int, branch: int) -> int:
        """The index of the branch of stage − 1 that feeds `branch` of `stage`."""
        first = self.levels[stage][branch][0]
        return next(b for b, g in enumerate(self.levels[stage - 1]) if first in g)

    def branch_of(self, stage: int, task: int) -> int:
        return next(b for b, g in enumerate(self.levels[stage]) if task in g)

    def trunk_depth(self) -> int:
        """How many stages from the bottom all tasks share (0: the tasks part at stage 0)."""
        return next((k for k, groups in enumerate(self.levels) if len(groups) > 1), len(self.levels))

    def names(self, group: Group) -> list[str]:
        return [self.tasks[t] for t in group]

    def tree(self) -> dict:
        """The nested tree: {"stages": [first, last], "tasks": [...], "children": [...]} per branch, a run of
        stages with the same tasks merged into one node; leaves list the heads they feed."""

        def node(stage: int, group: Group) -> dict:
            last = stage
            while last + 1 < len(self.levels) and tuple(group) in self.levels[last + 1]:
                last += 1
            entry = {"stages": [stage, last], "tasks": self.names(group)}
            if last + 1 < len(self.levels):
                children = [g for g in self.levels[last + 1] if set(g) <= set(group)]
                entry["children"] = [node(last + 1, g) for g in children]
            return entry

        return {"children": [node(0, g) for g in self.levels[0]]} if self.levels else {"children": []}

    def text(self) -> str:
        """The tree as indented lines: one line per branch (its stages and tasks), heads at the leaves."""
        lines = [f"input -> {len(self.levels)} encoder stages -> heads ({len(self.tasks)} tasks)"]

        def walk(entry: dict, depth: int) -> None:
            first, last = entry["stages"]
            stages = f"stage {first}" if first == last else f"stages {first}-{last}"
            lines.append(f"{'  ' * depth}{stages}: {', '.join(entry['tasks'])}")
            for child in entry.get("children", []):
                walk(child, depth + 1)
            if "children" not in entry:
                lines.extend(f"{'  ' * (depth + 1)}head {name}" for name in entry["tasks"])

        for entry in self.tree()["children"]:
            walk(entry, 0)
        return "\n".join(lines) + "\n"

    def to_json(self, rounds: Sequence[dict] = ()) -> str:
        payload = {
            "tasks": self.tasks,
            "stages": [[self.names(g) for g in groups] for groups in self.levels],
            "tree": self.tree(),
            "rounds": list(rounds),
        }
        return json.dumps(payload, indent=2) + "\n"
