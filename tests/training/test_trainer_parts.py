"""The parts of a training run: config, checkpoint compatibility, weight selection, and the
seams a short fine-tuning run chooses with (sampler, schedule, BatchNorm, frozen encoder, live data)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_loop import TINY, _run, _same, _state, discs

from napari_tiled_unet.cli import main
from napari_tiled_unet.events import TrainStep, WarningEvent
from napari_tiled_unet.training.checkpoint import FORMAT, Checkpoint, Progress
from napari_tiled_unet.training.config import TrainConfig
from napari_tiled_unet.training.data import Augmentation, PatchSampler
from napari_tiled_unet.training.loop import StopReason, Trainer, finetune
from napari_tiled_unet.training.new_model import new_bundle

pytestmark = pytest.mark.usefixtures("one_torch_thread")

V1_CHECKPOINT = Path(__file__).parent / "data" / "v1-tiny.ckpt"


@pytest.fixture(scope="module")
def data():
    pairs = [discs(s) for s in range(3)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def test_a_checkpoint_written_by_the_version_before_the_redesign_is_resumed(tmp_path):
    # v1-tiny.ckpt was written by the Trainer of commit 41d0efa (before training/ was split into
    # config, dataset, checkpoint, validate) with exactly these settings, stopped after step 3:
    # the fingerprint (data, settings, augmentation and sampling reprs, starting weights) must
    # still match, or a live run (benchmarks/training/nuclei_v2.sh) would start over.
    pairs = [discs(s) for s in range(4)]
    ckpt = tmp_path / "run.ckpt"
    shutil.copy(V1_CHECKPOINT, ckpt)
    trainer = Trainer(new_bundle(seed=3, **TINY), [p[0] for p in pairs], [p[1] for p in pairs],
                      names=["a/0", "a/1", "b/0", "b/1"], val_images=[1, 3], epochs=1, steps_per_epoch=4,
                      val_every=2, patch_size=32, batch_size=2, lr=1e-3, seed=13,
                      augmentation=Augmentation.generalist(), sample_weights=[1.0, 1.0, 2.0, 2.0],
                      diameters=[9.0, 9.0, 10.0, 10.0], early_stopping_patience=None, checkpoint_path=ckpt,
                      checkpoint_minutes=1e9, checkpoint_every=3)
    assert trainer.fingerprint == torch.load(V1_CHECKPOINT, weights_only=True)["fingerprint"]
    events, _ = _run(trainer)
    notes = [e.message for e in events if isinstance(e, WarningEvent)]
    assert notes[0] == "Resumed from run.ckpt at step 3."
    assert [e.step for e in events if isinstance(e, TrainStep) and e.val_loss is None] == [4]
    assert trainer.stop_reason is StopReason.COMPLETED


def test_checkpoint_fields_are_written_and_read_from_one_list(tmp_path):
    progress = Progress(step=7, elapsed=1.5, best_val=0.25, best_step=4, best_metrics={"f1@0.5": 0.5},
                        base_metrics={"f1@0.5": 0.4}, base_val=0.3, bad_validations=2, last_val_step=6,
                        running=[0.1, 0.2], sampler_rng={"state": 1})
    model = {"w": torch.arange(4.0)}
    path = Checkpoint("abc", model, {"state": {}}, {}, progress).save(tmp_path / "sub" / "c.ckpt")
    content = torch.load(path, weights_only=True)
    names = {f.name for f in dataclasses.fields(Checkpoint)} - {"progress"}
    assert set(content) == {"format", "version"} | names | {f.name for f in dataclasses.fields(Progress)}
    assert content["format"] == FORMAT and not list(path.parent.glob(".*"))  # moved into place
    back = Checkpoint.load(path)
    assert back.progress == progress and back.fingerprint == "abc"
    assert torch.equal(back.model["w"], model["w"])
    old = Checkpoint.load(V1_CHECKPOINT)  # a file without the fields added since: their defaults
    assert old.progress.step == 3 and old.progress.base_metrics == {} and old.progress.base_val is None
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        Checkpoint.load(tmp_path / "junk.ckpt")


@pytest.fixture(scope="module")
def discs_model():
    """A tiny model trained on bright discs until it finds them (F1@0.5 about 0.67), and its data."""
    pairs = [discs(s, size=96, n=10) for s in range(3)]
    images, labels = [p[0] for p in pairs], [p[1] for p in pairs]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as one_torch_thread, which a module fixture cannot use
    try:
        model = finetune(new_bundle(seed=0, **TINY), images, labels, epochs=1, steps_per_epoch=60,
                         val_every=60, patch_size=64, lr=1e-2)
    finally:
        torch.set_num_threads(threads)
    return model, images, labels


def test_training_that_only_hurts_returns_the_starting_weights_and_says_so(discs_model):
    base, images, labels = discs_model
    events = []
    best = finetune(base, images, labels, epochs=1, steps_per_epoch=4, val_every=2, patch_size=64,
                    lr=5.0, early_stopping_patience=None, on_event=events.append)
    vals = [e for e in events if isinstance(e, TrainStep) and e.val_loss is not None]
    assert vals[0].step == 0 and vals[0].metrics["f1@0.5"] > 0.5  # the starting weights find the discs
    assert all(v.metrics["f1@0.5"] < vals[0].metrics["f1@0.5"] for v in vals[1:])  # lr far too high
    rec = best.metadata["training"]
    assert rec["best_step"] == 0 and rec["steps"] == 4
    assert rec["selection"].startswith("the starting weights were kept")
    assert f"f1@0.5 {vals[0].metrics['f1@0.5']:.3f}" in rec["selection"]
    assert _same(_state(best.model), _state(base.model))


def test_the_cli_prints_which_weights_it_returned(discs_model, tmp_path, capsys):
    import tifffile

    base, images, labels = discs_model
    for sub, arrays in (("images", images), ("labels", labels)):
        (tmp_path / sub).mkdir()
        for k, array in enumerate(arrays):
            tifffile.imwrite(tmp_path / sub / f"d{k}.tif", array)
    assert main(["train", "--base", str(base.save(tmp_path / "base.safetensors")),
                 "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
                 "--out", str(tmp_path / "m.safetensors"), "--epochs", "1", "--steps-per-epoch", "2",
                 "--patch-size", "64", "--lr", "5", "--device", "cpu", "--val-fraction", "0.15"]) == 0
    out = capsys.readouterr().out
    assert "Weights returned: the starting weights were kept" in out


def test_scribbles_choose_the_weights_by_class_iou(data):
    images, labels = data
    scribbles = [np.where(lab > 0, 2, 1).astype(np.uint8) for lab in labels]
    base = new_bundle(task="semantic", class_names=["background", "nucleus"], seed=0, **TINY)
    events = []
    best = finetune(base, images, scribbles, TrainConfig(annotation="scribbles", epochs=1, steps_per_epoch=4,
                                                         val_every=2, patch_size=64, lr=1e-2),
                    on_event=events.append)
    vals = [e for e in events if isinstance(e, TrainStep) and e.val_loss is not None]
    assert all(0 <= v.metrics["mean IoU"] <= 1 and "IoU nucleus" in v.metrics for v in vals)
    chosen = max(vals, key=lambda v: (v.metrics["mean IoU"], -v.val_loss))
    assert best.metadata["training"]["best_step"] == chosen.step
    assert "mean IoU" in best.metadata["training"]["selection"]


def test_options_and_a_config_give_the_same_run(data):
    images, labels = data
    opts = {"epochs": 1, "steps_per_epoch": 3, "patch_size": 64, "lr": 1e-2}
    a = finetune(new_bundle(seed=0, **TINY), images, labels, **opts)
    b = finetune(new_bundle(seed=0, **TINY), images, labels, TrainConfig(**opts))
    assert _same(_state(a.model), _state(b.model))
    with pytest.raises(TypeError, match=r"unknown keyword argument.*patchsize"):
        Trainer(new_bundle(seed=0, **TINY), images, labels, patchsize=64)
    with pytest.raises(ValueError, match="learning-rate schedule 'linear'"):
        TrainConfig(lr_schedule="linear")


class CountingSampler(PatchSampler):
    batches = 0

    def batch(self, n):
        type(self).batches += 1
        return super().batch(n)


def test_a_patch_sampler_can_be_plugged_in(data):
    images, labels = data
    trainer = Trainer(new_bundle(seed=0, **TINY), images, labels,
                      TrainConfig(epochs=1, steps_per_epoch=3, patch_size=64, sampler=CountingSampler))
    _run(trainer)
    assert isinstance(trainer.sampler, CountingSampler) and CountingSampler.batches >= 3


def test_a_constant_schedule_keeps_the_peak_learning_rate_after_warm_up(data):
    images, labels = data
    lrs = {}
    for schedule in ("cosine", "constant"):
        events, _ = _run(Trainer(new_bundle(seed=0, **TINY), images, labels, epochs=1, steps_per_epoch=40,
                                 patch_size=32, batch_size=1, lr=1e-3, val_fraction=0, lr_schedule=schedule))
        lrs[schedule] = [e.lr for e in events if isinstance(e, TrainStep)]
    assert lrs["constant"][2:] == [pytest.approx(1e-3)] * 38  # warm-up: 2 steps of 40
    assert lrs["cosine"][-1] < 0.1e-3


def _bn_stats(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


@pytest.mark.parametrize("batchnorm", ["train", "frozen"])
def test_frozen_batchnorm_keeps_the_base_statistics(data, batchnorm):
    images, labels = data
    base = new_bundle(seed=0, **TINY)
    trainer = Trainer(base, images, labels, epochs=1, steps_per_epoch=3, patch_size=64, val_fraction=0,
                      batchnorm=batchnorm)
    _run(trainer)
    kept = _same(_bn_stats(base.model), _bn_stats(trainer.model))
    assert kept == (batchnorm == "frozen")


def test_a_frozen_encoder_trains_only_the_decoder(data):
    images, labels = data
    base = new_bundle(seed=0, **TINY)
    trainer = Trainer(base, images, labels, epochs=1, steps_per_epoch=3, patch_size=64, lr=1e-2,
                      val_fraction=0, freeze_encoder=True)
    _run(trainer)
    before, after = _state(base.model), _state(trainer.model)
    weights = [k for k in before if k.endswith("weight")]
    encoder = [k for k in weights if k.startswith(("inc.", "down"))]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in weights if k.startswith(("up", "outc")))


def test_labels_painted_during_training_join_the_training_targets(data):
    images, labels = data
    first = labels[0].copy()
    first[:, 32:] = 0  # only the left half annotated at the start
    region = [(0, 0, 64, 64)]
    trainer = Trainer(new_bundle(seed=0, **TINY), [images[0]], [first], epochs=1, steps_per_epoch=6,
                      patch_size=32, batch_size=1, regions=[region], val_fraction=0)
    gen = trainer.iter()
    counted_before = None
    events = []
    for ev in gen:
        events.append(ev)
        if isinstance(ev, TrainStep) and ev.step == 2:
            counted_before = trainer.train_items[0].classes.copy()
            trainer.update_annotation(0, labels[0])  # the user painted the right half meanwhile
    after = trainer.train_items[0].classes
    right = np.s_[:, 32:]
    assert (labels[0][right] > 0).any()
    assert (counted_before[right] != after[right]).any()  # objects on the right are targets now
    assert trainer.sampler.items[0].classes is after  # and the sampler draws from them
    assert any(isinstance(e, WarningEvent) and "new annotation of image 0 from step 2" in e.message
               for e in events)
    assert trainer.step == 6
    with pytest.raises(ValueError, match="paint the labels on a layer of the image's size"):
        trainer.update_annotation(0, labels[0][:, :40])  # refused at once, not inside the run


def test_the_reason_for_the_returned_weights_names_the_loss_when_the_f1_ties():
    from napari_tiled_unet.training.validate import selection_reason

    # both found every held-out object: the lower loss chose the weights, and the sentence says so
    tie = selection_reason(100, {"f1@0.5": 1.0}, 0.331, {"f1@0.5": 1.0}, 0.459, "f1@0.5")
    assert "f1@0.5 as good (1.000)" in tie and "validation loss 0.3310 against 0.4590" in tie
    better = selection_reason(100, {"f1@0.5": 0.9}, 0.4, {"f1@0.5": 0.8}, 0.3, "f1@0.5")
    assert better.endswith("f1@0.5 0.900 against f1@0.5 0.800")


def test_training_at_the_scale_segmentation_used_resizes_image_labels_and_region_and_keeps_the_range():
    from napari_tiled_unet.training.loop import new_bundle

    base = new_bundle(**TINY, seed=0)
    base.metadata["object_diameter_range"] = [12.0, 64.0]
    img, lab = discs(3, size=128, n=8)
    region = [(0, 0, 64, 128)]  # the top half, at the image's own size
    trainer = Trainer(base, [img], [lab], regions=[region], scale=0.5, epochs=1, steps_per_epoch=2,
                      patch_size=32, batch_size=2, val_fraction=0.0)
    (item,) = trainer.train_items
    assert item.image.shape[-2:] == item.classes.shape == (64, 64)  # the image at half its size
    counted = item.classes != 255
    assert counted[:32].all() and not counted[32:].any()  # the region, halved with it
    # the labels at half size: every disc still there, nearest neighbour keeps the ids
    assert set(np.unique(item.classes[:32])) <= {0, 1, 2}
    # live updates come at the image's own size too
    trainer.update_annotation(0, lab, [(64, 0, 128, 128)])
    _, bundle = _run(trainer)
    assert bundle.metadata["object_diameter_range"] == [12.0, 64.0]  # auto keeps working for it
    assert bundle.metadata["training"]["image_scale"] == 0.5
    # at the image's own size, the range is dropped as before (auto would move its images)
    plain = Trainer(base, [img], [lab], epochs=1, steps_per_epoch=1, patch_size=32, batch_size=2,
                    val_fraction=0.0)
    _, plain_bundle = _run(plain)
    assert "object_diameter_range" not in plain_bundle.metadata
    with pytest.raises(ValueError, match=r"between 0\.1 and 10"):
        Trainer(base, [img], [lab], scale=0.0, epochs=1)


def test_a_fine_tuned_built_in_keeps_the_object_diameter_its_name_stood_for():
    from napari_tiled_unet.model.bundle import load_model
    from napari_tiled_unet.objectsize import model_diameter

    base = load_model("nuclei-dsb2018")  # records no diameter: it is known by its name
    img, lab = discs(4, size=64)
    tuned = finetune(base, [img], [lab], epochs=1, steps_per_epoch=1, patch_size=32, batch_size=2,
                     val_fraction=0.0)
    assert tuned.metadata["name"] == "nuclei-dsb2018-finetuned"
    assert model_diameter(tuned) == model_diameter(base)  # so segment --diameter works with it
