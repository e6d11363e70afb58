"""Resumable training checkpoints: one field list, saved and loaded from it.

A checkpoint is a private ``torch.save`` file holding only tensors, dicts, lists, numbers
and strings, read back with ``torch.load(weights_only=True)``: the format name and version,
the run's fingerprint, the weights, the optimizer and gradient-scaler states, the run's
progress (:class:`Progress`: step, elapsed time, learning-rate back-off, best weights and
their validation, early-stopping counters, the patch sampler's generator state after the
last batch used ...) and the RNG states of torch (CPU and CUDA), numpy's global generator
and Python's ``random``. The keys of the file are the field names below (format
``napari-tiled-unet-training-checkpoint`` version 1; files written before this module keep
loading: a field they lack takes its default). Files are written beside their final name and
moved into place (:func:`napari_tiled_unet.io.write_atomically`, as model bundles are).
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import write_atomically

log = logging.getLogger(__name__)

FORMAT = "napari-tiled-unet-training-checkpoint"
VERSION = 1


@dataclass
class Progress:
    """Where a run stands: everything of a run's state besides the weights and optimizer."""

    step: int = 0
    elapsed: float = 0.0
    lr_backoff: float = 1.0
    best_state: dict[str, torch.Tensor] | None = None
    best_val: float | None = None
    best_step: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    #: the validation figures of the starting weights (the candidate to beat)
    base_metrics: dict[str, float] = field(default_factory=dict)
    base_val: float | None = None
    bad_validations: int = 0
    last_val_step: int | None = None
    sampler_rng: dict[str, Any] | None = None
    bad_steps: int = 0
    running: list[float] = field(default_factory=list)


@dataclass
class Checkpoint:
    """The content of a checkpoint file (its keys are these fields and :class:`Progress`'s)."""

    fingerprint: str
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    progress: Progress
    torch_rng: torch.Tensor = field(default_factory=torch.get_rng_state)
    cuda_rng: list[torch.Tensor] = field(
        default_factory=lambda: torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])
    python_rng: list[Any] = field(default_factory=lambda: _plain(random.getstate()))
    numpy_rng: dict[str, Any] = field(default_factory=lambda: _plain(np.random.get_state(legacy=False)))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the checkpoint atomically to ``path``."""
        content: dict[str, Any] = {"format": FORMAT, "version": VERSION}
        for f in fields(self):
            if f.name != "progress":
                content[f.name] = getattr(self, f.name)
        for f in fields(Progress):
            content[f.name] = getattr(self.progress, f.name)
        content["best_metrics"] = {k: float(v) for k, v in self.progress.best_metrics.items()}
        content["base_metrics"] = {k: float(v) for k, v in self.progress.base_metrics.items()}
        return write_atomically(path, lambda tmp: torch.save(content, tmp))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Checkpoint:
        """Read a checkpoint (a v1 file of any version of this package).

        Raises:
            ValueError: the file cannot be read or is no training checkpoint (one sentence).
        """
        path = Path(path)
        try:
            content = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"The checkpoint {path.name} could not be read ({type(exc).__name__})") from None
        if not isinstance(content, dict) or content.get("format") != FORMAT:
            raise ValueError(f"{path.name} is not a training checkpoint")
        defaults, kinds = Progress(), {"step": int, "elapsed": float, "lr_backoff": float,
                                       "bad_validations": int, "bad_steps": int}
        values = {f.name: content.get(f.name, getattr(defaults, f.name)) for f in fields(Progress)}
        values.update({k: kind(values[k]) for k, kind in kinds.items()})
        values["running"] = [float(v) for v in values["running"]]
        progress = Progress(**values)
        rest = {f.name: content[f.name] for f in fields(cls) if f.name != "progress" and f.name in content}
        return cls(progress=progress, **rest)

    def restore_rng(self) -> None:
        """Set the global RNGs (torch, CUDA, numpy, random) to the saved states."""
        torch.set_rng_state(self.torch_rng)
        if self.cuda_rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.cuda_rng)
        if self.python_rng:
            version, state, gauss = self.python_rng
            random.setstate((version, tuple(state), gauss))
        if self.numpy_rng:
            legacy = dict(self.numpy_rng)
            legacy["state"] = {k: np.asarray(v, dtype=np.uint32) if k == "key" else v
                               for k, v in legacy["state"].items()}
            np.random.set_state(legacy)


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists and numpy arrays as lists of ints: what a
    ``weights_only`` load reads back (RNG states of ``random`` and numpy's legacy generator)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
