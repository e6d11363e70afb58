"""Where and how the network runs: device, precision and memory layout, decided in one place.

A :class:`Runtime` is what a front end asks for (``device="auto"``, ``precision="auto"``, ...);
:meth:`Runtime.resolve` turns it into concrete choices for this machine (a ``torch.device``, a
precision name, a memory layout), and the resolved value moves the network and batches and
opens the autocast context. Inference, segmentation, the CLI and the cluster path use it;
training can use the same (``Runtime(device, precision).resolve()``, then ``.autocast()``).

Policies:

* device ``"auto"``: cuda, then mps, then cpu; a device that is absent is an
  :class:`~napari_tiled_unet.errors.ImageError` sentence.
* precision ``"auto"``: bf16 on a CPU that computes it in hardware (AVX-512 BF16 or AMX), bf16
  (else fp16) on CUDA, fp32 otherwise; bf16 gave the same objects as fp32 on the built-in model
  (docs/benchmarks.md, part c).
* channels-last memory layout on CUDA and CPU (measured 1.3x faster on the CPU), unless set.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, replace
from typing import Any

import torch

from .errors import ImageError

#: precision name -> autocast dtype (None: plain fp32)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

#: what a front end may ask for
PRECISION_CHOICES = ("auto", *PRECISIONS)


def available_devices() -> dict[str, bool]:
    """Which of ``cuda``, ``mps`` and ``cpu`` can run here."""
    mps = getattr(torch.backends, "mps", None)
    return {
        "cuda": torch.cuda.is_available(),
        "mps": bool(mps and mps.is_available()),
        "cpu": True,
    }


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` -> cuda, then mps, then cpu; an explicit device that is absent is an error."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        avail = available_devices()
        return torch.device("cuda" if avail["cuda"] else "mps" if avail["mps"] else "cpu")
    kind = str(device).split(":")[0]
    if kind not in ("cuda", "mps", "cpu") or not available_devices()[kind]:
        raise ImageError(f"The device {device!r} is not available here; choose 'auto' or 'cpu'.")
    return torch.device(device)


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX; Linux flags).

    Without them PyTorch emulates bf16 on the CPU, slower than fp32.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """``"auto"`` -> bf16 on a CPU with fast bf16, bf16 (else fp16) on CUDA, fp32 otherwise."""
    if precision not in (None, "auto"):
        if precision not in PRECISIONS:
            raise ImageError(f"Unknown precision {precision!r}: use auto, fp32, bf16 or fp16.")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_fast_bf16():
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str):
    """The autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def memory_budget(device: torch.device) -> int:
    """Bytes that one batch of windows may use: most of the free GPU memory, or a share of RAM."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.6)
    import psutil

    return int(min(psutil.virtual_memory().available * 0.25, 8 * 1024**3))


@dataclass(frozen=True)
class Runtime:
    """How to run the network.

    Attributes:
        device: ``"auto"``, ``"cuda"`` (``"cuda:1"``), ``"mps"``, ``"cpu"`` or a ``torch.device``.
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast).
        channels_last: channels-last memory layout; None: on CUDA and CPU.
        ram_budget: bytes one batch of windows may use; None: from free GPU memory or RAM.
        prefetch: read and normalize the next batch in a thread while the model computes.

    A resolved runtime (:meth:`resolve`) has a ``torch.device``, a concrete precision and a
    boolean ``channels_last``; resolving it again returns it unchanged.
    """

    device: str | torch.device = "auto"
    precision: str = "fp32"
    channels_last: bool | None = None
    ram_budget: int | None = None
    prefetch: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISION_CHOICES:
            raise ImageError(f"Unknown precision {self.precision!r}: use auto, fp32, bf16 or fp16.")

    @property
    def resolved(self) -> bool:
        return isinstance(self.device, torch.device) and self.precision != "auto" \
            and self.channels_last is not None

    def resolve(self) -> Runtime:
        """Concrete choices for this machine (see the module's policies)."""
        if self.resolved:
            return self
        dev = resolve_device(self.device)
        layout = self.channels_last
        channels_last = dev.type in ("cuda", "cpu") if layout is None else bool(layout)
        return replace(self, device=dev, precision=resolve_precision(self.precision, dev),
                       channels_last=channels_last)

    # the methods below want a resolved runtime

    @property
    def torch_device(self) -> torch.device:
        return self.resolve().device

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.resolve().channels_last else torch.contiguous_format

    def autocast(self):
        r = self.resolve()
        return autocast(r.device, r.precision)

    def budget(self) -> int:
        """Bytes for one batch: ``ram_budget`` or :func:`memory_budget`."""
        return self.ram_budget or memory_budget(self.torch_device)

    def place(self, net: torch.nn.Module) -> torch.nn.Module:
        """``net`` in eval mode on this device, in this memory layout."""
        net.eval()
        return net.to(self.torch_device, memory_format=self.memory_format)

    def batch(self, host: torch.Tensor) -> torch.Tensor:
        """A host batch on this device, in this memory layout."""
        r = self.resolve()
        x = host.to(r.device, non_blocking=r.device.type == "cuda")
        return x.contiguous(memory_format=torch.channels_last) if r.channels_last else x

    @property
    def pin_memory(self) -> bool:
        return self.torch_device.type == "cuda"

    def describe(self) -> dict[str, Any]:
        """What was chosen, for a summary or a log."""
        r = self.resolve()
        return {"device": str(r.device), "precision": r.precision, "channels_last": r.channels_last}
