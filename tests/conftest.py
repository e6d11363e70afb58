"""Shared fixtures: small real data when ../shared/data is present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DSB = REPO.parent / "shared" / "data" / "dsb2018-fluo-train"


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_torch_thread():
    """One torch thread: on the CI machine's 2 shared cores, intra-op threads spinning on a
    busy core slow tiny networks down 10x (a tiny step takes seconds instead of milliseconds)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def dsb_dir() -> Path:
    """The DSB2018 fluorescence folder beside the repo; skips the test when it is absent."""
    if not (DSB / "images").is_dir():
        pytest.skip("../shared/data/dsb2018-fluo-train is not present")
    return DSB


@pytest.fixture
def tiny_train_args(tmp_path) -> list[str]:
    """``train`` arguments for a CLI run of seconds: three 96 px crops of the nuclei sample in
    tmp_path/images and tmp_path/labels, a new 4-channel U-Net as ``--base``
    (tmp_path/base.safetensors), one epoch of 2 steps; add ``--out``."""
    import tifffile

    from napari_tiled_unet._sample_data import nuclei_image, nuclei_labels
    from napari_tiled_unet.training.new_model import new_bundle

    img, lab = nuclei_image(), nuclei_labels()
    for k, (y, x) in enumerate([(0, 0), (0, 300), (250, 0)]):
        for folder, array in (("images", img), ("labels", lab)):
            (tmp_path / folder).mkdir(exist_ok=True)
            tifffile.imwrite(tmp_path / folder / f"n{k}.tif", array[y : y + 96, x : x + 96])
    base = new_bundle(base_channels=4, depth=2, seed=0, name="tiny").save(tmp_path / "base.safetensors")
    return ["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
            "--base", str(base), "--epochs", "1", "--steps-per-epoch", "2",
            "--patch-size", "64", "--batch-size", "2", "--val-fraction", "0.34"]


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory) -> Path:
    """A tiny U-Net (8 channels, depth 2) trained for 30 steps on the shipped nuclei sample.

    It finds blobs where nuclei are, which is all the mechanics tests (CLI, cluster, widgets)
    need; the quality tests use the built-in model.
    """
    from napari_tiled_unet._sample_data import nuclei_image, nuclei_labels
    from napari_tiled_unet.training.data import Augmentation
    from napari_tiled_unet.training.loop import finetune, new_bundle

    bundle = new_bundle(base_channels=8, depth=2, seed=0, name="tiny-nuclei")
    trained = finetune(bundle, [nuclei_image()], [nuclei_labels()], steps_per_epoch=30, epochs=1,
                       patch_size=96, batch_size=4, val_fraction=0, precision="bf16", seed=0, lr=3e-3,
                       augmentation=Augmentation(elastic=0))
    return trained.save(tmp_path_factory.mktemp("models") / "tiny-nuclei.safetensors")
