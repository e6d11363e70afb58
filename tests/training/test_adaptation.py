"""Short-run adaptation choices: patches on the base model's errors, the learning-rate schedule."""

from __future__ import annotations

import numpy as np

from napari_tiled_unet.model.bundle import load_model
from napari_tiled_unet.training import adaptation
from napari_tiled_unet.training.data import IGNORE, TrainingImage
from napari_tiled_unet.training.targets import make_targets


def _item(labels: np.ndarray) -> TrainingImage:
    image = np.random.default_rng(0).random((1, *labels.shape)).astype(np.float32)
    return TrainingImage(image, make_targets(labels.shape, labels))


def test_patches_go_where_the_base_model_is_wrong():
    labels = np.zeros((200, 200), np.int32)
    labels[20:40, 20:40] = 1
    labels[150:180, 150:180] = 2
    item = _item(labels)
    base = item.classes.copy()
    base[150:180, 150:180] = 0  # the base model missed the bottom-right object
    wrong = adaptation.disagreement(base, item.classes, widen=3)
    assert wrong[150:180, 150:180].all() and not wrong[:100, :100].any()
    pick = adaptation.PixelPicker(item, wrong, share=0.5)
    rng = np.random.default_rng(1)
    centres = np.array([pick(rng) for _ in range(2000)])
    on_error = wrong[centres[:, 0], centres[:, 1]].mean()
    # half on the error, plus the uniform half's share of it (about 2.7 % of the image)
    assert 0.47 < on_error < 0.58
    assert (item.classes[centres[:, 0], centres[:, 1]] != IGNORE).all()


def test_the_disagreement_sampler_runs_the_base_model_on_the_annotation(tiny_model_file):
    from napari_tiled_unet._sample_data import nuclei_image, nuclei_labels

    model = load_model(tiny_model_file).model
    img, lab = nuclei_image()[:128, :128], nuclei_labels()[:128, :128]
    from napari_tiled_unet import normalization

    item = TrainingImage(img[None], make_targets(lab.shape, lab),
                         normalization.compute_stats(img[None], load_model(tiny_model_file).normalization,
                                                     channel_axis=0))
    sampler = adaptation.DisagreementSampler([item], 64, 0, model=model, share=0.5)
    expected = adaptation.disagreement(adaptation.base_classes(model, item), item.classes)
    assert sampler.n_wrong == int(expected.sum()) > 0
    batch = sampler.batch(2)
    assert batch.image.shape == (2, 1, 64, 64) and batch.mask.any()


def test_hold_then_decay_schedule():
    f = adaptation.hold_decay_schedule
    assert f(0, 5, 0.0) == 0.2 and f(4, 5, 0.0) == 1.0
    assert f(10, 5, 0.2) == 1.0 and f(10, 5, adaptation.HOLD) == 1.0
    assert abs(f(10, 5, 1.0) - adaptation.FLOOR) < 1e-9 and f(10, 5, 0.65) < 1.0
