"""ESMM, the Entire Space Multi-task Model (Ma, Zhao, Wang, Yan, Zhu, Jia & Gai 2018, "Entire Space
Multi-Task Model: An Effective Approach for Estimating Post-Click Conversion Rate", SIGIR): a click task
and a conversion-after-click task, where the conversion estimate is trained on every impression, never on
the clicked ones alone.

**The design.** A shared trunk (the injected encoder; on tables, the embeddings and an MLP) feeds one head
per task, as in hard sharing. Two of the tasks form the `chain` [click, conversion]: the click head is the
CTR tower, with logit a; the conversion head is the CVR tower, with logit b. With pCTR = σ(a) and
pCVR = σ(b) = P(conversion | click, x), the model's output for the conversion task is the click-and-convert
probability over all impressions,

```text
pCTCVR = P(click ∧ conversion | x) = pCTR · pCVR,
logit(pCTCVR) = log σ(a) + log σ(b) − log(σ(−a) + σ(a)·σ(−b))
```

(computed in log space, finite for any a and b). The two tasks' losses are the paper's: BCE(pCTR, click)
and BCE(pCTCVR, click ∧ conversion), both over every impression. The CVR tower has no loss of its own:
it learns only through the product, from every impression, clicked or not.

**Labels over all impressions.** The conversion task's target must be labelled on every impression, 0
where there was no click (the example feed's `conversion` column; its `purchase` column is empty without a
click, and a pCTCVR loss on clicked rows only would be the very sample-selection bias ESMM removes). The
model checks its first training batch: a conversion target unlabelled on a row whose click is 0, or 1 where
the click is 0, is a ConfigError that names the fix (`experiment=esmm_feed` sets
`tasks.purchase.target=conversion`).

**What the tasks predict.** The conversion task's prediction (its probability, metrics, `mtlrun predict`'s
`<task>` column) is pCTCVR. pCVR, the conversion rate of a clicked impression, is the model's extra
estimate `<task>_cvr` (`extra_estimates`, written by `mtlrun predict` after the tasks' columns). The click
task predicts pCTR; other tasks are plain heads on the trunk.

**Weighted positives.** A binary task with `pos_weight` w has its probability read as σ(logit − log w)
(`Task.probabilities`). The product uses the click task's calibrated pCTR, σ(a − log w_click), and the
conversion output is shifted by + log w_conversion, so the conversion task's probability is exactly
pCTR · pCVR and its `pos_weight` only reweighs rows.

**Config keys.**

- `chain`: [click task, conversion task], two distinct binary tasks of the run.
- `detach_ctr`: `true` (default) stops the pCTCVR loss's gradient at pCTR, so the CTR tower learns from
  the click labels only and stays the click task's own parameters; `false` lets it through, as the
  paper's loss does (the pCTCVR loss then moves the CTR tower too, which its role, owned by the click
  task, does not show: gradient-balancing methods count that gradient as the click task's).

**Parameter roles.** The trunk: part `trunk`, shared. Each head (the CTR and CVR towers included): part
`head`, owned by its task. With `detach_ctr`, task t's loss reaches only the trunk and head t, and the
heads' views of the trunk output are exact per-task views (`representation_views`).

**Departures from the paper.** The paper shares only the embedding table and gives each tower its own
MLP; here the whole injected encoder is shared and the towers are the configurable heads (set
`heads.<task>.hidden` for deeper towers). `detach_ctr: true`, the default, departs from the paper's
gradient; `false` restores it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlrun.architecture.base import EncoderFactory, MTLModel, ParamRole
from mtlrun.architecture.heads import TaskHeads
from mtlrun.errors import ConfigError
from mtlrun.tasks import Task


def logit_of_product(a: Tensor, b: Tensor) -> Tensor:
    """logit(σ(a)·σ(b)) in log space: log σ(a) + log σ(b) − log(1 − σ(a)σ(b)), where
    1 − σ(a)σ(b) = σ(−a) + σ(a)σ(−b); finite for every finite a, b."""
    log_a, log_b = F.logsigmoid(a), F.logsigmoid(b)
    return log_a + log_b - torch.logaddexp(F.logsigmoid(-a), log_a + F.logsigmoid(-b))


def check_chain_names(key: str, names: Sequence[str] | None, tasks: Mapping[str, Task], needs: str) -> None:
    """A ConfigError naming `key` when `names` holds a task the run lacks, or a task twice; `needs`: what the
    key must list (for the message)."""
    for name in names or ():
        if name not in tasks:
            raise ConfigError(
                f"{key}: '{name}' is not a task of this run (tasks: {', '.join(tasks)}); set {key} to {needs}"
            )
    if names is not None and len(set(names)) != len(names):
        raise ConfigError(f"{key}: {list(names)} names a task twice; set it to {needs}")


def check_funnel_labels(key: str, batch: Mapping, earlier: Task, later: Task, why: str) -> None:
    """A ConfigError naming `key` where a training batch's labels are not those of two funnel steps over every
    impression: `later`'s target unlabelled, or 1, on a row whose `earlier` label is 0. `why`: what the
    design would get wrong (for the message)."""
    masks = batch.get("mask") or {}
    labels = batch.get("y") or {}
    if earlier.target not in labels or later.target not in labels:
        return
    negative = labels[earlier.target] == 0
    if earlier.target in masks:
        negative = negative & masks[earlier.target]
    later_mask = masks.get(later.target)
    unlabelled = negative & ~later_mask if later_mask is not None else torch.zeros_like(negative)
    positive = negative & (labels[later.target] == 1)
    if later_mask is not None:
        positive = positive & later_mask
    if bool(unlabelled.any()):
        problem = f"has no label on rows where '{earlier.name}' is 0"
    elif bool(positive.any()):
        problem = f"is 1 on rows where '{earlier.name}' is 0"
    else:
        return
    raise ConfigError(
        f"{key}: task '{later.name}' (target '{later.target}') {problem}, so {why}; give it a target "
        f"labelled on every row, 0 where '{earlier.name}' is 0 (for the example feed: "
        f"tasks.{later.name}.target=conversion, as experiment=esmm_feed sets)"
    )


class ESMM(MTLModel):
    """A shared trunk, one head per task; the conversion task outputs logit(pCTR · pCVR) (module docstring)."""

    has_representation = True

    def __init__(
        self,
        encoder: EncoderFactory,
        tasks: Mapping[str, Task],
        heads: Mapping,
        chain: Sequence[str] = ("click", "purchase"),
        detach_ctr: bool = True,
    ) -> None:
        chain = list(chain) if chain is not None else None
        self.check_tasks(tasks, {"chain": chain})
        super().__init__(tasks)
        self.click, self.conversion = chain
        self.detach_ctr = bool(detach_ctr)
        self.trunk = encoder()
        self.heads = TaskHeads(self.trunk.out_dim, self.tasks, heads)
        self.cvr_logits: Tensor | None = None  # logit(pCVR) of the last forward pass
        self._labels_checked = False

    @classmethod
    def check_tasks(cls, tasks: Mapping[str, Task], options: Mapping, batch: Mapping | None = None) -> None:
        chain = options.get("chain", ("click", "purchase"))
        if chain is None or isinstance(chain, str) or len(chain) != 2:
            raise ConfigError(
                f"architecture.chain: {chain!r}; give two tasks, [click task, conversion task], e.g. [click, purchase]"
            )
        check_chain_names("architecture.chain", chain, tasks, "[click task, conversion task], both binary")
        for name in chain:
            if tasks[name].kind != "binary":
                raise ConfigError(
                    f"architecture.chain: task '{name}' is {tasks[name].kind}; ESMM multiplies two probabilities, "
                    "so both tasks of the chain must be binary"
                )
        if batch is not None:
            click, conversion = (tasks[name] for name in chain)
            check_funnel_labels(
                "architecture.chain",
                batch,
                click,
                conversion,
                "its loss on pCTR x pCVR would see clicked rows only (the selection bias ESMM removes)",
            )

    def forward(self, batch: dict) -> dict[str, Tensor]:
        if self.training and not self._labels_checked and "y" in batch:
            self.check_tasks(self.tasks, {"chain": [self.click, self.conversion]}, batch)
            self._labels_checked = True
        self.shared_representation = self.trunk(batch["x"])
        out = self.heads(self.shared_representation)
        click, conversion = self.tasks[self.click], self.tasks[self.conversion]
        ctr_logit = out[self.click] - _log_weight(click)
        if self.detach_ctr:
            ctr_logit = ctr_logit.detach()
        self.cvr_logits = out[self.conversion]
        out[self.conversion] = logit_of_product(ctr_logit, self.cvr_logits) + _log_weight(conversion)
        return out

    def extra_estimates(self) -> dict[str, Tensor]:
        """{"<conversion task>_cvr": pCVR [N]} of the last forward pass."""
        if self.cvr_logits is None:
            return {}
        return {f"{self.conversion}_cvr": self.cvr_logits.sigmoid()}

    def representation_views(self) -> dict[str, Tensor]:
        return self.heads.views if self.heads.separable and self.detach_ctr else {}

    def parameter_roles(self) -> dict[str, ParamRole]:
        return self.roles_by_prefix({"trunk": ParamRole("trunk")} | self.heads.roles("heads"))


def _log_weight(task: Task) -> float:
    """log of a binary task's positive-row weight in effect (0 without one)."""
    weight = task.positive_weight
    return math.log(weight) if weight is not None and weight != 1 else 0.0
