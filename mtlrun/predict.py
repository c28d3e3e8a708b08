"""``mtlrun predict run=PATH data.path=FILE [key=value ...]``: a trained run's predictions on a new file.

The run folder has all it takes: ``config.yaml`` rebuilds the tasks and the model through the runner's
setup functions, the data set's class turns the file into model input with what the run saved
(``TensorData.new_input``; for ``data=tabular`` the fitted ``preprocessing.json``, never refitted), and the
weights come from ``best_model.pt`` (the selected epoch) or ``checkpoint.pt`` (the last checkpoint),
loaded with ``torch.load(weights_only=True)``, so a checkpoint file cannot run code.

The table goes to a new file: ``out`` (or the default) must not exist yet, and is never the input file
(both are refused before any work). It has the ``keep`` columns first, then, task by task in config order:

* binary: ``<task>``, the probability of the positive class (the second of the task's classes);
* regression: ``<task>``, the value in the target's original units (standardisation undone);
* multiclass: ``<task>``, the most probable label (original labels), then ``<task>_p_<label>`` per class;
* multilabel: ``<task>_p_<label column>`` per label column (``<task>_p_<i>`` without column names).

Auxiliary tasks (``auxiliary: true``, mtlrun/auxiliary.py) are helpers, not results: they get no columns.
Then the model's extra estimates (``MTLModel.extra_estimates``), one column each: ESMM's ``<task>_cvr``.

torch and pandas are imported when predicting, so ``mtlrun predict --help`` answers at once.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mtlrun import rundir
from mtlrun.errors import ConfigError, DataError, MtlrunError, check_choice

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch
    from omegaconf import DictConfig

    from mtlrun.architecture.base import MTLModel
    from mtlrun.data.base import NewInput
    from mtlrun.tasks import Task

CONFIG_FILE = "config.yaml"
WEIGHTS = {"best": "best_model.pt", "last": "checkpoint.pt"}  # checkpoint=... -> the file in the run folder
DEVICES = ("auto", "cpu", "cuda")
WRITERS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
TRAIN_HINT = "train one first, e.g. `mtlrun experiment=tabular_example`, and pass its folder"

# key -> (placeholder, help); the keys `mtlrun predict` takes, in the order --help lists them
KEYS = {
    "run": ("PATH", "the run folder (outputs/runs/<date>/<time>, or one job's folder of a sweep); required"),
    "data.path": (
        "FILE",
        "the file to predict on (.csv or .parquet) with the run's feature columns, or a shipped example "
        "('${mtlrun.example:feed/feed_new.csv}'); required",
    ),
    "out": (
        "FILE",
        "the table to write, .csv or .parquet, a new file (default: <run>/predictions/<FILE's stem>.csv)",
    ),
    "checkpoint": (
        "best",
        "best: best_model.pt (the selected epoch); last: checkpoint.pt (the last checkpoint)",
    ),
    "keep": ("[COL,...]", "columns of the input copied to the output first, e.g. keep=[impression_id]"),
    "device": ("auto", "auto (CUDA when present), cpu or cuda"),
    "batch_size": ("1024", "rows per forward pass"),
}

USAGE = (
    "usage: mtlrun predict run=PATH data.path=FILE [key=value ...]\n\n"
    "Predict every task of a trained run on a new file. The run's config.yaml rebuilds the model, what the\n"
    "run saved (data=tabular: preprocessing.json, never refitted) transforms the file, and the weights are\n"
    "loaded with torch.load(weights_only=True). Target columns in the file are ignored.\n\nkeys:\n"
    + "\n".join(f"  {f'{key}={value}':<22}{text}" for key, (value, text) in KEYS.items())
    + "\n\ncolumns written: the keep columns, then per task: binary <task> = probability of the positive\n"
    "class; regression <task> = value in original units; multiclass <task> = predicted label, then\n"
    "<task>_p_<label> per class; multilabel <task>_p_<label column> per label.\n"
)


@dataclass
class Options:
    """What ``mtlrun predict`` was asked (see ``KEYS``)."""

    run: Path
    path: str
    out: Path | None = None
    checkpoint: str = "best"
    keep: list[str] = field(default_factory=list)
    device: str = "auto"
    batch_size: int = 1024


# ---------------------------------------------------------------------------------------------- arguments
def parse_list(text: str) -> list[str]:
    """``[a,b]``, ``a,b``, ``a`` or ``[]`` -> column names (quotes around a name are dropped)."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    names = [item.strip().strip("'\"") for item in text.split(",")]
    return list(dict.fromkeys(name for name in names if name))


