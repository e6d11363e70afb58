"""Small typed events that long-running engine functions yield.

Engine generators (``predict_iter``, ``finetune_iter`` ...) yield these and *return* their
result; widgets turn them into progress bars, plots and notifications, the CLI into tqdm
bars. They are plain dataclasses: no Qt, no torch tensors.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Progress:
    """Work done so far on a long task.

    Attributes:
        done: units finished (windows, images, steps).
        total: units in all.
        elapsed: seconds since the task started.
        stage: what is being done ("predict", "postprocess", ...).
    """

    done: int
    total: int
    elapsed: float
    stage: str = "predict"

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    @property
    def eta(self) -> float | None:
        """Estimated seconds left, or None before the first unit is done."""
        if self.done == 0 or self.total == 0:
            return None
        return self.elapsed / self.done * (self.total - self.done)


@dataclass(frozen=True)
class WarningEvent:
    """Something the user should know that did not stop the work (e.g. an OOM back-off)."""

    message: str
    kind: str = "warning"


Warning = WarningEvent  # noqa: A001 - short alias; prefer WarningEvent in imports


@dataclass(frozen=True)
class TrainStep:
    """One optimisation step (or one validation pass when ``val_loss`` is set).

    Attributes:
        step: optimisation steps taken so far.
        total: planned steps (may be an estimate under a time budget).
        epoch: epochs completed (fractional).
        loss: training loss of this step.
        val_loss: validation loss, only on steps where validation ran.
        lr: learning rate used in this step.
        elapsed: seconds since training started.
        metrics: extra validation figures (e.g. ``{"f1@0.5": 0.8}``).
    """

    step: int
    total: int
    epoch: float
    loss: float
    lr: float
    elapsed: float
    val_loss: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


class Cancelled(Exception):
    """Raised inside the network's forward pass once :attr:`RunControl.stop` is set."""


@dataclass
class RunControl:
    """Shared by a front end and a running engine generator, across threads.

    The generator yields only between batches of windows, and one window can take many
    seconds on a CPU; so the engine also looks at this object between the layers of the
    network: it raises :class:`Cancelled` once ``stop`` is set, and keeps
    ``windows_done`` (fractional: the share of the current batch's layers already run) up
    to date for a front end that polls it.

    Attributes:
        stop: set (from any thread) to cancel within one layer of the network.
        windows_done: windows finished, plus the running batch's finished share.
        windows_total: windows in all (0 before the plan is made).
    """

    stop: threading.Event = field(default_factory=threading.Event)
    windows_done: float = 0.0
    windows_total: int = 0

    def check(self) -> None:
        if self.stop.is_set():
            raise Cancelled("cancelled")


def run_to_end(gen, on_event=None):
    """Drive an engine generator to completion and return its result.

    The synchronous twin of every ``*_iter`` function: ``on_event`` (if given) receives
    each yielded event. Whatever stops it early (an error in ``on_event``, Ctrl-C between
    two events) closes the generator first, so its clean-up runs before the caller goes on.
    """
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            if on_event is not None:
                on_event(event)
    finally:
        gen.close()
