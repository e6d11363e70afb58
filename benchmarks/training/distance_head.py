"""Experiment (issue 13): a fourth output that regresses each nucleus' normalised distance to its edge.

    # train: nuclei-v2 with one more output channel, the same mix and recipe as nuclei_v2.sh
    python benchmarks/training/distance_head.py train -v train [train options of the CLI ...]
    # score on the 40 tuning training images of the mix (never held-out ones)
    python benchmarks/training/distance_head.py score MODEL.safetensors [--cache DIR]
    # the picture of docs/models.md (merged nuclei, p(interior), distance output)
    python benchmarks/training/distance_head.py picture MODEL.safetensors

Most nuclei that `nuclei-v2` misses in dense tissue are touching ones merged into one object: the
interior class bridges them. Star-convex (StarDist, Schmidt et al. 2018) and flow (Cellpose,
Stringer et al. 2021) models split such pairs by shape: the network must place one peak per
nucleus. This is the smallest test of that idea on this network: the 1x1 output convolution gets a
fourth channel, trained (binary cross-entropy on its sigmoid, counted pixels only, weight 1 beside the
3-class loss) towards each interior component's Euclidean distance to its edge divided by the
component's largest distance, computed on every augmented patch from its class targets (the
boundary band between touching nuclei separates their interiors). Its three class channels are
trained as before. Seeds for the watershed then come from the distance channel (above a threshold,
or its peaks, or peaks that split the package's seeds) instead of from p(interior).

Result (session 11, docs/models.md "A fourth output"): no gain on the tuning images (0.8120 weighted
AP@0.5 at best against 0.8111 for the same run's class seeds and 0.8146 for `nuclei-v2`).

Nothing of the package is changed: `train` runs the package's own CLI with the loss and the output
convolution swapped in here. The trained file holds a 4-channel `outc`; load it with
:func:`load_distance_model`, not with `load_model`.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn

HERE = Path(__file__).resolve().parent
#: the latest distance logits of a training forward pass (the loss reads them)
_LAST: list[torch.Tensor | None] = [None]
#: weight of the distance term beside the 3-class loss
DISTANCE_WEIGHT = 1.0


class Heads(nn.Module):
    """The 1x1 output convolution with a fourth channel (the distance logit).

    In training mode it returns the three class logits and keeps the distance logits in
    ``_LAST``; in eval mode ``mode="classes"`` returns the class logits and ``mode="distance"``
    returns logits whose softmax puts sigmoid(distance) in channel 0, so the package's tiled
    ``predict`` gives the distance map unchanged as ``prob[0]``.
    """

    def __init__(self, outc: nn.Module) -> None:
        super().__init__()
        old = outc.conv
        self.conv = nn.Conv2d(old.in_channels, 4, kernel_size=1)
        with torch.no_grad():
            self.conv.weight[:3] = old.weight
            self.conv.bias[:3] = old.bias
            self.conv.weight[3:] = torch.randn_like(self.conv.weight[3:]) * 0.01
            self.conv.bias[3:] = 0.0
        self.mode = "classes"

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        z = self.conv(y)
        if self.training:
            _LAST[0] = z[:, 3]
            return z[:, :3]
        if self.mode == "distance":
            d = z[:, 3:4]
            return torch.cat([d, torch.zeros_like(d), torch.full_like(d, -60.0)], dim=1)
        return z[:, :3]


def _distance_unet():
    from napari_tiled_unet.model.unet import UNet

    class DistanceUNet(UNet):
        """The package's U-Net with :class:`Heads` (the trainer rebuilds its class from the config)."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.outc = Heads(self.outc)

    return DistanceUNet


def with_heads(bundle):
    """A copy of ``bundle`` whose network has :class:`Heads` as its output convolution."""
    bundle = copy.deepcopy(bundle)
    model = bundle.model
    distance_unet = _distance_unet()
    new = distance_unet(**model.config)
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("outc.")}
    new.load_state_dict(body, strict=False)
    new.outc = Heads(model.outc)
    new.eval()
    bundle.model = new
    return bundle