def resolved(text: str) -> str:
    """``${mtlrun.example:<file>}`` (as in a config; quote it in the shell) is a shipped example file's
    path, e.g. ``data.path='${mtlrun.example:feed/feed_new.csv}'``; any other text is a path as it is."""
    from mtlrun import examples

    match = re.fullmatch(r"\$\{mtlrun\.example:(.+)\}", text.strip())
    return examples.path(match.group(1)) if match else text


def parse_args(argv: Sequence[str]) -> Options:
    """``key=value`` arguments -> Options; a ConfigError names an unknown or repeated key, a missing
    required one, or a bad value."""
    values: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(
                f"'{arg}': mtlrun predict takes key=value arguments, e.g. run=PATH data.path=FILE "
                "(mtlrun predict --help lists the keys)"
            )
        if key not in KEYS:
            close = difflib.get_close_matches(key, list(KEYS), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"{key}: unknown key; {hint}mtlrun predict takes {', '.join(KEYS)}")
        if key in values:
            raise ConfigError(f"{key}: given twice ({values[key]!r} and {value!r}); give it once")
        values[key] = value
    for key in ("run", "data.path"):
        if not values.get(key):
            raise ConfigError(
                f"{key}: required; usage: mtlrun predict run=PATH data.path=FILE (mtlrun predict --help)"
            )
    options = Options(run=Path(values["run"]).expanduser(), path=resolved(values["data.path"]))
    if values.get("out"):
        options.out = Path(values["out"]).expanduser()
        writer_for(options.out)  # a bad extension fails before any work
    options.checkpoint = values.get("checkpoint", options.checkpoint)
    check_choice("checkpoint", options.checkpoint, tuple(WEIGHTS))
    options.device = values.get("device", options.device)
    check_choice("device", options.device, DEVICES)
    options.keep = parse_list(values.get("keep", ""))
    if "batch_size" in values:
        text = values["batch_size"]
        if not text.isdigit() or int(text) < 1:
            raise ConfigError(f"batch_size: {text!r}; give a positive whole number of rows")
        options.batch_size = int(text)
    return options


# ---------------------------------------------------------------------------------------------- the run
def check_run(run_dir: Path, checkpoint: str) -> Path:
    """The weights file of ``run_dir`` that ``checkpoint`` names, after checking the folder has a config."""
    if not run_dir.is_dir():
        raise ConfigError(f"run={run_dir}: no such folder; {TRAIN_HINT}")
    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"run={run_dir}: no {CONFIG_FILE} in it, so it is not a run folder; {TRAIN_HINT}")
    weights = run_dir / WEIGHTS[checkpoint]
    if not weights.is_file():
        other = next(k for k in WEIGHTS if k != checkpoint)
        alternative = (
            f"use checkpoint={other} ({WEIGHTS[other]} is there), or "
            if (run_dir / WEIGHTS[other]).is_file()
            else ""
        )
        raise ConfigError(
            f"run={run_dir}: no {WEIGHTS[checkpoint]} (checkpoint={checkpoint}); {alternative}train the run to "
            "the end with trainer.checkpoint=true (the default), e.g. `mtlrun experiment=tabular_example`"
        )
    return weights


def run_status(run_dir: Path) -> str | None:
    """The ``status`` of the run's summary.json (None when it cannot be read)."""
    return (rundir.read_summary(run_dir) or {}).get("status")


def fitted_outputs(run_dir: Path) -> dict[str, int]:
    """{task: head width} of the run's reconstruction tasks (mtlrun/auxiliary.py), from its summary.json."""
    described = (rundir.read_summary(run_dir) or {}).get("tasks") or {}
    return {name: int(t["outputs"]) for name, t in described.items() if "outputs" in t}


def fitted_pos_weights(run_dir: Path) -> dict[str, float]:
    """{task: pos_weight} as the run fitted it (``pos_weight: auto``), from its summary.json."""
    described = (rundir.read_summary(run_dir) or {}).get("tasks") or {}
    return {name: t["pos_weight"] for name, t in described.items() if "pos_weight" in t}


