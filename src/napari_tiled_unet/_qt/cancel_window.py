"""How large a batch of windows may be on a CPU for Cancel to answer within 2 s (Qt-free).

The engine checks for a cancel between two convolutions of the network
(:class:`~napari_tiled_unet.events.RunControl`), so Cancel waits for at most one
convolution. Its cost grows with the pixels of the batch and with the square of the model's
width: the built-in model's largest convolution on a 2048x2048 window takes about 0.4 s on an
idle 2-core CPU (1.35 s on a loaded one), a model with 64 base channels 16 times that. So the
widget caps, on the CPU only, the pixels of a batch at what keeps the largest convolution at
the built-in model's cost at 2048x2048 (:data:`MAX_CONV_FLOPS`); models as wide as the
built-in one or narrower are never capped. A capped window recomputes its halo more often:
docs/benchmarks.md ("Cancel within a window") gives the cost.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: floating-point operations of the built-in model's largest convolution on one 2048x2048
#: window (16 base channels: the first convolution of the last up block, 32 -> 16 channels,
#: 3x3, at full resolution)
MAX_CONV_FLOPS = 2 * 2048 * 2048 * 32 * 16 * 9
#: no capped window is smaller than this (its halo would dominate)
MIN_WINDOW = 256


def largest_conv_flops_per_pixel(net: Any) -> float:
    """Floating-point operations of the network's most expensive convolution per input pixel,
    from one pass over a small zero image (hooks read each convolution's output size; a few
    milliseconds). Not on PyTorch's ``meta`` device: ``torch.func.functional_call`` imports
    ``torch._dynamo``, which napari must never load (see docs/architecture.md)."""
    import torch

    depth = int(getattr(net, "depth", 4))
    side = 2 ** depth * 2
    costs: list[float] = []

    def record(module: Any, inputs: Any, output: Any) -> None:
        k = math.prod(module.kernel_size)
        per_pixel = 2 * module.in_channels // module.groups * k * module.out_channels
        # a convolution computes every output pixel; a transposed one spreads every input pixel
        grid = inputs[0] if isinstance(module, torch.nn.ConvTranspose2d) else output
        costs.append(per_pixel * grid.shape[-2] * grid.shape[-1])

    convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    if not convs:
        return 0.0
    hooks = [m.register_forward_hook(record) for m in convs]
    weight = convs[0].weight
    x = torch.zeros(1, convs[0].in_channels, side, side, device=weight.device, dtype=weight.dtype)
    was_training = net.training
    try:
        net.eval()  # no BatchNorm statistics change
        with torch.no_grad():
            net(x)
    except RuntimeError as exc:  # e.g. out of memory: the engine will say so itself
        log.info("Could not estimate the convolutions' cost (%s); the window is not capped.", exc)
        return 0.0
    finally:
        net.train(was_training)
        for h in hooks:
            h.remove()
    return max(costs) / side**2


@dataclass(frozen=True)
class Limits:
    """What the widget passes to the engine: ``window`` and ``batch_size`` (None: automatic),
    and ``note``, a sentence for the user when a choice of theirs was lowered, else ''."""

    window: int | None
    batch_size: int | None
    note: str = ""


def cpu_limits(net: Any, window: int | None, batch_size: int | None) -> Limits:
    """``window``/``batch_size`` (None: automatic) lowered so that one batch's largest
    convolution costs at most :data:`MAX_CONV_FLOPS`."""
    per_pixel = largest_conv_flops_per_pixel(net)
    if per_pixel <= 0:
        return Limits(window, batch_size)
    max_pixels = MAX_CONV_FLOPS / per_pixel
    if max_pixels >= 2048 * 2048 and window is None:
        return Limits(None, batch_size)  # the engine's automatic batch holds at most 2048^2 pixels
    cap = max(MIN_WINDOW, int(math.sqrt(max_pixels)) // 64 * 64)
    new_window = cap if window is None else min(window, cap)
    new_batch = max(1, min(batch_size or 16, int(max_pixels // new_window**2)))
    note = ""
    if (window is not None and new_window < window) or (batch_size is not None and new_batch < batch_size):
        note = (f"On the CPU this model runs {new_window} px tiles, {new_batch} at a time (not "
                f"{window or 'auto'} px, {batch_size or 'auto'}), so that Cancel answers within 2 s.")
    return Limits(new_window, new_batch, note)