def distance_targets(classes: np.ndarray) -> np.ndarray:
    """(N, Y, X) class indices -> float32 (N, Y, X): each interior component's distance to its
    edge over its largest distance (0 off the interiors)."""
    out = np.zeros(classes.shape, np.float32)
    for k, cls in enumerate(classes):
        inner = cls == 1
        lab, n = ndi.label(inner)
        if not n:
            continue
        d = ndi.distance_transform_edt(inner)
        top = np.asarray(ndi.maximum(d, lab, np.arange(1, n + 1)), np.float32)
        out[k][inner] = d[inner] / top[lab[inner] - 1]
    return out


def install_training() -> None:
    """Swap the output convolution into every base the CLI loads and add the distance term."""
    from napari_tiled_unet.training import losses, mixture

    load = mixture.load_model
    mixture.load_model = lambda base: with_heads(load(base))
    class_loss = losses.combined_loss

    def combined(logits, classes, weight, mask, dice_weight=1.0):
        loss = class_loss(logits, classes, weight, mask, dice_weight)
        d = _LAST[0]
        if d is None or d.shape != classes.shape:
            return loss
        target = torch.from_numpy(distance_targets(classes.cpu().numpy())).to(d.device)
        m = mask.bool()
        bce = nn.functional.binary_cross_entropy_with_logits(d.float(), target, reduction="none")
        term = torch.where(m, bce, torch.zeros_like(bce)).sum() / m.sum().clamp_min(1)
        _LAST[0] = None
        return loss + DISTANCE_WEIGHT * term

    losses.combined_loss = combined


def load_distance_model(path: str | Path, base: str = "nuclei-v2"):
    """A trained 4-channel file as a bundle of ``base`` (its metadata) with :class:`Heads`."""
    from safetensors.torch import load_file

    from napari_tiled_unet.model.bundle import load_model

    bundle = with_heads(load_model(base))
    bundle.model.load_state_dict(load_file(str(path)))
    bundle.model.eval()
    return bundle


def distance_instances(prob: np.ndarray, dist: np.ndarray, foreground: float, seed: float, min_size: int,
                       fraction: float, flood: str, h: float = 0.0, sigma: float = 0.0,
                       split: float = 0.0) -> np.ndarray:
    """Objects from the class probabilities with seeds from the distance map: where it exceeds
    ``seed``, or (``h`` > 0) its regional maxima of height ``h`` above ``seed`` (one seed per
    peak however far the peaks lie apart, none for a dip shallower than ``h``), after a Gaussian
    of ``sigma`` px; ``flood`` "classes" floods p(boundary) - p(interior) as the package does,
    "distance" floods down the distance map. With ``split`` > 0 the seeds are the package's
    (p(interior) > ``split``) and only a seed that holds two or more such peaks is replaced by
    them."""
    from napari_tiled_unet.enclosed import absorb_enclosed
    from napari_tiled_unet.postprocess import _fill_holes, _foreground, _levels, _numbering, _objects

    fg = _foreground(prob[0], foreground)
    if sigma:
        dist = ndi.gaussian_filter(dist.astype(np.float32), sigma)
    if h:
        from skimage.morphology import h_maxima

        peaks = h_maxima(np.where(fg, dist, 0).astype(np.float32), h).astype(bool) & (dist > seed)
        if split:
            markers, n_seeds = split_seeds(ndi.label((prob[1] > split) & fg)[0], peaks)
        else:
            markers, n_seeds = ndi.label(peaks)
    else:
        markers, n_seeds = ndi.label((dist > seed) & fg)
    components, n_components = ndi.label(fg)
    levels = _levels(prob[1], prob[2]) if flood == "classes" else _levels(dist, np.zeros_like(dist))
    labels = _objects(levels, markers, components, n_seeds, (0, 0), prob.shape[1:])
    labels = absorb_enclosed(_fill_holes(labels))
    sizes = np.bincount(labels.ravel(), minlength=n_seeds + n_components + 1)
    return _numbering(sizes, min_size, fraction)[labels]


