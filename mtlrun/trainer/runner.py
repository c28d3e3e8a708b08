"""The runner: small setup steps, then one training loop that reads top to bottom.

    batch -> forward -> per-task losses -> weighting -> backward -> step -> metrics -> tables on disk

Everything a run writes lives in its output folder: config.yaml (resolved), metrics.csv (long format,
appended each epoch), summary.json (rewritten each epoch; its statuses: mtlrun/trainer/summary.py),
checkpoint.pt (the full training state, for resuming) and best_model.pt (the weights of the selected epoch).
Between two steps the loop looks for a stop signal (mtlrun/signals.py): it then writes a checkpoint, records
the run as interrupted and stops; ``mtlrun resume=<folder>`` continues it exactly.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping
from itertools import islice
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from mtlrun import ranks, rundir, schema, signals
from mtlrun.errors import ConfigError
from mtlrun.loggers import RunInfo, build_loggers
from mtlrun.provenance import provenance
from mtlrun.trainer import checkpoint
from mtlrun.trainer.checkpoint import BEST_MODEL, CHECKPOINT, Checkpoints
from mtlrun.trainer.evaluate import evaluate
from mtlrun.trainer.outputs import (
    METRICS,
    MetricsWriter,
    atomic_write_text,
    keep_metric_rows,
    remove_temporary_files,
)
from mtlrun.trainer.progress import EpochBar
from mtlrun.trainer.report import results_table
from mtlrun.trainer.setup import Setup, describe, setup
from mtlrun.trainer.state import EpochProgress, TrainState
from mtlrun.trainer.summary import RunRecord

log = logging.getLogger("mtlrun")

CONFIG_FILE = "config.yaml"


def run(cfg: DictConfig, out_dir: Path) -> dict:
    """Train and evaluate as ``cfg`` says, writing into ``out_dir``; returns the summary. With ``cfg.resume``,
    continue that run from its checkpoint, in ``out_dir`` itself when it is the run's own folder."""
    schema.validate(cfg)
    rundir.lock(out_dir)  # one process per run folder
    source = Path(cfg.resume) if cfg.resume else None
    record = RunRecord.continuing(out_dir, source)
    try:
        with signals.watched(), record.ending(checkpointed=cfg.trainer.checkpoint):
            return train_and_evaluate(cfg, source, record)
    finally:
        remove_temporary_files(out_dir)
        rundir.release(out_dir)


def train_and_evaluate(cfg: DictConfig, source: Path | None, record: RunRecord) -> dict:
    """The recipe: record the start, build everything, restore a resumed run, train, record the end."""
    out_dir = record.folder
    main = ranks.launched()[0] == 0  # only rank 0 of a data-parallel run writes the run's folder
    # a tracker's missing package fails before anything is written
    trackers = build_loggers(cfg.logger if main else {}, out_dir)
    in_place = source is not None and source.resolve() == out_dir.resolve()
    if not in_place:  # a new folder: its config and status come first, so even a kill now leaves them
        begin(cfg, record)
    s = setup(cfg)
    state = record.state = resume_state(s, source, out_dir, cfg.trainer.epochs) if source else TrainState()
    if in_place:  # the run's own folder changes only once the resume is sure to start
        begin(cfg, record, resumed_at=state)
    elif source:
        record.add_resume(source, state)
    s.data.save_preprocessing(out_dir)  # e.g. preprocessing.json of data=tabular, for predicting later
    for name, text in s.model.artifacts().items() if main else ():  # e.g. adaptive_branching's tree
        atomic_write_text(out_dir / name, text)
    record.write(
        **describe(s),
        select=cfg.trainer.select.value,
        higher_is_better=_directions(s),
        provenance=provenance(s.device),
    )
    record.trackers = trackers
    trackers.start(
        RunInfo.of(cfg, out_dir, resumed_from=source, resumed_at_step=state.step if source else None)
    )
    checkpoints = Checkpoints(out_dir, cfg.trainer, enabled=main)
    with MetricsWriter(out_dir / METRICS, also=trackers) as writer:
        train(cfg.trainer, s, state, writer, checkpoints, record)
    return finish(cfg.trainer, s, state, record)


