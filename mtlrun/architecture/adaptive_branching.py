"""Fully-adaptive feature sharing (Lu, Kumar, Zhai, Cheng, Javidi & Feris 2017, "Fully-adaptive Feature
Sharing in Multi-Task Networks with Applications in Person Attribute Classification", CVPR): start from a
thin network that every task shares and widen it greedily, layer by layer from the top, giving tasks that
are rarely easy or difficult on the same examples branches of their own.

**The tree.** The encoder's `stages` s_1 … s_K−1 are the layers that can branch; s_0, the root, stays
shared, so every task reaches the shared parameters (a task parted at the input would be a separate
network, the single-task design). A branching assigns each
stage a partition of the tasks into branches, each branch its own copy of the stage, fed by the branch of
the stage below that holds the same tasks; partitions only split going up, so the network is a tree whose
root is the input and whose leaves feed the heads. Unfitted (as built), every stage is one branch: hard
sharing.

**Growing** (`fit_structure`, before the run's optimizer exists). The junction starts at the top: its
children are the T heads, and s_K−1 the layer below them. Each round

1. trains the current network for `warmup_steps` steps (its own Adam, learning rate `lr`, batches of
   `batch_size` from the training split, the sum of the task losses) and, over the second half of these
   steps, counts for each pair of tasks how often an example is difficult for both or easy for both:
   e_n,i = 1 when example n's loss for task i is at least task i's mean loss over the batch, and
   A(i, j) = P(e_n,i = e_n,j) over the examples labelled for both;
2. computes the affinity between the junction's children (branches, as sets of tasks):
   A_b(k, l) = ½ (Ã(k, l) + Ã(l, k)), Ã(k, l) = mean_(i ∈ k) min_(j ∈ l) A(i, j);
3. groups the children: for each d ≤ `max_branches`, g_d is the complete-linkage grouping into d
   groups under the distance 1 − A_b, and the round keeps the d minimising

   ```text
   L(d) = (1/d) Σ_(groups g of g_d) max_(k, l ∈ g) (1 − A_b(k, l))  +  α (d − 1)
   ```

   (task separation plus α = `branching_cost` per new branch; ties go to the smaller d);
4. if d > 1, replaces the junction's stage by d copies of it (each starting from the trained weights, as in
   the paper), one per group, and moves the junction one stage down, its children being the d new branches;
   with d = 1 growing stops, since the stage below has a single child.

Growing stops after `rounds` rounds or once s_1 has branched. With `keep_weights: false` every copy and head
then restarts from the thin network's initial weights, so the run's comparison with other designs does not
include the warm-up's training. Growing draws its batches and any dropout from `seed` alone and leaves the
global random state as it found it, so one seed grows one tree: a resumed run regrows the tree its checkpoint
holds (the branch codes, a buffer, are compared on loading and a mismatch is an error). When predicting
there is no training split: the model is rebuilt unfitted and takes its tree from the saved weights.

**Outputs.** The run folder gets branching.json (the partitions per stage, the nested tree, and each
round's task affinities, branch affinities, losses L(d) and chosen groups) and branching.txt (the tree as
indented lines); the tree is also logged.

**Config keys.**

- `rounds`: widening rounds, at most K − 1, one per stage from the top (0: hard sharing, no warm-up).
- `warmup_steps`: training steps per round (≥ 1).
- `branching_cost`: α ≥ 0, the cost of each new branch against the separation term, which lies in [0, 1].
- `max_branches`: the most groups a junction's children form (≥ 1); null: as many as there are children.
- `lr`, `batch_size`: the warm-up's Adam learning rate and batch size.
- `keep_weights`: whether the grown network keeps the warm-up's weights (the paper) or restarts.

**Parameter roles.** A branch whose tasks are one task t: part `trunk`, owned by t (only t's loss reaches
it). A branch of several tasks, including the stages every task shares: part `trunk`, shared (task None);
gradient methods differentiate them per task, with zero rows for the tasks outside the branch. Heads: part
`head`, owned by their task. There is a shared representation where one vector carries every shared
parameter's gradient: the output of the highest stage all tasks share, when every branch above it holds a
single task (or there is no branch at all) and the stage outputs vectors.

**Departures from the paper.** The thin network is the configured encoder, initialised at random: the
paper selects its filters from a pre-trained wide network by simultaneous orthogonal matching pursuit, and
widens a VGG-16 trained on faces and clothes. The branching cost is α (d − 1) for every stage, where the
paper also scales it by 2^(pooling layers above the stage) and weighs the separation term; here α alone sets
the trade-off. The paper widens during one long training run; here growing is a separate warm-up before
the run's optimizer exists, each round with a fresh Adam, and the affinity is averaged over the second half
of each round's steps rather than a running average.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from mtlrun.architecture.base import EncoderFactory, MTLModel, ParamRole
from mtlrun.architecture.branching import AffinityCounter, Branching, Group, best_grouping, branch_affinity
from mtlrun.architecture.heads import TaskHeads
from mtlrun.encoder.stages import encoder_stages
from mtlrun.errors import ConfigError, check_int
from mtlrun.tasks import Task

log = logging.getLogger("mtlrun")

BRANCHING_JSON = "branching.json"
BRANCHING_TEXT = "branching.txt"


def _check_number(key: str, value: Any, positive: bool) -> None:
    ok = not isinstance(value, bool) and isinstance(value, int | float)
    ok = ok and (value > 0 if positive else value >= 0)
    if not ok:
        raise ConfigError(
            f"architecture.{key}: expected a number {'> 0' if positive else '>= 0'}, got {value!r}"
        )


class AdaptiveBranching(MTLModel):
    """The encoder's stages as a tree of task branches, grown by `fit_structure` (module docstring)."""

    def __init__(
        self,
        encoder: EncoderFactory,
        tasks: Mapping[str, Task],
        heads: Mapping,
        rounds: int = 2,
        warmup_steps: int = 20,
        branching_cost: float = 0.25,
        max_branches: int | None = None,
        lr: float = 1e-3,
        batch_size: int = 64,
        keep_weights: bool = True,
    ) -> None:
        check_int("architecture.rounds", rounds, 0)
        check_int("architecture.warmup_steps", warmup_steps, 1)
        check_int("architecture.max_branches", max_branches, 1, allow_none=True)
        check_int("architecture.batch_size", batch_size, 2)
        _check_number("branching_cost", branching_cost, positive=False)
        _check_number("lr", lr, positive=True)
        if not isinstance(keep_weights, bool):
            raise ConfigError(f"architecture.keep_weights: expected true or false, got {keep_weights!r}")
        super().__init__(tasks)
        self.rounds, self.warmup_steps, self.batch_size = rounds, warmup_steps, batch_size
        self.branching_cost, self.max_branches, self.lr = float(branching_cost), max_branches, float(lr)
        self.keep_weights = keep_weights
        backbone = encoder()
        self.stage_shapes = [tuple(shape) for shape in backbone.stage_shapes]
        # stages[k][b]: branch b of stage k (the stages hold every parameter of the encoders mtlrun ships)
        self.stages = nn.ModuleList(
            nn.ModuleList([stage]) for stage in encoder_stages(backbone, "architecture")
        )
        self.heads = TaskHeads(backbone.out_dim, self.tasks, heads)
        self.branching = Branching.shared(list(self.tasks), len(self.stages))
        self.register_buffer("branch_codes", self.branching.codes())
        self.grown = False  # True once fit_structure fixed the tree from the data
        self.rounds_log: list[dict] = []
        self._refresh()

    # ---------------------------------------------------------------------------------------------- the tree
    def _refresh(self) -> None:
        """Recompute what the forward pass and the roles read from the tree."""
        b = self.branching
        b.check()
        self.branch_codes.copy_(b.codes())
        self.parents = [
            [0] * len(groups) if k == 0 else [b.parent(k, i) for i in range(len(groups))]
            for k, groups in enumerate(b.levels)
        ]
        self.leaf_of = [b.branch_of(len(b.levels) - 1, t) for t in range(len(b.tasks))]
        depth = b.trunk_depth()
        above = [g for groups in b.levels[depth:] for g in groups]
        vector = depth > 0 and len(self.stage_shapes[depth - 1]) == 1
        self.representation_stage = depth - 1 if vector and all(len(g) == 1 for g in above) else None
        self.has_representation = self.representation_stage is not None
        self.shared_representation = None  # a forward pass of the new shape sets it again where it exists

    def _split(self, stage: int, groups: list[Group]) -> None:
        """Replace the single branch of `stage` by one copy per group of tasks."""
        (module,) = self.stages[stage]
        self.stages[stage] = nn.ModuleList(copy.deepcopy(module) for _ in groups)
        self.branching.levels[stage] = sorted(groups)
        self._refresh()

    def _rebuild(self, branching: Branching) -> None:
        """Take `branching`'s shape, each branch a copy of its stage's first branch (weights to be loaded)."""
        for k, groups in enumerate(branching.levels):
            self.stages[k] = nn.ModuleList(copy.deepcopy(self.stages[k][0]) for _ in groups)
        self.branching = branching
        self._refresh()

    # ---------------------------------------------------------------------------------------------- forward
    def forward(self, batch: dict) -> dict[str, Tensor]:
        outs = [batch["x"]]
        for k, (modules, parents) in enumerate(zip(self.stages, self.parents, strict=True)):
            outs = [module(outs[parent]) for module, parent in zip(modules, parents, strict=True)]
            if k == self.representation_stage:
                self.shared_representation = outs[0]
        if len(outs) == 1:
            return self.heads(outs[0])
        return self.heads({name: outs[self.leaf_of[t]] for t, name in enumerate(self.tasks)})

    def representation_views(self) -> dict[str, Tensor]:
        top = self.representation_stage == len(self.stages) - 1
        return self.heads.views if top and self.heads.separable else {}

    def parameter_roles(self) -> dict[str, ParamRole]:
        prefixes = {}
        for k, groups in enumerate(self.branching.levels):
            for i, group in enumerate(groups):
                owner = self.branching.tasks[group[0]] if len(group) == 1 else None
                prefixes[f"stages.{k}.{i}"] = ParamRole("trunk", owner)
        return self.roles_by_prefix(prefixes | self.heads.roles("heads"))

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The last layer with parameters of the highest stage every task shares (GradNorm's W); none when
        the tasks part at the first stage."""
        depth = self.branching.trunk_depth()
        last: list[nn.Parameter] = []
        for module in self.stages[depth - 1].modules() if depth else ():
            params = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if params:
                last = params
        return last

    # ---------------------------------------------------------------------------------------------- growing
    def fit_structure(self, data: Any, seed: int) -> None:
        """Grow the tree on `data`'s training split (module docstring); nothing without one (predicting)."""
        splits = getattr(data, "splits", None)
        if not splits or "train" not in splits or len(splits["train"]) < 2:
            return
        initial = None if self.keep_weights else copy.deepcopy(self.state_dict())
        device = next(self.parameters()).device
        was_training = self.training
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            batches = self._batches(data, torch.Generator().manual_seed(seed))
            self.train()
            self._grow(batches)
        self.train(was_training)
        if initial is not None:
            self._restart(initial)
        self.grown = True
        log.info("adaptive_branching grew this tree:\n%s", self.branching.text().rstrip())

    def _batches(self, data: Any, generator: torch.Generator) -> Iterator[dict]:
        """Training batches without end, reshuffled every pass; a last batch of one row is skipped."""
        while True:
            for batch in data.batches("train", self.batch_size, shuffle=True, generator=generator):
                if batch["x"].shape[0] > 1:
                    yield batch

    def _grow(self, batches: Iterator[dict]) -> None:
        stage = len(self.stages) - 1
        children: list[Group] = [(t,) for t in range(len(self.tasks))]
        for round_index in range(self.rounds):
            if stage < 1 or len(children) < 2:  # stage 0 stays shared: the tree has one root
                break
            affinity = self._warm_up(batches)
            among = branch_affinity(affinity, children)
            choice = best_grouping(among, self.branching_cost, self.max_branches)
            groups = [tuple(sorted(t for c in g for t in children[c])) for g in choice.groups]
            names = self.branching.names
            self.rounds_log.append(
                {
                    "round": round_index + 1,
                    "stage": stage,
                    "children": [names(c) for c in children],
                    "task_affinity": [[round(v, 4) for v in row] for row in affinity.tolist()],
                    "branch_affinity": [[round(v, 4) for v in row] for row in among.tolist()],
                    "losses": {str(d): round(v, 4) for d, v in choice.losses.items()},
                    "groups": [names(g) for g in groups],
                }
            )
            if len(groups) == 1:
                break
            self._split(stage, groups)
            children, stage = groups, stage - 1

    def _warm_up(self, batches: Iterator[dict]) -> Tensor:
        """Train the current network `warmup_steps` steps; the task affinity over the second half."""
        optimizer = torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr)
        counter = AffinityCounter(len(self.tasks))
        for step in range(self.warmup_steps):
            batch = next(batches)
            out = self(batch)
            per_example, labelled, total = [], [], 0.0
            for name, task in self.tasks.items():
                prediction, target, mask = out[name].float(), batch["y"][task.target], task.labelled(batch)
                total = total + task.loss_mean(prediction, target, mask, batch.get("weight"))
                if mask is None:
                    mask = torch.ones(target.shape[0], dtype=torch.bool, device=target.device)
                else:  # unlabelled rows may hold any placeholder: replace it before the per-example loss
                    target = target.masked_fill(~mask.view(-1, *[1] * (target.ndim - 1)), 0)
                per_example.append(task.loss_per_sample(prediction, target).detach())
                labelled.append(mask)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            if step >= self.warmup_steps // 2:
                counter.add(torch.stack(per_example, 1), torch.stack(labelled, 1))
        optimizer.zero_grad(set_to_none=True)
        return counter.affinity()

    def _restart(self, initial: dict[str, Tensor]) -> None:
        """Every branch from its stage's initial weights, every head from its own (`keep_weights: false`)."""
        for k, modules in enumerate(self.stages):
            prefix = f"stages.{k}.0."
            own = {n[len(prefix) :]: v for n, v in initial.items() if n.startswith(prefix)}
            for module in modules:
                module.load_state_dict(own)
        self.heads.load_state_dict(
            {n[len("heads.") :]: v for n, v in initial.items() if n.startswith("heads.")}
        )

    # ------------------------------------------------------------------------------------------ saving, files
    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Take the saved tree first: an unfitted model (predicting) rebuilds itself into it; a grown one
        must have grown the same tree (a resumed run regrows it from the same data and seed)."""
        codes = state_dict.get("branch_codes")
        if isinstance(codes, Tensor) and codes.shape == self.branch_codes.shape:
            codes = codes.to("cpu", torch.long)
            if not torch.equal(codes, self.branch_codes.cpu()):
                if self.grown:
                    saved = Branching.from_codes(self.branching.tasks, codes)
                    raise ConfigError(
                        f"architecture=adaptive_branching: the saved model's tree {saved.levels} differs from the "
                        f"one grown now, {self.branching.levels}, from the same config and seed (growing on a GPU "
                        "can differ between runs); resume on the machine that trained it, or train again"
                    )
                self._rebuild(Branching.from_codes(self.branching.tasks, codes))
                self.to(self.branch_codes.device)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def artifacts(self) -> dict[str, str]:
        """branching.json and branching.txt (module docstring)."""
        return {
            BRANCHING_JSON: self.branching.to_json(self.rounds_log),
            BRANCHING_TEXT: self.branching.text(),
        }
