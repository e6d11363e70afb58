"""Fine-tuning benchmark: how much do 2 annotated images and 2 minutes help on a new kind of image?

    python benchmarks/bench_finetune.py [--stage base|finetune|all] [--base-minutes 12]
                                        [--finetune-minutes 2] [--data ../shared/data/dsb2018-fluo-train]

Groups of ../shared/data/dsb2018-fluo-train by image size differ in magnification:
- source group: the 334 images of 256x256 (small nuclei, about 170 px each);
- target group: the 90 images of 360x360 (large, dim nuclei, about 1550 px each).

Stage ``base`` trains a new U-Net (16 base channels, depth 4) on the source group for
``--base-minutes`` (checkpointed: re-running resumes). Stage ``finetune`` takes 2 images of
the target group (fixed seed), fine-tunes the base model on them for at most
``--finetune-minutes`` (the same Trainer as the widget and the CLI), and scores base and
fine-tuned models on the other 88 target images: F1@0.5 and AP@0.5, pooled over images.
Results: benchmarks/results/finetune.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import tifffile

from napari_tiled_unet.metrics import Matching, match_instances
from napari_tiled_unet.model.bundle import load_model
from napari_tiled_unet.segmentation import segment
from napari_tiled_unet.training.loop import finetune, new_bundle

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "dsb2018-fluo-train"
RUNS = HERE.parent / "runs" / "bench_finetune"
SOURCE, TARGET = (256, 256), (360, 360)


def group(data: Path, shape: tuple[int, int]) -> list[str]:
    ids = []
    for f in sorted((data / "images").glob("*.tif")):
        with tifffile.TiffFile(f) as t:
            if tuple(t.pages[0].shape[:2]) == shape:
                ids.append(f.stem)
    return ids


def read(data: Path, ids: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return ([tifffile.imread(data / "images" / f"{i}.tif") for i in ids],
            [tifffile.imread(data / "labels" / f"{i}.tif") for i in ids])


def score(bundle, images, labels) -> dict:
    per = {0.5: []}
    t0 = time.perf_counter()
    for img, gt in zip(images, labels):
        pred = segment(bundle, img, device="cpu").labels
        per[0.5].append(match_instances(gt, pred, 0.5))
    m = Matching.pooled(per[0.5])
    return {"f1@0.5": round(m.f1, 4), "ap@0.5": round(m.ap, 4), "tp": m.tp, "fp": m.fp, "fn": m.fn,
            "seconds": round(time.perf_counter() - t0, 1)}


def stage_base(data: Path, minutes: float) -> Path:
    RUNS.mkdir(parents=True, exist_ok=True)
    out = RUNS / "base.safetensors"
    ids = group(data, SOURCE)
    images, labels = read(data, ids)
    bundle = new_bundle(base_channels=16, depth=4, seed=0, name="bench-base-256px-group")
    t0 = time.perf_counter()
    trained = finetune(bundle, images, labels, names=ids, minutes=minutes, patch_size=128, batch_size=8,
                       lr=2e-3, precision="bf16", val_fraction=0.1, val_every=200,
                       early_stopping_patience=None, checkpoint_path=RUNS / "base.ckpt", seed=0)
    trained.save(out)
    print(f"base model: {len(ids)} images of {SOURCE}, {time.perf_counter() - t0:.0f} s -> {out}")
    return out


def stage_finetune(data: Path, minutes: float, n_train: int = 2) -> dict:
    base = load_model(RUNS / "base.safetensors")
    ids = group(data, TARGET)
    rng = np.random.default_rng(0)
    train_ids = sorted(rng.choice(ids, n_train, replace=False).tolist())
    test_ids = [i for i in ids if i not in train_ids]
    tr_images, tr_labels = read(data, train_ids)
    te_images, te_labels = read(data, test_ids)
    before = score(base, te_images, te_labels)
    print(f"before: {before}")
    t0 = time.perf_counter()
    tuned = finetune(base, tr_images, tr_labels, names=train_ids, minutes=minutes, patch_size=128,
                     batch_size=8, lr=1e-3, precision="bf16", val_fraction=0.15, seed=0)
    seconds = time.perf_counter() - t0
    tuned.save(RUNS / "finetuned.safetensors")
    after = score(tuned, te_images, te_labels)
    print(f"after ({seconds:.0f} s of fine-tuning): {after}")
    res = {
        "machine": platform.processor() or platform.machine(),
        "source_group": f"{SOURCE[0]}x{SOURCE[1]} ({len(group(data, SOURCE))} images)",
        "target_group": f"{TARGET[0]}x{TARGET[1]} ({len(ids)} images)",
        "finetune_images": train_ids, "test_images": len(test_ids),
        "base_training": base.metadata.get("training", {}).get("time_s"),
        "finetune_seconds": round(seconds, 1),
        "finetune_steps": tuned.metadata["training"]["steps"],
        "before": before, "after": after,
        "gain_f1@0.5": round(after["f1@0.5"] - before["f1@0.5"], 4),
        "gain_ap@0.5": round(after["ap@0.5"] - before["ap@0.5"], 4),
    }
    out = HERE / "results" / "finetune.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", default="all", choices=["base", "finetune", "all"])
    ap.add_argument("--base-minutes", type=float, default=12.0)
    ap.add_argument("--finetune-minutes", type=float, default=2.0)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args()
    if args.stage in ("base", "all"):
        stage_base(args.data, args.base_minutes)
    if args.stage in ("finetune", "all"):
        stage_finetune(args.data, args.finetune_minutes)


if __name__ == "__main__":
    main()
