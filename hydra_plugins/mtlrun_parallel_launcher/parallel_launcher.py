"""``hydra/launcher=parallel``: the jobs of a sweep side by side on this machine, each in a process of its own.

Why not hydra-joblib-launcher: joblib runs the jobs in a pool of loky worker processes, and one dead worker
(kill -9, the out-of-memory killer) breaks the whole pool: joblib raises TerminatedWorkerError, the jobs not yet
run never run, and Hydra never calls ``on_multirun_end``, so no sweep summary is written. Here a dead process
is one failed job:

- At most ``n_jobs`` child processes at once, started in job order, one per job. They are forked (Linux;
  multiprocessing's fork context) after this process imported torch and mtlrun's trainer, so no job pays
  those ~2 s of imports; this process therefore must not initialise CUDA or run torch ops (it does neither).
- A child runs its job as Hydra's launchers do (``run_job``) and sends the JobReturn back through a pipe.
  A child that ends without sending one (killed by a signal, or any other exit) is a failed job: its
  summary.json, if it is missing or still says "running", is rewritten as "failed" with the cause, and its
  JobReturn is the one a job that caught its own error returns (value None, Hydra status COMPLETED: with
  status FAILED, Hydra's basic sweeper would re-raise the error after the batch and skip on_multirun_end).
  The other jobs go on, and the sweep ends with its report as usual.
- A stop signal (SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2) to this process is forwarded to the running children (each runs in its own
  process group, so a Ctrl-C in the terminal reaches them once, through here); no new job starts, and once
  they have stopped this process exits with 128 + the signal number. A second signal kills the children at
  once. A signal ignored when the sweep starts (SIGHUP under nohup) stays ignored. A child also gets SIGTERM
  if this process dies (PR_SET_PDEATHSIG).
- Threads: each child runs torch with max(1, cores // n_jobs) threads (OMP_NUM_THREADS, MKL_NUM_THREADS,
  torch.set_num_threads; `mtlrun.threads.share`) unless OMP_NUM_THREADS is set in the environment; a job's
  ``trainer.num_threads``, when set, overrides that share as the run starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from mtlrun import rundir, signals, threads

log = logging.getLogger(__name__)

PRELOAD = ("torch", "mtlrun.trainer.runner")  # imported here once; every forked job inherits them
STOP_SIGNALS = set(signals.STOP_SIGNALS)  # SIGINT, SIGTERM, SIGHUP (the terminal closed), SIGUSR1/2 (SLURM)


class _Job:
    """A started job. (Not a dataclass: Hydra's plugin scan runs this module outside sys.modules.)"""

    def __init__(self, num: int, overrides: list[str], out_dir: Path, process: BaseProcess, conn: Connection):
        self.num, self.overrides, self.process = num, overrides, process
        self.out_dir = out_dir  # the job's folder, where its summary.json goes
        self.conn = conn  # the read end of the pipe the child sends its JobReturn through
        self.result: JobReturn | None = None
        self.listening = True  # neither the result nor the end of the pipe read yet


class ParallelLauncher(Launcher):
    def __init__(self, n_jobs: int = 2) -> None:
        self.n_jobs = n_jobs if n_jobs > 0 else threads.available_cores()
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.running: dict[int, _Job] = {}
        self.stop_signal: int | None = None
        self.stopped: set[int] = set()  # the jobs running when the stop signal came
        self.dead: set[int] = set()  # the jobs whose process ended without a result

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        share = None if "OMP_NUM_THREADS" in os.environ else threads.share(self.n_jobs)
        for module in PRELOAD:
            importlib.import_module(module)
        log.info(f"Launching {len(job_overrides)} jobs, {self.n_jobs} at a time, each in its own process")
        pending = deque(enumerate(job_overrides, start=initial_job_idx))
        results: dict[int, JobReturn] = {}
        self.running, self.stopped, self.dead = {}, set(), set()
        handlers = {s: signal.getsignal(s) for s in STOP_SIGNALS}  # the process's own, restored after
        _set_handlers({s: self._on_signal for s, h in handlers.items() if h is not signal.SIG_IGN})  # nohup
        self.stop_signal = signals.received()  # a stop signal during start-up: no job starts
        try:
            while self.running or (pending and self.stop_signal is None):
                while pending and len(self.running) < self.n_jobs and self.stop_signal is None:
                    self._start(*pending.popleft(), share, handlers)
                self._wait(results)
        finally:
            _set_handlers(handlers)
        if self.stop_signal is not None:
            interrupted = len(self.stopped & self.dead)
            log.error(
                f"sweep stopped by {signal.Signals(self.stop_signal).name}: {len(results) - interrupted} "
                f"job(s) finished, {interrupted} interrupted, {len(pending)} never started"
            )
            raise SystemExit(128 + self.stop_signal)
        return [results[num] for num in sorted(results)]

    def _start(self, num: int, overrides: Sequence[str], share: int | None, handlers: dict) -> None:
        assert self.hydra_context is not None and self.config is not None
        log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = f"{config.hydra.job.name}_{num}"
            config.hydra.job.num = num
        out_dir = Path(str(config.hydra.sweep.dir), str(OmegaConf.select(config, "hydra.sweep.subdir")))
        fork = multiprocessing.get_context("fork")
        conn, send = fork.Pipe(duplex=False)
        child = (config, send, share, handlers, Singleton.get_state())
        process = fork.Process(target=self._child, args=child, name=f"job {num}")
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # the child unblocks once it has its handlers
        try:
            process.start()
            self.running[num] = _Job(num, list(overrides), out_dir, process, conn)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        send.close()  # the child holds the only write end: the pipe ends when the child does

    def _child(
        self, config: DictConfig, send: Connection, share: int | None, handlers: dict, state: Any
    ) -> None:
        _set_handlers(handlers)  # the process's own handlers (the job's), not the launcher's
        os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the launcher only, which forwards it once
        with contextlib.suppress(OSError, AttributeError):  # Linux: SIGTERM when the launcher dies
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        if share is not None:  # the job's trainer.num_threads, if set, overrides it in the run's setup
            os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(share)
            threads.use_threads(share)
        setup_globals()
        Singleton.set_state(state)
        HydraConfig.instance().set_config(config)
        assert self.hydra_context is not None and self.task_function is not None
        ret = run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        # Plain copies of the configs: a structured node whose class Hydra's plugin scan loaded a second time
        # (hydra.sweeper's BasicSweeperConf) does not pickle.
        ret.cfg, ret.hydra_cfg = (
            OmegaConf.create(OmegaConf.to_container(c)) for c in (ret.cfg, ret.hydra_cfg)
        )
        send.send(ret)

    def _wait(self, results: dict[int, JobReturn]) -> None:
        """Wait until a child sends its result or ends; record every job that has ended."""
        jobs = list(self.running.values())
        ready = wait([job.conn for job in jobs if job.listening] + [job.process.sentinel for job in jobs])
        for job in jobs:
            if job.listening and job.conn in ready:
                self._receive(job)
            if job.process.sentinel in ready:
                job.process.join()
                if job.listening and job.conn.poll():  # a result sent just before the end
                    self._receive(job)
                results[job.num] = job.result if job.result is not None else self._dead(job)
                job.conn.close()
                del self.running[job.num]

    @staticmethod
    def _receive(job: _Job) -> None:
        with contextlib.suppress(EOFError, OSError):  # the end of the pipe: the child sent nothing
            job.result = job.conn.recv()
        job.listening = False

    def _on_signal(self, signum: int, frame: Any) -> None:
        first = self.stop_signal is None
        if first:
            self.stop_signal, self.stopped = signum, set(self.running)
            log.warning(
                f"{signal.Signals(signum).name}: stopping {len(self.running)} running job(s), starting no new "
                "one; send it again to kill them at once"
            )
        for job in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(job.process.pid, signum if first else signal.SIGKILL)

    def _dead(self, job: _Job) -> JobReturn:
        """A job whose process ended without a result: unless it recorded a clean stop ("interrupted"), a
        failed job, recorded in its summary.json."""
        self.dead.add(job.num)
        code = job.process.exitcode or 0
        try:
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        except ValueError:
            how = f"was killed by signal {-code}"
        error = f"job {job.num} ({' '.join(job.overrides)}): its process {how}"
        from mtlrun.trainer.summary import record_failure

        cause = error + ("" if code < 0 else " before sending its result")
        if record_failure(job.out_dir, cause, replace_running=True):
            log.error(cause)
        else:  # "interrupted" (a clean stop) or a final status
            log.warning(f"{error}; its summary.json says {rundir.status(job.out_dir)}")
        return JobReturn(overrides=job.overrides, status=JobStatus.COMPLETED, _return_value=None)


def _set_handlers(handlers: dict[int, Any]) -> None:
    for signum, handler in handlers.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