def rebuild_model(
    cfg: DictConfig,
    new: NewInput,
    device: torch.device,
    pos_weights: Mapping[str, float],
    outputs: Mapping[str, int] | None = None,
) -> tuple[MTLModel, dict[str, Task]]:
    """The tasks and the (untrained) model of the run's config, built as the runner builds them, with the
    data set's fitted task settings (classes, target scales) taken from ``new`` instead of training data,
    and the fitted ``pos_weight`` of each binary task (its probabilities undo it, see Task.probabilities)."""
    from omegaconf import OmegaConf

    from mtlrun.tasks import build_tasks
    from mtlrun.trainer.setup import setup_model

    tasks = build_tasks(OmegaConf.to_container(cfg.tasks, resolve=True))
    settings = new.task_settings()
    for name, task in tasks.items():
        task = task.with_data_settings(new.name, settings.get(task.target, {}))
        if task.pos_weight == "auto":
            if name not in pos_weights:
                raise DataError(
                    f"tasks.{name}.pos_weight=auto: the run's summary.json does not record the fitted "
                    "value; train the run again with this version of mtlrun"
                )
            task = task.with_fitted(pos_weight=float(pos_weights[name]))
        if name in (outputs or {}):  # a reconstruction's head width, as trained
            task = task.with_fitted(outputs=outputs[name])
        tasks[name] = task
    return setup_model(cfg, tasks, new, device), tasks


def load_weights(model: MTLModel, path: Path) -> None:
    """Load the model part of ``path`` (best_model.pt or checkpoint.pt) with ``weights_only=True``."""
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused, truncated file, not a torch file
        raise DataError(
            f"{path}: cannot load it ({str(err).splitlines()[0]}); the file is damaged or was not written by "
            "mtlrun: train the run again"
        ) from None
    state = saved.get("model") if isinstance(saved, dict) else None
    if not isinstance(state, dict):
        raise DataError(
            f"{path}: holds no model weights (no 'model' entry); point run= at an mtlrun run folder"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(
            f"{path}: the weights do not fit the model its {CONFIG_FILE} describes "
            f"({str(err).splitlines()[0]}); was {CONFIG_FILE} edited after training? restore it"
        ) from None


# ---------------------------------------------------------------------------------------------- predicting
def estimates(
    model: MTLModel, tasks: Mapping[str, Task], x: torch.Tensor, batch_size: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """{task: estimate [N, C]} on the CPU: probabilities for classifiers, values (as trained) for
    regression (``Task.estimate``), in eval mode, without gradients, ``batch_size`` rows at a time; then
    {column: [N, 1]} of the model's extra estimates (``MTLModel.extra_estimates``)."""
    import torch

    model.eval()
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in tasks}
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            outputs = model({"x": x[start : start + batch_size].to(device)})
            for name, task in tasks.items():
                parts[name].append(task.estimate(outputs[name].float()).cpu())
            for column, values in model.extra_estimates().items():  # e.g. ESMM's pCVR
                parts.setdefault(column, []).append(values.float().reshape(-1, 1).cpu())
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


def task_columns(task: Task, estimate: np.ndarray) -> dict[str, np.ndarray]:
    """The output columns of one task from its estimate [N, C] (see the module docstring for the names)."""
    import numpy as np

    if task.kind == "regression":
        values = estimate[:, 0].astype(np.float64)
        if task.target_scale is not None:
            mean, std = task.target_scale
            values = values * std + mean
        return {task.name: values}
    if task.kind == "binary":
        return {task.name: estimate[:, 0]}
    names = task.class_labels if task.kind == "multiclass" else task.columns
    labels = list(names) if names else list(range(estimate.shape[1]))
    probabilities = {f"{task.name}_p_{label}": estimate[:, i] for i, label in enumerate(labels)}
    if task.kind == "multilabel":
        return probabilities
    return {task.name: np.array(labels)[estimate.argmax(1)]} | probabilities


def prediction_table(
    tasks: Mapping[str, Task], task_estimates: Mapping[str, np.ndarray], kept: pd.DataFrame
) -> pd.DataFrame:
    """The kept columns, then every task's columns, then the extra estimates' (the entries of
    ``task_estimates`` that are no task); a kept column named like a prediction is an error."""
    import pandas as pd

    columns: dict[str, np.ndarray] = {}
    for name, task in tasks.items():
        columns |= task_columns(task, task_estimates[name])
    columns |= {name: values[:, 0] for name, values in task_estimates.items() if name not in tasks}
    clash = [c for c in kept.columns if c in columns]
    if clash:
        raise ConfigError(
            f"keep: column '{clash[0]}' has the name of a prediction column; leave it out of keep (or copy it "
            "under another name in the input file)"
        )
    return pd.concat([kept.reset_index(drop=True), pd.DataFrame(columns)], axis=1)


def writer_for(path: Path) -> str:
    kind = WRITERS.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"out={path}: unknown file type '{path.suffix}'; end the name in .csv or .parquet")
    return kind


