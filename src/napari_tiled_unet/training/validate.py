"""Validation on the held-out part of the annotation, and the rule that picks the weights.

:class:`Validator` runs a model on the held-out windows of a
:class:`~napari_tiled_unet.training.dataset.TrainingSet` and returns a
:class:`ValidationResult`: the validation loss, the score that chooses the weights (object
F1 at IoU 0.5 for instance labels, mean class IoU over the painted pixels for scribbles)
and the same figures for each set of held-out images (the part of a name before ``/``,
e.g. the sets of a mixture; else the image's name).

**Never worse than the start.** :meth:`ValidationResult.beats` is the rule: a higher score
wins; on an equal score, the lower loss. The starting weights are validated first and are
the candidate to beat, so weights are returned only when they beat them on the held-out
part; :func:`selection_reason` says which were kept and why.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..metrics import class_overlap_counts, match_instances
from ..postprocess import labels_from_probabilities
from . import losses
from .data import IGNORE
from .dataset import TrainingSet
from .device import autocast

#: scores closer than this are equal (the loss decides)
SCORE_TOLERANCE = 1e-9


@dataclass
class ValidationResult:
    """The figures of one validation.

    Attributes:
        loss: the validation loss (cross-entropy plus Dice, as in training).
        metrics: ``{"f1@0.5": ...}`` (instance labels) or ``{"mean IoU": ..., "IoU <class>": ...}``
            (scribbles).
        score_name: the metric that chooses the weights (a key of ``metrics``), or None.
        per_set: ``{set name: {"loss": ..., score_name: ...}}``.
    """

    loss: float
    metrics: dict[str, float] = field(default_factory=dict)
    score_name: str | None = None
    per_set: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def score(self) -> float | None:
        return self.metrics.get(self.score_name) if self.score_name else None

    def beats(self, best_loss: float | None, best_metrics: dict[str, float]) -> bool:
        """Whether these figures beat the best so far (none yet: any finite loss does)."""
        if not np.isfinite(self.loss):
            return False
        if best_loss is None:
            return True
        best_score = best_metrics.get(self.score_name) if self.score_name else None
        if self.score is not None and best_score is not None:
            if self.score > best_score + SCORE_TOLERANCE:
                return True
            if self.score < best_score - SCORE_TOLERANCE:
                return False
        return self.loss < best_loss - 1e-6 * abs(best_loss)


def selection_reason(best_step: int | None, best_metrics: dict[str, float], best_loss: float | None,
                     base_metrics: dict[str, float], base_loss: float | None, score_name: str | None) -> str:
    """One sentence: which weights are returned and why."""
    if best_step is None:
        return "no validation: the last weights are returned"

    def figure(metrics: dict[str, float], loss: float | None) -> str:
        if score_name and score_name in metrics:
            return f"{score_name} {metrics[score_name]:.3f}"
        return f"validation loss {loss:.4f}" if loss is not None else "no figure"

    if best_step == 0:
        return (f"the starting weights were kept: no training step beat their "
                f"{figure(base_metrics, base_loss)} on the held-out part")
    if base_loss is None:
        return (f"the weights of step {best_step} were the best on the held-out part "
                f"({figure(best_metrics, best_loss)})")
    best_score, base_score = best_metrics.get(score_name or ""), base_metrics.get(score_name or "")
    if best_score is not None and base_score is not None and abs(best_score - base_score) <= SCORE_TOLERANCE:
        # a tie on the score (both 1.000, say): the loss decided, so name both
        return (f"the weights of step {best_step} beat the starting weights on the held-out part: "
                f"{score_name} as good ({best_score:.3f}), validation loss {best_loss:.4f} against "
                f"{base_loss:.4f}")
    return (f"the weights of step {best_step} beat the starting weights on the held-out part: "
            f"{figure(best_metrics, best_loss)} against {figure(base_metrics, base_loss)}")


def _set_name(name: str) -> str:
    return name.split("/", 1)[0] if "/" in name else name


class Validator:
    """Runs models on the held-out windows of ``data``.

    Args:
        data: the :class:`TrainingSet` (its ``val_items`` and ``val_windows`` are read at
            every call, so a live update counts from the next validation).
        dice_weight: weight of the Dice term in the loss.
    """

    def __init__(self, data: TrainingSet, dice_weight: float = 1.0) -> None:
        self.data = data
        self.dice_weight = float(dice_weight)
        base = data.base
        self.objects = base.task == "instances" and data.config.annotation == "instances"
        self.score_name = "f1@0.5" if self.objects else "mean IoU"
        self.postprocess = base.postprocess
        self.class_names = base.class_names

    @torch.no_grad()
    def run(self, model: torch.nn.Module, device: torch.device, precision: str) -> ValidationResult:
        """Validate ``model`` (left in eval mode) -> :class:`ValidationResult`."""
        model.eval()
        n = int(model.n_classes)
        sets: dict[str, dict[str, Any]] = {}
        for k, (y0, x0, h, w) in self.data.val_windows:
            item, labels = self.data.val_items[k]
            acc = sets.setdefault(_set_name(item.name), {"terms": None, "counts": np.zeros(3, np.int64),
                                                          "inter": np.zeros(n, np.int64),
                                                          "union": np.zeros(n, np.int64)})
            img, cls, wt = item.window(y0, x0, h, w)
            mask = cls != IGNORE
            with autocast(device, precision):
                logits = model(torch.from_numpy(img[None]).to(device))
            logits = logits.float()
            t = losses.loss_terms(
                logits, torch.from_numpy(np.where(mask, cls, 0).astype(np.int64)[None]).to(device),
                torch.from_numpy(wt[None]).to(device), torch.from_numpy(mask[None]).to(device)).detach()
            acc["terms"] = t if acc["terms"] is None else acc["terms"] + t
            if self.objects:
                acc["counts"] += _match_counts(torch.softmax(logits[0], 0).cpu().numpy(), labels, mask,
                                               (y0, x0, h, w), self.postprocess)
            else:
                i, u = class_overlap_counts(cls[mask], logits[0].argmax(0).cpu().numpy()[mask], n)
                acc["inter"] += i
                acc["union"] += u
        if not sets:
            return ValidationResult(float("nan"))
        total = {"terms": None, "counts": 0, "inter": 0, "union": 0}
        per_set = {}
        for name, acc in sets.items():
            per_set[name] = self._figures(acc)
            for key in total:
                total[key] = acc[key] if total[key] is None else total[key] + acc[key]
        figures = self._figures(total)
        loss = figures.pop("loss")
        return ValidationResult(loss, figures, self.score_name, per_set)

    def _figures(self, acc: dict[str, Any]) -> dict[str, float]:
        out = {"loss": float(acc["terms"].total(self.dice_weight))}
        if self.objects:
            tp, fp, fn = (int(v) for v in acc["counts"])
            out["f1@0.5"] = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 1.0
        else:
            out.update(class_iou(acc["inter"], acc["union"], self.class_names))
        return out

    def class_iou_iter(self, bundles: Sequence[Any]) -> Generator[None, None, list[dict[str, float]]]:
        """IoU per class on the held-out windows, for each of ``bundles`` (scribble training).

        Only pixels that count (the painted scribbles inside the held-out part) are compared,
        so the figures say how well each model reproduces what was painted there.

        Yields:
            None after every window and model (a cancel point).

        Returns:
            One dict per bundle: ``{"IoU <class name>": iou, ..., "mean IoU": mean}`` over the
            classes present in the held-out scribbles or the prediction.
        """
        out = []
        for bundle in bundles:
            n = int(bundle.model.n_classes)
            inter, union = np.zeros(n, np.int64), np.zeros(n, np.int64)
            dev = next(bundle.model.parameters()).device
            bundle.model.eval()
            for k, (y0, x0, h, w) in self.data.val_windows:
                item, _ = self.data.val_items[k]
                img, cls, _ = item.window(y0, x0, h, w)
                mask = cls != IGNORE
                with torch.inference_mode():
                    logits = bundle.model(torch.from_numpy(img[None]).to(dev))
                i, u = class_overlap_counts(cls[mask], logits[0].argmax(0).cpu().numpy()[mask], n)
                inter, union = inter + i, union + u
                yield None
            out.append(class_iou(inter, union, bundle.class_names))
        return out


def class_iou(inter: np.ndarray, union: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """``{"IoU <name>": ..., "mean IoU": ...}`` over the classes with a non-empty union."""
    figures = {f"IoU {names[c]}": float(inter[c] / union[c]) for c in range(len(inter)) if union[c]}
    if figures:
        figures["mean IoU"] = float(np.mean(list(figures.values())))
    return figures


def _match_counts(prob: np.ndarray, labels: np.ndarray, mask: np.ndarray, window: tuple[int, int, int, int],
                  params: dict[str, Any]) -> np.ndarray:
    """(tp, fp, fn) of objects at IoU 0.5 in the counted part of a validation window."""
    y0, x0, h, w = window
    H, W = labels.shape
    gt = np.zeros((h, w), dtype=labels.dtype)
    sy, sx = slice(max(0, y0), min(H, y0 + h)), slice(max(0, x0), min(W, x0 + w))
    gt[sy.start - y0 : sy.stop - y0, sx.start - x0 : sx.stop - x0] = labels[sy, sx]
    pred = labels_from_probabilities(prob, "instances", **params)
    m = match_instances(np.where(mask, gt, 0), np.where(mask, pred, 0), 0.5)
    return np.array([m.tp, m.fp, m.fn], np.int64)
