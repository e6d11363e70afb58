"""Small typed events that long-running engine functions yield.

Engine generators (``predict_iter``, ``finetune_iter`` ...) yield these and *return* their
result; widgets turn them into progress bars, plots and notifications, the CLI into tqdm
bars. They are plain dataclasses: no Qt, no torch tensors.
"""

from __future__ import annotations

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
