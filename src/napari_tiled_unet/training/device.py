"""Where training runs: its device and its precision. THE one place training decides them.

Everything in :mod:`napari_tiled_unet.training` that needs a device, an autocast context or
the precision actually used goes through :func:`resolve` and :func:`autocast`, which take
their rules from :mod:`napari_tiled_unet.runtime` (the policy inference uses too): device
``"auto"`` picks cuda, then mps, then cpu; precision ``"auto"`` is bf16 on a CPU that computes
it in hardware and on CUDA (fp16 where CUDA lacks bf16), fp32 otherwise. A precision the
device cannot run falls back to fp32 with a sentence that says so.
"""

from __future__ import annotations

import logging

import torch

from ..runtime import PRECISIONS, autocast, resolve_device, resolve_precision

log = logging.getLogger(__name__)

__all__ = ["PRECISIONS", "autocast", "autocast_works", "resolve", "resolve_device"]


def autocast_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a convolution runs under autocast to ``dtype`` on ``device`` (a probe)."""
    try:
        with torch.autocast(device.type, dtype=dtype):
            x = torch.ones(1, 1, 3, 3, device=device)
            torch.nn.functional.conv2d(x, torch.ones(1, 1, 1, 1, device=device))
        return True
    except Exception as exc:  # a probe: the caller falls back to fp32 and warns the user
        log.info("autocast %s on %s is not supported here: %s", dtype, device, exc)
        return False


def resolve(device: torch.device, precision: str) -> tuple[str, str | None]:
    """The precision training will use on ``device`` -> (precision, warning or None)."""
    precision = resolve_precision(precision, device)
    dtype = PRECISIONS[precision]
    if dtype is not None and not autocast_works(device, dtype):
        return "fp32", f"{precision} is not supported on {device.type}; training in fp32."
    return precision, None