def begin(cfg: DictConfig, record: RunRecord, resumed_at: TrainState | None = None) -> None:
    """Write the run's config.yaml and its first summary.json (status running)."""
    atomic_write_text(record.folder / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    record.begin(cfg, resumed_at)


def resume_state(s: Setup, source: Path, out_dir: Path, epochs: int) -> TrainState:
    """The state of ``source``'s run at its last checkpoint, restored into ``s``; ``out_dir`` keeps the
    metrics rows the checkpoint covers (and, a new folder, gets the run's best model). A run killed before its
    first checkpoint starts from the beginning."""
    path = source / CHECKPOINT
    if out_dir != source and (source / BEST_MODEL).exists():
        shutil.copyfile(source / BEST_MODEL, out_dir / BEST_MODEL)
    state = checkpoint.restore(checkpoint.load(path), s, out_dir) if path.exists() else TrainState()
    if epochs < state.epoch:
        raise ConfigError(
            f"trainer.epochs={epochs}: the run being resumed has already trained {state.epoch} epochs; "
            f"use trainer.epochs >= {state.epoch}"
        )
    keep_metric_rows(source / METRICS, out_dir / METRICS, state.epoch)
    log.info(
        "resuming %s from epoch %d, step %d%s",
        source,
        state.epoch + 1 if state.current.batches else state.epoch,
        state.step,
        "" if path.exists() else " (it had no checkpoint yet: starting over with its config)",
    )
    return state


def train(
    trainer: DictConfig,
    s: Setup,
    state: TrainState,
    writer: MetricsWriter,
    checkpoints: Checkpoints,
    record: RunRecord,
) -> None:
    """The loop: train an epoch, evaluate when due (selecting on validation), checkpoint when due."""
    log.info(
        "training %s with %s weighting on %s: %d epochs x %d steps",
        *(type(s.model).__name__, type(s.weighting).__name__, s.device, trainer.epochs, s.steps_per_epoch),
    )
    bar = EpochBar(trainer.progress)

    def between_steps() -> None:  # where a signal stops the run, and where time-based checkpoints go
        signum, due = s.world.agree(signals.received(), checkpoints.due_mid_epoch())
        if signum or due:
            s.finite.check()  # no checkpoint holds what a non-finite loss did to the weights
            checkpoints.write(s, state, writer)
        stop_if_signalled(signum)

    s.model.train()
    for epoch in range(state.epoch + 1, trainer.epochs + 1):
        rows = train_epoch(s, trainer, epoch, state, bar, between_steps)
        writer.write(epoch, state.step, "train", rows)
        new_best = False
        if epoch % trainer.eval_every == 0 or epoch == trainer.epochs:
            new_best = evaluate_and_select(s, trainer, epoch, state, writer, rows)
            s.write_measurements(record.folder, plots=trainer.plots and epoch == trainer.epochs)
        signum, _ = s.world.agree(signals.received(), False)
        if checkpoints.due_after_epoch(epoch, trainer.epochs, new_best) or signum:
            checkpoints.write(s, state, writer, new_best)
        record.progress(s, state)
        stop_if_signalled(signum)


def train_epoch(
    s: Setup,
    trainer: DictConfig,
    epoch: int,
    state: TrainState,
    bar: EpochBar,
    between_steps: Callable[[], None],
) -> dict:
    """One pass over the training split (or the rest of it, resumed from a checkpoint in its middle).
    Returns the rows for metrics.csv: {task: {"loss": mean loss, "weight": mean weight}}, the step
    diagnostics ({"a~b": {"grad_cosine": mean}}, {"model": {"penalty": mean}}) and {"all":
    {"time_per_step_s": ...}}."""
    done = state.current
    done.start(s.shuffle, len(s.tasks), s.device)
    order = s.data.batches("train", trainer.batch_size, shuffle=True, generator=s.shuffle)
    clock = time.perf_counter() - done.time_s
    with bar.epoch(f"{epoch}/{trainer.epochs}", s.steps_per_epoch, done.batches) as advance:
        for batch in islice(order, done.batches, s.steps_per_epoch):
            done.time_s = time.perf_counter() - clock
            between_steps()
            losses, objective = s.step(batch, where=(epoch, state.step))
            state.step += 1
            done.add(losses, s.weighting.last_weights)
            advance(objective)
    s.finite.check()  # before the epoch's rows are written
    if s.device.type == "cuda":
        torch.cuda.synchronize(s.device)
    mean_losses, mean_weights = done.means(s.steps_per_epoch)
    s.weighting.on_epoch_end(epoch, mean_losses)
    rows = {
        name: {"loss": loss, "weight": w}
        for name, loss, w in zip(s.tasks, mean_losses.tolist(), mean_weights.tolist(), strict=True)
    }
    seconds = time.perf_counter() - clock
    rows |= s.diagnostics.pop_rows() | {
        "all": {"time_per_step_s": seconds / s.steps_per_epoch} | s.learning_rates()
    }
    state.train_time_s += seconds
    state.epoch, state.current = epoch, EpochProgress()
    return rows


def evaluate_and_select(
    s: Setup, trainer: DictConfig, epoch: int, state: TrainState, writer: MetricsWriter, train_rows: dict
) -> bool:
    """Evaluate on val and test, select on val only. Returns whether this epoch is the new selection."""
    val, test = (
        evaluate(
            s.model,
            s.data,
            split,
            s.tasks,
            trainer.eval_batch_size,
            trainer.limit_eval_batches,
            s.autocast,
            s.world,
            s.regularizer,
        )
        for split in ("val", "test")
    )
    writer.write(epoch, state.step, "val", val)
    writer.write(epoch, state.step, "test", test)
    value = s.monitor.value(val)
    new_best = trainer.select.value == "last" or s.monitor.improved(value, state.best_value)
    if new_best:
        state.best_epoch, state.best_value, state.best_val, state.best_test = epoch, value, val, test
    log.info(
        "epoch %d/%d  train loss %s  val %s  %s %.4g%s",
        epoch,
        trainer.epochs,
        _fmt({name: train_rows[name]["loss"] for name in s.tasks}),
        _fmt({f"{t}/{m}": val[t][m] for t, task in s.tasks.items() for m in task.metrics}),
        s.monitor.name,
        value,
        " *" if new_best else "",
    )
    return new_best


def finish(trainer: DictConfig, s: Setup, state: TrainState, record: RunRecord) -> dict:
    """Draw the run's curves, record it as completed, log the selected epoch's table."""
    if trainer.plots and s.world.is_main:
        _plot_curves(record.folder)
    record.complete(s, state)
    log.info(
        "results at epoch %s (selected on validation %s):\n%s",
        state.best_epoch,
        s.monitor.name,
        results_table(
            state.best_val, state.best_test, {t: ["loss", *task.metrics] for t, task in s.tasks.items()}
        ),
    )
    log.info("outputs in %s", record.folder)
    return record.fields


def stop_if_signalled(signum: int | None) -> None:
    """Stop on the signal this process (or, data-parallel, any rank) received."""
    if signum is not None:
        raise signals.Interrupted(signum)


def _directions(s: Setup) -> dict[str, bool]:
    """{"task/metric": higher is better} of every declared metric (read by ``mtlrun report`` for Δm%)."""
    return {f"{t}/{m}": task.higher_is_better(m) for t, task in s.tasks.items() for m in task.metrics}


def _plot_curves(out_dir: Path) -> None:
    """curves.png of the run (loss, validation metrics, task weights per epoch); a failure only warns."""
    try:
        from mtlrun.report.plots import plot_run

        plot_run(out_dir)
    except Exception as err:  # a plot must never fail a finished run
        log.warning("could not draw %s/curves.png (%s: %s)", out_dir, type(err).__name__, err)


def _fmt(values: Mapping[str, float]) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in values.items())
