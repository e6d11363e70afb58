"""Semantic benchmark: train a 3-class model from scratch for at most 10 minutes, score it on held-out images.

    python benchmarks/bench_semantic.py [--stage data|train|eval|all] [--minutes 9.5] [--threads 1]
                                        [--data ../shared/data/aitslab-bioimaging1]

The semantic task is derived from real images with instance labels (default: the 50
U2OS Hoechst images of aitslab-bioimaging1, 1104x1104, CC BY 4.0, Arvidsson et al. 2023).
Every pixel gets one of three classes, made from the instance labels by the same rule that
builds the instance targets (``training.targets.instance_classes``):

    label value 1 -> class 0 "background": no nucleus;
    label value 2 -> class 1 "nucleus": inside a nucleus;
    label value 3 -> class 2 "boundary": nucleus pixels with a 4-neighbour outside that nucleus
                     (its outline, and the contact line between touching nuclei).

Sorted by file name, every 5th image (10) is held out for testing; the other 40 train.

Stage ``data`` writes the derived folders under runs/bench_semantic/ (scribble label values
1..3 for training; 0-based class maps for the test ground truth). Stage ``train`` runs the
command line exactly as a user would::

    napari-tiled-unet train --annotation scribbles --classes background,nucleus,boundary \\
        --images train/images --labels train/labels --minutes 10 --out semantic.safetensors ...

(skipped when the model file exists; checkpointed, so an interrupted run resumes). The
budget of 9.5 minutes leaves room for the last validation inside 10 minutes. The commands
run with ``OMP_NUM_THREADS`` = ``--threads`` (default 1): on the shared 2-core machine the
figures were measured on, one torch thread trained 4x faster than two (measured side by
side: 0.31 vs 1.19-1.48 s per step of 8 patches of 128x128), because two threads spin on
cores that other work holds. Stage
``eval`` segments the test images with ``napari-tiled-unet segment`` and scores the class
maps with ``napari-tiled-unet evaluate --semantic``, beside a classical baseline (Otsu
threshold; its connected components' outlines as the boundary class) scored by the same
code. Results: benchmarks/results/semantic.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "aitslab-bioimaging1"
RUNS = HERE.parent / "runs" / "bench_semantic"
CLASSES = ["background", "nucleus", "boundary"]
TRAIN_OPTIONS = ["--base-channels", "16", "--depth", "4", "--patch-size", "128", "--batch-size", "8",
                 "--precision", "bf16", "--lr", "2e-3", "--patience", "0", "--seed", "0"]


THREADS = {"n": 1}


def cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "napari_tiled_unet.cli", *args]
    print(f"$ OMP_NUM_THREADS={THREADS['n']} napari-tiled-unet " + " ".join(args), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS["n"])}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def split(data: Path) -> tuple[list[str], list[str]]:
    ids = sorted(p.stem for p in (data / "images").glob("*.tif"))
    test = ids[::5]
    return [i for i in ids if i not in test], test


def stage_data(data: Path) -> None:
    from napari_tiled_unet.training.targets import instance_classes

    train, test = split(data)
    for part, ids in (("train", train), ("test", test)):
        for sub in ("images", "labels", "classes"):
            (RUNS / part / sub).mkdir(parents=True, exist_ok=True)
        for i in ids:
            image = tifffile.imread(data / "images" / f"{i}.tif")
            classes = instance_classes(tifffile.imread(data / "labels" / f"{i}.tif"))  # 0, 1, 2
            tifffile.imwrite(RUNS / part / "images" / f"{i}.tif", image)
            tifffile.imwrite(RUNS / part / "labels" / f"{i}.tif", (classes + 1).astype(np.uint8))
            tifffile.imwrite(RUNS / part / "classes" / f"{i}.tif", classes)
    print(f"data: {len(train)} training and {len(test)} test images in {RUNS}")


def stage_train(minutes: float) -> dict:
    model = RUNS / "semantic.safetensors"
    if model.exists():
        print(f"train: {model} exists, not training again (delete it to retrain)")
    else:
        t0 = time.perf_counter()
        cli("train", "--annotation", "scribbles", "--classes", ",".join(CLASSES),
            "--images", str(RUNS / "train" / "images"), "--labels", str(RUNS / "train" / "labels"),
            "--minutes", str(minutes), "--out", str(model), "--checkpoint", str(RUNS / "semantic.ckpt"),
            *TRAIN_OPTIONS)
        print(f"train: {time.perf_counter() - t0:.0f} s wall (command, data reading included)")
    from napari_tiled_unet.model.bundle import load_model

    bundle = load_model(model)
    record = bundle.metadata["training"]
    return {"task": bundle.task, "classes": bundle.class_names, "steps": record["steps"],
            "minutes": round(record["time_s"] / 60, 2), "stopped": record["stopped"],
            "best_step": record["best_step"], "validation": record["validation"],
            "best_val_loss": record["metrics"].get("best_val_loss"), "options": TRAIN_OPTIONS,
            "budget_minutes": minutes, "omp_num_threads": THREADS["n"]}


def otsu_classes(image: np.ndarray) -> np.ndarray:
    """The classical baseline: Otsu foreground, each connected component an object, its outline
    the boundary class."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    from napari_tiled_unet.training.targets import instance_classes

    objects, _ = ndi.label(image > threshold_otsu(image))
    return instance_classes(objects)


def stage_eval() -> dict:
    from napari_tiled_unet.metrics import evaluate_semantic_folders

    pred = RUNS / "pred"
    t0 = time.perf_counter()
    done = cli("segment", str(RUNS / "test" / "images"), "-o", str(pred), "-m",
               str(RUNS / "semantic.safetensors"), "--overwrite", "--json")
    seconds = time.perf_counter() - t0
    summary = json.loads(done.stdout)
    report = json.loads(cli("evaluate", "--semantic", "--pred", str(pred), "--gt",
                            str(RUNS / "test" / "classes"), "--json").stdout)
    base_dir = RUNS / "otsu"
    base_dir.mkdir(exist_ok=True)
    for f in sorted((RUNS / "test" / "images").glob("*.tif")):
        tifffile.imwrite(base_dir / f.name, otsu_classes(tifffile.imread(f)))
    baseline = evaluate_semantic_folders(base_dir, RUNS / "test" / "classes")
    return {"unet": report["total"], "unet_images": report["images"], "otsu": baseline["total"],
            "segment_seconds": round(seconds, 1), "segment_engine_seconds": summary["seconds"],
            "test_images": len(summary["segmented"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", default="all", choices=["data", "train", "eval", "all"])
    ap.add_argument("--minutes", type=float, default=9.5)
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the commands")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args()
    THREADS["n"] = args.threads
    out = HERE / "results" / "semantic.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    if args.stage in ("data", "all"):
        stage_data(args.data)
    if args.stage in ("train", "all"):
        results["training"] = stage_train(args.minutes)
    if args.stage in ("eval", "all"):
        results["evaluation"] = stage_eval()
        u, o = results["evaluation"]["unet"], results["evaluation"]["otsu"]
        print(f"held-out test images: U-Net pixel error {u['pixel_error']:.4f}, Rand error "
              f"{u['rand_error']:.4f}; Otsu baseline pixel error {o['pixel_error']:.4f}, Rand error "
              f"{o['rand_error']:.4f}")
    results["data"] = {"source": str(args.data.name), "classes": CLASSES,
                       "split": "sorted ids, every 5th held out"}
    results["machine"] = {"platform": platform.platform(), "processor": platform.processor(),
                          "note": "2 shared CPU cores, busy with other work during the run"}
    out.write_text(json.dumps(results, indent=2))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
