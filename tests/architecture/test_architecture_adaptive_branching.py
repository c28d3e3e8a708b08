"""Fully-adaptive feature sharing (mtlrun/architecture/adaptive_branching.py, branching.py): the affinity is
its closed form; grouping recovers planted task clusters and always yields a valid tree; a grown model's
roles cover every parameter and agree with its gradients; one seed grows one tree; saved weights carry the
tree; the run folder gets the tree. The generic contract is in test_architectures.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_objects, first_batch, nonzero, small_cfg

from mtlrun.architecture.branching import Branching, best_grouping, branch_affinity, task_affinity
from mtlrun.errors import ConfigError

BATCH = 8


def grown(*options: str, seed: int = 0, data: str = "tabular"):
    """A model with a small three-stage MLP encoder grown on ``data`` (tabular: four tasks)."""
    cfg = small_cfg(["architecture=adaptive_branching", f"data={data}", *options])
    cfg.encoder.hidden = [16, 16, 16]
    cfg.heads.hidden = [8]
    cfg.architecture.warmup_steps = 6
    cfg.seed = seed
    return build_objects(cfg, seed=seed)


def test_affinity_is_the_probability_of_being_easy_or_difficult_together() -> None:
    # task 0's mean loss is 2.5: rows 2, 3 difficult; task 1's is 1: rows 0, 3; task 2 = task 0 mirrored
    losses = torch.tensor([[1.0, 2.0, 4.0], [2.0, 0.5, 3.0], [3.0, 0.5, 2.0], [4.0, 1.0, 1.0]])
    affinity = task_affinity(losses)
    assert affinity[0, 1].item() == pytest.approx(0.5)  # rows 1 and 3 agree
    assert affinity[0, 2].item() == pytest.approx(0.0)  # never agree
    assert torch.equal(affinity, affinity.T) and torch.all(affinity.diagonal() == 1)
    labelled = torch.tensor(
        [[True, True, True], [True, False, True], [True, True, True], [True, False, True]]
    )
    # the difficulty threshold and the count use labelled rows only: task 1's mean over rows 0, 2 is 1.25
    assert task_affinity(losses, labelled)[0, 1].item() == pytest.approx(0.0)


def planted(groups: list[list[int]], within: float, between: float, noise: float, seed: int) -> torch.Tensor:
    size = sum(len(g) for g in groups)
    label = torch.empty(size, dtype=torch.long)
    for i, g in enumerate(groups):
        label[g] = i
    gen = torch.Generator().manual_seed(seed)
    jitter = (torch.rand(size, size, generator=gen) - 0.5) * noise
    affinity = torch.where(label[:, None] == label[None, :], within, between) + (jitter + jitter.T) / 2
    return affinity.fill_diagonal_(1.0)


@pytest.mark.parametrize("seed", range(5))
def test_grouping_recovers_planted_task_clusters(seed: int) -> None:
    clusters = [[0, 3, 5], [1, 6], [2, 4, 7]]
    affinity = planted(clusters, within=0.85, between=0.5, noise=0.1, seed=seed)
    among = branch_affinity(affinity, [(t,) for t in range(8)])
    choice = best_grouping(among, cost=0.1)
    assert sorted(choice.groups) == sorted(tuple(c) for c in clusters)
    assert min(choice.losses, key=choice.losses.get) == 3
    # a high branching cost keeps them together; a zero cost splits as far as allowed
    assert best_grouping(among, cost=1.0).groups == [tuple(range(8))]
    assert len(best_grouping(among, cost=0.0, max_groups=5).groups) == 5


@pytest.mark.parametrize("seed", range(10))
def test_growing_on_random_affinities_gives_a_valid_tree(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    tasks = [f"t{i}" for i in range(int(torch.randint(2, 9, (1,), generator=gen)))]
    stages = 4
    tree = Branching.shared(tasks, stages)
    children = [(t,) for t in range(len(tasks))]
    for stage in range(stages - 1, 0, -1):
        raw = torch.rand(len(tasks), len(tasks), generator=gen)
        affinity = ((raw + raw.T) / 2).fill_diagonal_(1.0)
        choice = best_grouping(branch_affinity(affinity, children), cost=0.05, max_groups=3)
        groups = [tuple(sorted(t for c in g for t in children[c])) for g in choice.groups]
        if len(groups) == 1:
            break
        tree.levels[stage] = sorted(groups)
        children = groups
    tree.check()  # every stage partitions the tasks and refines the one below
    leaves = [t for groups in tree.levels[-1:] for g in groups for t in g]
    assert sorted(leaves) == list(range(len(tasks)))  # every task in exactly one leaf
    assert Branching.from_codes(tasks, tree.codes()).levels == tree.levels
    heads = [line.strip() for line in tree.text().splitlines() if line.strip().startswith("head ")]
    assert sorted(heads) == sorted(f"head {t}" for t in tasks)


def test_a_tree_that_merges_going_up_is_refused() -> None:
    tree = Branching(["a", "b", "c"], [[(0,), (1, 2)], [(0, 1), (2,)]])
    with pytest.raises(ValueError, match="does not refine"):
        tree.check()


@pytest.fixture(scope="module")
def split():
    """Grown with no branching cost: the top two stages split into one branch per task."""
    return grown("architecture.branching_cost=0")


def test_grown_model_roles_cover_every_parameter_and_match_the_gradients(split) -> None:
    model, tasks = split.model, split.tasks
    assert model.branching.levels[0] == [(0, 1, 2, 3)]  # the root stays shared
    assert model.branching.levels[1] == model.branching.levels[2] == [(0,), (1,), (2,), (3,)]
    roles = model.parameter_roles()
    assert sorted(roles) == sorted(n for n, _ in model.named_parameters())
    assert {roles[n].task for n in roles if n.startswith("stages.2.")} == set(tasks)
    assert all(roles[n].task is None for n in roles if n.startswith("stages.0."))
    params = dict(model.named_parameters())
    batch = first_batch(split.data, BATCH)
    batch["mask"] = {}  # every row labelled, so every task's loss reaches its branch
    for name, task in tasks.items():
        model.zero_grad(set_to_none=True)
        task.loss_mean(model(batch)[name], batch["y"][task.target]).backward()
        reached = {roles[n].task for n, p in params.items() if nonzero(p.grad)}
        assert reached == {None, name}, name


def test_a_split_above_a_vector_trunk_exposes_it_as_the_shared_representation(split) -> None:
    model = split.model
    assert model.has_representation and model.representation_stage == 0
    model(first_batch(split.data, BATCH))
    assert model.shared_representation.shape == (BATCH, 16)
    assert model.representation_views() == {}  # heads read different tensors
    assert model.last_shared_parameters()[0] is model.stages[0][0].layers[0].weight


def test_one_seed_grows_one_tree_and_leaves_the_global_random_state_alone() -> None:
    torch.manual_seed(123)
    first = grown(seed=3).model
    again = grown(seed=3).model
    assert first.branching.levels == again.branching.levels and len(first.rounds_log) >= 1
    assert first.rounds_log == again.rounds_log
    state, other = first.state_dict(), again.state_dict()
    assert all(torch.equal(state[k], other[k]) for k in state)
    # growing forks the random state: what is drawn after building is what hard sharing would draw
    cfg = small_cfg(["architecture=adaptive_branching", "data=tabular", "architecture.rounds=0"])
    cfg.encoder.hidden = [16, 16, 16]
    cfg.heads.hidden = [8]
    build_objects(cfg, seed=3)
    after_unfitted = torch.rand(3)
    grown(seed=3)
    assert torch.equal(torch.rand(3), after_unfitted)


def test_saved_weights_carry_the_tree(split) -> None:
    """Predicting rebuilds the model unfitted: it takes the saved tree; a grown model refuses another."""
    model, batch = split.model, first_batch(split.data, BATCH)
    cfg = small_cfg(["architecture=adaptive_branching", "data=tabular", "architecture.rounds=0"])
    cfg.encoder.hidden = [16, 16, 16]
    cfg.heads.hidden = [8]
    unfitted = build_objects(cfg).model
    unfitted.grown = False  # as `mtlrun predict` builds it: no training split to grow on
    unfitted.load_state_dict(model.state_dict())
    assert unfitted.branching.levels == model.branching.levels
    model.eval()
    unfitted.eval()
    out, again = model(batch), unfitted(batch)
    assert all(torch.equal(out[t], again[t]) for t in out)
    other = grown("architecture.rounds=0").model  # grown, hard sharing
    with pytest.raises(ConfigError, match="differs from the one grown now"):
        other.load_state_dict(model.state_dict())


@pytest.mark.parametrize(
    ("key", "value"),
    [("rounds", -1), ("warmup_steps", 0), ("branching_cost", -0.5), ("max_branches", 0), ("lr", 0)],
)
def test_config_mistakes_are_config_errors(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"architecture.{key}"):
        build_objects(
            small_cfg(["architecture=adaptive_branching", "data=kendall_toy", f"architecture.{key}={value}"])
        )


@pytest.mark.slow  # a real CLI run; the fast tier builds and steps the model in-process
def test_a_smoke_run_through_the_cli_writes_the_tree(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "mtlrun",
        "architecture=adaptive_branching",
        "data=tabular",
        "debug=smoke",
    ]
    result = subprocess.run(
        [*command, f"hydra.run.dir={folder}"], capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tree = json.loads((folder / "branching.json").read_text())
    assert tree["tasks"] == ["click", "purchase", "dwell_seconds", "reaction"]
    assert tree["stages"][0] == [tree["tasks"]] and tree["rounds"]
    Branching(
        tree["tasks"], [[tuple(map(tree["tasks"].index, g)) for g in s] for s in tree["stages"]]
    ).check()
    text = (folder / "branching.txt").read_text()
    assert sorted(line.strip() for line in text.splitlines() if "head " in line) == sorted(
        f"head {t}" for t in tree["tasks"]
    )
    assert json.loads((folder / "summary.json").read_text())["status"] == "completed"
