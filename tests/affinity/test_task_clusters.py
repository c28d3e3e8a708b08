"""data=task_clusters: its labels have the clusters built in, and the affinity a short run measures on it
recovers them (within-cluster affinity above across-cluster, the k = 2 search returns the clusters); then the
real CLI: a smoke run with the measurement on, and `mtlrun groups` on its folder."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import small_cfg

from mtlrun import cli
from mtlrun.data.task_clusters import TaskClusters, task_names
from mtlrun.errors import ConfigError
from mtlrun.grouping import AFFINITY_FILE, best_partitions
from mtlrun.trainer.setup import setup


def test_tasks_of_a_cluster_are_correlated_and_clusters_are_not():
    data = TaskClusters(clusters=2, tasks_per_cluster=2, n_train=4000, n_val=10, n_test=10, seed=1)
    assert data.targets == task_names(2, 2) == ["a1", "a2", "b1", "b2"]
    y = data.splits["train"].y
    corr = torch.corrcoef(torch.stack([y[t] for t in data.targets]))
    assert corr[0, 1] > 0.8 and corr[2, 3] > 0.8
    assert corr[0, 2].abs() < 0.1 and corr[1, 3].abs() < 0.1
    again = TaskClusters(clusters=2, tasks_per_cluster=2, n_train=4000, n_val=10, n_test=10, seed=1)
    assert torch.equal(again.splits["val"].y["b2"], data.splits["val"].y["b2"])


def test_more_clusters_than_directions_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data.input_dim: .* >= data.clusters=5"):
        TaskClusters(clusters=5, input_dim=3)


@pytest.mark.parametrize("update", ["optimizer", "sgd"])
def test_a_short_run_measures_the_clusters_and_the_search_recovers_them(update):
    """64 steps of AdamW (lr 1e-2), measured every 4th: enough on seeds 0-3 for both lookahead steps."""
    cfg = small_cfg(
        [
            "data=task_clusters",
            "encoder.hidden=[64]",
            "heads.hidden=[16]",
            "optim.optimizer.lr=1e-2",
            "trainer.affinity_every=4",
            f"trainer.affinity_update={update}",
        ]
    )
    cfg.data.n_train = 2048
    s = setup(cfg)
    for k, batch in enumerate(s.data.batches("train", 32, shuffle=True, generator=s.shuffle)):
        s.step(batch, where=(1, k))
    assert s.affinity.measurements == 16
    z = s.affinity.mean()
    cluster = torch.tensor([0, 0, 0, 1, 1, 1])
    same = cluster[:, None] == cluster[None, :]
    off_diagonal = ~torch.eye(6, dtype=torch.bool)
    within, across = z[same & off_diagonal].mean(), z[~same].mean()
    assert within > across + 1e-3, z
    groups, _ = best_partitions(z.tolist(), 2)[2]
    assert groups == [[0, 1, 2], [3, 4, 5]]


def mtlrun(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mtlrun", *args], capture_output=True, text=True, timeout=240
    )


@pytest.mark.slow  # a real CLI run; the fast tier builds and steps the model in-process
def test_cli_smoke_run_measures_affinity_and_groups_reads_it(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "run"
    run = mtlrun("data=task_clusters", "trainer.affinity_every=1", "debug=smoke", f"hydra.run.dir={folder}")
    assert run.returncode == 0, run.stdout + run.stderr
    lines = (folder / AFFINITY_FILE).read_text().splitlines()
    assert lines[0] == "stepping_task,a1,a2,a3,b1,b2,b3,measurements"
    assert len(lines) == 7 and all(line.endswith(",6") for line in lines[1:])  # 2 epochs x 3 steps
    assert "task affinity: 6 measurement(s)" in (folder / "mtlrun.log").read_text()
    # `mtlrun groups FOLDER` through the command's own dispatch, in this process (it starts in ~0.1 s)
    monkeypatch.setattr(sys, "argv", ["mtlrun", "groups", str(folder), "--max-groups", "2"])
    with pytest.raises(SystemExit) as done:
        cli.main()
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert "k=1: [a1, a2, a3, b1, b2, b3]  score" in out and "k=2: [" in out and "k=3" not in out
    assert "mtlrun architecture=grouped 'architecture.groups=[[" in out


@pytest.mark.slow
def test_the_documented_sweep_compares_a_grouping_with_both_baselines(tmp_path):
    """docs: one sweep over architecture.groups runs hard sharing (null), the suggestion and single-task (one
    group per task), and the sweep's report takes the single-task end as its Δm% baseline."""
    sweep = tmp_path / "sweep"
    result = mtlrun(
        "-m",
        "data=task_clusters",
        "architecture=grouped",
        "architecture.groups=null,[[a1,a2,a3],[b1,b2,b3]],[[a1],[a2],[a3],[b1],[b2],[b3]]",
        "debug=smoke",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = (sweep / "summary.md").read_text()
    assert "3 completed in 3 configuration(s)" in summary
    assert "B: the single-task runs (`architecture=single_task`) among the inputs" in summary
    row = next(line for line in summary.splitlines() if "[[a1],[a2],[a3],[b1],[b2],[b3]]" in line)
    assert "+0.00" in row  # the one-group-per-task run is B itself
