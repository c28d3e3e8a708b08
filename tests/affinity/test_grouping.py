"""The grouping search (mtlrun/grouping.py): the exact search against brute force, the heuristic's partitions,
the score's definition, the CSV, and the `mtlrun groups` text."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from mtlrun import grouping
from mtlrun.errors import DataError
from mtlrun.grouping import (
    Affinity,
    best_partitions,
    check_partition,
    exact_partitions,
    heuristic_partition,
    partition_score,
    read_affinity,
    write_affinity,
)


def set_partitions(items: list[int]):
    """Every partition of ``items`` into non-empty blocks (the brute force the search must match)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in set_partitions(rest):
        yield [[first], *partition]
        for i in range(len(partition)):
            yield [*partition[:i], [first, *partition[i]], *partition[i + 1 :]]


def random_matrix(n: int, rng: random.Random) -> list[list[float]]:
    return [[rng.uniform(-1, 1) for _ in range(n)] for _ in range(n)]


def test_the_score_is_the_mean_affinity_onto_each_task_from_the_rest_of_its_group():
    z = [[9.0, 1.0, 2.0], [3.0, 9.0, 4.0], [5.0, 6.0, 9.0]]  # z[i][j] = Z(i→j); the diagonal is never read
    # group {0, 1, 2}: onto 0: (3 + 5) / 2, onto 1: (1 + 6) / 2, onto 2: (2 + 4) / 2; a task alone: 0
    assert partition_score(z, [[0, 1, 2]]) == pytest.approx(4 + 3.5 + 3)
    assert partition_score(z, [[0, 2], [1]]) == pytest.approx(5 + 2)


def test_brute_force_partitions_are_counted_by_the_bell_numbers():
    assert [sum(1 for _ in set_partitions(list(range(n)))) for n in range(1, 7)] == [1, 2, 5, 15, 52, 203]


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7])
def test_the_exact_search_equals_brute_force_on_random_matrices(n):
    rng = random.Random(n)
    for _ in range(3):
        z = random_matrix(n, rng)
        found = exact_partitions(z, n)
        for k in range(1, n + 1):
            best = max(partition_score(z, p) for p in set_partitions(list(range(n))) if len(p) == k)
            groups, score = found[k]
            check_partition(groups, n)
            assert len(groups) == k
            assert score == pytest.approx(best) == pytest.approx(partition_score(z, groups))


def test_the_heuristic_gives_k_groups_and_recovers_planted_blocks_beyond_the_exact_size():
    rng = random.Random(0)
    n = grouping.EXACT_MAX_TASKS + 4
    blocks = [list(range(0, 5)), list(range(5, 9)), list(range(9, n))]
    block_of = {t: b for b, ts in enumerate(blocks) for t in ts}
    z = [
        [(0.5 if block_of[i] == block_of[j] else -0.2) + rng.gauss(0, 0.05) for j in range(n)]
        for i in range(n)
    ]
    found = best_partitions(z, 5)
    for k, (groups, score) in found.items():
        check_partition(groups, n)
        assert len(groups) == k and score == pytest.approx(partition_score(z, groups))
    assert found[3][0] == blocks
    for n_small in (5, 6):  # on small random matrices it is never better than the optimum, and valid
        z = random_matrix(n_small, rng)
        for k in range(1, n_small + 1):
            groups, score = heuristic_partition(z, k)
            check_partition(groups, n_small)
            assert score <= exact_partitions(z, k)[k][1] + 1e-12


def test_check_partition_refuses_overlaps_gaps_and_empty_groups():
    for bad in ([[0, 1], [1, 2]], [[0], [2]], [[0, 1, 2], []]):
        with pytest.raises(ValueError):
            check_partition(bad, 3)


def test_the_csv_round_trips_with_missing_cells(tmp_path):
    affinity = Affinity(["a", "b"], [[0.25, math.nan], [-0.5, 1e-9]], [3, 2])
    write_affinity(tmp_path / grouping.AFFINITY_FILE, affinity)
    back = read_affinity(tmp_path)
    assert back.tasks == ["a", "b"] and back.measurements == [3, 2]
    assert back.values[0][0] == 0.25 and math.isnan(back.values[0][1]) and back.values[1] == [-0.5, 1e-9]


def test_a_folder_without_the_table_or_a_foreign_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"has no task_affinity.csv; train with trainer.affinity_every=N"):
        read_affinity(tmp_path)
    (tmp_path / grouping.AFFINITY_FILE).write_text("x,y\n1,2\n")
    with pytest.raises(DataError, match="not an mtlrun task affinity table"):
        read_affinity(tmp_path)


def test_groups_prints_each_k_and_the_overrides_to_train_them(tmp_path, capsys):
    names = ["a1", "a2", "b1", "b2"]
    z = [[0.0, 0.3, -0.1, -0.1], [0.3, 0.0, -0.1, -0.1], [-0.1, -0.1, 0.0, 0.2], [-0.1, -0.1, 0.2, 0.0]]
    write_affinity(tmp_path / grouping.AFFINITY_FILE, Affinity(names, z, [5] * 4))
    assert grouping.main([str(tmp_path), "--max-groups", "3"]) == 0
    out = capsys.readouterr().out
    assert "k=2: [a1, a2] [b1, b2]  score 1" in out and "k=4" not in out
    assert "mtlrun architecture=grouped 'architecture.groups=[[a1,a2],[b1,b2]]'" in out
    assert "'architecture.groups=[[a1,a2,b1,b2]],[[a1,a2],[b1,b2]],[[a1,a2],[b1],[b2]]'" in out
    assert grouping.main([str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err.startswith("error: ")


def test_every_pair_score_matches_itertools_for_a_two_group_split():
    """k = 2 by the exact search equals the best of all 2^(n-1) - 1 bipartitions listed with itertools."""
    rng = random.Random(3)
    n = 6
    z = random_matrix(n, rng)
    splits = []
    for r in range(1, n):
        for left in itertools.combinations(range(1, n), r - 1):
            block = [0, *left]
            rest = [t for t in range(n) if t not in block]
            if rest:
                splits.append([block, rest])
    assert exact_partitions(z, 2)[2][1] == pytest.approx(max(partition_score(z, s) for s in splits))


def test_the_report_section_shows_each_measured_run_and_nothing_otherwise(tmp_path):
    measured, plain = tmp_path / "measured", tmp_path / "plain"
    measured.mkdir(), plain.mkdir()
    z = [[0.0, 0.3, -0.1], [0.3, 0.0, -0.1], [-0.1, -0.1, 0.0]]
    write_affinity(measured / grouping.AFFINITY_FILE, Affinity(["x", "y", "<z>"], z, [4, 4, 4]))
    assert grouping.report_lines([plain]) == [] and grouping.report_html([plain]) == []
    lines = grouping.report_lines([plain, measured])
    assert lines[0] == "## Task affinity" and "| i \\ j | x | y | <z> |" in lines
    assert "| x | +0.0000 | +0.3000 | -0.1000 |" in lines
    assert any("Best grouping (k ≤ 4): [x, y] [<z>], score 0.6" in line for line in lines)
    html = "\n".join(grouping.report_html([measured]))
    assert "<h2>Task affinity</h2>" in html and "&lt;z&gt;" in html and "<z>" not in html
