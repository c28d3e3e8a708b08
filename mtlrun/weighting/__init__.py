"""Loss-weighting and gradient-balancing methods behind one contract (see `mtlrun.weighting.base`).

Each method's module docstring states its maths, its options and where it departs from its paper. Outside
the runner, `load` builds any method from its shipped YAML, e.g. to aggregate a Jacobian:

```python
from mtlrun.weighting import load
upgrad = load("upgrad", ["depth", "normals"])
direction = upgrad.aggregate(G)      # G: [T, P] per-task gradients -> [P]
upgrad.last_weights                  # the [T] weights it used
```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def load(name: str, tasks: Sequence[str] | Mapping[str, Any], **overrides: Any):
    """Build weighting method `name` from conf/weighting/<name>.yaml with `overrides` applied.

    `tasks`: task names (treated as regression tasks, which only uncertainty weighting distinguishes) or a
    mapping of names to `mtlrun.tasks.Task`.
    """
    from mtlrun.errors import ConfigError
    from mtlrun.instantiate import build
    from mtlrun.paths import config_dir
    from mtlrun.tasks import Task

    path = Path(config_dir()) / "weighting" / f"{name}.yaml"
    if not path.exists():
        options = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"weighting '{name}' does not exist; choose one of {', '.join(options)}")
    cfg = OmegaConf.merge(OmegaConf.load(path), overrides)
    if not isinstance(tasks, Mapping):
        tasks = {t: Task(name=t, kind="regression", target=t) for t in tasks}
    return build(cfg, "weighting", tasks=tasks)
