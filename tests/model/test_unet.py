import pytest
import torch

from napari_tiled_unet.model import UNet


def _seed_key_names(depth: int = 4, bilinear: bool = False) -> set[str]:
    """The parameter and buffer names PyTorch-UNet's modules produce, built from its structure."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

    def double_conv(prefix: str) -> set[str]:
        keys = {f"{prefix}double_conv.0.weight", f"{prefix}double_conv.3.weight"}
        keys |= {f"{prefix}double_conv.{i}.{b}" for i in (1, 4) for b in bn}
        return keys

    names = double_conv("inc.")
    for i in range(1, depth + 1):
        names |= double_conv(f"down{i}.maxpool_conv.1.")
        names |= double_conv(f"up{i}.conv.")
        if not bilinear:
            names |= {f"up{i}.up.weight", f"up{i}.up.bias"}
    names |= {"outc.conv.weight", "outc.conv.bias"}
    return names


def test_parameter_counts_equal_the_seed():
    assert sum(p.numel() for p in UNet(n_channels=3, n_classes=1).parameters()) == 31_037_633
    assert sum(p.numel() for p in UNet(n_channels=3, n_classes=1, bilinear=True).parameters()) == 17_262_977


@pytest.mark.parametrize("bilinear", [False, True])
def test_state_dict_names_match_pytorch_unet(bilinear):
    assert set(UNet(3, 2, bilinear=bilinear).state_dict()) == _seed_key_names(4, bilinear)


def test_state_dict_names_follow_the_pattern_at_other_depths():
    assert set(UNet(1, 3, base_channels=8, depth=2).state_dict()) == _seed_key_names(2, False)


@pytest.mark.parametrize("shape", [(1, 1), (31, 47), (517, 771), (572, 572)])
@pytest.mark.parametrize("bilinear", [False, True])
def test_output_keeps_any_input_size(shape, bilinear):
    net = UNet(2, 3, bilinear=bilinear, base_channels=4, depth=4).eval()
    with torch.inference_mode():
        out = net(torch.randn(1, 2, *shape))
    assert out.shape == (1, 3, *shape)


@pytest.mark.parametrize("depth,base", [(1, 8), (2, 4), (3, 16), (5, 2)])
@pytest.mark.parametrize("train", [False, True])
def test_other_depths_and_widths_in_train_and_eval_mode(depth, base, train):
    net = UNet(1, 2, base_channels=base, depth=depth).train(train)
    out = net(torch.randn(2, 1, 45, 70))
    assert out.shape == (2, 2, 45, 70)
    assert torch.isfinite(out).all()


def test_channel_progression_follows_base_channels():
    net = UNet(1, 3, base_channels=16, depth=3)
    assert net.down3.maxpool_conv[1].double_conv[0].out_channels == 128
    assert net.up3.conv.double_conv[3].out_channels == 16


@pytest.mark.parametrize("bilinear", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients_and_running_stats(bilinear):
    torch.manual_seed(1)
    plain = UNet(1, 3, bilinear=bilinear, base_channels=4, depth=3).train()
    ckpt = UNet(1, 3, bilinear=bilinear, base_channels=4, depth=3).train()
    ckpt.load_state_dict(plain.state_dict())
    ckpt.use_checkpointing(True)
    x = torch.randn(2, 1, 40, 56)
    target = torch.randint(0, 3, (2, 40, 56))
    for net in (plain, ckpt):
        torch.nn.functional.cross_entropy(net(x), target).backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=0), name
    for (name, a), b in zip(plain.state_dict().items(), ckpt.state_dict().values()):
        assert torch.equal(a, b), f"running statistics differ in {name}"


def test_gradient_checkpointing_saves_activation_memory():
    """Checkpointing must actually drop activations: fewer tensors are kept for backward."""
    net = UNet(1, 3, base_channels=8, depth=3).train()
    x = torch.randn(1, 1, 64, 64)

    def saved_bytes(enabled: bool) -> int:
        net.use_checkpointing(enabled)
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net(x).sum()
        return total

    assert saved_bytes(True) < 0.5 * saved_bytes(False)


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError):
        UNet(1, 3, depth=0)
