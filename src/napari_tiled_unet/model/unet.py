"""The U-Net of Ronneberger et al. (2015) in the layout of PyTorch-UNet.

The module and parameter names (``inc``, ``down1`` ... ``downN``, ``up1`` ... ``upN``,
``outc``) follow PyTorch-UNet so that its checkpoints load unchanged. Two arguments
are added: ``base_channels`` (64 in the paper) and ``depth`` (4 in the paper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class DoubleConv(nn.Module):
    """Two rounds of (3x3 convolution without bias, BatchNorm, ReLU).

    Args:
        in_channels: channels of the input, shape (N, in_channels, H, W).
        out_channels: channels of the output, shape (N, out_channels, H, W).
        mid_channels: channels between the two convolutions (default ``out_channels``).
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        super().__init__()
        mid_channels = mid_channels or out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    """2x2 max-pool then :class:`DoubleConv`: (N, C_in, H, W) -> (N, C_out, H//2, W//2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Upsample by 2, pad to the skip's size, concatenate ``[skip, up]``, :class:`DoubleConv`.

    Args:
        in_channels: channels after concatenation.
        out_channels: channels of the output.
        bilinear: bilinear upsampling (``align_corners=True``, as in PyTorch-UNet) with the
            channel halving done by the convolution; otherwise a 2x2 transposed convolution
            that halves the channels.
    """

    def __init__(self, in_channels: int, out_channels: int, bilinear: bool = False) -> None:
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x1 = self.up(x1)
        dy = x2.size(2) - x1.size(2)
        dx = x2.size(3) - x1.size(3)
        if dy or dx:
            x1 = F.pad(x1, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([x2, x1], dim=1))


class OutConv(nn.Module):
    """1x1 convolution to the class logits."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNet(nn.Module):
    """U-Net: (N, n_channels, H, W) float -> (N, n_classes, H, W) logits.

    Any H and W work, down to 1x1. Sizes that are not multiples of ``2**depth`` are
    zero-padded at the bottom and right to the next multiple and the output is cropped back
    (PyTorch-UNet instead pads inside the up path, splitting the difference, and fails below
    ``2**depth`` pixels). For multiples of ``2**depth`` the two are identical; padding only at
    the far end keeps the result consistent under translation, which exact tiling relies on.

    Args:
        n_channels: input channels (1 for grayscale, 3 for RGB).
        n_classes: output channels (logits).
        bilinear: bilinear upsampling instead of transposed convolutions; halves the
            channels of the deepest level as PyTorch-UNet does.
        base_channels: channels of the first level (64 in the paper); level ``i`` has
            ``base_channels * 2**i``.
        depth: number of 2x2 poolings (4 in the paper).
    """

    def __init__(
        self,
        n_channels: int,
        n_classes: int,
        bilinear: bool = False,
        base_channels: int = 64,
        depth: int = 4,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}.")
        if base_channels < 1 or n_channels < 1 or n_classes < 1:
            raise ValueError("n_channels, n_classes and base_channels must be positive.")
        self.n_channels = n_channels
        self.n_classes = n_classes
        self.bilinear = bilinear
        self.base_channels = base_channels
        self.depth = depth
        self.gradient_checkpointing = False
        factor = 2 if bilinear else 1
        b = base_channels
        self.inc = DoubleConv(n_channels, b)
        for i in range(1, depth + 1):
            out = b * 2**i // (factor if i == depth else 1)
            setattr(self, f"down{i}", Down(b * 2 ** (i - 1), out))
        for i in range(1, depth + 1):
            level = depth - i  # level this block returns to
            out = b * 2**level // factor if i < depth else b
            setattr(self, f"up{i}", Up(b * 2 ** (level + 1), out, bilinear))
        self.outc = OutConv(b, n_classes)

    @property
    def config(self) -> dict:
        """The constructor arguments, as stored in a model bundle."""
        return {
            "n_channels": self.n_channels,
            "n_classes": self.n_classes,
            "bilinear": self.bilinear,
            "base_channels": self.base_channels,
            "depth": self.depth,
        }

    def use_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them.

        Trades about one extra forward pass of compute for the activation memory of the
        blocks; gradients are the same. BatchNorm running statistics are updated once per
        step, as without checkpointing.
        """
        self.gradient_checkpointing = enabled

    def _block(self, module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if not (self.gradient_checkpointing and self.training and torch.is_grad_enabled()):
            return module(*args)
        calls = [0]

        def run(*xs: torch.Tensor) -> torch.Tensor:
            calls[0] += 1
            if calls[0] == 1:
                return module(*xs)
            # Recomputation in backward: same batch statistics, but BatchNorm must not
            # update its running statistics a second time.
            with _frozen_running_stats(module):
                return module(*xs)

        return checkpoint(run, *args, use_reentrant=False)

    @property
    def size_multiple(self) -> int:
        """Input sizes that need no padding are multiples of this (``2**depth``)."""
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.size_multiple
        ph, pw = -h % m, -w % m
        if ph or pw:
            return self._forward(F.pad(x, [0, pw, 0, ph]))[..., :h, :w]
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self._block(self.inc, x)]
        for i in range(1, self.depth + 1):
            skips.append(self._block(getattr(self, f"down{i}"), skips[-1]))
        y = skips.pop()
        for i in range(1, self.depth + 1):
            y = self._block(getattr(self, f"up{i}"), y, skips.pop())
        return self.outc(y)


class _frozen_running_stats:
    """Context in which BatchNorm layers normalise with batch statistics but keep their
    running statistics unchanged (momentum 0, counter restored)."""

    def __init__(self, module: nn.Module) -> None:
        self.bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.saved: list = []

    def __enter__(self) -> None:
        for bn in self.bns:
            counter = bn.num_batches_tracked.clone() if bn.num_batches_tracked is not None else None
            self.saved.append((bn.momentum, counter))
            bn.momentum = 0.0
        return None

    def __exit__(self, *exc: object) -> None:
        for bn, (momentum, counter) in zip(self.bns, self.saved, strict=True):
            bn.momentum = momentum
            if counter is not None:
                bn.num_batches_tracked.copy_(counter)
