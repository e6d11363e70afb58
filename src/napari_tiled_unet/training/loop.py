"""Fine-tune a model bundle on painted labels, or train a new one, as a generator of events.

:class:`Trainer` holds one run. Build it (all input checks happen here, before anything
is changed), then drive :meth:`Trainer.iter`, a generator that yields
:class:`~napari_tiled_unet.events.TrainStep` and :class:`~napari_tiled_unet.events.WarningEvent`
events and returns the best :class:`~napari_tiled_unet.model.bundle.ModelBundle`::

    config = TrainConfig(epochs=20)                # or Trainer(bundle, images, labels, epochs=20)
    trainer = Trainer(bundle, [image], [labels], config)
    for event in trainer.iter():      # e.g. inside napari's thread_worker
        ...
    # a Stop button calls trainer.stop(): the generator then runs a last validation and
    # returns the best bundle normally
    best = trainer.best_bundle()      # also valid after gen.close() or an exception

The parts: the settings (:class:`~.config.TrainConfig`), the data and its split
(:class:`~.dataset.TrainingSet`), validation and the rule that picks the weights
(:class:`~.validate.Validator`), checkpoints (:class:`~.checkpoint.Checkpoint`), device
and precision (:mod:`.device`). :func:`finetune_iter` / :func:`finetune` are the one-call
forms; :func:`~.new_model.new_bundle` makes a randomly initialised bundle that the same loop
trains from scratch.

**Never worse than the start.** The starting model is validated first (step 0) and is the
candidate to beat: weights are kept only when they beat it on the held-out part by object
F1 (instance labels) or mean class IoU (scribbles), the loss deciding ties
(:meth:`~.validate.ValidationResult.beats`); :attr:`Trainer.selection` says which and why.
``keep="last"`` (:class:`~.config.TrainConfig`) returns the last weights instead, for a
schedule meant to run to its end, where a few held-out windows are a noisier judge than the
schedule; the validations still run and are recorded.

**Robustness**: a NaN or infinite loss or gradient skips the step, restores the BatchNorm
statistics of that forward pass, halves the learning rate and yields a warning; weights
that are not finite are never kept, returned or saved.

**Checkpoints** (``checkpoint_path``) are saved every ``checkpoint_every`` steps or
``checkpoint_minutes``, on stop, on close and at the end. With ``resume=True`` a run whose
fingerprint matches continues from the saved step and draws the same patches the
interrupted run would have drawn.

**What a resumed run guarantees.** A Ctrl-C or SIGTERM never cuts an optimisation step or
the bookkeeping of a validation in the middle: on the main thread the signal waits for the
end of that block (:mod:`napari_tiled_unet._interrupts`), so the checkpoint saved on the
way out is a state the uninterrupted run passed through, and a validation that was due is
run first on resume. Resuming therefore gives **bit-identical weights** to the
uninterrupted run (tested: SIGTERM twice, resumed twice, against one run without stops)
when the budget is in *epochs*, on the same device, precision, thread count and library
versions. With a *minutes* budget the learning-rate schedule and the end follow the wall
clock, so a resumed run ends close to, but not exactly at, the uninterrupted one. A run
killed outright (SIGKILL, power cut) resumes from its last periodic checkpoint, exactly as
well.

**Live data.** :meth:`Trainer.update_annotation` (any thread) hands new labels of an image
to the running loop, which takes them between two steps (:meth:`.dataset.TrainingSet.update`).
"""

from __future__ import annotations

import copy
import datetime as _dt
import enum
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np
import torch

from .. import __version__
from .._interrupts import deferred_signals
from ..events import TrainStep, WarningEvent, run_to_end
from ..model.bundle import ModelBundle, load_model
from ..model.unet import UNet
from ..objectsize import finetuned_metadata
from .checkpoint import Checkpoint, Progress
from .config import TrainConfig
from .data import Prefetcher
from .dataset import TrainingSet
from .device import resolve, resolve_device
from .new_model import check_class_names, new_bundle, new_bundle_for_annotation  # noqa: F401 (API)
from .step import Optimization, finite
from .validate import ValidationResult, Validator, selection_reason

