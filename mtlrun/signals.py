"""Stop signals: SIGINT (Ctrl-C), SIGTERM (`kill`, SLURM), SIGHUP (a closed terminal) and SIGUSR1/SIGUSR2
(the pre-timeout and preemption signals of SLURM and submitit).

The first one only takes note (`received`): raising an exception at an arbitrary point (in the middle
of an import, say) is not safe, since a bare ``except`` may swallow it. The training loop looks at it between
steps: it finishes the step, writes a checkpoint of the full state, records ``"status": "interrupted"`` and
the signal's name in summary.json, logs how to continue (``mtlrun resume=<folder>``), and the process exits
with 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM). A signal received during start-up stops the
run before its first step, the same way. A second stop signal stops at once (`Interrupted` raised
where the process is): the run is still recorded as interrupted, and resume continues from the last
checkpoint. The same signal again within a second counts once: on a cluster, the scheduler signals every
process of a job while mtlrun's parallel launcher forwards the signal to its jobs as well.

A handler that was installed before mtlrun's (submitit installs one for SIGUSR2 that requeues the job) is not
lost: `hand_over` calls it once the checkpoint is written, so the job is requeued from that state.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("mtlrun")

STOP_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2")
    if hasattr(signal, name)
)

_received: list[int] = []
_last = [0.0]  # when the last one counted (time.monotonic)
DUPLICATE_WITHIN_S = 1.0  # the same signal again this soon is one stop delivered twice, not "stop at once"
_previous: dict[int, Any] = {}


class Interrupted(BaseException):
    """A stop signal ended the run (a BaseException, like KeyboardInterrupt: no ``except Exception`` swallows
    it). ``at_once``: a second signal, so the current step was not finished and no checkpoint written."""

    def __init__(self, signum: int, at_once: bool = False) -> None:
        super().__init__(f"stopped by {name(signum)}" + (" at once (second signal)" if at_once else ""))
        self.signum = signum
        self.at_once = at_once

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def name(signum: int) -> str:
    return signal.Signals(signum).name


def install() -> bool:
    """Route the stop signals to mtlrun (only the main thread can). The handlers they replace are kept for
    `hand_over`. Returns whether it installed them (False: they were already, or not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    installed = False
    for signum in STOP_SIGNALS:
        current = signal.getsignal(signum)
        if current is not _on_signal:
            _previous[signum] = current
            signal.signal(signum, _on_signal)
            installed = True
    return installed


def uninstall() -> None:
    """Give the stop signals back to the handlers `install` replaced."""
    for signum, previous in _previous.items():
        if signal.getsignal(signum) is _on_signal and previous is not None:
            signal.signal(signum, previous)


@contextlib.contextmanager
def watched() -> Iterator[None]:
    """Stop signals are routed to mtlrun while inside (a run is training). When the handlers were not yet
    mtlrun's (a test, a submitit job), signals received before are forgotten and the handlers are given back
    on exit; under the `mtlrun` command they were installed at start-up, and a signal received then counts."""
    installed_here = install()
    if installed_here:
        _received.clear()
    try:
        yield
    finally:
        if installed_here:
            uninstall()


def received() -> int | None:
    """The first stop signal received since `reset`, or None."""
    return _received[0] if _received else None


def _on_signal(signum: int, frame: Any) -> None:
    now = time.monotonic()
    if _received and signum == _received[-1] and now - _last[0] < DUPLICATE_WITHIN_S:
        return  # the same stop, delivered twice (a cluster signals every process, the launcher forwards it)
    _received.append(signum)
    _last[0] = now
    if len(_received) == 1:
        log.warning(
            "received %s: stopping at the next step boundary with a checkpoint (send it again to stop at once)",
            name(signum),
        )
        return
    raise Interrupted(signum, at_once=True)


def hand_over(signum: int) -> None:
    """Call the handler mtlrun replaced for ``signum``, if it was a function (submitit's requeue); it may
    exit the process itself. Default and ignore dispositions are left alone: the caller exits."""
    previous: Callable | None = _previous.get(signum)
    if callable(previous) and previous is not signal.default_int_handler:
        previous(signum, None)
