"""A wider U-Net that computes exactly what a trained narrower one computes (``train --widen-to``).

Training a wider network from scratch costs hours that a CPU does not have; widening a trained
one keeps everything it learned and gives the new channels room to learn more (the
function-preserving expansion of Chen, Goodfellow and Shlens 2016, "Net2Net", here in its
zero-initialised form). Every level gets more channels (``base_channels * 2**i``), and:

- the trained weights go to the first channels of every layer, so each old channel is
  computed from the old inputs as before;
- weights from the new input channels to the old output channels are zero, so the new
  channels do not change the old ones (nor the logits) until training moves those weights;
- weights into the new channels keep PyTorch's default initialisation (seeded), so the new
  channels carry signal from the first step and the zero weights get gradients;
- the up path's concatenation ``[skip, up]`` puts the up part after the skip part, so its
  trained input weights are moved to where the up part starts in the wider network.

BatchNorm keeps the old channels' statistics and parameters; in training mode the batch
statistics of old channels depend only on old channels, so the first forward pass of the wider
network equals the narrow one's in both modes (up to the order of floating point sums).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .format import ModelBundle
from .unet import UNet


def _channel_map(old: UNet, new: UNet) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For each conv of ``new`` (by module name): (new indices of the old input channels,
    new indices of the old output channels)."""
    maps: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    old_convs = dict(old.named_modules())
    for name, module in new.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            continue
        o = old_convs[name]
        if isinstance(module, nn.ConvTranspose2d):
            n_in, n_out = o.weight.shape[0], o.weight.shape[1]
        else:
            n_out, n_in = o.weight.shape[0], o.weight.shape[1]
        ins = torch.arange(n_in)
        parts = name.split(".")
        if parts[0].startswith("up") and parts[1:3] == ["conv", "double_conv"] and parts[3] == "0":
            # input [skip, up]: the skip of the level this block returns to
            level = old.depth - int(parts[0][2:])
            old_skip = old.base_channels * 2**level
            new_skip = new.base_channels * 2**level
            ins = torch.cat([torch.arange(old_skip), new_skip + torch.arange(n_in - old_skip)])
        maps[name] = (ins, torch.arange(n_out))
    return maps


def widen_unet(old: UNet, base_channels: int, seed: int = 0) -> UNet:
    """A :class:`UNet` with ``base_channels`` that computes what ``old`` computes.

    Args:
        old: the trained network.
        base_channels: channels of the wider network's first level (at least ``old``'s).
        seed: seeds the initialisation of the new channels' incoming weights.
    """
    if base_channels < old.base_channels:
        raise ValueError(f"The model has {old.base_channels} base channels; it can only be widened "
                         f"(to {old.base_channels} or more), not to {base_channels}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = UNet(old.n_channels, old.n_classes, old.bilinear, base_channels, old.depth)
    maps = _channel_map(old, new)
    old_modules = dict(old.named_modules())
    with torch.no_grad():
        for name, module in new.named_modules():
            o = old_modules[name]
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                ins, outs = maps[name]
                w = module.weight
                if isinstance(module, nn.ConvTranspose2d):  # (in, out, kh, kw)
                    w[:, outs] = 0
                    w[ins[:, None], outs] = o.weight
                else:  # (out, in, kh, kw)
                    w[outs] = 0
                    w[outs[:, None], ins] = o.weight
                if module.bias is not None:
                    module.bias[outs] = o.bias
            elif isinstance(module, nn.BatchNorm2d):
                n = o.num_features
                module.weight[:n] = o.weight
                module.bias[:n] = o.bias
                module.running_mean[:n] = o.running_mean
                module.running_var[:n] = o.running_var
                module.num_batches_tracked.copy_(o.num_batches_tracked)
    new.train(old.training)
    return new


def widen_bundle(bundle: ModelBundle, base_channels: int, seed: int = 0) -> ModelBundle:
    """A copy of ``bundle`` whose network is widened to ``base_channels`` (:func:`widen_unet`)."""
    model = widen_unet(bundle.model, base_channels, seed)
    metadata = copy.deepcopy(bundle.metadata)
    metadata["architecture"]["args"] = model.config
    metadata.setdefault("training", {})["widened_from"] = {
        "model": bundle.name, "base_channels": bundle.model.base_channels}
    return ModelBundle(model, metadata, None)