log = logging.getLogger(__name__)

#: consecutive non-finite steps after which training gives up (keeping the best weights)
MAX_BAD_STEPS = 8
#: keyword arguments of :class:`Trainer` that go to its :class:`TrainingSet`
DATA_OPTIONS = ("regions", "channel_axis", "names", "val_images", "sample_weights", "diameters", "scale",
                "ignore")


class StopReason(str, enum.Enum):
    """Why a run ended (the training record's ``stopped``)."""

    COMPLETED = "completed"
    TIME_BUDGET = "time budget"
    STOPPED = "stopped by user"
    PATIENCE = "early stopping"
    DIVERGED = "diverged"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return self.value


def _progress(name: str) -> property:
    return property(lambda self: getattr(self.progress, name), doc=f"The run's {name} (see ``Progress``).")


class Trainer:
    """One fine-tuning (or training) run; see the module docstring for the life cycle.

    Args:
        bundle: the starting model (a :class:`ModelBundle`, a built-in name or a file); it
            is copied and never modified.
        images, labels: the data (see :class:`~.dataset.TrainingSet`); or give ``data``.
        config: the settings (:class:`~.config.TrainConfig`); without it, ``options`` are
            its fields and the :data:`DATA_OPTIONS` of the training set.
        data: a ready :class:`~.dataset.TrainingSet` (instead of images and labels).
        should_stop: optional callable checked every step (e.g. ``threading.Event.is_set``).
        record_extra: more entries for the training record (e.g. the sets of a mixture).

    Raises:
        ValueError: bad input, with one sentence that says what to do.
        TypeError: an unknown keyword argument.
    """

    step, elapsed, best_step, best_val, best_metrics, lr_backoff = (
        _progress(n) for n in ("step", "elapsed", "best_step", "best_val", "best_metrics", "lr_backoff"))

    def __init__(self, bundle: ModelBundle | str | os.PathLike, images: Sequence[Any] | None = None,
                 labels: Sequence[np.ndarray] | None = None, config: TrainConfig | None = None, *,
                 data: TrainingSet | None = None, should_stop: Callable[[], bool] | None = None,
                 record_extra: dict[str, Any] | None = None, **options: Any) -> None:
        base = load_model(bundle)
        config, rest = (config, dict(options)) if config is not None else TrainConfig.split(options)
        data_options = {k: rest.pop(k) for k in DATA_OPTIONS if k in rest}
        if rest:
            raise TypeError(f"Trainer got unknown keyword argument(s): {', '.join(sorted(rest))}.")
        self.base, self.config = base, config
        self.data = data if data is not None else TrainingSet(base, images, labels, config, **data_options)
        self.device = resolve_device(config.device)
        self.should_stop = should_stop
        self.record_extra = dict(record_extra or {})
        self.steps_per_epoch = int(config.steps_per_epoch or self.data.steps_per_epoch(config.batch_size))
        self.val_every = int(config.val_every or self.steps_per_epoch)
        self.checkpoint_every = int(config.checkpoint_every or self.val_every)
        self.fingerprint = self.data.fingerprint()
        self.validator = Validator(self.data, config.dice_weight)
        self.model: UNet = copy.deepcopy(base.model).cpu()
        self.progress = Progress()
        self.stop_reason: StopReason | None = None
        self._stop = threading.Event()
        self._updates: queue.SimpleQueue = queue.SimpleQueue()
        self.sampler = config.make_sampler(self.data.train_items, self.data.patch_size,
                                           np.random.default_rng(config.seed))
        self.progress.sampler_rng = self.sampler.rng.bit_generator.state
        self._started = False
        log.info("Training on %d image(s), %d annotated pixels for training, %s; patch %d, %d steps/epoch.",
                 len(self.data.train_items), sum(it.n_counted for it in self.data.train_items),
                 self.data.val_description, self.data.patch_size, self.steps_per_epoch)

    # the settings and the data, as the widget and the CLI read them
    annotation = property(lambda self: self.config.annotation)
    epochs = property(lambda self: self.config.epochs)
    minutes = property(lambda self: self.config.minutes)
    patch_size = property(lambda self: self.data.patch_size)
    train_items = property(lambda self: self.data.train_items)
    val_items = property(lambda self: self.data.val_items)
    val_windows = property(lambda self: self.data.val_windows)
    val_record = property(lambda self: self.data.val_record)
    val_description = property(lambda self: self.data.val_description)

    # -- control ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the running :meth:`iter` to finish after the current step: it validates the
        last weights and returns the best bundle."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set() or bool(self.should_stop and self.should_stop())

    def update_annotation(self, index: int, labels: np.ndarray, region: Any = ...) -> None:
        """New labels (and region) for image ``index``, taken between two steps (live mode).

        Raises:
            ValueError: labels that do not fit the image (checked here, on the caller's thread).
        """
        self._updates.put((index, self.data.check_labels(index, np.array(labels, copy=True)), region))

    def planned_steps(self) -> int:
        """Steps planned (an estimate when only a time budget is set)."""
        c, p = self.config, self.progress
        total = math.ceil(c.epochs * self.steps_per_epoch) if c.epochs else None
        if c.minutes:
            est = math.ceil(p.step * c.minutes * 60 / p.elapsed) if p.step and p.elapsed > 0 else (
                total or self.steps_per_epoch)
            total = min(total, est) if total else est
        return max(1, int(total))

    def _lr(self) -> float:
        c, p = self.config, self.progress
        total = self.planned_steps()
        warm = min(50, max(1, total // 20))
        prog = (p.step - warm) / max(1, total - warm)
        if c.minutes:
            prog = max(prog if c.epochs else 0.0, p.elapsed / (c.minutes * 60))
        return c.lr * p.lr_backoff * c.schedule()(p.step, warm, min(1.0, prog))

    def _done(self) -> StopReason | None:
        c, p = self.config, self.progress
        if c.epochs and p.step >= math.ceil(c.epochs * self.steps_per_epoch):
            return StopReason.COMPLETED
        if c.minutes and p.elapsed >= c.minutes * 60:
            return StopReason.TIME_BUDGET
        return None

    # -- results ----------------------------------------------------------------------------

    @property
    def best_state(self) -> dict[str, torch.Tensor] | None:
        """The state dict of the best weights so far (None before the first validation)."""
        return self.progress.best_state

    @property
    def selection(self) -> str:
        """One sentence: which weights :meth:`best_bundle` returns and why."""
        p = self.progress
        reason = selection_reason(p.best_step, p.best_metrics, p.best_val, p.base_metrics, p.base_val,
                                  self.validator.score_name)
        if self.config.keep == "last" and p.step > 0:
            return f"the last weights (step {p.step}) are returned, as asked (keep last); by validation, " \
                   f"{reason}"
        return reason

    def best_bundle(self) -> ModelBundle:
        """The best weights so far (see the module docstring; the last finite weights without
        validation or with ``keep="last"``) as a new bundle with the training record, model in
        eval mode on the CPU.

        Safe to call at any time, also after the generator was closed or failed.
        """
        state = None if self.config.keep == "last" and self.progress.step > 0 else self.progress.best_state
        if state is None:
            current = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            state = current if finite(current) else self.base.model.state_dict()
        model = type(self.base.model)(**self.base.model.config)
        model.load_state_dict(state)
        model.eval()
        # (train on a mixture records the range of its own run again)
        meta = finetuned_metadata(self.base, self.data.scale)
        meta.pop("classes_from", None)  # kept in the training record
        meta["training"] = self.record()
        base_name = self.base.metadata.get("name")
        if base_name and not self.record_is_scratch and not base_name.endswith("-finetuned"):
            meta["name"] = f"{base_name}-finetuned"
        meta["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        meta["package_version"] = __version__
        return ModelBundle(model, meta)

    @property
    def record_is_scratch(self) -> bool:
        """True when the starting model was never trained (made by :func:`new_bundle`)."""
        return not self.base.metadata.get("training") and self.base.path is None

    def record(self) -> dict[str, Any]:
        """The training record stored in the returned bundle's ``metadata["training"]``."""
        c, p, scratch = self.config, self.progress, self.record_is_scratch
        rec = {
            "base_model": None if scratch else self.base.name, "from_scratch": scratch,
            "data": self.data.record(),
            "annotation": c.annotation, "task": self.base.task, "classes": self.base.class_names,
            "validation": self.data.val_record, "epochs": round(p.step / self.steps_per_epoch, 3),
            "steps": p.step, "steps_per_epoch": self.steps_per_epoch, "patch_size": self.data.patch_size,
            "batch_size": c.batch_size, "lr": c.lr, "seed": c.seed, "time_s": round(p.elapsed, 1),
            "image_scale": self.data.scale,
            "stopped": None if self.stop_reason is None else self.stop_reason.value,
            "best_step": p.best_step, "selection": self.selection,
            "metrics": {"best_val_loss": p.best_val, **p.best_metrics},
            "package_version": __version__, "device": str(self.device), "precision": c.precision,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        if c.touching_width:
            rec["touching_width"] = c.touching_width
        if c.core_fraction:
            rec["core_fraction"] = c.core_fraction
        if c.keep != "best":
            rec["keep"] = c.keep
        if scratch and self.base.metadata.get("classes_from"):
            rec["classes_from"] = self.base.metadata["classes_from"]
        rec.update(self.record_extra)
        if self.base.metadata.get("training"):
            rec["base_training"] = self.base.metadata["training"]
            if "widened_from" in rec["base_training"]:  # model/widen.py
                rec["widened_from"] = rec["base_training"]["widened_from"]
        return rec

    def class_iou_iter(self, bundles: list[Any]) -> Generator[None, None, list[dict[str, float]]]:
        """IoU per class of ``bundles`` on the held-out windows (:meth:`.Validator.class_iou_iter`)."""
        return self.validator.class_iou_iter(bundles)

    # -- the generator ----------------------------------------------------------------------

    def iter(self) -> Generator[TrainStep | WarningEvent, None, ModelBundle]:
        """Train, yielding events; return the best bundle (see the module docstring).

        Yields:
            :class:`TrainStep` after every optimisation step, and one more (with
            ``val_loss`` and ``metrics``) after every validation (the first, at step 0,
            validates the starting model and has ``loss`` NaN); :class:`WarningEvent` for
            skipped steps, precision fall-backs, early stopping (``kind="info"``) ...
        """
        if self._started:
            raise RuntimeError("A Trainer runs once; make a new one (with resume=True to continue).")
        self._started = True
        c, p = self.config, self.progress
        for message in self.data.warnings:
            yield WarningEvent(message)
        if c.annotation == "scribbles" and self.base.task == "instances":
            yield WarningEvent("Scribbles on an instances model paint its classes: 1 background, 2 interior, "
                               "3 boundary.", kind="info")
        precision, warning = resolve(self.device, c.precision)
        if warning:
            yield WarningEvent(warning)
        self.precision_used = precision
        model = self.model.to(self.device)
        model.use_checkpointing(c.checkpointing)
        optim = Optimization(model, c, self.device, precision,
                             lambda: self.progress.best_state or self.base.model.state_dict())
        if c.checkpoint_path is not None and c.resume and c.checkpoint_path.exists():
            yield self._resume(optim)
        t_start = time.monotonic() - p.elapsed
        last_save = time.monotonic()
        prefetch = Prefetcher(self.sampler, c.batch_size)
        try:
            while True:
                # a validation that is due (at step 0, or where an interrupted run stopped before it)
                if self.data.val_windows and p.last_val_step != p.step and p.step % self.val_every == 0:
                    yield self._validate(model, precision, t_start)
                p.elapsed = time.monotonic() - t_start
                self.stop_reason = self._why_stop()
                if self.stop_reason:
                    if self.stop_reason is StopReason.PATIENCE:
                        yield WarningEvent(f"The validation did not improve for {c.early_stopping_patience} "
                                           "validations; stopping early with the best weights.", kind="info")
                    break
                if not self._updates.empty():
                    prefetch = yield from self._take_updates(prefetch)
                batch = prefetch.next()
                lr = self._lr()
                # The step and its bookkeeping are never cut in the middle (a signal waits for the
                # end of this block), so a checkpoint saved on Ctrl-C/SIGTERM is a state the
                # uninterrupted run also passed through.
                with deferred_signals():
                    status, loss_value = optim.step(batch, lr)
                    p.sampler_rng = prefetch.rng_state  # this batch is used up, whatever happened
                    if status == "bad":
                        p.bad_steps += 1
                        p.lr_backoff *= 0.5
                    elif status == "ok":
                        p.bad_steps = 0
                        p.step += 1
                        p.running.append(loss_value)
                if status == "overflow":  # fp16: the gradient scaler lowered its scale, as designed
                    continue
                if status == "bad":
                    yield WarningEvent(
                        f"The loss or its gradient became NaN or infinite at step {p.step + 1}; the step "
                        f"was skipped and the learning rate halved (now {c.lr * p.lr_backoff:.2e})."
                    )
                    if p.bad_steps >= MAX_BAD_STEPS:
                        self.stop_reason = StopReason.DIVERGED
                        yield WarningEvent(f"Training diverged ({p.bad_steps} failed steps in a row); "
                                           "keeping the best weights so far. Try a lower learning rate.")
                        break
                    continue
                p.elapsed = time.monotonic() - t_start
                yield TrainStep(step=p.step, total=self.planned_steps(), epoch=p.step / self.steps_per_epoch,
                                loss=loss_value, lr=lr, elapsed=p.elapsed)
                due = time.monotonic() - last_save > c.checkpoint_minutes * 60
                if c.checkpoint_path is not None and (p.step % self.checkpoint_every == 0 or due):
                    self._save_checkpoint(optim)
                    last_save = time.monotonic()
            if self.data.val_windows and p.last_val_step != p.step:
                yield self._validate(model, precision, t_start)
            p.elapsed = time.monotonic() - t_start
            if c.checkpoint_path is not None:
                self._save_checkpoint(optim)
        except (GeneratorExit, KeyboardInterrupt):  # closed, or Ctrl-C/SIGTERM mid-step
            self.stop_reason = StopReason.INTERRUPTED
            p.elapsed = time.monotonic() - t_start
            if c.checkpoint_path is not None:
                self._save_checkpoint(optim)
            raise
        finally:
            prefetch.close()
            model.use_checkpointing(False)
            model.eval()
        log.info("Training finished (%s) after %d steps in %.0f s; %s.", self.stop_reason, p.step, p.elapsed,
                 self.selection)
        return self.best_bundle()

    def _why_stop(self) -> StopReason | None:
        patience = self.config.early_stopping_patience
        if self.stopping:
            return StopReason.STOPPED
        if patience is not None and self.progress.bad_validations >= patience:
            return StopReason.PATIENCE
        return self._done()

    def _take_updates(self, prefetch: Prefetcher) -> Generator[WarningEvent, None, Prefetcher]:
        """Apply the queued annotation updates and restart the sampler on the new targets."""
        names = []
        while not self._updates.empty():
            index, labels, region = self._updates.get()
            self.data.update(index, labels, region)
            names.append(self.data.names[index])
        prefetch.close()
        rng = self.sampler.rng
        rng.bit_generator.state = self.progress.sampler_rng  # batches drawn ahead are dropped
        self.sampler = self.config.make_sampler(self.data.train_items, self.data.patch_size, rng)
        yield WarningEvent(f"Training on the new annotation of {', '.join(sorted(set(names)))} from step "
                           f"{self.progress.step}.", kind="info")
        return Prefetcher(self.sampler, self.config.batch_size)

    def _validate(self, model: UNet, precision: str, t_start: float) -> TrainStep:
        p = self.progress
        train_loss = float(np.mean(p.running)) if p.running else float("nan")
        result: ValidationResult = self.validator.run(model, self.device, precision)
        model.train()
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        with deferred_signals():  # the validation's record is kept whole or not at all
            p.last_val_step, p.running = p.step, []
            if p.step == 0 and p.base_val is None:
                p.base_val, p.base_metrics = result.loss, dict(result.metrics)
            if finite(state) and result.beats(p.best_val, p.best_metrics):
                p.best_val, p.best_step, p.best_metrics = result.loss, p.step, dict(result.metrics)
                p.best_state = state
                p.bad_validations = 0
            else:
                p.bad_validations += 1
        p.elapsed = time.monotonic() - t_start
        log.debug("Validation at step %d by set: %s", p.step, result.per_set)
        return TrainStep(step=p.step, total=self.planned_steps(), epoch=p.step / self.steps_per_epoch,
                         loss=train_loss, lr=self._lr(), elapsed=p.elapsed, val_loss=result.loss,
                         metrics={**result.metrics, "best_val_loss": p.best_val})

    # -- checkpoints ------------------------------------------------------------------------

    def _save_checkpoint(self, optim: Optimization) -> None:
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        if not finite(state):
            log.warning("Not saving a checkpoint: the current weights are not finite.")
            return
        path = self.config.checkpoint_path
        Checkpoint(self.fingerprint, state, *optim.state_dicts(), self.progress).save(path)
        log.debug("Checkpoint saved at step %d to %s.", self.progress.step, path)

    def _resume(self, optim: Optimization) -> WarningEvent:
        path = self.config.checkpoint_path
        try:
            ckpt = Checkpoint.load(path)
        except ValueError as exc:
            return WarningEvent(f"{exc}; starting from the beginning.")
        if ckpt.fingerprint != self.fingerprint:
            return WarningEvent(f"The checkpoint {path.name} belongs to another run (other data, model or "
                                "settings); starting from the beginning and overwriting it.")
        self.model.load_state_dict(ckpt.model)
        optim.load_state_dicts(ckpt.optimizer, ckpt.scaler)
        vars(self.progress).update(vars(ckpt.progress))  # in place: the running loop holds it
        self.sampler.rng.bit_generator.state = ckpt.progress.sampler_rng
        ckpt.restore_rng()
        log.info("Resumed from %s at step %d.", path, self.progress.step)
        return WarningEvent(f"Resumed from {path.name} at step {self.progress.step}.", kind="info")


# -- one-call forms ---------------------------------------------------------------------------


def finetune_iter(
    bundle: ModelBundle | str | os.PathLike,
    images: Sequence[Any],
    labels: Sequence[np.ndarray],
    config: TrainConfig | None = None,
    **options: Any,
) -> Generator[TrainStep | WarningEvent, None, ModelBundle]:
    """Fine-tune ``bundle`` on painted labels: a generator of events returning the best bundle.

    Args:
        bundle: the starting model (copied, never modified).
        images: list of (Y, X) / (Y, X, 3|4) arrays (see :class:`~.dataset.TrainingSet`).
        labels: list of integer (Y, X) arrays.
        config: the settings; or give them as ``options`` (the fields of
            :class:`~.config.TrainConfig`, and ``regions``, ``names``, ``should_stop`` ...).

    Yields:
        :class:`TrainStep` and :class:`WarningEvent` (see :meth:`Trainer.iter`).

    Returns:
        A new :class:`ModelBundle` with the best weights and the training record. To stop
        early and still get it, pass ``should_stop`` (e.g. ``threading.Event().is_set``) or
        use :class:`Trainer` and its :meth:`~Trainer.stop` / :meth:`~Trainer.best_bundle`.
    """
    trainer = Trainer(bundle, images, labels, config, **options)
    return (yield from trainer.iter())


def finetune(
    bundle: ModelBundle | str | os.PathLike,
    images: Sequence[Any],
    labels: Sequence[np.ndarray],
    config: TrainConfig | None = None,
    on_event: Callable[[Any], None] | None = None,
    **options: Any,
) -> ModelBundle:
    """Synchronous twin of :func:`finetune_iter`; ``on_event`` receives each event."""
    return run_to_end(finetune_iter(bundle, images, labels, config, **options), on_event)
