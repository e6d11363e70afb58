"""Fine-tuning loop: learning, masks, stop, NaN survival, bad input, resume, folders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_tiled_unet.events import TrainStep, WarningEvent
from napari_tiled_unet.model.bundle import load_bundle
from napari_tiled_unet.training import losses
from napari_tiled_unet.training.data import PatchSampler
from napari_tiled_unet.training.folders import train_folders
from napari_tiled_unet.training.loop import Trainer, finetune, finetune_iter, new_bundle
from napari_tiled_unet.training.targets import instance_targets, scribble_targets

TINY = {"base_channels": 4, "depth": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def discs(seed: int, size: int = 64, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Bright discs on noise: float32 image (Y, X) and uint16 instance labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    lab = np.zeros((size, size), np.uint16)
    for k in range(1, n + 1):
        cy, cx = rng.integers(8, size - 8, 2)
        r = rng.integers(4, 8)
        lab[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (lab == 0)] = k
    img = (lab > 0) * 1.0 + rng.normal(0, 0.3, (size, size))
    return img.astype(np.float32), lab


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _finite(model: torch.nn.Module) -> bool:
    return all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())


def _run(trainer: Trainer) -> tuple[list, object]:
    events = []
    gen = trainer.iter()
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


@pytest.fixture(scope="module")
def data():
    pairs = [discs(s) for s in range(3)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def test_short_run_lowers_the_validation_loss(data):
    images, labels = data
    base = new_bundle(seed=0, **TINY)
    events = []
    best = finetune(base, images, labels, epochs=8, steps_per_epoch=10, patch_size=64, lr=1e-2,
                    early_stopping_patience=None, on_event=events.append)
    vals = [e.val_loss for e in events if isinstance(e, TrainStep) and e.val_loss is not None]
    assert vals[0] == vals[0] and len(vals) == 9  # step 0 and every epoch
    assert min(vals[1:]) < 0.85 * vals[0]
    rec = best.metadata["training"]
    assert rec["metrics"]["best_val_loss"] == pytest.approx(min(vals))
    assert rec["steps"] == 80 and rec["annotation"] == "instances" and rec["from_scratch"]
    assert rec["validation"]["kind"] == "strips"
    assert len(rec["data"]["images"]) == 3 and len(rec["data"]["images"][0]["sha256"]) == 64
    assert "f1@0.5" in rec["metrics"]
    assert _finite(best.model)


def test_finetuning_leaves_the_base_bundle_untouched_and_saves_a_loadable_bundle(data, tmp_path):
    images, labels = data
    base = new_bundle(seed=1, name="tiny", **TINY)
    before = _state(base.model)
    best = finetune(base, images[:1], labels[:1], epochs=1, steps_per_epoch=3, patch_size=64)
    assert _same(before, _state(base.model))
    assert best.model is not base.model
    path = best.save(tmp_path / "tuned.safetensors")
    again = load_bundle(path)
    assert _same(_state(again.model), _state(best.model))
    assert again.metadata["training"]["steps"] == 3


def _scribbles(lab: np.ndarray) -> np.ndarray:
    s = np.zeros(lab.shape, np.uint8)
    s[::5, ::3][lab[::5, ::3] == 0] = 1
    s[::4, ::2][lab[::4, ::2] > 0] = 2
    return s


def test_unannotated_scribble_pixels_get_no_gradient_and_do_not_change_parameter_gradients(data):
    image, lab = data[0][0], data[1][0]
    t = scribble_targets(_scribbles(lab), n_classes=3)
    model = new_bundle(seed=0, **TINY).model.train()
    x = torch.from_numpy(image)[None, None]

    def grads(classes, weight):
        model.zero_grad()
        logits = model(x)
        logits.retain_grad()
        loss = losses.combined_loss(logits, torch.from_numpy(classes)[None], torch.from_numpy(weight)[None],
                                    torch.from_numpy(t.mask)[None])
        loss.backward()
        return logits.grad[0], [p.grad.clone() for p in model.parameters()]

    g_logits, g_params = grads(t.classes, t.weight)
    assert (g_logits[:, ~t.mask] == 0).all()
    assert (g_logits[:, t.mask] != 0).any()
    rng = np.random.default_rng(0)
    classes = np.where(t.mask, t.classes, rng.integers(0, 3, t.mask.shape))
    weight = np.where(t.mask, t.weight, rng.random(t.mask.shape, dtype=np.float32) * 50)
    _, g2 = grads(classes, weight)
    assert all(torch.equal(a, b) for a, b in zip(g_params, g2))


def test_labels_outside_the_region_do_not_change_parameter_gradients(data):
    image, lab = data[0][0], data[1][0]
    region = [(8, 8, 40, 48)]
    other = lab.copy()
    outside = np.ones(lab.shape, bool)
    outside[8:40, 8:48] = False
    other[outside] = np.random.default_rng(0).integers(0, 20, outside.sum())
    model = new_bundle(seed=0, **TINY).model.train()
    x = torch.from_numpy(image)[None, None]

    def grads(labels):
        t = instance_targets(labels, region)
        model.zero_grad()
        logits = model(x)
        logits.retain_grad()
        losses.combined_loss(logits, *(torch.from_numpy(a)[None] for a in (t.classes, t.weight, t.mask))
                             ).backward()
        return logits.grad[0], [p.grad.clone() for p in model.parameters()]

    g_logits, g1 = grads(lab)
    assert (g_logits[:, outside] == 0).all()
    _, g2 = grads(other)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


def test_stop_mid_run_returns_the_best_weights_so_far_and_they_are_finite(data):
    images, labels = data
    trainer = Trainer(new_bundle(seed=0, **TINY), images, labels, epochs=50, steps_per_epoch=3,
                      patch_size=64, lr=1e-2, early_stopping_patience=None)
    gen = trainer.iter()
    vals = []
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        if isinstance(ev, TrainStep) and ev.val_loss is not None:
            vals.append((ev.val_loss, ev.step, ev.metrics["f1@0.5"]))
        if isinstance(ev, TrainStep) and ev.step == 7 and ev.val_loss is None:
            trainer.stop()
    assert trainer.step == 7 and trainer.stop_reason == "stopped by user"
    assert [s for _, s, _ in vals] == [0, 3, 6, 7]  # a last validation of the weights at the stop
    # the best: the highest F1, the lowest loss among equal F1s (the first of equals)
    best_loss, best_step, _ = max(vals, key=lambda v: (v[2], -v[0]))
    assert result.metadata["training"]["best_step"] == best_step
    assert result.metadata["training"]["metrics"]["best_val_loss"] == best_loss
    assert _same(_state(result.model), trainer.best_state)
    assert _finite(result.model)


def test_keep_last_returns_the_weights_of_the_last_step_and_still_records_the_best(data):
    images, labels = data
    runs = {}
    for keep in ("best", "last"):
        trainer = Trainer(new_bundle(seed=0, **TINY), images, labels, epochs=4, steps_per_epoch=3,
                          patch_size=64, lr=0.05, early_stopping_patience=None, keep=keep)
        _, result = _run(trainer)
        runs[keep] = (trainer, result, result.metadata["training"])
    trainer, result, rec = runs["best"]
    assert rec["best_step"] < rec["steps"] == 12  # the validation preferred earlier weights ...
    assert not _same(_state(result.model), _state(trainer.model)) and "keep" not in rec
    trainer, result, rec = runs["last"]
    assert _same(_state(result.model), _state(trainer.model))  # ... keep last returns the last ones
    assert rec["keep"] == "last" and rec["best_step"] == runs["best"][2]["best_step"]
    assert rec["selection"].startswith("the last weights (step 12) are returned")
    with pytest.raises(ValueError, match="use 'best' or 'last'"):
        Trainer(new_bundle(seed=0, **TINY), images, labels, epochs=1, keep="newest")


def test_closing_the_generator_still_leaves_the_best_bundle(data):
    images, labels = data
    trainer = Trainer(new_bundle(seed=0, **TINY), images, labels, epochs=50, steps_per_epoch=2,
                      patch_size=64)
    gen = trainer.iter()
    for ev in gen:
        if isinstance(ev, TrainStep) and ev.step == 4 and ev.val_loss is not None:
            break
    gen.close()
    best = trainer.best_bundle()
    assert trainer.stop_reason == "interrupted"
    assert _finite(best.model) and best.metadata["training"]["steps"] == 4


@pytest.mark.parametrize("where", ["loss", "input"])
def test_an_injected_nan_is_skipped_with_a_warning_and_a_lower_learning_rate(data, monkeypatch, where):
    images, labels = data
    if where == "loss":
        real, calls = losses.combined_loss, [0]

        def flaky(*args, **kwargs):
            calls[0] += 1
            out = real(*args, **kwargs)
            return out * float("nan") if calls[0] == 3 else out

        monkeypatch.setattr(losses, "combined_loss", flaky)
    else:
        real, calls = PatchSampler.batch, [0]

        def poisoned(self, n):
            b = real(self, n)
            calls[0] += 1
            if calls[0] == 3:
                b.image[0, 0, 5, 5] = np.nan  # NaN input also poisons BatchNorm's running stats
            return b

        monkeypatch.setattr(PatchSampler, "batch", poisoned)
    trainer = Trainer(new_bundle(seed=0, **TINY), images, labels, epochs=1, steps_per_epoch=6,
                      patch_size=64, lr=1e-2, val_fraction=0)
    events, best = _run(trainer)
    warnings = [e for e in events if isinstance(e, WarningEvent)]
    steps = [e for e in events if isinstance(e, TrainStep)]
    assert len(warnings) == 1 and "NaN" in warnings[0].message and "halved" in warnings[0].message
    assert [e.step for e in steps] == [1, 2, 3, 4, 5, 6]  # the bad step was skipped, not counted
    assert trainer.lr_backoff == 0.5
    assert all(math.isfinite(e.loss) for e in steps)
    assert _finite(trainer.model) and _finite(best.model)


def _rgb_base():
    return new_bundle(seed=0, n_channels=3, **TINY)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("shape", r"labels have shape \(64, 60\) but the image is \(64, 64\)"),
        ("no_object", "No object is painted inside the region"),
        ("region_outside", "No pixel is annotated"),
        ("no_scribble", "No pixel is annotated: paint scribbles"),
        ("one_class", "Only class 2 is painted: paint scribbles of at least two classes"),
        ("channels", "The image has 1 channel.* but the model expects 3"),
        ("rgb_on_gray", "The image has 3 channel.* but the model expects 1"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message_and_changes_nothing(data, case, message):
    image, lab = data[0][0], data[1][0]
    base = new_bundle(seed=0, **TINY)
    kwargs: dict = {}
    if case == "shape":
        lab = lab[:, :60]
    elif case == "no_object":
        kwargs["regions"] = [[(0, 0, 4, 4)]]
    elif case == "region_outside":
        kwargs["regions"] = [[(100, 100, 120, 120)]]
    elif case == "no_scribble":
        lab, kwargs["annotation"] = np.zeros_like(lab), "scribbles"
    elif case == "one_class":
        lab, kwargs["annotation"] = (lab > 0).astype(np.uint8) * 2, "scribbles"
    elif case == "channels":
        base = _rgb_base()
    elif case == "rgb_on_gray":
        image = np.stack([image] * 3, axis=-1)
    before = _state(base.model)
    with pytest.raises(ValueError, match=message):
        list(finetune_iter(base, [image], [lab], epochs=1, **kwargs))
    assert _same(before, _state(base.model))


def test_resumed_run_continues_from_the_saved_step_and_ends_where_an_uninterrupted_one_does(
    data, tmp_path, monkeypatch
):
    images, labels = data
    opts = {"epochs": 1, "steps_per_epoch": 8, "val_every": 4, "checkpoint_every": 3, "patch_size": 64,
            "lr": 1e-2, "checkpoint_minutes": 1e9}
    base = new_bundle(seed=0, **TINY)
    _, full = _run(Trainer(base, images, labels, **opts))

    ckpt = tmp_path / "run.ckpt"
    real, calls = losses.combined_loss, [0]

    def crash(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 6:
            raise RuntimeError("power cut")
        return real(*args, **kwargs)

    monkeypatch.setattr(losses, "combined_loss", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        _run(Trainer(base, images, labels, checkpoint_path=ckpt, **opts))
    monkeypatch.setattr(losses, "combined_loss", real)
    assert ckpt.exists() and not list(tmp_path.glob(".*.tmp"))
    assert torch.load(ckpt, weights_only=True)["step"] == 3

    resumed = Trainer(base, images, labels, checkpoint_path=ckpt, **opts)
    events, result = _run(resumed)
    steps = [e.step for e in events if isinstance(e, TrainStep) and e.val_loss is None]
    assert steps == [4, 5, 6, 7, 8]
    assert _same(_state(result.model), _state(full.model))
    assert result.metadata["training"]["steps"] == 8


def test_checkpoint_of_another_run_is_not_resumed(data, tmp_path):
    images, labels = data
    ckpt = tmp_path / "run.ckpt"
    opts = {"epochs": 1, "steps_per_epoch": 2, "patch_size": 64, "checkpoint_path": ckpt}
    _run(Trainer(new_bundle(seed=0, **TINY), images, labels, **opts))
    events, _ = _run(Trainer(new_bundle(seed=0, **TINY), images[:2], labels[:2], **opts))
    assert any(isinstance(e, WarningEvent) and "another run" in e.message for e in events)


def test_whole_images_are_held_out_when_there_are_enough(data):
    images, labels = data
    trainer = Trainer(new_bundle(seed=0, **TINY), images * 3, labels * 3, names=[f"i{k}" for k in range(9)],
                      epochs=1, patch_size=64, val_fraction=0.2)
    assert trainer.val_record["kind"] == "images" and len(trainer.val_record["names"]) == 2
    held = set(trainer.val_record["names"])
    assert not held & {it.name for it in trainer.train_items}


def test_scribbles_train_a_semantic_model_in_bf16(data):
    images, labels = data
    scribbles = [_scribbles(lab) for lab in labels]
    base = new_bundle(task="semantic", class_names=["background", "nucleus"], seed=0, **TINY)
    events = []
    best = finetune(base, images, scribbles, annotation="scribbles", epochs=1, steps_per_epoch=3,
                    patch_size=64, precision="bf16", on_event=events.append)
    assert best.task == "semantic" and best.metadata["training"]["precision"] == "bf16"
    assert all(math.isfinite(e.loss) for e in events if isinstance(e, TrainStep) and e.step)
    assert _finite(best.model)


def test_folder_pairs_train_a_new_model_and_save_it(tmp_path):
    import tifffile

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for k in range(4):
        img, lab = discs(k)
        tifffile.imwrite(tmp_path / "images" / f"id{k}.tif", (np.clip(img, 0, 2) * 100).astype(np.uint8))
        tifffile.imwrite(tmp_path / "labels" / f"id{k}.tif", lab)
    (tmp_path / "val.txt").write_text("# held out\nid3\n")
    out = tmp_path / "model.safetensors"
    bundle = train_folders(tmp_path / "images", tmp_path / "labels", out=out, val_ids=tmp_path / "val.txt",
                           epochs=1, steps_per_epoch=2, patch_size=64, new_model=TINY)
    assert out.exists()
    rec = load_bundle(out).metadata["training"]
    assert rec["validation"] == {"kind": "images", "names": ["id3"]}
    assert [d["name"] for d in rec["data"]["images"]] == ["id0", "id1", "id2", "id3"]
    assert bundle.metadata["architecture"]["args"]["base_channels"] == 4
    with pytest.raises(ValueError, match="no image/label pair"):
        train_folders(tmp_path / "images", tmp_path / "labels", out=out, val_ids=["nope"], epochs=1)
    with pytest.raises(ValueError, match="No file in"):
        train_folders(tmp_path / "images", tmp_path, out=out, epochs=1)
