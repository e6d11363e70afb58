"""A wider U-Net made from a trained one (``train --widen-to``) starts out computing the same thing."""

import numpy as np
import pytest
import torch

from napari_tiled_unet.cli import main
from napari_tiled_unet.model.bundle import load_model
from napari_tiled_unet.model.unet import UNet
from napari_tiled_unet.model.widen import widen_unet


def _trained_looking(bilinear: bool) -> UNet:
    """A small U-Net whose BatchNorm layers hold statistics and affine parameters far from the
    defaults, as a trained network's do."""
    torch.manual_seed(1)
    net = UNet(1, 3, bilinear=bilinear, base_channels=4, depth=3)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return net.eval()


@pytest.mark.parametrize("bilinear", [False, True])
def test_the_widened_network_gives_the_narrow_ones_logits_and_its_new_channels_learn(bilinear):
    narrow = _trained_looking(bilinear)
    wide = widen_unet(narrow, 7, seed=0)
    assert wide.config == {**narrow.config, "base_channels": 7}
    n_wide = sum(p.numel() for p in wide.parameters())
    assert n_wide > 2.5 * sum(p.numel() for p in narrow.parameters())
    x = torch.randn(2, 1, 40, 56)  # not a multiple of 8: the padded path too
    with torch.no_grad():
        np.testing.assert_allclose(wide(x).numpy(), narrow(x).numpy(), atol=1e-5)
        narrow.train(), wide.train()  # batch statistics: old channels still see only old channels
        np.testing.assert_allclose(wide(x).numpy(), narrow(x).numpy(), atol=1e-4)
    # the weights from new channels into old ones start at zero but get gradients, so training
    # uses the new width
    wide.zero_grad()
    wide(x).square().mean().backward()
    w = wide.outc.conv.weight
    assert torch.all(w[:, 4:] == 0) and w.grad[:, 4:].abs().sum() > 0


def test_widening_to_fewer_channels_is_refused():
    with pytest.raises(ValueError, match="only be widened"):
        widen_unet(_trained_looking(False), 3)


def test_train_widen_to_trains_a_wider_copy_of_the_base_and_records_it(tmp_path, capsys, tiny_train_args):
    out = tmp_path / "wide.safetensors"
    common = [*tiny_train_args, "--out", str(out)]
    assert main([*common, "--widen-to", "6"]) == 0
    wide = load_model(out)
    assert wide.metadata["architecture"]["args"]["base_channels"] == 6
    assert wide.model.inc.double_conv[0].weight.shape[0] == 6
    assert wide.metadata["training"]["widened_from"] == {"model": "tiny", "base_channels": 4}
    capsys.readouterr()
    # narrower than the base, or without a base: one sentence, nothing written
    out.unlink()
    assert main([*common, "--widen-to", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "only be widened" in err and "\n" not in err
    no_base = [a for a in common if a not in ("--base", str(tmp_path / "base.safetensors"))]
    assert main([*no_base, "--widen-to", "6"]) == 1
    assert "--base-channels" in capsys.readouterr().err
    assert not out.exists()
