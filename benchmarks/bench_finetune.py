"""The correction loop on images from another lab: what 2 minutes of fine-tuning buy (issue 16).

    python benchmarks/bench_finetune.py steps                   # (c) cost of one step, side by side
    python benchmarks/bench_finetune.py two-images  [--variant NAME] [--score dev|held-out]   # (a)
    python benchmarks/bench_finetune.py corrections [--variant NAME] [--score dev|held-out]   # (b)

Base model: the built-in ``nuclei-dsb2018`` (trained on DSB2018 only). Target set:
``../shared/data/kromp-sbsst265`` (Kromp et al. 2020), mostly 63x images with nuclei of
80-190 px that the base model splits into pieces (F1@0.5 0.33 on the held-out ids with
``segment`` defaults).

Images (fixed here, never chosen by their scores):
- **held-out** (``--score held-out``): the 12 ids of benchmarks/data/kromp_sbsst265_val_ids.txt,
  the "rest of the set" of the issue; used only for the final before/after figures.
- **train**: 2 of the 63x images outside that list, drawn with ``numpy.random.default_rng(16)``.
- **dev** (``--score dev``, the default): 6 other 63x images outside the list, drawn with the same
  generator; every choice (variants, margin, step size) was made on these.

(a) ``two-images``: both train images fully annotated (their labels), ``--minutes`` (2) of
fine-tuning. (b) ``corrections``: the base model segments the first image (train images first, then the
other 63x images outside the dev and held-out lists) on which it makes at least 10 errors; a
simulated user corrects 10 of them (a badly segmented nucleus: the predicted objects overlapping it
and it are replaced by the true labels there; a false object: erased) and leaves the rest as the
model wrote it; the region that counts comes from the edits (napari_tiled_unet.corrections).

Variants (``--variant``) are named sets of choices, see VARIANTS. ``issue`` is what the CLI and the
widget did when the issue was filed (patch 256, batch 4, fp32, lr 1e-3, validation every epoch
with early stopping). Each run appends to benchmarks/results/finetune_kromp.json.

The machine is shared: 2 cores, busy with other work (two training runs and other sessions'
tests) while these figures were taken; ``steps`` therefore interleaves its configurations and
reports ratios to the first one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_tiled_unet.corrections import correction_region
from napari_tiled_unet.metrics import Matching, match_instances
from napari_tiled_unet.model.bundle import load_model
from napari_tiled_unet.segmentation import segment
from napari_tiled_unet.training import adaptation
from napari_tiled_unet.training.loop import Trainer

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "kromp-sbsst265"
RESULTS = HERE / "results" / "finetune_kromp.json"
RESULTS_BASE = HERE / "results" / "finetune_kromp_base.json"
BASE = "nuclei-dsb2018"

#: named choices; keys are Trainer arguments plus the experimental ones of ExperimentTrainer
VARIANTS: dict[str, dict] = {
    # what the CLI and the widget did when the issue was filed
    "issue": {"patch_size": 256, "batch_size": 4, "precision": "fp32", "lr": 1e-3},
    # cheap steps: bf16, smaller batches, validation every 25 steps, no early stop
    "cheap": {"patch_size": 256, "batch_size": 2, "precision": "bf16", "lr": 1e-3, "val_every": 25,
              "early_stopping_patience": None},
    "cheap-hold3e-3": {"patch_size": 256, "batch_size": 2, "precision": "bf16", "lr": 3e-3, "val_every": 25,
                       "early_stopping_patience": None, "schedule": "hold-decay"},
    "cheap-bnfrozen": {"patch_size": 256, "batch_size": 2, "precision": "bf16", "lr": 1e-3, "val_every": 25,
                       "early_stopping_patience": None, "freeze_bn": True},
    "cheap-disagree": {"patch_size": 256, "batch_size": 2, "precision": "bf16", "lr": 1e-3, "val_every": 25,
                       "early_stopping_patience": None, "disagreement": 0.5},
}


def read_ids(path: Path) -> list[str]:
    return [s.strip() for s in path.read_text().splitlines() if s.strip() and not s.startswith("#")]


def split(rest: bool = False) -> tuple[list[str], ...]:
    """(train, dev, held_out) ids (see the module docstring); with ``rest``, also the other
    63x ids outside the held-out list, in the same drawn order."""
    import csv

    held = read_ids(HERE / "data" / "kromp_sbsst265_val_ids.txt")
    with open(DATA / "per_image.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["magnification"] == "63x" and r["id"] not in held]
    ids = sorted(r["id"] for r in rows)
    order = [ids[i] for i in np.random.default_rng(16).permutation(len(ids))]
    out = (order[:2], order[2:8], held)
    return (*out, order[8:]) if rest else out


def read(i: str) -> tuple[np.ndarray, np.ndarray]:
    return tifffile.imread(DATA / "images" / f"{i}.tif"), tifffile.imread(DATA / "labels" / f"{i}.tif")


def score(bundle, ids: list[str]) -> dict:
    """F1@0.5, AP@0.5 and TP/FP/FN pooled over ``ids``, ``segment`` defaults (fp32)."""
    t0 = time.perf_counter()
    matches = []
    for i in ids:
        img, gt = read(i)
        matches.append(match_instances(gt, segment(bundle, img, device="cpu").labels, 0.5))
    m = Matching.pooled(matches)
    return {"f1@0.5": round(m.f1, 4), "ap@0.5": round(m.ap, 4), "tp": m.tp, "fp": m.fp, "fn": m.fn,
            "seconds": round(time.perf_counter() - t0, 1)}


def before_score(base, ids: list[str]) -> dict:
    """:func:`score` of the base model, computed once per set of ids (kept in RESULTS_BASE)."""
    cache = json.loads(RESULTS_BASE.read_text()) if RESULTS_BASE.exists() else {}
    key = f"{BASE}:{','.join(ids)}"
    if key not in cache:
        result = score(base, ids)
        cache = json.loads(RESULTS_BASE.read_text()) if RESULTS_BASE.exists() else {}  # runs in parallel
        cache[key] = result
        RESULTS_BASE.parent.mkdir(exist_ok=True)
        RESULTS_BASE.write_text(json.dumps(cache, indent=1))
    return cache[key]


# -- experimental trainer ---------------------------------------------------------------------


def trainer_options(variant: str, base) -> dict:
    """The Trainer options of a variant: its short names mapped onto TrainConfig's choices."""
    opts = dict(VARIANTS[variant])
    opts.pop("untouched", None)
    opts.pop("margin", None)
    schedule = opts.pop("schedule", "cosine")
    opts["lr_schedule"] = adaptation.hold_decay_schedule if schedule == "hold-decay" else schedule
    if opts.pop("freeze_bn", False):
        opts["batchnorm"] = "frozen"
    share = opts.pop("disagreement", 0.0)
    if share:
        opts["sampler"] = adaptation.disagreement_sampler(base.model, share)
    return opts


