import torch

from napari_tiled_unet.training.optim import AdamW


def _steps(make_opt, n=5):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    opt = make_opt(net.parameters())
    x = torch.randn(2, 1, 12, 12)
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        net(x).square().mean().backward()
        opt.step()
    return net, opt


def test_adamw_follows_torch_adamw_and_reads_its_state():
    """The same weights as torch.optim.AdamW after five steps, and each reads the other's state."""
    ours, opt = _steps(lambda p: AdamW(p, lr=1e-2, weight_decay=0.1))
    ref, ref_opt = _steps(lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, foreach=False))
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    fresh = AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1)
    fresh.load_state_dict(ref_opt.state_dict())
    assert float(fresh.state[next(ref.parameters())]["step"]) == 5
    back = torch.optim.AdamW(ours.parameters(), lr=1e-2, weight_decay=0.1)
    back.load_state_dict(opt.state_dict())
    first = next(ours.parameters())
    assert torch.equal(back.state[first]["exp_avg"], opt.state[first]["exp_avg"])
