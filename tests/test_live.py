"""Live training (Qt-free engine): strokes join the training data, previews refresh, Stop keeps the best."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_tiled_unet.live import LiveTrainer, holdout_blocks
from napari_tiled_unet.model.bundle import load_model
from napari_tiled_unet.training.data import IGNORE
from napari_tiled_unet.training.targets import instance_classes


def _crop():
    from napari_tiled_unet._sample_data import nuclei_image, nuclei_labels

    return nuclei_image()[:192, :256], nuclei_labels()[:192, :256].astype(np.int32)


def _wait(condition, timeout=60.0):
    t0 = time.monotonic()
    while not condition():
        if time.monotonic() - t0 > timeout:
            return False
        time.sleep(0.02)
    return True


def test_holdout_blocks_are_a_fifth_spread_over_the_image():
    held = holdout_blocks((640, 640))
    assert abs(held.mean() - 0.2) < 0.01
    for q in (held[:320, :320], held[320:, 320:], held[:320, 320:]):  # every quarter has some
        assert 0.1 < q.mean() < 0.3


def test_a_stroke_during_training_joins_the_targets_and_the_preview_refreshes(tiny_model_file,
                                                                             one_torch_thread):
    image, labels = _crop()
    painted = np.where(np.arange(labels.shape[0])[:, None] < 96, labels, 0)  # top half annotated
    region = [(0, 0, 96, 256)]
    previews = []
    live = LiveTrainer(tiny_model_file, image, patch_size=64, batch_size=2, preview_every=0.3,
                       validate_every=0.5, on_preview=previews.append, threads=1)
    live.set_window((0, 0, 192, 256))
    v1 = live.set_annotation(painted, region)
    live.start()
    try:
        assert _wait(lambda: live.annotation_version == v1 and live.step >= 3)
        before = live.training_classes()
        assert (before[100:, :] == IGNORE).all()  # the bottom half is not annotated yet
        assert _wait(lambda: len(previews) >= 2)
        first = previews[0]
        assert first.labels.shape == (192, 256) and first.box == (0, 0, 192, 256)
        # the user paints the bottom half while training runs: no restart, the step count goes on
        step_then = live.step
        v2 = live.set_annotation(labels, [(0, 0, 192, 256)])
        assert _wait(lambda: live.annotation_version == v2)
        after = live.training_classes()
        assert (after[100:, :] != IGNORE).all()
        assert np.array_equal(after[100:, :], instance_classes(labels)[100:, :])  # what was painted there
        assert live.step >= step_then
        n = len(previews)
        assert _wait(lambda: len(previews) > n and previews[-1].annotation_version == v2)
        assert previews[-1].step > first.step
    finally:
        bundle = live.stop(timeout=60)
    assert live.error is None
    rec = bundle.metadata["training"]
    assert rec["mode"] == "live" and rec["steps"] == live.step > 0
    # never worse than the start on the held-out annotation
    assert live.scores["kept"] >= live.scores["start"]


@pytest.mark.slow
def test_live_training_that_only_hurts_keeps_the_starting_weights(tiny_model_file, one_torch_thread):
    image, labels = _crop()
    base = load_model(tiny_model_file)
    live = LiveTrainer(base, image, patch_size=64, batch_size=2, lr=50.0, validate_every=0.2, freeze_bn=False,
                       threads=1)
    live.set_annotation(labels)
    live.start()
    assert _wait(lambda: live.step >= 8)
    bundle = live.stop(timeout=60)
    assert live.scores["kept"] == live.scores["start"] > live.scores["last"]
    assert "starting weights" in live.kept and bundle.metadata["training"]["kept"] == live.kept
    for (k, v), w in zip(bundle.model.state_dict().items(), base.model.state_dict().values()):
        assert np.array_equal(v.numpy(), w.numpy()), k


def test_live_training_at_a_scale_trains_on_the_resized_image_and_answers_in_the_images_pixels(
        tiny_model_file, one_torch_thread):
    """A layer that a model with a size range segmented at 0.5x: live training learns the image
    at 0.5x (as the model segments it), previews and classes come back at the image's own size,
    and the result keeps the range, so it goes on segmenting at that scale; without a scale the
    range is dropped, as Train does (the model learnt the image's own sizes)."""
    from napari_tiled_unet.objectsize import prefers_auto

    image, labels = _crop()  # 192 x 256
    base = load_model(tiny_model_file)
    base.metadata["object_diameter_range"] = [12.0, 64.0]
    previews = []
    live = LiveTrainer(base, image, patch_size=64, batch_size=2, preview_every=0.3, validate_every=0.5,
                       on_preview=previews.append, threads=1, scale=0.5)
    assert live.image.shape[1:] == (96, 128) and live.native == (192, 256)
    live.set_window((32, 64, 160, 256))
    version = live.set_annotation(labels, [(0, 0, 192, 256)])
    live.start()
    try:
        assert _wait(lambda: live.annotation_version == version and live.step >= 3 and len(previews) >= 1)
        classes = live.training_classes()
        assert classes.shape == (192, 256)
        # the targets were made from the labels at half size: each object's outline is one pixel
        # there, two here, so the interior seen here matches the half-size classes drawn back
        half = instance_classes(labels[1::2, 1::2])
        assert np.array_equal(classes, np.repeat(np.repeat(half, 2, 0), 2, 1))
        preview = previews[-1]
        assert preview.box == (32, 64, 160, 256) and preview.labels.shape == (128, 192)
    finally:
        bundle = live.stop(timeout=60)
    assert live.error is None
    assert bundle.metadata["training"]["image_scale"] == 0.5 and prefers_auto(bundle)
    assert bundle.metadata["object_diameter_range"] == [12.0, 64.0]
    with pytest.raises(ValueError, match="differ in shape"):
        live.set_annotation(labels[::2, ::2])  # labels of the resized image are not the user's
    own = LiveTrainer(base, image, patch_size=64, threads=1)
    assert own.best_bundle().metadata.get("object_diameter_range") is None