def split_seeds(seeds: np.ndarray, peaks: np.ndarray) -> tuple[np.ndarray, int]:
    """``seeds`` (labelled) with every seed that holds two or more connected regions of ``peaks``
    replaced by those regions -> (markers numbered 1..n, n)."""
    peak_ids, n_peaks = ndi.label(peaks & (seeds > 0))
    if not n_peaks:
        return seeds, int(seeds.max())
    owner = np.asarray(ndi.maximum(seeds, peak_ids, np.arange(1, n_peaks + 1)), np.int64)
    several = np.bincount(owner, minlength=int(seeds.max()) + 1) >= 2
    several[0] = False
    kept = np.where(several[seeds], 0, seeds)
    from_peaks = several[owner]
    lut = np.zeros(n_peaks + 1, np.int64)
    lut[1:][from_peaks] = kept.max() + 1 + np.arange(int(from_peaks.sum()))
    markers = np.where(peak_ids > 0, lut[peak_ids], 0)
    markers = np.where(markers > 0, markers, kept)
    _, numbered = np.unique(markers, return_inverse=True)
    numbered = numbered.reshape(markers.shape)
    return numbered, int(numbered.max())


def score(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(HERE.parent))
    from tune_postprocess import pooled_by_set, training_probabilities

    from napari_tiled_unet.metrics import match_instances
    from napari_tiled_unet.postprocess import instances_from_probabilities

    bundle = load_distance_model(args.model)
    mix = HERE / "nuclei_v2_sets.txt"
    bundle.model.outc.mode = "classes"
    cached, weights, _ = training_probabilities(bundle, mix, args.n, cache=args.cache)
    bundle.model.outc.mode = "distance"
    dists, _, _ = training_probabilities(bundle, mix, args.n,
                                        cache=args.cache / "distance" if args.cache else None)
    pp = bundle.postprocess

    def report(label, make):
        ms = [(name, match_instances(gt, make(p, d[0]), 0.5))
              for (name, p, gt), (_, d, _) in zip(cached, dists)]
        w, by_set = pooled_by_set(ms, weights)
        print(f"{label}: weighted AP@0.5 {w:.4f} "
              + " ".join(f"{n}={m.ap:.3f} ({m.tp}/{m.fp}/{m.fn})" for n, m in by_set.items()), flush=True)
        return w

    report(f"class seeds {pp['foreground_threshold']}/{pp['seed_threshold']}/{pp['min_size']}",
           lambda p, d: instances_from_probabilities(p, pp["foreground_threshold"], pp["seed_threshold"],
                                                     pp["min_size"], True, pp["min_size_fraction"]))
    grid = itertools.product(args.flood, args.foreground, args.seed, args.h, args.sigma, args.split)
    for flood, fg, s, h, sigma, split in grid:
        report(f"distance seeds fg {fg} seed {s} h {h} sigma {sigma} split {split} flood {flood}",
               lambda p, d, fg=fg, s=s, flood=flood, h=h, sigma=sigma, split=split: distance_instances(
                   p, d, fg, s, pp["min_size"], pp["min_size_fraction"], flood, h, sigma, split))


def merged(labels: np.ndarray, gt: np.ndarray) -> list[tuple[int, int, int]]:
    """(annotated nuclei held, centre y, centre x) of each object of ``labels`` that holds more
    than half of each of two or more annotated nuclei."""
    sizes = np.bincount(gt.ravel())
    out = []
    for o in np.unique(labels)[1:]:
        inside = labels == o
        ids, counts = np.unique(gt[inside], return_counts=True)
        n = sum(1 for g, c in zip(ids, counts) if g and c > 0.5 * sizes[g])
        if n >= 2:
            ys, xs = np.nonzero(inside)
            out.append((n, int(ys.mean()), int(xs.mean())))
    return out