class CPUClock:
    """``time`` for the training loop with ``monotonic`` = this process's CPU seconds / cores.

    On a machine shared with other work, a wall-clock budget measures the neighbours; the
    CPU time of the process divided by the cores it may use is the wall time the same work
    takes when the machine is ours alone (both cores busy with it).
    """

    def __init__(self, cores: int) -> None:
        self.cores = cores

    def monotonic(self) -> float:
        return time.process_time() / self.cores

    def __getattr__(self, name):
        return getattr(time, name)


def run_variant(variant: str, images, labels, names, regions=None, minutes: float = 2.0,
                clock: str = "cpu") -> tuple:
    from napari_tiled_unet.training import loop

    if clock == "cpu":
        loop.time = CPUClock(os.cpu_count() or 2)  # 2 minutes = 240 CPU seconds on 2 cores
    base = load_model(BASE)
    t0 = time.perf_counter()
    trainer = Trainer(base, images, labels, regions=regions, names=names, minutes=minutes, seed=0,
                      **trainer_options(variant, base))
    events = []
    gen = trainer.iter()
    try:
        while True:
            ev = next(gen)
            if getattr(ev, "val_loss", None) is not None:
                events.append({"step": ev.step, "val_loss": round(ev.val_loss, 4),
                               "elapsed": round(ev.elapsed, 1),
                               **{k: round(v, 4) for k, v in (ev.metrics or {}).items() if v is not None}})
    except StopIteration as stop:
        tuned = stop.value
    finally:
        loop.time = time
    seconds = time.perf_counter() - t0
    rec = tuned.metadata["training"]
    info = {"variant": variant, "options": dict(VARIANTS[variant].items()), "clock": clock,
            "wall_seconds": round(seconds, 1), "budget_seconds_used": rec["time_s"],
            "steps": rec["steps"], "best_step": rec["best_step"],
            "stopped": rec["stopped"], "s_per_step": round(rec["time_s"] / max(1, rec["steps"]), 2),
            "validations": events, "error_pixels": getattr(trainer.sampler, "n_wrong", None)}
    return tuned, info


