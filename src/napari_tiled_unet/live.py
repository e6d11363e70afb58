"""Live training while the user annotates: a Qt-free engine for the Fine-tune widget's live mode.

:class:`LiveTrainer` trains a copy of a model in a background thread on one image and the
labels painted on it. Meanwhile:

- :meth:`LiveTrainer.set_annotation` hands it the labels as they are now (a copy is taken on
  the caller's thread); the training thread picks them up before its next step, so strokes
  join the training data without a restart (model, optimiser state and step count go on);
- every ``preview_every`` seconds (or three times as long as the last preview took, so that
  previews of a large window do not crowd out training), or at once after
  :meth:`LiveTrainer.request_preview` (the user stopped painting), the thread segments the
  window set by :meth:`LiveTrainer.set_window` (the visible part of the image) with the
  current weights and hands a :class:`Preview` to ``on_preview`` (called on the training
  thread: a GUI must pass it to its own thread);
- every ``validate_every`` seconds it scores the weights on the held-out part of the
  annotation and keeps the best;
- :meth:`LiveTrainer.stop` ends the thread and returns the best weights as a bundle.

**Held-out part.** The annotation changes all the time, so no strip can be set aside once:
instead the image is cut into 64 px blocks and a fixed fifth of them (a diagonal pattern, so
every region of the image has some) is held out; a stroke falls where it falls. Weights are
scored by the mean IoU of the classes on the held-out annotated pixels, and at the end the
best weights, the last ones and the starting ones are scored again on the final annotation:
the starting weights are returned when nothing beats them (never worse than the start).

The forward and backward passes release the GIL, so a GUI thread stays responsive: measured on
a 1024 x 1024 window on a busy 2-core machine, the training thread held the interpreter for at
most 30 ms at a time while post-processing a preview (1.1 s), building targets (0.4 s) or
running the network.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import normalization, objectsize
from .metrics import class_overlap_counts
from .model.bundle import ModelBundle, load_model
from .postprocess import labels_from_probabilities
from .training import adaptation
from .training.config import TrainConfig
from .training.data import IGNORE, Augmentation, PatchSampler, TrainingImage
from .training.device import PRECISIONS, autocast
from .training.device import resolve as resolve_precision
from .training.step import Optimization
from .training.targets import make_targets, scaled_region

log = logging.getLogger(__name__)

#: side (px) of the blocks that are held out for validation (one in :data:`HOLDOUT_PERIOD`)
HOLDOUT_BLOCK = 64
HOLDOUT_PERIOD = 5
#: largest preview window side (px); a larger view is previewed around its centre
PREVIEW_MAX = 1024


@dataclass
class Preview:
    """The current model's segmentation of a window.

    Attributes:
        box: ``(y0, x0, y1, x1)`` of the window in image pixels.
        labels: int32 (y1 - y0, x1 - x0): object ids (instances) or class index + 1 (semantic,
            0 nowhere), ready for a Labels layer.
        step: optimisation steps done when it was made.
        annotation_version: the annotation the model had trained on (see :meth:`LiveTrainer.set_annotation`).
        seconds: time the preview took.
    """

    box: tuple[int, int, int, int]
    labels: np.ndarray
    step: int
    annotation_version: int
    seconds: float


def holdout_blocks(shape: tuple[int, int], block: int = HOLDOUT_BLOCK,
                   period: int = HOLDOUT_PERIOD) -> np.ndarray:
    """bool (Y, X): the held-out blocks (one in ``period``, on diagonals)."""
    h, w = shape
    by = np.arange(h) // block
    bx = np.arange(w) // block
    return ((by[:, None] + 2 * bx[None, :]) % period) == period - 1


class LiveTrainer:
    """Train in the background on an annotation that may change (see the module docstring).

    Args:
        bundle: the starting model (copied, never modified).
        image: (Y, X) or (C, Y, X) with ``channel_axis=0``, or RGB (Y, X, 3); read into memory once.
        annotation: ``"instances"`` or ``"scribbles"`` (see :mod:`~napari_tiled_unet.training.targets`).
        channel_axis: axis of the channels of a 3D image.
        lr, patch_size, batch_size, precision: as for the Trainer (defaults: the short-run
            choices of docs/benchmarks.md).
        schedule_minutes: the learning rate holds its peak and decays over this many minutes,
            then stays at the floor while the user keeps annotating.
        preview_every, validate_every: seconds between previews and validations.
        freeze_bn: normalise with the base model's BatchNorm statistics (tiny batches).
        on_preview, on_step: callbacks on the training thread (``Preview``; step number and loss).
        seed: seed of the patch sampling.
        threads: torch threads of the training thread (None: torch's setting).
        scale: train on the image resized by this factor (the scale ``diameter="auto"``
            segmented it at, see the Fine-tune widget's ``_training_scale``), so that the model
            learns the objects at the sizes it segments them at and keeps its size range.
            Labels, regions and windows stay in the image's own pixels; previews come back
            at its own size. None: the image's own size.
    """

    def __init__(self, bundle: ModelBundle | str, image: Any, *, annotation: str = "instances",
                 channel_axis: int | None = None, lr: float = 1e-3, patch_size: int = 256,
                 batch_size: int = 2,
                 precision: str = "auto", schedule_minutes: float = 2.0, preview_every: float = 4.0,
                 validate_every: float = 10.0, freeze_bn: bool = True,
                 on_preview: Callable[[Preview], None] | None = None,
                 on_step: Callable[[int, float], None] | None = None, seed: int = 0,
                 threads: int | None = None, scale: float | None = None) -> None:
        from .training.dataset import as_channels_first

        self.base = load_model(bundle)
        if annotation not in ("instances", "scribbles"):
            raise ValueError(f"Unknown annotation {annotation!r}: use 'instances' or 'scribbles'.")
        if annotation == "instances" and self.base.task != "instances":
            raise ValueError("Instance labels need an instances model; paint scribbles for a semantic model.")
        if precision != "auto" and precision not in PRECISIONS:
            raise ValueError(f"Unknown precision {precision!r}: use auto, fp32, bf16 or fp16.")
        self.annotation = annotation
        chw = as_channels_first(image, self.base.n_channels, channel_axis)
        #: (Y, X) of the image as given: labels, regions, windows and previews are in these pixels
        self.native: tuple[int, int] = tuple(int(v) for v in chw.shape[1:])
        scale = objectsize.check_training_scale(scale)
        self.scale = None if scale == 1.0 else scale
        if self.scale is not None:
            chw = objectsize.resize(chw, "CYX", objectsize.scaled_shape(self.native, self.scale))
        #: the image trained on ((C, Y, X), resized when ``scale`` is given)
        self.image = np.ascontiguousarray(chw)
        self.stats = normalization.compute_stats(self.image, self.base.normalization, channel_axis=0)
        m = self.base.model.size_multiple
        self.patch_size = -(-min(int(patch_size), max(self.image.shape[1:])) // m) * m
        self.batch_size, self.lr = int(batch_size), float(lr)
        self.precision, _ = resolve_precision(torch.device("cpu"), precision)  # "auto": bf16 where fast
        self.schedule_minutes = float(schedule_minutes)
        self.preview_every, self.validate_every = float(preview_every), float(validate_every)
        self.freeze_bn = bool(freeze_bn)
        self.on_preview, self.on_step = on_preview, on_step
        self.seed, self.threads = int(seed), threads
        self.model = copy.deepcopy(self.base.model).cpu()
        self.holdout = holdout_blocks(self.image.shape[1:])
        self.step = 0
        self.loss: float | None = None
        self.error: BaseException | None = None
        self.stop_reason: str | None = None
        self.best_score: float | None = None
        self.scores: dict[str, float] = {}
        self.annotation_version = 0  # version the training data were built from
        self.train_seconds = 0.0
        self._best_state: dict[str, torch.Tensor] | None = None
        self._pending: tuple[int, np.ndarray, Any] | None = None
        self._version = 0
        self._window: tuple[int, int, int, int] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._preview_now = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampler: PatchSampler | None = None
        self._train_item: TrainingImage | None = None
        self._val_item: TrainingImage | None = None
        self.latest_preview: Preview | None = None

    # -- the caller's side --------------------------------------------------------------------

    def set_annotation(self, labels: np.ndarray, region: Any = None) -> int:
        """The labels as they are now (copied here), and optional region rectangles.

        Returns:
            The annotation's version number (1, 2, ...); :attr:`annotation_version` reaches it
            once the training thread trains on it.
        """
        labels = np.array(labels, copy=True)
        if labels.shape != self.native:
            raise ValueError(f"The labels {labels.shape} and the image {self.native} differ in "
                             "shape; paint on a labels layer of the image's size.")
        with self._lock:
            self._version += 1
            self._pending = (self._version, labels, region)
            return self._version

    def set_window(self, box: tuple[int, int, int, int]) -> None:
        """The part of the image to preview, ``(y0, x0, y1, x1)`` in the image's own pixels
        (clipped to the image)."""
        h, w = self.native
        y0, x0, y1, x1 = (int(v) for v in box)
        y0, x0, y1, x1 = max(0, y0), max(0, x0), min(h, y1), min(w, x1)
        if y1 - y0 > PREVIEW_MAX:
            c = (y0 + y1) // 2
            y0, y1 = c - PREVIEW_MAX // 2, c + PREVIEW_MAX // 2
        if x1 - x0 > PREVIEW_MAX:
            c = (x0 + x1) // 2
            x0, x1 = c - PREVIEW_MAX // 2, c + PREVIEW_MAX // 2
        if y1 > y0 and x1 > x0:
            self._window = (y0, x0, y1, x1)

    @property
    def window(self) -> tuple[int, int, int, int]:
        """The window previewed, ``(y0, x0, y1, x1)`` (the whole image until one is set)."""
        return self._window or (0, 0, *self.native)

    def request_preview(self) -> None:
        """Preview at the end of the current step (e.g. when the user stopped painting)."""
        self._preview_now.set()

    def start(self) -> None:
        """Start the training thread (once)."""
        if self._thread is not None:
            raise RuntimeError("A LiveTrainer starts once; make a new one.")
        self._thread = threading.Thread(target=self._run, name="live-training", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def request_stop(self) -> None:
        """Ask the thread to stop after the current step, without waiting (see :attr:`running`)."""
        self._stop.set()

    def stop(self, timeout: float | None = None) -> ModelBundle:
        """Stop training (after the current step) and return the best weights as a bundle.

        Raises:
            RuntimeError: the thread did not end within ``timeout`` seconds.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError("Live training did not stop in time.")
        return self.best_bundle()

    def training_classes(self) -> np.ndarray | None:
        """uint8 (Y, X): the classes the thread trains on now (:data:`IGNORE` where nothing
        counts; held-out blocks included), or None before the first annotation is taken up; at
        the image's own size (nearest pixel) when training on a resized image."""
        with self._lock:  # the pair the thread set together
            tr, va = self._train_item, self._val_item
        if tr is None:
            return None
        classes = np.where(tr.classes != IGNORE, tr.classes, va.classes if va is not None else IGNORE)
        return self._native_window(classes, (0, 0, *self.image.shape[1:]), (0, 0, *self.native))

    def best_bundle(self) -> ModelBundle:
        """The best weights so far (the starting ones when nothing beat them) with a training record."""
        model = type(self.base.model)(**self.base.model.config)
        state = self._best_state if self._best_state is not None else self.base.model.state_dict()
        model.load_state_dict(state)
        model.eval()
        meta = objectsize.finetuned_metadata(self.base, self.scale)
        name = meta.get("name") or "model"
        if not name.endswith("-finetuned"):
            meta["name"] = f"{name}-finetuned"
        meta["training"] = {"base_model": self.base.name, "mode": "live", "annotation": self.annotation,
                            "steps": self.step, "time_s": round(self.train_seconds, 1),
                            "stopped": self.stop_reason, "validation": "held-out 64 px blocks (1 in 5)",
                            "metrics": dict(self.scores), "kept": self.kept, "image_scale": self.scale}
        if self.base.metadata.get("training"):
            meta["training"]["base_training"] = self.base.metadata["training"]
        return ModelBundle(model, meta)

    @property
    def kept(self) -> str:
        """Which weights :meth:`best_bundle` returns, and why."""
        if self._best_state is None:
            if "start" in self.scores:
                return "the starting weights: training did not beat them on the held-out annotation"
            return "the starting weights: nothing was validated"
        return "the best weights on the held-out annotation"

    # -- the training thread ------------------------------------------------------------------

    def _run(self) -> None:
        if self.threads:
            torch.set_num_threads(int(self.threads))
        model = self.model
        dev = torch.device("cpu")
        precision = self.precision
        config = TrainConfig(annotation=self.annotation, lr=self.lr, patch_size=self.patch_size,
                             batch_size=self.batch_size, precision=precision,
                             batchnorm="frozen" if self.freeze_bn else "train")
        optim = Optimization(model, config, dev, precision, self._fallback_state)
        rng = np.random.default_rng(self.seed)
        last_preview = last_val = time.monotonic()
        backoff = 1.0
        try:
            while not self._stop.is_set():
                self._take_annotation(rng)
                now = time.monotonic()
                # previews take at most about a quarter of the time: a large window waits longer
                last = self.latest_preview.seconds if self.latest_preview is not None else 0.0
                spacing = max(self.preview_every, 3 * last)
                if self._window is not None and (self._preview_now.is_set() or now - last_preview >= spacing):
                    self._preview_now.clear()
                    self._preview(model)
                    last_preview = time.monotonic()
                if self._sampler is None:  # nothing painted yet
                    self._stop.wait(0.1)
                    continue
                if now - last_val >= self.validate_every:
                    self._validate(model)
                    last_val = time.monotonic()
                batch = self._sampler.batch(self.batch_size)
                progress = self.train_seconds / (60 * self.schedule_minutes)
                lr = self.lr * backoff * adaptation.hold_decay_schedule(self.step, 5, progress)
                t0 = time.monotonic()
                status, loss = optim.step(batch, lr)  # the Trainer's guarded step
                self.train_seconds += time.monotonic() - t0
                if status == "bad":
                    backoff *= 0.5
                    log.warning("Live training: a non-finite step was skipped; learning rate halved.")
                if status != "ok":
                    continue
                self.step += 1
                self.loss = loss
                if self.on_step is not None:
                    self.on_step(self.step, self.loss)
            self.stop_reason = self.stop_reason or "stopped by user"
            if self._val_item is not None:
                self._final_choice(model)
        except BaseException as exc:  # handed to the caller through .error; the best weights stay
            self.error = exc
            self.stop_reason = "failed"
            log.exception("Live training failed")
        finally:
            model.eval()

    def _fallback_state(self) -> dict[str, torch.Tensor]:
        """Where a step that made the weights non-finite goes back to."""
        return self._best_state if self._best_state is not None else self.base.model.state_dict()

    def _take_annotation(self, rng: np.random.Generator) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        version, labels, region = pending
        if self.scale is not None:
            labels = objectsize.resize_labels(labels, self.image.shape[1:])
            region = scaled_region(region, self.native, self.image.shape[1:])
        n_classes = int(self.base.model.n_classes)
        t = make_targets(self.image.shape[1:], labels, self.annotation, region, n_classes=n_classes)
        self.annotation_version = version
        if not t.n_annotated:
            with self._lock:
                self._sampler = self._train_item = self._val_item = None
            return
        item = TrainingImage(self.image, t, self.stats, name="live")
        train, val = item.restrict(~self.holdout), item.restrict(self.holdout)
        if not train.n_counted:  # everything painted so far lies in held-out blocks: train on it all
            train, val = item, None
        with self._lock:
            self._train_item, self._val_item = train, (val if val is not None and val.n_counted else None)
        state = self._sampler.rng if self._sampler is not None else rng
        self._sampler = PatchSampler([train], self.patch_size, state, Augmentation())
        if self._val_item is not None:
            self.best_score = None  # scores on another held-out annotation are not comparable

    @torch.no_grad()
    def _probabilities(self, model: torch.nn.Module, box: tuple[int, int, int, int],
                       context: int = 32) -> np.ndarray:
        y0, x0, y1, x1 = box
        h, w = self.image.shape[1:]
        cy0, cx0 = max(0, y0 - context), max(0, x0 - context)
        cy1, cx1 = min(h, y1 + context), min(w, x1 + context)
        x = normalization.apply(self.image[:, cy0:cy1, cx0:cx1], self.stats)
        model.eval()
        with autocast(torch.device("cpu"), self.precision):
            logits = model(torch.from_numpy(np.ascontiguousarray(x))[None])
        prob = torch.softmax(logits.float()[0], 0).numpy()
        return prob[:, y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0]

    def _preview(self, model: torch.nn.Module) -> None:
        t0 = time.monotonic()
        box = self._window
        inner = self._trained_box(box)
        prob = self._probabilities(model, inner)
        if self.base.task == "instances":
            labels = labels_from_probabilities(prob, "instances", **self.base.postprocess)
        else:
            labels = prob.argmax(0).astype(np.int32) + 1
        labels = self._native_window(np.asarray(labels), inner, box)
        self.latest_preview = Preview(box, np.asarray(labels, np.int32), self.step, self.annotation_version,
                                      time.monotonic() - t0)
        if self.on_preview is not None:
            self.on_preview(self.latest_preview)

    def _trained_box(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """``box`` (the image's own pixels) -> the box of the trained image that covers it."""
        if self.scale is None:
            return box
        (h, w), (th, tw) = self.native, self.image.shape[1:]
        y0, x0, y1, x1 = box
        return (int(np.floor(y0 * th / h)), int(np.floor(x0 * tw / w)),
                min(th, int(np.ceil(y1 * th / h))), min(tw, int(np.ceil(x1 * tw / w))))

    def _native_window(self, array: np.ndarray, inner: tuple[int, int, int, int],
                       box: tuple[int, int, int, int]) -> np.ndarray:
        """``array`` covering ``inner`` (pixels of the trained image) -> ``box`` (the image's own
        pixels): each pixel takes the value under its centre, as :func:`.objectsize.resize_labels`."""
        if self.scale is None:
            return array
        (h, w), (th, tw) = self.native, self.image.shape[1:]
        rows = np.floor((np.arange(box[0], box[2]) + 0.5) * th / h).astype(np.int64) - inner[0]
        cols = np.floor((np.arange(box[1], box[3]) + 0.5) * tw / w).astype(np.int64) - inner[1]
        rows = np.clip(rows, 0, array.shape[0] - 1)
        cols = np.clip(cols, 0, array.shape[1] - 1)
        return array[np.ix_(rows, cols)]

    def _score(self, model: torch.nn.Module) -> float:
        """Mean class IoU on the held-out annotated pixels."""
        val = self._val_item
        y0, x0, y1, x1 = val.counted_bbox()
        prob = self._probabilities(model, (y0, x0, y1, x1))
        cls = val.classes[y0:y1, x0:x1]
        mask = cls != IGNORE
        n = prob.shape[0]
        inter, union = class_overlap_counts(cls[mask], prob.argmax(0)[mask], n)
        present = union > 0
        return float(np.mean(inter[present] / union[present])) if present.any() else 0.0

    def _validate(self, model: torch.nn.Module) -> None:
        if self._val_item is None:
            return
        if self.best_score is None:  # a new held-out annotation: score the weights kept so far on it
            kept = self._kept_model()
            self.best_score = self._score(kept)
        score = self._score(model)
        self.scores["last"] = score
        if score > self.best_score:
            self.best_score = score
            self._best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def _kept_model(self) -> torch.nn.Module:
        kept = copy.deepcopy(self.base.model)
        if self._best_state is not None:
            kept.load_state_dict(self._best_state)
        return kept

    def _final_choice(self, model: torch.nn.Module) -> None:
        """Score the start, the best and the last weights on the final held-out annotation; keep the top."""
        start = self._score(self.base.model)
        self.scores["start"] = start
        candidates = [("start", start, None)]
        if self._best_state is not None:
            best = self._kept_model()
            candidates.append(("best", self._score(best), self._best_state))
        last = self._score(model)
        candidates.append(("last", last, {k: v.detach().clone() for k, v in model.state_dict().items()}))
        name, score, state = max(candidates, key=lambda c: c[1])  # ties: the earliest (start) wins
        self.scores.update({n: s for n, s, _ in candidates})
        self.scores["kept"] = score
        self._best_state = state
        self.best_score = score
        log.info("Live training: keeping the %s weights (mean IoU %.3f on the held-out annotation).",
                 name, score)
