import numpy as np
import pytest
import torch

from napari_tiled_unet.model import UNet
from napari_tiled_unet.tiling import blend_weights, exact_halo, plan_axis_exact, plan_tiles


@pytest.mark.parametrize("length,window,halo,m", [(1024, 256, 94, 16), (48, 48, 22, 4), (4096, 512, 94, 16),
                                                  (1000 + 8, 200, 46, 8)])
def test_kept_parts_tile_the_axis_without_gaps_or_overlap(length, window, halo, m):
    axis = plan_axis_exact(length, window, halo, m)
    assert axis[0][2] == 0 and axis[-1][3] == length
    for (s, e, k0, k1), nxt in zip(axis, [*axis[1:], None]):
        assert s % m == 0 and e - s == min(window, length)
        assert s <= k0 < k1 <= e
        if nxt is not None:
            assert nxt[2] == k1
            # an inner edge is at least a halo away from what is kept
            assert k1 <= e - halo and nxt[2] >= nxt[0] + halo


def test_too_small_a_window_is_refused_with_the_minimum():
    with pytest.raises(ValueError, match="at least 208 px"):
        plan_tiles((1000, 1000), 4, window=160)


def test_auto_window_respects_the_budget_and_prefers_bands():
    plan = plan_tiles((2048, 2048), 4, max_pixels=2048 * 1200)
    assert plan.window[0] * plan.window[1] <= 2048 * 1200
    # a band as wide as the image wastes halo on one axis only
    assert plan.computed_pixels <= 1.15 * 2048 * 2048


def _contamination_reach(depth: int, bilinear: bool = False) -> int:
    """How far into a window the window's own edge changes the output (measured)."""
    torch.manual_seed(depth)
    # float64, so that the faint far end of the contamination stands out from rounding noise
    net = UNet(1, 2, base_channels=8, depth=depth, bilinear=bilinear).double().eval()
    for m in net.modules():  # random BatchNorm statistics make every path carry signal
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
    m = 2**depth
    crop = 16 * m  # a window starting at an aligned offset, with real data beyond its edges
    size = 2 * crop
    x = torch.randn(1, 1, size, size, dtype=torch.float64)
    with torch.inference_mode():
        full = net(x)[..., crop // 2 : crop // 2 + crop, crop // 2 : crop // 2 + crop]
        win = net(x[..., crop // 2 : crop // 2 + crop, crop // 2 : crop // 2 + crop])
    # per row, in the central columns (the left and right edges contaminate their own bands)
    diff = (full - win).abs()[..., crop // 2 - m : crop // 2 + m].amax(dim=(0, 1, 3))
    bad = torch.nonzero(diff > 1e-12).flatten()
    top = bad[bad < crop // 2]
    return int(top.max()) + 1 if len(top) else 0


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_derived_halo_equals_the_measured_reach_of_edge_padding(depth):
    assert _contamination_reach(depth) == exact_halo(depth)


def test_impulse_response_stays_inside_the_receptive_field():
    """An impulse changes the output only within the derived halo (the receptive-field radius)."""
    torch.manual_seed(0)
    net = UNet(1, 2, base_channels=2, depth=3).eval()
    x = torch.zeros(1, 1, 256, 256)
    with torch.inference_mode():
        base = net(x)
        x[0, 0, 128, 128] = 10.0
        diff = (net(x) - base).abs().amax(dim=1)[0]
    ys, xs = torch.nonzero(diff > 0, as_tuple=True)
    reach = int(max((ys - 128).abs().max(), (xs - 128).abs().max()))
    assert 0 < reach <= exact_halo(3)


def test_blend_weights_peak_in_the_centre_and_stay_positive():
    for kind in ("gaussian", "cosine"):
        w = blend_weights((64, 96), kind)
        assert w.dtype == np.float32 and w.min() > 0
        assert w[32, 48] == pytest.approx(w.max(), rel=1e-3) and w[0, 0] < 0.01
