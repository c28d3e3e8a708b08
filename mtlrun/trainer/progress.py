"""The progress bar of the training loop: one transient bar per epoch on stderr, when stderr is a terminal."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from torch import Tensor


class EpochBar:
    """``trainer.progress``; never drawn where stderr is not a terminal (CI, log files)."""

    def __init__(self, enabled: bool) -> None:
        console = Console(stderr=True)
        self.enabled = enabled and console.is_terminal
        self.console = console

    @contextlib.contextmanager
    def epoch(self, label: str, total: int, completed: int) -> Iterator[Callable[[Tensor], None]]:
        """A bar for one epoch; yields ``advance(loss)``, to call after each step with the step's objective as
        a tensor: it is read only when the bar is drawn (a few times a second), so a GPU never waits for it."""
        if not self.enabled:
            yield lambda loss: None
            return
        progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeRemainingColumn(),
            transient=True,
            console=self.console,
        )
        with progress:
            bar = progress.add_task("", total=total, completed=completed, epoch=label, loss=0.0)
            yield lambda loss: progress.update(bar, advance=1, loss=loss)
