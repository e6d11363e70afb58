"""Which normalization survives a few saturated nuclei? (training images only)

    python benchmarks/norm_experiment.py [--per-set 40] [--scenario saturated|bright]

For training images of every set (held-out ids excluded), two of the largest nuclei are
set to the saturation value of the image's type (255, 65535), as an over-exposed mitotic
nucleus would be (``--scenario bright``: 4x their signal plus noise, below the maximum: bright
but not flat). For each recipe (low 1 %, high percentile P, with or without leaving out the pixels at the
image's maximum value, "-sat") it prints, pooled over
images: `keep`, the median over images of (median normalized intensity of the other nuclei
with the two saturated / without them), 1.0 = unaffected; `dim`, the 10th percentile over
all other nuclei of their median normalized intensity above the background with the
saturated pair (how visible the dim nuclei stay); `bg>1`, the share of images where the
background median exceeds 0.5 (a recipe that lifts the background into the nuclei's range).
Saves benchmarks/results/norm_experiment_<scenario>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

from napari_tiled_unet import normalization

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
SETS = {"dsb2018-fluo-train": "dsb2018", "kromp-sbsst265": "kromp_sbsst265",
        "aitslab-bioimaging1": "aitslab_bioimaging1", "bitdepth-nucseg": "bitdepth_nucseg"}
RECIPES = {"p99.8 (old)": {"high": 99.8}, "p99.5": {"high": 99.5}, "p99.0": {"high": 99.0},
           "p98.0": {"high": 98.0}, "p99.8 -sat": {"high": 99.8, "exclude_saturated": True},
           "p99.5 -sat": {"high": 99.5, "exclude_saturated": True},
           "p99.0 -sat": {"high": 99.0, "exclude_saturated": True}}
HIGHS = list(RECIPES)


def ids_of(folder: Path, held_file: Path) -> list[str]:
    held = {ln.strip() for ln in held_file.read_text().splitlines() if ln.strip() and not ln.startswith("#")}
    return sorted(p.stem for p in (folder / "images").glob("*.tif") if p.stem not in held)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-set", type=int, default=40)
    ap.add_argument("--scenario", choices=["saturated", "bright"], default="saturated")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    res = {}
    for folder, short in SETS.items():
        ids = ids_of(DATA / folder, HERE / "data" / f"{short}_val_ids.txt")
        ids = sorted(rng.choice(ids, size=min(args.per_set, len(ids)), replace=False))
        rows = {h: {"keep": [], "dim": [], "bg": []} for h in HIGHS}
        for i in ids:
            img = tifffile.imread(DATA / folder / "images" / f"{i}.tif")
            lab = tifffile.imread(DATA / folder / "labels" / f"{i}.tif")
            n = int(lab.max())
            if n < 4:
                continue
            areas = np.bincount(lab.ravel())
            big = np.argsort(areas[1:])[-2:] + 1
            sat = img.copy()
            top = np.iinfo(img.dtype).max
            if args.scenario == "saturated":
                sat[np.isin(lab, big)] = top
            else:  # bright but not flat: 4x the nucleus' signal, kept below the type's maximum
                inside = np.isin(lab, big)
                boosted = img[inside].astype(np.float64) * 4 + rng.normal(0, 0.01 * top, size=inside.sum())
                sat[inside] = np.clip(boosted, 0, 0.95 * top).astype(img.dtype)
            others = np.setdiff1d(np.arange(1, n + 1), big)
            others = others[areas[others] > 0]
            bgmask = lab == 0
            for h in HIGHS:
                med = {}
                for name, im in (("plain", img), ("sat", sat)):
                    recipe = {"kind": "percentile", "low": 1.0, **RECIPES[h]}
                    stats = normalization.compute_stats(im, recipe)
                    x = (im.astype(np.float32) - stats[0, 0]) * stats[0, 1]
                    med[name] = np.asarray(ndi.median(x, lab, others))
                    if name == "sat":
                        bg = float(np.median(x[bgmask])) if bgmask.any() else 0.0
                        rows[h]["dim"].extend((med[name] - bg).tolist())
                        rows[h]["bg"].append(bg)
                ok = med["plain"] > 0
                ratio = med["sat"][ok] / med["plain"][ok]
                rows[h]["keep"].append(float(np.median(ratio)) if ok.any() else 1.0)
        res[folder] = {str(h): {"keep": round(float(np.median(r["keep"])), 3),
                                "dim": round(float(np.percentile(r["dim"], 10)), 3),
                                "bg>0.5": round(float(np.mean(np.array(r["bg"]) > 0.5)), 3)}
                       for h, r in rows.items()}
        print(folder, len(ids), "images")
        for h, r in res[folder].items():
            print(f"  {h:<12}: keep {r['keep']:.3f}  dim {r['dim']:.3f}  bg>0.5 {r['bg>0.5']:.3f}")
    out = HERE / "results" / f"norm_experiment_{args.scenario}.json"
    out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