def write_table(table: pd.DataFrame, path: Path) -> None:
    """CSV or Parquet by the extension; the folder is created; an existing file is never replaced (the file
    is created exclusively, so one that appeared since `check_out` is refused too)."""
    kind = writer_for(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle = path.open("x", newline="", encoding="utf-8") if kind == "csv" else path.open("xb")
    except FileExistsError:
        raise out_exists(path) from None
    try:
        with handle:
            if kind == "csv":
                table.to_csv(handle, index=False)
            else:
                table.to_parquet(handle, index=False)
    except BaseException:
        path.unlink(missing_ok=True)  # no half-written table left behind
        raise


def default_out(run_dir: Path, path: str) -> Path:
    return run_dir / "predictions" / f"{Path(path).stem}.csv"


def out_exists(out: Path) -> ConfigError:
    return ConfigError(
        f"out={out}: the file already exists, and mtlrun predict never overwrites a result; pick another "
        "name (out=FILE) or delete it first"
    )


def check_out(out: Path, path: str) -> None:
    """Before any work: ``out`` must not be the input file ``path`` (resolved, symlinks followed) and must
    not exist yet."""
    from mtlrun.data.table_io import resolve_path

    source = resolve_path(path).resolve()
    if out.resolve() == source:
        raise ConfigError(
            f"out={out}: is the input file data.path={path}, which the predictions would overwrite; pick "
            f"another out=FILE, e.g. out={out.with_name(f'{out.stem}_predictions{out.suffix}')}"
        )
    if out.exists() or out.is_symlink():
        raise out_exists(out)


def predict(options: Options) -> tuple[pd.DataFrame, Path]:
    """Predict as ``options`` say and write the table; returns (the table, where it was written)."""
    from omegaconf import OmegaConf

    from mtlrun.instantiate import resolve_target
    from mtlrun.trainer.setup import resolve_device

    weights = check_run(options.run, options.checkpoint)
    out = options.out or default_out(options.run, options.path)
    check_out(out, options.path)
    cfg = OmegaConf.load(options.run / CONFIG_FILE)
    data_class = resolve_target(cfg.data, "data (of the run's config.yaml)")
    new_input = getattr(data_class, "new_input", None)
    if new_input is None:
        raise ConfigError(
            f"run={options.run}: its data set {cfg.data._target_} cannot read new files; `mtlrun predict` "
            "needs a run trained on file-based data (data=tabular, or a class with TensorData.new_input)"
        )
    new = new_input(options.run, options.path, options.keep)
    if len(new) == 0:
        raise DataError(f"data.path={options.path}: no rows to predict on; give a file with rows")
    device = resolve_device(options.device, key="device")
    model, tasks = rebuild_model(
        cfg, new, device, fitted_pos_weights(options.run), fitted_outputs(options.run)
    )
    tasks = {name: task for name, task in tasks.items() if not task.auxiliary}  # helpers are no result
    load_weights(model, weights)
    found = estimates(model, tasks, new.x, options.batch_size, device)
    table = prediction_table(tasks, {k: v.numpy() for k, v in found.items()}, new.columns[options.keep])
    write_table(table, out)
    return table, out


def main(argv: Sequence[str]) -> int:
    """``mtlrun predict ARGS``: 0 when the table was written; 1 with one ``error:`` line otherwise."""
    if any(arg in ("-h", "--help", "help") for arg in argv):
        print(USAGE, end="")
        return 0
    try:
        options = parse_args(argv)
        status = run_status(options.run)
        if status not in (None, "completed"):
            print(
                f"warning: run {options.run} has status '{status}' (not completed); predicting with the "
                f"weights it saved so far ({WEIGHTS[options.checkpoint]})",
                file=sys.stderr,
            )
        table, out = predict(options)
    except MtlrunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {len(table)} rows to {out}; columns: {', '.join(map(str, table.columns))}")
    return 0
