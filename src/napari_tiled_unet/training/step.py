"""One guarded optimisation step: AdamW, the fp16 gradient scaler, BatchNorm and frozen parts.

:class:`Optimization` owns the optimizer and the gradient scaler of a run and makes one step
on a batch. A NaN or infinite loss or gradient skips the step and restores the BatchNorm
statistics of that forward pass; finite gradients that still give non-finite weights (a too
large step) go back to the fallback weights (the best so far, or the starting ones) with a
fresh optimizer state. The caller halves the learning rate and counts the failures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import losses
from .config import TrainConfig
from .device import autocast
from .optim import AdamW  # not torch.optim's: that one imports torch._dynamo (and triton)

#: gradient norm clip
CLIP_NORM = 5.0
#: parameter names of the encoder (the down path of the U-Net)
ENCODER_PREFIXES = ("inc.", "down")


class Optimization:
    """The optimizer, the scaler and the step of one run.

    Args:
        model: the network being trained (on ``device``).
        config: ``weight_decay``, ``dice_weight``, ``batchnorm``, ``freeze_encoder``, ``lr``.
        device, precision: where and how the forward pass runs (precision already resolved).
        fallback: returns the state dict to go back to after non-finite weights.
    """

    def __init__(self, model: torch.nn.Module, config: TrainConfig, device: torch.device, precision: str,
                 fallback: Callable[[], dict[str, torch.Tensor]]) -> None:
        self.model, self.config, self.device, self.precision = model, config, device, precision
        self.fallback = fallback
        if config.freeze_encoder:
            for name, param in model.named_parameters():
                param.requires_grad_(not name.startswith(ENCODER_PREFIXES))
        self.opt = AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                         weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def state_dicts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(optimizer, scaler) states, for a checkpoint."""
        return self.opt.state_dict(), self.scaler.state_dict()

    def load_state_dicts(self, optimizer: dict[str, Any], scaler: dict[str, Any]) -> None:
        self.opt.load_state_dict(optimizer)
        self.scaler.load_state_dict(scaler)

    def train_mode(self) -> None:
        """The model in training mode; with ``batchnorm="frozen"`` BatchNorm keeps its statistics."""
        self.model.train()
        if self.config.batchnorm == "frozen":
            for m in self.model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.eval()

    def step(self, batch: Any, lr: float) -> tuple[str, float]:
        """One optimisation step at learning rate ``lr`` -> (status, loss).

        status is ``"ok"``; ``"bad"`` when the loss, gradient or new weights are not finite
        (nothing kept); ``"overflow"`` for an fp16 gradient overflow that the scaler handles.
        """
        model, opt, scaler, dev = self.model, self.opt, self.scaler, self.device
        for group in opt.param_groups:
            group["lr"] = lr
        x, y, w, m = (torch.from_numpy(a).to(dev, non_blocking=True)
                      for a in (batch.image, batch.classes, batch.weight, batch.mask))
        self.train_mode()
        buffers = [b.detach().clone() for b in model.buffers()]
        opt.zero_grad(set_to_none=True)
        with autocast(dev, self.precision):
            logits = model(x)
        loss = losses.combined_loss(logits, y, w, m, self.config.dice_weight)
        if not torch.isfinite(loss):
            _restore(model, buffers)
            return "bad", float("nan")
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
        if not torch.isfinite(norm):
            _restore(model, buffers)
            opt.zero_grad(set_to_none=True)
            if scaler.is_enabled():  # fp16 overflow: the scaler skips the step and lowers its scale
                scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
                return "overflow", float("nan")
            return "bad", float("nan")
        scaler.step(opt)
        scaler.update()
        if not finite_params(model):
            # finite gradients can still give non-finite weights (a too large step): go back
            _restore(model, buffers)
            model.load_state_dict(self.fallback())
            opt.state.clear()
            return "bad", float("nan")
        return "ok", float(loss.detach())


def finite(state: dict[str, torch.Tensor]) -> bool:
    """Whether every floating-point tensor of a state dict is finite."""
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def finite_params(model: torch.nn.Module) -> bool:
    """Whether every parameter of ``model`` is finite (one reduction per tensor)."""
    sums = torch.stack([p.detach().float().sum() for p in model.parameters()])
    return bool(torch.isfinite(sums).all())


def _restore(model: torch.nn.Module, buffers: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for b, saved in zip(model.buffers(), buffers):
            b.copy_(saved)
