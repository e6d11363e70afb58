import gc
import threading
import tracemalloc

import numpy as np
import pytest
import torch

from napari_tiled_unet.errors import ImageError
from napari_tiled_unet.events import Progress, WarningEvent
from napari_tiled_unet.inference import predict, predict_iter, whole_image_probabilities
from napari_tiled_unet.model import ModelBundle, UNet, make_metadata
from napari_tiled_unet.tiling import exact_halo, plan_tiles


def _net(depth=4, base=4, bilinear=False, n_in=1, seed=0, gain=True):
    """A random U-Net; with ``gain`` its output varies strongly with the input, as a trained
    one's does, so that any error of the tiling shows (a fresh random net is nearly constant)."""
    torch.manual_seed(seed)
    net = UNet(n_in, 3, base_channels=base, depth=depth, bilinear=bilinear)
    net.train()
    with torch.no_grad():
        net(torch.randn(2, n_in, 2**depth * 4, 2**depth * 4))
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.mul_(0.1 if gain else 1.0)
    return net.eval()


def _image(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


@pytest.mark.parametrize(
    "shape,window,depth",
    [((517, 771), 256, 4), ((31, 47), None, 4), ((1000, 1000), 256, 4), ((300, 413), 64, 2),
     ((129, 250), 128, 3)],
)
def test_exact_mode_equals_the_whole_image_pass(shape, window, depth):
    net = _net(depth)
    img = _image(shape)
    ref = whole_image_probabilities(net, img)
    tiled = predict(net, img, window=window, device="cpu")
    assert tiled.shape == ref.shape == (3, *shape)
    assert np.abs(tiled - ref).max() <= 1e-5


@pytest.mark.parametrize("shape,window", [((517, 771), 256), ((300, 413), 224)])
def test_test_time_flips_stay_exact_when_tiled(shape, window):
    net = _net(4)
    img = _image(shape)
    ref = whole_image_probabilities(net, img, tta=True)
    tiled = predict(net, img, window=window, device="cpu", tta=True)
    assert np.abs(tiled - ref).max() <= 1e-5
    # the flag changes the result (the random net is far from mirror-symmetric) ...
    assert np.abs(tiled - whole_image_probabilities(net, img)).max() > 1e-2
    # ... into one that no longer depends on the orientation: a mirrored image (of whole
    # 16-px blocks) gives the mirrored probabilities
    crop = img[: shape[0] // 16 * 16, : shape[1] // 16 * 16]
    a = predict(net, crop, window=window, device="cpu", tta=True)
    b = predict(net, np.ascontiguousarray(crop[::-1]), window=window, device="cpu", tta=True)
    assert np.abs(a - b[:, ::-1]).max() <= 1e-5


def test_a_one_pixel_image_works():
    net = _net(4)
    bundle = ModelBundle(net, make_metadata(net, normalization={"kind": "scale", "divide": 255}))
    img = np.array([[77]], dtype=np.uint8)
    out = predict(bundle, img, device="cpu")
    assert out.shape == (3, 1, 1)
    assert np.abs(out - whole_image_probabilities(bundle, img)).max() <= 1e-5


def test_negative_control_halo_one_block_too_small_breaks_exactness():
    net = _net(4)
    img = _image((517, 771))
    ref = whole_image_probabilities(net, img)
    plan = plan_tiles(img.shape, 4, window=256, halo=exact_halo(4) - 16)
    bad = predict(net, img, plan=plan, device="cpu")
    assert np.abs(bad - ref).max() > 1e-5  # the exactness check fails


def test_negative_control_windows_shifted_by_half_a_block_break_exactness():
    net = _net(4)
    img = _image((517, 771))
    ref = whole_image_probabilities(net, img)
    plan = plan_tiles(img.shape, 4, window=256, shift=8)
    bad = predict(net, img, plan=plan, device="cpu")
    assert np.abs(bad - ref).max() > 1e-5  # the exactness check fails


def test_blend_mode_agrees_with_the_whole_image_pass():
    # Blending averages the contaminated window edges in with small weights: how small the
    # error is depends on the network. A plain random net shows the 1e-3 agreement.
    net = _net(4, gain=False)
    img = _image((517, 771))
    ref = whole_image_probabilities(net, img)
    for kind in ("gaussian", "cosine"):
        out = predict(net, img, mode="blend", window=256, overlap=0.5, blend=kind, device="cpu")
        assert np.abs(out - ref).max() <= 1e-3, kind


def test_bilinear_variant_is_close_but_not_exact():
    """align_corners=True upsampling (PyTorch-UNet's) maps coordinates by the ratio of the
    sizes, so a window samples its coarse maps at other points than the whole image does:
    tiles cannot be exact. docs/tiling.md states the measured bound."""
    net = _net(4, bilinear=True, gain=False)
    img = _image((517, 771))
    ref = whole_image_probabilities(net, img)
    diff = np.abs(predict(net, img, window=256, device="cpu") - ref).max()
    assert 1e-7 < diff <= 1e-3


def test_progress_events_count_windows_and_estimate_time_left():
    net = _net(2)
    gen = predict_iter(net, _image((200, 300)), window=64, batch_size=3, device="cpu")
    events = []
    try:
        while True:
            events.append(next(gen))
    except StopIteration as stop:
        result = stop.value
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress[-1].done == progress[-1].total == len(plan_tiles((200, 300), 2, window=64))
    assert [p.done for p in progress] == sorted(p.done for p in progress)
    assert progress[0].eta is not None and progress[-1].eta == 0
    assert result.shape == (3, 200, 300)


def test_cancel_stops_within_one_batch_and_stops_the_reader(tmp_path):
    import zarr

    net = _net(2)
    src = zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=(512, 512), chunks=(128, 128),
                          dtype="u1")
    src[:] = _image((512, 512))
    out = tmp_path / "out.zarr"
    gen = predict_iter(net, src, window=64, batch_size=2, device="cpu", out=str(out))
    first = next(gen)
    assert isinstance(first, Progress) and first.done == 2
    gen.close()
    gc.collect()
    assert not any(t.name == "tiled-unet-reader" for t in threading.enumerate())
    assert zarr.open_array(str(out), mode="r").attrs["complete"] is False


class _FailingImage:
    """An array that fails on its third read, as a zarr store on a dropped network share does."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.reads = data, data.shape, data.dtype, 0

    def __getitem__(self, key):
        self.reads += 1
        if self.reads == 3:
            raise OSError("the network share went away")
        return self.data[key]


def test_a_read_error_mid_run_reaches_the_caller_and_ends_the_reader():
    net = _net(2)
    img = _FailingImage(_image((256, 256)))
    stats = np.array([[0.0, 1 / 255]])  # (offset, scale) given: every read is a window
    with pytest.raises(OSError, match="network share"):
        predict(net, img, window=64, batch_size=1, device="cpu", stats=stats)
    assert not any(t.name == "tiled-unet-reader" for t in threading.enumerate())


def test_dask_and_zarr_inputs_give_the_numpy_result(tmp_path):
    import dask.array as da
    import zarr

    net = _net(3)
    img = _image((300, 270))
    ref = predict(net, img, window=128, device="cpu")
    z = zarr.open_array(str(tmp_path / "i.zarr"), mode="w", shape=img.shape, chunks=(64, 64), dtype="u1")
    z[:] = img
    assert np.array_equal(predict(net, z, window=128, device="cpu"), ref)
    assert np.array_equal(predict(net, da.from_array(img, chunks=100), window=128, device="cpu"), ref)
    zout = predict(net, z, window=128, device="cpu", out=str(tmp_path / "o.zarr"))
    assert np.array_equal(zout[:], ref) and zout.attrs["complete"] is True


def test_a_stack_runs_plane_by_plane():
    net = _net(2)
    stack = np.stack([_image((64, 80), seed=s) for s in range(3)])
    out = predict(net, stack, device="cpu", window=64)
    assert out.shape == (3, 3, 64, 80)
    # global normalization over the stack: plane 1 alone with the stack's statistics
    from napari_tiled_unet import normalization

    stats = normalization.compute_stats(stack, {"kind": "percentile", "low": 1.0, "high": 99.8})
    x = normalization.apply(stack[1][None], stats)
    with torch.inference_mode():
        ref = torch.softmax(net(torch.from_numpy(x)[None]), 1)[0].numpy()
    assert np.abs(out[1] - ref).max() <= 1e-5


def test_multichannel_rgb_and_channel_first_images():
    net = _net(2, n_in=3)
    rgb = _image((70, 90, 3))
    a = predict(net, rgb, device="cpu")
    b = predict(net, np.moveaxis(rgb, -1, 0).copy(), device="cpu")
    assert a.shape == (3, 70, 90) and np.abs(a - b).max() <= 1e-6


def test_channel_mismatch_is_a_clear_error():
    net = _net(2, n_in=3)
    with pytest.raises(ImageError, match="has 2 channels but the model expects 3"):
        predict(net, _image((64, 64, 2)), axes="YXC", device="cpu")
    with pytest.raises(ImageError, match="expects 3 channels"):
        predict(net, _image((64, 64)), device="cpu")


@pytest.mark.parametrize(
    "image,message",
    [
        (np.full((64, 64), 7, np.uint8), "constant"),
        (np.array([[np.nan, 1.0], [2.0, 3.0]], np.float32), "NaN"),
        (np.zeros((0, 5), np.uint8), "empty"),
        (np.zeros((2, 2, 2, 2, 2), np.uint8), "dimensions"),
    ],
)
def test_bad_images_are_refused_with_one_sentence(image, message):
    with pytest.raises(ImageError, match=message):
        predict(_net(2), image, device="cpu")


def test_out_of_memory_backs_off_and_warns():
    net = _net(2)

    class FlakyGPU(torch.nn.Module):
        """Raises CUDA's out-of-memory error for batches above 2 windows of 64x64 pixels."""

        def __init__(self):
            super().__init__()
            self.inner = net
            self.depth, self.bilinear, self.base_channels, self.n_classes = 2, False, 4, 3
            self.n_channels = 1

        def forward(self, x):
            if x.shape[0] * x.shape[2] * x.shape[3] > 2 * 64 * 64:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return self.inner(x)

        @property
        def config(self):
            return net.config

    img = _image((256, 256))
    gen = predict_iter(FlakyGPU(), img, window=128, batch_size=4, device="cpu")
    warnings = []
    try:
        while True:
            e = next(gen)
            if isinstance(e, WarningEvent):
                warnings.append(e)
    except StopIteration as stop:
        out = stop.value
    assert [w.kind for w in warnings] == ["out_of_memory"] * 3  # batch 4 -> 2 -> 1, then window 64
    assert "64x64" in warnings[-1].message
    assert np.abs(out - whole_image_probabilities(net, img)).max() <= 1e-5


def test_lazy_8192_zarr_is_never_held_in_float32(tmp_path):
    import zarr

    shape = (8192, 8192)
    src = zarr.open_array(str(tmp_path / "big.zarr"), mode="w", shape=shape, chunks=(1024, 1024), dtype="u1")
    rng = np.random.default_rng(0)
    for y in range(0, shape[0], 1024):
        src[y : y + 1024] = rng.integers(0, 256, (1024, shape[1]), dtype=np.uint8)
    net = _net(1, base=1)
    tracemalloc.start()
    try:
        out = predict(net, src, window=1024, batch_size=2, device="cpu", out=str(tmp_path / "p.zarr"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.attrs["complete"] is True
    float32_image = 4 * shape[0] * shape[1]
    assert peak < 0.5 * float32_image, f"peak {peak / 1e6:.0f} MB"


# -- unusual inputs through the API (issue 17) -----------------------------------------------------


def test_an_int64_image_with_a_huge_offset_is_not_constant():
    bundle = _net(depth=2)
    img = _image((48, 64)).astype(np.int64) * 1000
    plain = predict(bundle, img, device="cpu")
    shifted = predict(bundle, img + 10**12, device="cpu")
    assert np.array_equal(plain, shifted)  # the offset cancels exactly in float64


def test_a_float64_image_with_huge_values_is_finite_and_normalized_alike():
    bundle = _net(depth=2)
    img = _image((48, 64)).astype(np.float64)
    np.testing.assert_allclose(predict(bundle, img * 1e300, device="cpu"), predict(bundle, img, device="cpu"),
                               atol=1e-5)


def test_a_nested_list_is_an_image_and_a_list_of_words_is_one_sentence():
    bundle = _net(depth=2)
    img = _image((32, 32))
    from_list = predict(bundle, img.tolist(), device="cpu")  # int64, normalized in float64
    np.testing.assert_allclose(from_list, predict(bundle, img, device="cpu"), atol=1e-5)
    with pytest.raises(ImageError, match="not an image"):
        predict(bundle, [["a", "b"], ["c", "d"]], device="cpu")


@pytest.mark.parametrize("kwargs, words", [
    ({"batch_size": -3}, "batch size"), ({"batch_size": 0}, "batch size"), ({"batch_size": 1.5}, "whole"),
    ({"window": 0}, "tile size"), ({"overlap": 1.0}, "overlap"),
])
def test_engine_settings_out_of_range_are_refused_before_running(kwargs, words):
    from napari_tiled_unet.errors import SettingsError

    with pytest.raises(SettingsError, match=words):
        predict(_net(depth=2), _image((32, 32)), device="cpu", **kwargs)


@pytest.mark.parametrize("post, words", [
    ({"foreground_threshold": 1.5}, "between 0 and 1"), ({"foreground_threshold": float("nan")}, "finite"),
    ({"seed_threshold": "0.7"}, "a number"), ({"min_size": -4}, "at least 0"),
])
def test_postprocessing_settings_out_of_range_are_refused(post, words):
    from napari_tiled_unet.errors import SettingsError
    from napari_tiled_unet.segmentation import segment

    with pytest.raises(SettingsError, match=words):
        segment(_net(depth=2), _image((32, 32)), device="cpu", postprocess=post)
