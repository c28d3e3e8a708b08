"""What the training steps measure besides the losses, averaged per epoch into metrics.csv.

* ``grad_cosine`` rows (task pair ``a~b``): the pairwise cosine similarity of the task gradients over the
  shared parameters (or the shared representation), sampled every ``trainer.grad_cosine_every`` steps. The
  backward engine hands over the [T, P] matrix when it computes one anyway; for loss-based methods sampling
  costs T extra backward passes and is off unless ``trainer.grad_cosine_for_loss_based``.
* ``penalty`` (task ``model``): the architecture's regularisation term (``MTLModel.penalty``), every step;
  ``regularizer``: the term of the run's regulariser (``regularizer=``, mtlrun/regularizer/), every step.

The sums span an epoch, so they go into the checkpoint: a run resumed in the middle of an epoch logs the
same means as an uninterrupted one.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from torch import Tensor


def cosine_matrix(grads: Tensor) -> Tensor:
    """[T, T] cosine similarities of the rows of ``grads`` ([T, P])."""
    unit = grads / grads.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return unit @ unit.T


class StepDiagnostics:
    def __init__(self, task_names: Sequence[str], cosine_every: int) -> None:
        self.task_names = list(task_names)
        self.cosine_every = cosine_every  # 0: never sample
        self.cosine_sum: Tensor | None = None
        self.cosine_count = 0
        self.penalties: dict[str, list] = {}  # row name -> [sum, count]: "penalty", "regularizer"

    def cosine_due(self, step: int) -> bool:
        """Whether step ``step`` (counted from 1) samples the gradient cosines."""
        return bool(self.cosine_every) and step % self.cosine_every == 0

    def record_cosines(self, grads: Tensor) -> None:
        cos = cosine_matrix(grads.detach().float())
        self.cosine_sum = cos if self.cosine_sum is None else self.cosine_sum + cos
        self.cosine_count += 1

    def record_penalty(self, penalty: Tensor, name: str = "penalty") -> None:
        value = penalty.detach().float()
        total, count = self.penalties.get(name, (0.0, 0))
        # new objects, so that a state handed out by `state_dict` does not change
        self.penalties = self.penalties | {name: [value + total, count + 1]}

    def pop_rows(self) -> dict[str, dict[str, float]]:
        """The means since the last call as metrics.csv rows, then start again: ``{"a~b": {"grad_cosine":
        mean}}`` for each task pair sampled and ``{"model": {"penalty": mean, "regularizer": mean}}`` for the
        terms recorded (a model's penalty, a regulariser's)."""
        rows: dict[str, dict[str, float]] = {}
        if self.cosine_sum is not None:
            mean = (self.cosine_sum / self.cosine_count).tolist()
            names = self.task_names
            for i, j in itertools.combinations(range(len(names)), 2):
                rows[f"{names[i]}~{names[j]}"] = {"grad_cosine": mean[i][j]}
        if self.penalties:
            rows["model"] = {name: (total / count).item() for name, (total, count) in self.penalties.items()}
        self.cosine_sum, self.cosine_count, self.penalties = None, 0, {}
        return rows

    _STATE = ("cosine_sum", "cosine_count", "penalties")

    def state_dict(self) -> dict:
        return {key: getattr(self, key) for key in self._STATE}

    def load_state_dict(self, state: dict) -> None:
        # a checkpoint from before regularisers holds one running sum, the model's penalty
        if "penalty_sum" in state:
            total, count = state["penalty_sum"], state["penalty_count"]
            state = state | {"penalties": {} if total is None else {"penalty": [total, count]}}
        for key in self._STATE:
            setattr(self, key, state[key])