# -- the stages -------------------------------------------------------------------------------


def stage_steps(rounds: int) -> dict:
    """Cost of one step, by part, for several configurations, interleaved in one run."""
    from napari_tiled_unet.runtime import autocast
    from napari_tiled_unet.training import losses
    from napari_tiled_unet.training.data import Augmentation
    from napari_tiled_unet.training.optim import AdamW

    train_ids, _, _ = split()
    images, labels = zip(*(read(i) for i in train_ids))
    configs = [
        ("issue: 256x4 fp32", {"patch_size": 256, "batch_size": 4}, "fp32", False),
        ("256x4 bf16", {"patch_size": 256, "batch_size": 4}, "bf16", False),
        ("256x4 bf16 channels_last", {"patch_size": 256, "batch_size": 4}, "bf16", True),
        ("256x2 bf16", {"patch_size": 256, "batch_size": 2}, "bf16", False),
        ("128x8 bf16", {"patch_size": 128, "batch_size": 8}, "bf16", False),
        ("192x4 bf16", {"patch_size": 192, "batch_size": 4}, "bf16", False),
    ]
    base = load_model(BASE)
    dev = torch.device("cpu")
    parts = {name: {k: [] for k in ("data", "data_no_elastic", "forward", "backward", "optimizer")}
             for name, *_ in configs}
    trainers = {}
    for name, geo, _, _ in configs:
        trainers[name] = Trainer(base, list(images), list(labels), names=train_ids, minutes=2, seed=0,
                                 val_fraction=0.15, **geo)
    plain = Augmentation(elastic=0.0)
    clock = time.process_time  # CPU seconds of this process: far less noisy than the wall on a busy machine
    for r in range(rounds + 1):  # round 0 warms up
        for name, _geo, precision, cl in configs:
            tr = trainers[name]
            model = tr.model
            if cl:
                model = model.to(memory_format=torch.channels_last)
            opt = AdamW(model.parameters(), lr=1e-4)
            t0 = clock()
            b = tr.sampler.batch(tr.batch_size)
            t1 = clock()
            aug, tr.sampler.augmentation = tr.sampler.augmentation, plain
            tr.sampler.batch(tr.batch_size)
            tr.sampler.augmentation = aug
            t2 = clock()
            x = torch.from_numpy(b.image)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            model.train()
            opt.zero_grad()
            with autocast(dev, precision):
                logits = model(x)
            loss = losses.combined_loss(logits, torch.from_numpy(b.classes), torch.from_numpy(b.weight),
                                        torch.from_numpy(b.mask))
            t3 = clock()
            loss.backward()
            t4 = clock()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            t5 = clock()
            if r:
                for k, v in zip(("data", "data_no_elastic", "forward", "backward", "optimizer"),
                                (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                    parts[name][k].append(v)
    # validation: the one the Trainer runs (strip of 15 % of both images, loss + object F1)
    tr = trainers[configs[0][0]]
    val = {}
    for precision in ("fp32", "bf16"):
        t0 = clock()
        tr._validate(tr.model, precision, float("nan"), time.monotonic())
        val[precision] = clock() - t0
    cores = os.cpu_count() or 2
    out = {"rounds": rounds, "clock": f"CPU seconds of the process / {cores} cores (the wall time when the "
           "machine is idle and both cores work for this process)",
           "validation_s": {k: round(v / cores, 2) for k, v in val.items()},
           "validation_windows": len(tr.val_windows), "configs": {}}
    ref = None
    for name, geo, *_ in configs:
        med = {k: float(np.median(v)) / cores for k, v in parts[name].items()}
        compute = med["forward"] + med["backward"] + med["optimizer"]
        step = med["data"] + compute  # the Prefetcher draws patches in a thread, but the cores are shared
        px = geo["patch_size"] ** 2 * geo["batch_size"]
        ref = ref or step
        out["configs"][name] = {
            **{f"{k}_s": round(v, 3) for k, v in med.items()},
            "step_s": round(step, 3),
            "steps_per_min": round(60 / step, 1),
            "kpx_per_s": round(px / step / 1e3, 1),
            "time_ratio_to_first": round(step / ref, 2),
        }
    print(json.dumps(out, indent=1))
    return out


def simulate_corrections(pred: np.ndarray, gt: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """A user's corrections of ``n`` errors of ``pred`` -> (corrected layer, objects fixed).

    Errors: true nuclei without a predicted match at IoU 0.5 (the predicted objects that overlap
    one and the nucleus itself are replaced by the true labels there), and predicted objects
    overlapping no nucleus (erased). Drawn at random with ``seed``.
    """
    both = (gt > 0) & (pred > 0)
    pairs, inter = np.unique(np.stack([gt[both], pred[both]]).astype(np.int64), axis=1, return_counts=True)
    area_g = np.bincount(gt.ravel().astype(np.int64))
    area_p = np.bincount(pred.ravel().astype(np.int64))
    iou = inter / (area_g[pairs[0]] + area_p[pairs[1]] - inter)
    matched_gt = {int(g) for g, v in zip(pairs[0], iou) if v > 0.5}
    gt_ids = [int(g) for g in np.unique(gt) if g and int(g) not in matched_gt]
    overlap_any = np.unique(pred[gt > 0])
    false_ids = [int(p) for p in np.unique(pred) if p and p not in overlap_any]
    errors = [("missed", g) for g in gt_ids] + [("false", p) for p in false_ids]
    rng = np.random.default_rng(seed)
    chosen = [errors[i] for i in rng.permutation(len(errors))[:n]]
    out = pred.astype(np.int32).copy()
    top = int(out.max())
    for kind, i in chosen:
        if kind == "false":
            out[pred == i] = 0
            continue
        area = gt == i
        touched = np.unique(pred[area])
        area |= np.isin(pred, touched[touched > 0])
        out[area] = np.where(gt[area] > 0, gt[area].astype(np.int32) + top, 0)
    return out, len(chosen)


def stage_experiment(kind: str, variant: str, where: str, minutes: float, n_fix: int, clock: str) -> dict:
    train_ids, dev_ids, held = split()
    score_ids = dev_ids if where == "dev" else held
    res = {"kind": kind, "variant": variant, "score_on": where, "score_ids": score_ids,
           "train_ids": train_ids, "minutes": minutes,
           "machine": f"{platform.machine()}, 2 shared cores (busy)",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    base = load_model(BASE)
    if kind == "two-images":
        images, labels = zip(*(read(i) for i in train_ids))
        tuned, info = run_variant(variant, list(images), list(labels), train_ids, minutes=minutes,
                                  clock=clock)
    else:
        # the first image (train images first, then the other 63x ids outside the dev and held-out
        # lists, in the drawn order) on which the base model makes at least n_fix errors
        for image_id in train_ids + split(rest=True)[3]:
            img, gt = read(image_id)
            pred = segment(base, img, device="cpu").labels
            corrected, fixed = simulate_corrections(pred, gt, n_fix)
            if fixed >= n_fix:
                break
        res["corrected_image"] = image_id
        untouched = VARIANTS[variant].get("untouched", "ignore")
        region = correction_region(pred, corrected, margin=VARIANTS[variant].get("margin"),
                                   untouched=untouched)
        res.update(objects_fixed=fixed, region=region.describe())
        tuned, info = run_variant(variant, [img], [corrected], [image_id], regions=[region.boxes],
                                  minutes=minutes, clock=clock)
    res["finetune"] = info
    res["before"] = before_score(base, score_ids)
    res["after"] = score(tuned, score_ids)
    res["gain_f1@0.5"] = round(res["after"]["f1@0.5"] - res["before"]["f1@0.5"], 4)
    print(json.dumps(res, indent=1))
    RESULTS.parent.mkdir(exist_ok=True)
    runs = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    runs.append(res)
    RESULTS.write_text(json.dumps(runs, indent=1))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["steps", "two-images", "corrections"])
    ap.add_argument("--variant", default="issue", choices=sorted(VARIANTS))
    ap.add_argument("--score", default="dev", choices=["dev", "held-out"])
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--objects", type=int, default=10, help="errors corrected (corrections)")
    ap.add_argument("--clock", default="cpu", choices=["cpu", "wall"],
                    help="the budget's clock: this process's CPU time / cores (default), or the wall clock")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (steps)")
    args = ap.parse_args()
    # One torch thread: on 2 shared cores, a second intra-op thread spin-waits for the first and
    # burns CPU time that a CPU-time budget would count as work.
    torch.set_num_threads(1)
    if args.stage == "steps":
        out = stage_steps(args.rounds)
        path = HERE / "results" / "finetune_steps.json"
        path.write_text(json.dumps(out, indent=1))
    else:
        stage_experiment(args.stage, args.variant, args.score, args.minutes, args.objects, args.clock)


if __name__ == "__main__":
    main()
