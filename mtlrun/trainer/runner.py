"""The runner: small setup steps, then one training loop that reads top to bottom.

    batch -> forward -> per-task losses -> weighting -> backward -> step -> metrics -> tables on disk

Everything a run writes lives in its output folder: config.yaml (resolved), metrics.csv (long format,
appended each epoch), summary.json (rewritten each epoch; ``status`` says running / completed / failed),
checkpoint.pt (the full training state, for resuming) and best_model.pt (the weights of the selected epoch).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from contextlib import nullcontext
from itertools import islice
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mtlrun import schema
from mtlrun.errors import ConfigError
from mtlrun.trainer import checkpoint
from mtlrun.trainer.evaluate import evaluate
from mtlrun.trainer.outputs import MetricsWriter, atomic_write_text, write_json
from mtlrun.trainer.report import results_table
from mtlrun.trainer.setup import Setup, describe, setup
from mtlrun.trainer.state import TrainState
from mtlrun.trainer.step import train_step

log = logging.getLogger("mtlrun")


def make_progress(enabled: bool) -> Progress | None:
    """A transient per-epoch bar on stderr; none when disabled or when stderr is not a terminal (CI, logs)."""
    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        return None
    return Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
        transient=True,
        console=console,
    )


def train_epoch(
    s: Setup, trainer: DictConfig, epoch: int, state: TrainState, progress: Progress | None
) -> dict:
    """One pass over the training split. Returns the rows for metrics.csv: {task: {"loss": mean loss,
    "weight": mean weight}}, {"a~b": {"grad_cosine": mean}} for sampled task-gradient cosines, and
    {"all": {"time_per_step_s": ...}}."""
    start = time.perf_counter()
    loss_sums = torch.zeros(len(s.tasks), device=s.device)
    weight_sums = torch.zeros(len(s.tasks), device=s.device)
    batches = islice(
        s.data.batches("train", trainer.batch_size, shuffle=True, generator=s.shuffle), s.steps_per_epoch
    )
    with progress or nullcontext():
        bar = (
            progress.add_task("", total=s.steps_per_epoch, epoch=f"{epoch}/{trainer.epochs}", loss=0.0)
            if progress
            else None
        )
        for batch in batches:
            losses, objective = train_step(
                s.forward,
                batch,
                s.tasks,
                s.engine,
                s.optimizer,
                s.scheduler,
                trainer.grad_clip,
                s.autocast,
                where=(epoch, state.step),
            )
            state.step += 1
            loss_sums += losses
            weight_sums += s.weighting.last_weights.to(s.device)
            if bar is not None:
                progress.update(bar, advance=1, loss=float(objective))
    if s.device.type == "cuda":
        torch.cuda.synchronize(s.device)
    state.train_time_s += time.perf_counter() - start
    state.epoch = epoch
    mean_losses = loss_sums / s.steps_per_epoch
    s.weighting.on_epoch_end(epoch, mean_losses)
    mean_weights = (weight_sums / s.steps_per_epoch).tolist()
    rows: dict[str, dict[str, float]] = {
        name: {"loss": loss, "weight": w}
        for name, loss, w in zip(s.tasks, mean_losses.tolist(), mean_weights, strict=True)
    }
    rows |= {pair: {"grad_cosine": value} for pair, value in s.engine.pop_cosines().items()}
    if penalty := s.engine.pop_penalty():
        rows["model"] = penalty
    rows["all"] = {"time_per_step_s": (time.perf_counter() - start) / s.steps_per_epoch}
    return rows


def run(cfg: DictConfig, out_dir: Path) -> dict:
    """Train and evaluate as ``cfg`` says, writing into ``out_dir``; returns the summary."""
    started = time.time()
    summary: dict = {
        "status": "running",
        "error": None,
        "name": cfg.name,
        "seed": cfg.seed,
        "output_dir": str(out_dir),
    }
    summary_path = out_dir / "summary.json"
    writer: MetricsWriter | None = None
    try:
        if (out_dir / "metrics.csv").exists():
            raise ConfigError(
                f"output folder {out_dir} already holds a run (metrics.csv); set hydra.run.dir to a new folder"
            )
        schema.validate(cfg)
        atomic_write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        write_json(summary_path, summary)

        s = setup(cfg)
        s.data.save_preprocessing(out_dir)  # e.g. preprocessing.json of data=tabular, for predicting later
        trainer = cfg.trainer
        state = TrainState()
        if cfg.resume:
            state = checkpoint.resume(
                Path(cfg.resume),
                out_dir,
                s.model,
                s.weighting,
                s.optimizer,
                s.scheduler,
                s.shuffle,
                TrainState,
            )
        summary |= describe(s) | {"select": trainer.select.value, "higher_is_better": _directions(s)}
        writer = MetricsWriter(out_dir / "metrics.csv")
        progress = make_progress(trainer.progress)
        log.info(
            "training %s with %s weighting on %s: %d epochs x %d steps",
            type(s.model).__name__,
            type(s.weighting).__name__,
            s.device,
            trainer.epochs,
            s.steps_per_epoch,
        )

        s.model.train()
        for epoch in range(state.epoch + 1, trainer.epochs + 1):
            train_rows = train_epoch(s, trainer, epoch, state, progress)
            writer.write(epoch, state.step, "train", train_rows)
            if epoch % trainer.eval_every and epoch != trainer.epochs:
                continue

            # evaluate on val and test; select on val only; save the state and the summary so far
            val, test = (
                evaluate(
                    s.model,
                    s.data,
                    split,
                    s.tasks,
                    trainer.eval_batch_size,
                    trainer.limit_eval_batches,
                    s.autocast,
                )
                for split in ("val", "test")
            )
            writer.write(epoch, state.step, "val", val)
            writer.write(epoch, state.step, "test", test)
            value = s.monitor.value(val)
            if trainer.select.value == "last" or s.monitor.improved(value, state.best_value):
                state.best_epoch, state.best_value, state.best_val, state.best_test = epoch, value, val, test
                if trainer.checkpoint:
                    checkpoint.save_model(out_dir / "best_model.pt", s.model)
            log.info(
                "epoch %d/%d  train loss %s  val %s  %s %.4g%s",
                epoch,
                trainer.epochs,
                _fmt({name: train_rows[name]["loss"] for name in s.tasks}),
                _fmt({f"{t}/{m}": val[t][m] for t, task in s.tasks.items() for m in task.metrics}),
                s.monitor.name,
                value,
                " *" if state.best_epoch == epoch else "",
            )
            if trainer.checkpoint:
                checkpoint.save(
                    out_dir / "checkpoint.pt",
                    s.model,
                    s.weighting,
                    s.optimizer,
                    s.scheduler,
                    s.shuffle,
                    state,
                )
            summary |= _progress_fields(state, started, s)
            write_json(summary_path, summary)

        summary |= _progress_fields(state, started, s) | {"status": "completed"}
        write_json(summary_path, summary)
        log.info(
            "results at epoch %s (selected on validation %s):\n%s",
            state.best_epoch,
            s.monitor.name,
            results_table(
                state.best_val, state.best_test, {t: ["loss", *task.metrics] for t, task in s.tasks.items()}
            ),
        )
        if trainer.plots:
            _plot_curves(out_dir)
        log.info("outputs in %s", out_dir)
        return summary
    except BaseException as err:
        summary["status"] = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        summary["error"] = f"{type(err).__name__}: {err}"
        summary["wall_time_s"] = time.time() - started
        write_json(summary_path, summary)
        raise
    finally:
        if writer is not None:
            writer.close()


def _progress_fields(state: TrainState, started: float, s: Setup) -> dict:
    return {
        "epochs_completed": state.epoch,
        "steps": state.step,
        "best_epoch": state.best_epoch,
        "monitor_value": state.best_value,
        "val": state.best_val,
        "test": state.best_test,
        "wall_time_s": time.time() - started,
        "train_time_s": state.train_time_s,
        "time_per_step_s": state.train_time_s / max(state.step, 1),
        "backward_passes_per_step": s.engine.passes_per_step(),
        "weighting_state": s.weighting.summary(),
    }


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