def picture(args: argparse.Namespace) -> None:
    """Crops of Kromp's tuning images where one object (class seeds) holds the most annotated nuclei:
    image with annotations, p(interior), distance output, objects; written to ``args.out``."""
    sys.path.insert(0, str(HERE.parent))
    import tifffile
    from PIL import Image, ImageDraw
    from skimage.segmentation import find_boundaries
    from tune_postprocess import training_ids

    from napari_tiled_unet.inference import predict
    from napari_tiled_unet.postprocess import instances_from_probabilities

    bundle = load_distance_model(args.model)
    pp = bundle.postprocess
    picks = []
    for folder, i in training_ids(HERE / "nuclei_v2_sets.txt", 40)[0]:
        if folder.name != "kromp-sbsst265":
            continue
        img = tifffile.imread(folder / "images" / f"{i}.tif")
        gt = tifffile.imread(folder / "labels" / f"{i}.tif")
        bundle.model.outc.mode = "classes"
        prob = predict(bundle, img, device="cpu", precision="bf16")
        labels = instances_from_probabilities(prob, pp["foreground_threshold"], pp["seed_threshold"],
                                              pp["min_size"], True, pp["min_size_fraction"])
        found = merged(labels, gt)
        if found:
            picks.append((max(found), i, img, gt, prob, labels))
    picks = sorted(picks, key=lambda t: -t[0][0])[:3]
    r, zoom = 48, 3
    rows = []
    for (n, cy, cx), i, img, gt, prob, labels in picks:
        bundle.model.outc.mode = "distance"
        dist = predict(bundle, img, device="cpu", precision="bf16")[0]
        y0, x0 = max(0, cy - r), max(0, cx - r)
        sl = (slice(y0, y0 + 2 * r), slice(x0, x0 + 2 * r))
        lo, hi = np.percentile(img[sl], (1, 99.5))
        gray = np.clip((img[sl].astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)
        annotated, objects = np.dstack([gray] * 3), np.dstack([gray] * 3)
        annotated[find_boundaries(gt[sl])] = (0, 1, 0)
        objects[find_boundaries(labels[sl])] = (1, 0, 1)
        panels = [annotated, np.dstack([prob[1][sl]] * 3), np.dstack([dist[sl]] * 3), objects]
        panels = [np.kron(a, np.ones((zoom, zoom, 1))) for a in panels]
        gap = np.ones((panels[0].shape[0], 6, 3))
        rows.append((np.concatenate([panels[0], gap, panels[1], gap, panels[2], gap, panels[3]], 1),
                     f"kromp-sbsst265 {i}: one object holds {n} annotated nuclei"))
    width = rows[0][0].shape[1]
    stack = [np.ones((22, width, 3))]
    for arr, _ in rows:
        stack += [np.ones((18, width, 3)), arr]
    canvas = Image.fromarray((np.concatenate(stack, 0) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    panel = (width - 18) // 4
    titles = ["image, annotated (green)", "p(interior)", "distance output", "objects (magenta)"]
    for k, title in enumerate(titles):
        draw.text((k * (panel + 6) + 4, 4), title, fill=(0, 0, 0))
    y = 22
    for arr, caption in rows:
        draw.text((4, y + 3), caption, fill=(0, 0, 0))
        y += 18 + arr.shape[0]
    canvas.save(args.out, optimize=True)
    print(f"wrote {args.out}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "train":
        from napari_tiled_unet.cli import main as cli_main

        install_training()
        sys.exit(cli_main(sys.argv[2:]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["score", "picture"])
    ap.add_argument("model")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--foreground", type=float, nargs="+", default=[0.85])
    ap.add_argument("--seed", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7])
    ap.add_argument("--flood", nargs="+", default=["classes", "distance"])
    ap.add_argument("--h", type=float, nargs="+", default=[0.0], help="peak heights (0: thresholds)")
    ap.add_argument("--split", type=float, nargs="+", default=[0.0],
                    help="class seed threshold whose seeds the peaks split (0: seeds from the peaks only)")
    ap.add_argument("--sigma", type=float, nargs="+", default=[0.0], help="Gaussian before seeding (px)")
    ap.add_argument("--out", type=Path, help="picture: where to write it",
                    default=HERE.parents[1] / "docs" / "images" / "distance_head_merges.png")
    args = ap.parse_args()
    (score if args.command == "score" else picture)(args)


if __name__ == "__main__":
    main()
