"""Inference benchmark: tiled exact/blend vs the whole-image pass and MONAI, precision, memory.

Everything that is compared is measured side by side in one run (the machine is shared and
noisy); ratios are the figures to read, absolute times hold for this machine only.

    python benchmarks/bench_inference.py                # all parts, writes benchmarks/results/
    python benchmarks/bench_inference.py --parts a,c    # some parts

Parts (see docs/benchmarks.md):
  a  tiled exact vs one whole-image pass (default window, 512, 1024): time ratio, max |diff|
  b  MONAI sliding_window_inference vs ours (blend, exact 512, default)
  c  fp32 vs bf16 on this CPU: throughput ratio and agreement of the label maps
  d  peak RSS for 2048^2, 8192^2, 16384^2 zarr inputs (zarr output), small model
  e  achieved FLOP/s of the pipeline / FLOP/s of one large 3x3 convolution
  f  a large image on disk (zarr in, zarr out), built-in model: time in the network vs in
     the blockwise post-processing, fp32 and bf16
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_tiled_unet.inference import predict, whole_image_probabilities
from napari_tiled_unet.model import ModelBundle, UNet, load_model, make_metadata
from napari_tiled_unet.tiling import plan_tiles

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def seed_unet(base: int = 64, depth: int = 4) -> ModelBundle:
    """The seed-sized U-Net with random weights and trained-like BatchNorm statistics."""
    torch.manual_seed(0)
    net = UNet(1, 3, base_channels=base, depth=depth)
    net.train()
    with torch.no_grad():
        net(torch.randn(2, 1, 64, 64))
    net.eval()
    return ModelBundle(net, make_metadata(net))


def test_image(size: int, seed: int = 0) -> np.ndarray:
    """Blobs on a noisy background: nucleus-like, uint8."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    img = np.zeros((size, size), np.float32)
    pts = rng.integers(0, size, (size * size // 2000, 2))
    img[pts[:, 0], pts[:, 1]] = 1.0
    img = ndi.gaussian_filter(img, 6) * 400 + rng.normal(0, 0.05, img.shape)
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def timed(fn, repeats: int = 1):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def part_a(bundle, img, ref_time, ref):
    rows = []
    for label, window in (("default (auto)", None), ("512", 512), ("1024", 1024)):
        t, out = timed(lambda w=window: predict(bundle, img, window=w, device="cpu"))
        plan = plan_tiles(img.shape, 4, window=window) if window else None
        rows.append({
            "setting": f"exact, window {label}",
            "time_s": t,
            "ratio_vs_whole": t / ref_time,
            "max_abs_diff": float(np.abs(out - ref).max()),
            "windows": len(plan) if plan else None,
        })
    return rows


def part_b(bundle, img, ref_time, ref):
    from monai.inferers import sliding_window_inference

    from napari_tiled_unet import normalization

    stats = normalization.compute_stats(img, bundle.normalization)
    x = torch.from_numpy(normalization.apply(img[None], stats))[None]
    net = bundle.model.eval()

    def monai_run():
        with torch.inference_mode():
            return sliding_window_inference(
                x, roi_size=(512, 512), sw_batch_size=1, overlap=0.25, mode="gaussian",
                predictor=lambda t: torch.softmax(net(t), 1),
            )[0].numpy()

    rows = []
    for label, fn in (
        ("MONAI sliding_window_inference (roi 512, overlap 0.25, gaussian)", monai_run),
        ("ours, blend (window 512, overlap 0.25, gaussian)",
         lambda: predict(bundle, img, mode="blend", window=512, overlap=0.25, device="cpu")),
        ("ours, exact (window 512)", lambda: predict(bundle, img, window=512, device="cpu")),
        ("ours, exact (default window)", lambda: predict(bundle, img, device="cpu")),
    ):
        net.to(memory_format=torch.contiguous_format)
        t, out = timed(fn)
        rows.append({"setting": label, "time_s": t, "ratio_vs_whole": t / ref_time,
                     "max_abs_diff": float(np.abs(out - ref).max())})
    return rows


def sample_mosaic(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The shipped DSB2018 sample (and its labels) tiled to size x size: real nuclei."""
    from napari_tiled_unet._sample_data import nuclei_image, nuclei_labels

    img, lab = nuclei_image(), nuclei_labels()
    reps = (-(-size // img.shape[0]), -(-size // img.shape[1]))
    return np.tile(img, reps)[:size, :size], np.tile(lab, reps)[:size, :size]


def part_c(bundle, size: int = 2048):
    """fp32 vs bf16 (and the mirror test, tta) with the built-in (trained) model on real
    nuclei: throughput and agreement."""
    from napari_tiled_unet.metrics import match_instances
    from napari_tiled_unet.segmentation import segment

    bundle = load_model()
    img, _ = sample_mosaic(size)
    mp = size * size / 1e6
    segment(bundle, img[:512, :512], device="cpu", precision="bf16")  # warm-up (oneDNN kernels)
    t32, s32 = timed(lambda: segment(bundle, img, precision="fp32", device="cpu"))
    t16, s16 = timed(lambda: segment(bundle, img, precision="bf16", device="cpu"))
    ttta, stta = timed(lambda: segment(bundle, img, precision="fp32", device="cpu", tta=True))
    p32, p16 = np.asarray(s32.probabilities), np.asarray(s16.probabilities)
    m = match_instances(np.asarray(s32.labels), np.asarray(s16.labels), 0.5)
    return [{
        "model": bundle.name, "image": f"{size}x{size} mosaic of the DSB2018 sample",
        "fp32_s": t32, "bf16_s": t16, "fp32_megapixels_per_s": mp / t32, "bf16_megapixels_per_s": mp / t16,
        "bf16_speedup": t32 / t16,
        "max_abs_prob_diff": float(np.abs(p32 - p16).max()),
        "pixels_same_class": float((p32.argmax(0) == p16.argmax(0)).mean()),
        "objects_fp32": s32.n_objects, "objects_bf16": s16.n_objects, "f1_0.5_bf16_vs_fp32": m.f1,
        "tta_fp32_s": ttta, "tta_megapixels_per_s": mp / ttta, "tta_slowdown": ttta / t32,
        "objects_tta": stta.n_objects,
    }]


RSS_SCRIPT = r"""
import resource, sys, time, numpy as np, torch, zarr
from napari_tiled_unet.inference import predict
from napari_tiled_unet.model import UNet
size, folder = int(sys.argv[1]), sys.argv[2]
src = zarr.open_array(folder + "/in.zarr", mode="w", shape=(size, size), chunks=(1024, 1024), dtype="u1")
tile = (np.random.default_rng(0).integers(0, 256, (1024, 1024))).astype(np.uint8)
for y in range(0, size, 1024):
    for x in range(0, size, 1024):
        src[y:y + 1024, x:x + 1024] = tile
torch.manual_seed(0)
net = UNet(1, 3, base_channels=8, depth=3).eval()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
out = predict(net, src, out=folder + "/out.zarr", device="cpu")
print(before * 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, time.perf_counter() - t)
"""


def part_f(size: int = 4096):
    """Where the time goes for a large image kept on disk: network vs post-processing."""
    import tempfile

    import zarr

    from napari_tiled_unet.segmentation import segment_iter

    bundle = load_model()
    img, _ = sample_mosaic(size)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        src = zarr.open_array(f"{d}/in.zarr", mode="w", shape=img.shape, chunks=(1024, 1024), dtype=img.dtype)
        src[:] = img
        for precision in ("fp32", "bf16"):
            gen = segment_iter(bundle, src, device="cpu", precision=precision,
                               probabilities_out=f"{d}/p-{precision}.zarr",
                               labels_out=f"{d}/l-{precision}.zarr")
            t0, t_post = time.perf_counter(), None
            try:
                while True:
                    ev = next(gen)
                    if t_post is None and ev.stage == "postprocess":
                        t_post = time.perf_counter()
            except StopIteration as stop:
                result = stop.value
            end = time.perf_counter()
            rows.append({"precision": precision, "image": f"{size}x{size} zarr, chunks 1024",
                         "network_s": t_post - t0, "postprocess_s": end - t_post,
                         "postprocess_share": (end - t_post) / (end - t0), "objects": result.n_objects})
    return rows


def part_d(sizes=(2048, 8192, 16384)):
    import tempfile

    rows = []
    for size in sizes:
        with tempfile.TemporaryDirectory() as d:
            res = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(size), d],
                                 capture_output=True, text=True, check=True)
        before, peak, secs = res.stdout.split()
        rows.append({"size": size, "peak_rss_mb": int(peak) / 2**20,
                     "rss_before_predict_mb": int(before) / 2**20, "time_s": float(secs)})
    for r in rows:
        r["ratio_vs_2048"] = r["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    return rows


def unet_flops(net: torch.nn.Module, h: int, w: int) -> float:
    """Floating point operations (2 per multiply-add) of one forward pass over (1, C, h, w)."""
    total = 0.0

    def hook(mod, inp, out):
        nonlocal total
        k = mod.kernel_size[0] * mod.kernel_size[1]
        cin = mod.in_channels // mod.groups
        if isinstance(mod, torch.nn.ConvTranspose2d):
            total += 2.0 * inp[0].numel() / inp[0].shape[0] * mod.out_channels * k
        else:
            total += 2.0 * out.numel() / out.shape[0] * cin * k

    hooks = [m.register_forward_hook(hook) for m in net.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    with torch.inference_mode():
        net(torch.zeros(1, net.n_channels, h, w))
    for hk in hooks:
        hk.remove()
    return total


def part_e(bundle, img, default_time):
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).eval()
    x = torch.randn(1, 64, 1024, 1024).contiguous(memory_format=torch.channels_last)
    conv = conv.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        conv(x)
        t, _ = timed(lambda: conv(x), repeats=3)
    conv_flops = 2.0 * 64 * 64 * 9 * 1024 * 1024 / t
    plan = plan_tiles(img.shape, 4, max_pixels=2048 * 2048)
    per_px = unet_flops(bundle.model, 256, 256) / (256 * 256)
    useful = per_px * img.shape[0] * img.shape[1]
    computed = per_px * plan.computed_pixels
    return [{
        "conv3x3_64ch_gflops": conv_flops / 1e9,
        "pipeline_useful_gflops": useful / default_time / 1e9,
        "pipeline_computed_gflops": computed / default_time / 1e9,
        "efficiency_useful": useful / default_time / conv_flops,
        "efficiency_computed": computed / default_time / conv_flops,
        "unet_gflop_per_megapixel": per_px * 1e6 / 1e9,
    }]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="a,b,c,d,e,f")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--base", type=int, default=64)
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    RESULTS.mkdir(exist_ok=True)
    bundle = seed_unet(args.base)
    img = test_image(args.size)
    report = {"machine": machine(), "image": f"{args.size}x{args.size} uint8", "model": bundle.model.config}
    print(report["machine"])
    if parts & {"a", "b", "e"}:
        ref_time, ref = timed(lambda: whole_image_probabilities(bundle, img))
        report["whole_image_s"] = ref_time
        net = bundle.model
        net.to(memory_format=torch.channels_last)
        cl_time, _ = timed(lambda: whole_image_probabilities(bundle, img, channels_last=True))
        net.to(memory_format=torch.contiguous_format)
        report["whole_image_channels_last_s"] = cl_time
        print(f"whole-image pass: {ref_time:.1f} s (channels_last: {cl_time:.1f} s)")
    if "a" in parts:
        report["a"] = part_a(bundle, img, ref_time, ref)
        for row in report["a"]:  # against a whole-image pass in the same memory layout
            row["ratio_vs_whole_channels_last"] = row["time_s"] / cl_time
        print(json.dumps(report["a"], indent=1))
    if "b" in parts:
        report["b"] = part_b(bundle, img, ref_time, ref)
        print(json.dumps(report["b"], indent=1))
    if "c" in parts:
        report["c"] = part_c(bundle, args.size)
        print(json.dumps(report["c"], indent=1))
    if "e" in parts:
        default = next((r["time_s"] for r in report.get("a", []) if "default" in r["setting"]), None)
        if default is None:
            default, _ = timed(lambda: predict(bundle, img, device="cpu"))
        report["e"] = part_e(bundle, img, default)
        print(json.dumps(report["e"], indent=1))
    if "f" in parts:
        report["f"] = part_f()
        print(json.dumps(report["f"], indent=1))
    if "d" in parts:
        report["d"] = part_d()
        print(json.dumps(report["d"], indent=1))
    out = RESULTS / "inference.json"
    old = json.loads(out.read_text()) if out.exists() else {}
    old.update(report)
    out.write_text(json.dumps(old, indent=1))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
