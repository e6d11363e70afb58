"""The ``napari-tiled-unet`` command line: thin over the same engine as the widgets.

Each subcommand is an ``_add_<name>(subparsers)`` that registers it and a ``_cmd_<name>(args)``
that runs it and returns the exit status. Messages for the user go to stderr as one
sentence; a failure exits non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class CLIError(Exception):
    """A failure to report to the user as one sentence, with exit status 1."""


# -- info --------------------------------------------------------------------------------


#: in the short form of ``info``: items shown of a long list, characters of a long value
INFO_LIST_ITEMS = 5
INFO_TEXT_CHARS = 200


def _format_value(value: Any, indent: int = 2, full: bool = True) -> str:
    if isinstance(value, dict):
        if not value:
            return "-"
        if not full and indent > 2:
            return _short(_inline(value))
        pad = " " * indent
        return "\n" + "\n".join(f"{pad}{k}: {_format_value(v, indent + 2, full)}" for k, v in value.items())
    if isinstance(value, list):
        if not value:
            return "-"
        if not full and len(value) > INFO_LIST_ITEMS:
            shown = ", ".join(_short(v) for v in value[:INFO_LIST_ITEMS])
            return f"{shown}, … ({len(value)} items; --full shows all)"
        return ", ".join(str(v) if full else _short(v) for v in value)
    text = "-" if value is None or value == "" else str(value)
    return text if full else _short(text)


def _inline(mapping: dict) -> str:
    """A nested mapping on one line, its own lists and mappings only counted."""
    parts = []
    for k, v in mapping.items():
        if isinstance(v, dict):
            parts.append(f"{k} ({len(v)} fields)")
        elif isinstance(v, list):
            parts.append(f"{k} ({len(v)} items)")
        elif isinstance(v, float):
            parts.append(f"{k} {v:.4g}")
        else:
            text = str(v)
            parts.append(f"{k} {text if len(text) <= 24 else text[:12] + '…'}")
    return ", ".join(parts)


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= INFO_TEXT_CHARS else text[:INFO_TEXT_CHARS] + f"… ({len(text)} characters)"


def describe_bundle(bundle, full: bool = True) -> str:
    """A readable, multi-line description of a :class:`ModelBundle`'s metadata; with
    ``full=False`` long lists and values are shortened (what ``info`` prints by default)."""
    meta = bundle.metadata
    lines = []
    if "imported_from" in meta:
        src = meta["imported_from"]
        if src["format"] == "bioimage.io model package":
            lines.append(f"bioimage.io package: {src['file']}, converted on the fly "
                         "(none of its code was run).")
        else:
            lines.append(f"Foreign checkpoint: {src['file']} ({src['format']}), converted on the fly.")
            lines.append("Inferred from its weights:")
    n_params = sum(p.numel() for p in bundle.model.parameters())
    arch = meta["architecture"]
    fields = [
        ("name", meta.get("name")),
        ("description", meta.get("description")),
        ("format version", meta.get("format_version")),
        ("architecture", f"{arch['name']} ({n_params:,} parameters)"),
        ("arguments", arch["args"]),
        ("task", meta.get("task")),
        ("classes", meta.get("class_names")),
        ("output activation", meta.get("output_activation")),
        ("input channels", meta.get("input_channels")),
        ("normalization", meta.get("normalization")),
        ("pixel size (um)", meta.get("pixel_size_um")),
        ("post-processing", meta.get("postprocess")),
        ("training", meta.get("training")),
        ("package version", meta.get("package_version")),
        ("created", meta.get("created")),
    ]
    if "imported_from" in meta and meta["imported_from"].get("mask_values") is not None:
        fields.append(("mask values", meta["imported_from"]["mask_values"]))
    lines += [f"{k}: {_format_value(v, full=full)}" for k, v in fields]
    return "\n".join(lines)


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="show what a model file contains")
    p.add_argument("model", help="a .safetensors bundle, a PyTorch-UNet .pth, or a built-in model name")
    p.add_argument("--json", action="store_true", help="print the metadata as JSON (everything)")
    p.add_argument("--full", action="store_true", help="show long lists (e.g. training image ids) in full")


def _cmd_info(args) -> int:
    from .model.bundle import load_model

    bundle = load_model(args.model)
    if args.json:
        print(json.dumps(bundle.metadata, indent=2, sort_keys=True))
    else:
        text = describe_bundle(bundle, full=args.full)
        print(text)
        if not args.full and text != describe_bundle(bundle, full=True):
            print("(long entries shortened: --full shows everything, --json all of it as JSON)")
    return 0


# -- export-bioimageio -------------------------------------------------------------------


def _add_export_bioimageio(sub) -> None:
    p = sub.add_parser(
        "export-bioimageio",
        help="write a model as a bioimage.io model package (zip)",
        description="Write a model as a bioimage.io model package (format 0.5): weights, TorchScript, "
                    "test tensors, cover, documentation from its training record. Other bioimage.io tools "
                    "(deepImageJ, ilastik, bioimageio.core) can run it; napari-tiled-unet opens it again.",
    )
    p.add_argument("model", help="a .safetensors bundle, a PyTorch-UNet .pth, or a built-in model name")
    p.add_argument("-o", "--output", required=True, help="the package to write (.zip)")
    p.add_argument("--author", action="append", default=None, help="an author's name (repeat for several)")
    p.add_argument("--license", default="BSD-3-Clause",
                   help="SPDX license of the weights (default BSD-3-Clause)")
    p.add_argument("--test-image", default=None,
                   help="image for the test tensors and the cover (default: the shipped nuclei sample)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing package")
    p.add_argument("--validate", action="store_true",
                   help="check the package with bioimageio.spec "
                        "(pip install 'napari-tiled-unet[bioimageio]')")


def _cmd_export_bioimageio(args) -> int:
    from .bioimageio import export_bioimageio, validate

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise CLIError(f"{out} already exists; use --overwrite to replace it or choose another name.")
    test_image = None
    if args.test_image:
        from .io import read_image

        test_image = np.asarray(read_image(args.test_image))
    written = export_bioimageio(args.model, out, authors=args.author, license=args.license,
                                test_image=test_image)
    print(f"Wrote {written} ({written.stat().st_size / 1e6:.1f} MB).")
    if args.validate:
        try:
            summary = validate(written)
        except ImportError:
            raise CLIError("--validate needs bioimageio.spec: pip install 'napari-tiled-unet[bioimageio]'.") \
                from None
        print(f"bioimageio.spec validation: {summary.status}")
        if summary.status == "failed":
            return 1
    return 0


# -- segment -----------------------------------------------------------------------------


def _add_segment(sub) -> None:
    p = sub.add_parser(
        "segment",
        help="segment images (files, folders, globs) into label maps",
        description="Segment images with a U-Net, tile by tile; one label file per image.",
    )
    p.add_argument("inputs", nargs="+", help="image files (.tif, .png, .zarr), folders or glob patterns")
    p.add_argument("-o", "--output", required=True, help="folder for the label maps")
    p.add_argument("-m", "--model", default=None,
                   help="model file or built-in name: nuclei-v2 (the default) or nuclei-dsb2018")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto (default): bf16 on CPUs that compute it in hardware and on CUDA (fp16 where "
                        "CUDA lacks bf16), fp32 elsewhere; or fp32, bf16, fp16")
    p.add_argument("--tile-size", type=int, default=None,
                   help="window size in pixels (default: automatic; for zarr outputs and on a dask cluster "
                        "the windows keep whole output chunks and are at most this size)")
    p.add_argument("--mode", default="exact", choices=["exact", "blend"],
                   help="tiling mode (blend: not on a dask cluster)")
    p.add_argument("--batch-size", type=int, default=None, help="windows per batch (default: automatic)")
    p.add_argument("--tta", action="store_true",
                   help="average over the image's mirror images (4x slower, a little more accurate)")
    p.add_argument("--channel", default=None,
                   help="the channel that holds the nuclei (0, 1, ...), or 'luminance' for RGB; default: "
                        "the luminance of RGB(A) images, all channels when the model takes them")
    p.add_argument("--axes", default=None,
                   help="the images' axes, e.g. YXC, CYX, ZYX (default: guessed; (N, Y, X) with N <= 4 is "
                        "read as N planes, with a warning)")
    p.add_argument("--foreground-threshold", type=float, default=None)
    p.add_argument("--seed-threshold", type=float, default=None)
    p.add_argument("--min-size", type=int, default=None, help="smallest object kept, in pixels")
    p.add_argument("--diameter", default=None, metavar="PX|auto|none",
                   help="the objects' diameter in pixels, or 'auto' (estimated from a first pass; an image "
                        "whose objects lie in the sizes the model was trained on stays at its own scale): "
                        "each image is rescaled to the model's object size; labels keep the image's size. "
                        "'none': every image at its own scale. Default: auto for a model that records the "
                        "range of sizes it was trained on (nuclei-v2), as in the Segment widget, on one "
                        "machine (not with --workers/--scheduler), else none")
    p.add_argument("--format", default="auto", choices=["auto", "tif", "zarr"],
                   help="output format (auto: zarr above 8192x8192 pixels or for zarr inputs)")
    p.add_argument("--overlay", action="store_true", help="also write a PNG of the outlines on the image")
    p.add_argument("--measure", action="store_true",
                   help="also write <name>_objects.csv beside each label file: one row per object "
                        "(area, centroid, intensity, shape; instance models)")
    p.add_argument("--ome-labels", nargs="?", const="", default=None, metavar="NAME",
                   help="for OME-Zarr inputs: also write the labels into the image as an OME-NGFF label "
                        "image labels/NAME with a multiscale pyramid (default NAME: the model's name)")
    p.add_argument("--probabilities", action="store_true",
                   help="also write one probability map per class (float32, <image>_prob_<class>.tif|zarr)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--workers", type=int, default=None,
                   help="run on a local dask cluster of this many worker processes")
    p.add_argument("--scheduler", default=None, help="address of an existing dask.distributed scheduler")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _image_stem(src: Path) -> str:
    return src.name[: -len(".ome.zarr")] if src.name.endswith(".ome.zarr") else src.stem


def _output_path(src: Path, out_dir: Path, fmt: str, plane: tuple[int, int] | None = None) -> Path:
    """Where the labels of ``src`` go; ``plane`` is its (Y, X) size (auto format: zarr when large)."""
    from .io import ZARR_THRESHOLD_PIXELS, is_zarr

    stem = _image_stem(src)
    if fmt == "auto":
        big = plane is not None and plane[0] * plane[1] > ZARR_THRESHOLD_PIXELS
        fmt = "zarr" if is_zarr(src) or big else "tif"
    return out_dir / f"{stem}_labels.{'zarr' if fmt == 'zarr' else 'tif'}"


def _cmd_segment(args) -> int:
    import time

    from . import settings
    from .io import expand_inputs
    from .model.bundle import load_model
    from .runtime import Runtime
    from .segmentation import postprocess_params
    from .tiling import TileSettings

    out_dir = Path(args.output)
    tiles = TileSettings(mode=args.mode, window=args.tile_size, batch_size=args.batch_size)
    runtime = Runtime(device=args.device, precision=args.precision)
    settings.workers(args.workers)
    overrides = settings.postprocess({"foreground_threshold": args.foreground_threshold,
                                      "seed_threshold": args.seed_threshold, "min_size": args.min_size})
    paths = _inputs_not_outputs(expand_inputs(args.inputs), out_dir)
    if not args.overwrite:
        existing = [p for src in paths for fmt in ("tif", "zarr")
                    if (p := _output_path(src, out_dir, fmt)).exists()
                    and (args.format in ("auto", fmt))]
        if args.probabilities:
            existing += [p for src in paths for p in out_dir.glob(f"{_image_stem(src)}_prob_*")]
        if existing:
            raise CLIError(
                f"{len(existing)} output(s) already exist (e.g. {existing[0]}); "
                "use --overwrite to replace them or choose another output folder."
            )
    bundle = load_model(args.model)
    if args.workers or args.scheduler:
        from .distributed import cluster_tiles

        tiles = cluster_tiles(tiles, bundle.depth)  # blend mode refused here, before any work
    job = _SegmentJob(args, out_dir, bundle, postprocess_params(bundle, overrides), tiles, runtime,
                      tta=args.tta)
    if args.ome_labels is not None:
        from .ome_zarr import check_target

        args.ome_labels = args.ome_labels or bundle.name
        for src in paths:  # before any work: every input must take the labels
            check_target(src, args.ome_labels, args.overwrite)
    from .objectsize import prefers_auto

    if args.diameter is None and prefers_auto(bundle) and not (args.workers or args.scheduler):
        job.diameter, job.diameter_by_default = "auto", True  # as the Segment widget does for this model
    elif args.diameter is not None and args.diameter.strip().lower() == "none":
        args.diameter = None
    if args.diameter is not None:
        from .objectsize import check_diameter, model_diameter

        if args.workers or args.scheduler:
            raise CLIError("--diameter works on one machine; leave out --workers/--scheduler, or rescale the "
                           "images beforehand.")
        try:
            job.diameter = check_diameter(args.diameter)
            model_diameter(bundle)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    if args.probabilities and (args.workers or args.scheduler):
        raise CLIError("--probabilities is not available on a dask cluster yet; leave out "
                       "--workers/--scheduler or --probabilities.")
    _check_output_folder(out_dir)  # every refusal above leaves nothing behind; the model has not run
    if args.workers or args.scheduler:
        from .distributed import make_client

        if not args.verbose:
            _quiet_dask_logs()

        job.client = make_client(workers=args.workers, scheduler=args.scheduler)

    rows, failures = [], []
    start_all = time.perf_counter()
    try:
        _segment_all(job, paths, rows, failures)
    except KeyboardInterrupt:
        print(f"Interrupted: {len(rows)} of {len(paths)} image(s) segmented and written; the "
              "image in progress was not written. Run the command again without those done "
              "(or with --overwrite) to go on.", file=sys.stderr)
        return 130
    finally:
        if job.client is not None:
            job.client.close()
    total = time.perf_counter() - start_all
    summary = {"segmented": rows, "failed": failures, "seconds": round(total, 2)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for r in rows:
            found = (f"{r['objects']} objects" if "classes" not in r else
                     ", ".join(f"{name} {100 * f:.1f} %" for name, f in r["classes"].items()))
            size = ""
            if "diameter" in r:
                size = (f", object diameter {r.get('estimated_diameter', r['diameter'])} px"
                        + (" (estimated)" if "estimated_diameter" in r else "")
                        + f", segmented at {r['scale']}x")
            print(f"{r['input']}: {found} in {r['seconds']} s "
                  f"({r['megapixels_per_s']} MP/s{size}) -> {r['output']}")
        print(f"{len(rows)} image(s) segmented in {total:.1f} s"
              + (f", {len(failures)} failed:" if failures else "."))
        for f in failures:
            print(f"  {f['input']}: {f['error']}")
    return 1 if failures else 0


def _quiet_dask_logs() -> None:
    """Keep dask.distributed's own log (worker restarts, the tracebacks it logs when workers
    die) off the terminal, in this process and the worker processes it starts: the command
    says in one sentence what failed; --verbose shows the log."""
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "critical")  # read by the worker processes
    import distributed  # noqa: F401  (it configures its loggers when imported)

    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", message="Port .* is already in use")


def _inputs_not_outputs(paths: list[Path], out_dir: Path) -> list[Path]:
    """``paths`` less the outputs of this tool (``*_labels`` files in the output folder, or
    marked as ours anywhere), which are never segmented again; refuses two inputs that would
    be written to the same output name."""
    from .io import is_marked_output

    out_resolved = out_dir.resolve()
    kept, skipped = [], []
    for p in paths:
        stem = _image_stem(p)  # label maps, their overlays and the --probabilities maps
        named = (stem.endswith("_labels") or "_prob_" in stem) and p.suffix.lower() in (".tif", ".zarr",
                                                                                        ".png")
        ours = named and (p.parent.resolve() == out_resolved or is_marked_output(p))
        (skipped if ours else kept).append(p)
    if skipped:
        print(f"note: skipping {len(skipped)} label file(s) written by napari-tiled-unet (e.g. "
              f"{skipped[0].name}); they are results, not images.", file=sys.stderr)
    if not kept:
        raise CLIError("Every input is a label file written by napari-tiled-unet; give the images instead.")
    seen: dict[str, Path] = {}
    for p in kept:
        stem = _image_stem(p)
        if stem in seen:
            raise CLIError(
                f"{seen[stem]} and {p} would both be written as {stem}_labels in {out_dir}; segment them "
                "into separate output folders (-o) or rename one."
            )
        seen[stem] = p
    return kept


def _check_output_folder(out_dir: Path) -> None:
    """Create the output folder and make sure files can be written in it, before any model
    runs; then remove the scratch that killed runs left there."""
    import tempfile

    from .io import remove_stale_scratch

    if out_dir.exists() and not out_dir.is_dir():
        raise CLIError(f"The output {out_dir} is a file; give a folder with -o.")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise CLIError(f"Cannot write in the output folder {out_dir} ({exc.strerror or exc}); "
                       "choose another folder with -o.") from None
    removed = remove_stale_scratch(out_dir)
    if removed:
        print(f"note: removed {len(removed)} scratch item(s) that interrupted runs left in {out_dir} "
              f"(e.g. {removed[0]}).", file=sys.stderr)


@dataclass
class _SegmentJob:
    """What the segment command decided once, for every image: the model, the typed settings
    of tiling, runtime and post-processing, and the cluster client if any."""

    args: argparse.Namespace
    out_dir: Path
    bundle: Any
    post: Any  # postprocess.InstanceParams | SemanticParams
    tiles: Any  # tiling.TileSettings
    runtime: Any  # runtime.Runtime
    tta: bool = False
    diameter: float | str | None = None
    diameter_by_default: bool = False  # "auto" chosen by the model, not by --diameter
    client: Any = None

    def on_event(self, bar=None):
        """An event handler: warnings to stderr (beside ``bar``), progress onto ``bar``."""
        from tqdm import tqdm

        from .events import Progress, WarningEvent

        shown = ["tile"]  # the bar's unit (a disabled bar, TQDM_DISABLE=1, has no attributes to read)

        def handle(ev):
            if isinstance(ev, WarningEvent):
                tqdm.write(f"warning: {ev.message}", file=sys.stderr)
            elif bar is not None and isinstance(ev, Progress) and (ev.stage == "predict" or ev.total > 1):
                unit = "tile" if ev.stage == "predict" else "step"  # then the labels, block by block
                if shown[0] != unit:
                    shown[0] = bar.unit = unit
                    bar.reset()
                bar.total = ev.total
                bar.n = ev.done
                bar.refresh()

        return handle


def _segment_all(job: _SegmentJob, paths: list[Path], rows: list, failures: list) -> None:
    """Segment every path in turn, appending to ``rows`` and ``failures`` as each one ends.

    An interruption (Ctrl-C, SIGTERM) or a failure leaves no partial output of the image in
    progress, and an earlier output it was to replace (--overwrite) stays whole.
    """
    from tqdm import tqdm

    from .io import ReadError

    for src in tqdm(paths, desc="images", unit="image", disable=len(paths) < 2):
        try:
            rows.append(_segment_to_file(job, src))
        except (ReadError, ValueError, RuntimeError, OSError) as exc:
            failures.append({"input": str(src), "error": str(exc)})
            tqdm.write(f"failed: {src}: {exc}", file=sys.stderr)


def _segment_to_file(job: _SegmentJob, src: Path) -> dict:
    """Segment one image and write its labels; the summary row.

    A label store (zarr) is written beside its final name and moved there once complete; on
    any exception it is removed, with this process's scratch folders beside it (in case the
    interruption cut their own cleanup short). A tif is written atomically anyway.
    """
    import time

    from ._interrupts import deferred_signals
    from .imageview import ambiguity_warning, interpret
    from .io import read_image, scratch_prefix, scratch_tag, stage_png, stage_tif, temp_beside, write_labels
    from .measure import measure_objects, objects_csv_path, write_csv

    args, bundle, out_dir = job.args, job.bundle, job.out_dir
    image = read_image(src)
    view = interpret(tuple(image.shape), bundle.n_channels, axes=args.axes, channel=args.channel,
                     option="--channel")
    message = ambiguity_warning(view, tuple(image.shape), "--axes")
    if message:
        print(f"warning: {src.name}: {message}", file=sys.stderr)
    spatial = tuple(image.shape[view.axes.index(a)] for a in "YX")
    dst = _output_path(src, out_dir, args.format, spatial)
    zarr_out = dst.suffix == ".zarr"
    work = dst.with_name(f".{dst.stem}.{scratch_tag()}.partial.zarr") if zarr_out else dst
    staged: list[tuple[Path, Path]] = []  # (complete temporary, final name), moved in at the end
    prob_files: list[Path] = []
    try:
        t0 = time.perf_counter()
        if job.client is not None:
            from .distributed import segment_distributed

            if view.channel is not None:
                raise ValueError("The cluster path reads whole zarr images, not one channel of them; run "
                                 "this image without --workers/--scheduler.")
            result = segment_distributed(job.client, bundle, image, work, postprocess=job.post,
                                         tiles=job.tiles, runtime=job.runtime, tta=job.tta,
                                         on_event=job.on_event())
        else:
            keep = None
            if args.probabilities:
                def keep(probs):
                    prob_files.extend(_write_probabilities(probs, dst, _image_stem(src), bundle.class_names))
            result = _segment_one(job, image, view.axes, work, src.name, keep)
        seconds = time.perf_counter() - t0
        if zarr_out:
            write_labels(result.labels, work)
            staged.append((work, dst))
        else:
            staged.append((Path(stage_tif(result.labels, dst)), dst))
        if args.measure and result.task == "instances":  # the table goes in with its labels
            csv = objects_csv_path(dst)
            if csv.exists() and not args.overwrite:
                raise FileExistsError(f"{csv} already exists; use --overwrite to replace it.")
            staged.append((Path(write_csv(measure_objects(result.labels, image),
                                          temp_beside(csv, suffix=".csv"), overwrite=True)), csv))
        if args.overlay:
            png = dst.with_suffix(".png")
            staged.append((Path(stage_png(np.asarray(image), np.asarray(result.labels), png)), png))
        if args.ome_labels:
            from .ome_zarr import write_ome_labels

            group = write_ome_labels(src, result.labels, args.ome_labels, overwrite=args.overwrite)
            print(f"{src}: labels also written into the image as {group}", file=sys.stderr)
        n_objects = result.n_objects  # read before the store moves: result.labels points at work
        fractions = _class_fractions(result.labels, bundle.class_names) if result.task == "semantic" else None
        with deferred_signals():  # the labels, overlay and table are replaced together or not at all
            for tmp, final in staged:
                _move_into_place(tmp, final)
    except BaseException:
        for path in prob_files:  # this image's probability maps, written before the failure
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if zarr_out:
            shutil.rmtree(work, ignore_errors=True)
        for tmp, _final in staged:
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
        for kind in ("postprocess", "probabilities"):
            for folder in dst.parent.glob(scratch_prefix(kind) + "*"):
                shutil.rmtree(folder, ignore_errors=True)
        raise
    npx = spatial[0] * spatial[1] * (image.shape[view.axes.index("Z")] if "Z" in view.axes else 1)
    row = {"input": str(src), "output": str(dst), "objects": n_objects,
           "seconds": round(seconds, 2), "megapixels_per_s": round(npx / 1e6 / seconds, 3)}
    if fractions is not None:
        row["classes"] = fractions
    if getattr(result, "diameter", None):
        row["diameter"] = round(result.diameter, 1)
        row["scale"] = round(result.scale, 3)
        if result.estimated_diameter is not None:
            row["estimated_diameter"] = round(result.estimated_diameter, 1)
    return row


def _class_fractions(labels, names: list[str]) -> dict[str, float]:
    """Fraction of the pixels of each class in a class map (numpy, or zarr read block by block)."""
    if isinstance(labels, np.ndarray):
        counts = np.bincount(labels.ravel(), minlength=len(names))
    else:
        import dask.array as da

        counts = da.bincount(da.from_zarr(labels).ravel(), minlength=len(names)).compute()
    total = max(int(counts.sum()), 1)
    return {name: round(float(c) / total, 4) for name, c in zip(names, counts)}


def _write_probabilities(probs, labels_dst: Path, stem: str, names: list[str]) -> list[Path]:
    """One float32 map per class beside the labels: ``<image>_prob_<class>.tif`` (or ``.zarr``
    beside a zarr label store, written beside its final name and moved there)."""
    import re

    import dask.array as da

    from .io import scratch_tag, write_labels

    safe = [re.sub(r"[^A-Za-z0-9._-]+", "-", n).strip("-") or f"class{k}" for k, n in enumerate(names)]
    if len(set(safe)) < len(safe):
        safe = [f"{k}-{n}" for k, n in enumerate(safe)]
    written = []
    for k, name in enumerate(safe):
        dst = labels_dst.with_name(f"{stem}_prob_{name}{labels_dst.suffix}")
        plane = (da.from_zarr(probs) if not isinstance(probs, np.ndarray) else probs)[..., k, :, :]
        if dst.suffix == ".zarr":
            work = dst.with_name(f".{dst.stem}.{scratch_tag()}.partial.zarr")
            try:
                write_labels(plane, work)
                _move_into_place(work, dst)
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
        else:
            write_labels(np.asarray(plane, dtype=np.float32), dst)
        written.append(dst)
    return written


def _move_into_place(work: Path, dst: Path) -> None:
    """Replace ``dst`` (an earlier output, with --overwrite) by the complete store or file ``work``."""
    from .io import publish, scratch_tag

    if work.is_file():
        publish(str(work), dst)  # one atomic rename over the earlier file
    elif dst.exists():
        old = dst.with_name(f".{dst.stem}.{scratch_tag()}.old")
        os.replace(dst, old)
        os.replace(work, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, dst)


def _segment_one(job: _SegmentJob, image, axes: str, dst: Path, name: str, keep=None):
    """Segment one image into labels at ``dst``; ``keep`` (if given) receives the probabilities
    while they exist (a zarr store of them is temporary)."""
    import tempfile

    from tqdm import tqdm

    from .io import scratch_prefix
    from .segmentation import segment

    bar = tqdm(desc=name, unit="tile", leave=False)
    tiles = job.tiles
    if dst.suffix == ".zarr" and getattr(image, "ndim", 0) == 2 and hasattr(image, "store"):
        # exact windows aligned to output chunks, as on the cluster, so both give identical
        # results; a --tile-size sets the chunk, --mode blend keeps its own windows
        tiles = tiles.aligned_to_chunks(job.bundle.depth)
    options = {"axes": axes, "channel": job.args.channel, "postprocess": job.post, "tiles": tiles,
               "runtime": job.runtime, "tta": job.tta, "diameter": job.diameter}
    if dst.suffix == ".zarr" and job.diameter_by_default:
        # results on disk are not rescaled (segmentation.py); an explicit --diameter is refused there
        options["diameter"] = None
        tqdm.write(f"warning: {name}: its labels go to a zarr store, which is not rescaled, so it is "
                   "segmented at its own scale (give --diameter none to say so, or segment a tif copy with "
                   "--diameter auto).", file=sys.stderr)
    try:
        if dst.suffix == ".zarr":
            with tempfile.TemporaryDirectory(prefix=scratch_prefix("probabilities"),
                                             dir=dst.parent if dst.parent.exists() else None) as tmp:
                seg = segment(job.bundle, image, on_event=job.on_event(bar),
                              probabilities_out=str(Path(tmp) / "probabilities.zarr"), labels_out=str(dst),
                              **options)
                if keep is not None:
                    keep(seg.probabilities)
                return seg
        seg = segment(job.bundle, image, on_event=job.on_event(bar), **options)
        if keep is not None:
            keep(seg.probabilities)
        return seg
    finally:
        bar.close()


# -- evaluate ----------------------------------------------------------------------------


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score predicted label maps against ground truth",
        description="Match objects one to one at IoU thresholds (or, with --semantic, compare class "
                    "maps: pixel error and Rand error); print per-image and total figures.",
    )
    p.add_argument("--pred", required=True, help="folder of predicted label maps")
    p.add_argument("--gt", required=True, help="folder of ground-truth label maps (same file names)")
    p.add_argument("--thresholds", default="0.5,0.75", help="IoU thresholds, comma separated")
    p.add_argument("--semantic", action="store_true",
                   help="class maps (0 = first class): pixel error and foreground-restricted Rand error")
    p.add_argument("--gt-scribbles", action="store_true",
                   help="with --semantic: the ground truth holds training label values (k = class k-1, "
                        "0 = not annotated, left out)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _cmd_evaluate(args) -> int:
    from .errors import InputError
    from .metrics import evaluate_folders, format_evaluation
    from .settings import iou_thresholds

    if args.semantic or args.gt_scribbles:
        from .metrics import evaluate_semantic_folders, format_semantic_evaluation

        try:
            report = evaluate_semantic_folders(args.pred, args.gt, gt_scribbles=args.gt_scribbles)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        print(json.dumps(report, indent=2) if args.json else format_semantic_evaluation(report))
        return 0
    try:
        thresholds = iou_thresholds(float(t) for t in args.thresholds.split(",") if t.strip())
    except ValueError as exc:
        if isinstance(exc, InputError):
            raise
        raise CLIError(f"--thresholds {args.thresholds!r} is not a list of numbers; "
                       "write e.g. 0.5,0.75.") from None
    try:
        report = evaluate_folders(args.pred, args.gt, thresholds)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    print(json.dumps(report, indent=2) if args.json else format_evaluation(report))
    return 0


# -- train -------------------------------------------------------------------------------


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune a model on folders of images and labels",
        description="Train on image/label pairs with matching file names (images/<id>.tif, "
                    "labels/<id>.tif). With --checkpoint, an interrupted run resumes where it stopped.",
    )
    p.add_argument("--images", default=None, help="folder of images")
    p.add_argument("--labels", default=None, help="folder of label maps with the same file names")
    mix = p.add_argument_group("several sets (instead of --images/--labels; see docs/models.md)")
    mix.add_argument("--data", nargs=2, action="append", metavar=("IMAGES", "LABELS[:WEIGHT]"),
                     help="an image/label folder pair; share of patches after ':' (default 1); repeat")
    mix.add_argument("--data-list", default=None,
                     help="text file, one set per line: IMAGES LABELS [WEIGHT] [HELD_OUT_IDS] "
                          "[ignore=FOLDER] (masks named like the images, nonzero where nothing counts)")
    mix.add_argument("--monitor-per-set", type=int, default=2,
                     help="images of each set held out to watch the validation loss (default 2)")
    mix.add_argument("--normalization-high", type=float, default=None,
                     help="high percentile of the trained model's normalization (default: the base's)")
    mix.add_argument("--exclude-saturated", action="store_true",
                     help="leave pixels at the image's maximum out of the normalization percentiles")
    mix.add_argument("--normalization-clip", type=float, default=None, metavar="C",
                     help="ceiling on the normalized values (1 = the high percentile): far brighter objects "
                          "reach the network at C (default: the base's; docs/models.md, Normalization)")
    p.add_argument("--out", required=True, help="where to save the trained model (.safetensors)")
    p.add_argument("--base", default=None,
                   help="model to fine-tune (file or built-in name); default: a new model from scratch")
    p.add_argument("--widen-to", type=int, default=None, metavar="CHANNELS",
                   help="with --base: first widen the base network to this many base channels; the wider "
                        "network starts out computing exactly what the base computes (docs/models.md)")
    p.add_argument("--annotation", default="instances", choices=["instances", "scribbles"],
                   help="instances: one id per object; scribbles: value k paints class k, 0 is not "
                        "annotated (without --base: a new semantic model, one class per value)")
    p.add_argument("--classes", default=None, metavar="NAME,NAME,...",
                   help="names of the scribble classes for label values 1, 2, ... (default: 'class 1' ... "
                        "up to the largest label value)")
    budget = p.add_argument_group("budget (whichever ends first)")
    budget.add_argument("--epochs", type=float, default=None, help="epochs to train")
    budget.add_argument("--minutes", type=float, default=None, help="training time budget")
    new = p.add_argument_group("new model (without --base)")
    new.add_argument("--base-channels", type=int, default=16, help="channels of the first level (default 16)")
    new.add_argument("--depth", type=int, default=4, help="number of down-sampling steps (default 4)")
    new.add_argument("--name", default=None, help="name stored in the model's metadata")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--val-ids", default=None,
                     help="text file of image ids (file names without extension) held out for validation")
    opt.add_argument("--val-fraction", type=float, default=0.15,
                     help="fraction held out when --val-ids is not given (default 0.15)")
    opt.add_argument("--lr", type=float, default=None,
                     help="peak learning rate (default 1e-3)")
    opt.add_argument("--patch-size", type=int, default=None,
                     help="training patch side in px (default 256)")
    opt.add_argument("--batch-size", type=int, default=None,
                     help="patches per step (default: 2 when fine-tuning --base, else 4)")
    opt.add_argument("--steps-per-epoch", type=int, default=None)
    opt.add_argument("--val-every", type=int, default=None,
                     help="steps between validations (default: 25 when fine-tuning --base, else an epoch)")
    opt.add_argument("--patience", type=int, default=None,
                     help="validations without improvement before stopping early (0: never; default: "
                          "never when fine-tuning --base, else 5)")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--touching-width", type=int, default=0, metavar="PX",
                     help="instances: train this many px of each object next to another object as boundary, "
                          "a wider gap between touching objects' seeds (default 0: the 1 px outline)")
    opt.add_argument("--core-fraction", type=float, default=0.0, metavar="F",
                     help="instances: train only each object's core as interior, the pixels at least F times "
                          "the object's largest distance from its outline (0 < F < 1; default 0: off)")
    opt.add_argument("--keep", default="best", choices=["best", "last"],
                     help="the weights written: best = the best on the held-out part (default), last = those "
                          "of the last step (a schedule run to its end; validations are still recorded)")
    opt.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    opt.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16", "fp16"],
                     help="default: when fine-tuning --base, bf16 where it is fast (CUDA, or a CPU with bf16 "
                          "in hardware), else fp32; auto: the rule segment uses")
    opt.add_argument("--checkpoint", default=None,
                     help="checkpoint file; an existing matching checkpoint is resumed")
    opt.add_argument("--checkpoint-minutes", type=float, default=5.0,
                     help="save a checkpoint at least this often (default 5)")


def _class_names(text: str | None, annotation: str) -> list[str] | None:
    """``--classes a,b,c`` -> ["a", "b", "c"], refused where it cannot apply."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",")]
    if annotation != "scribbles":
        raise CLIError("--classes names scribble classes; add --annotation scribbles, or leave --classes out "
                       "(instance labels always train background, interior, boundary).")
    if len(names) < 2 or not all(names) or len(set(names)) != len(names):
        raise CLIError(f"--classes {text!r} should list two or more different names, comma separated, "
                       "e.g. --classes background,membrane,cell.")
    return names


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Within: Ctrl-C, and SIGTERM (what batch schedulers send before killing a job), raise
    KeyboardInterrupt, so long commands stop cleanly (training saves its checkpoint, segment
    keeps the finished images); also when started in the background, where the shell sets
    SIGINT to be ignored. The previous handlers come back afterwards."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)
    # a parent that blocked these signals passes its mask on through exec: unblock them, or a
    # SIGTERM would wait unseen until the command ends
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM}) \
        if hasattr(signal, "pthread_sigmask") else None
    try:
        yield
    finally:
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGINT, saved[0])
        signal.signal(signal.SIGTERM, saved[1])


def _mixture_gen(args, base, out: Path, new_model, config):
    """The training generator of ``train --data ...`` / ``--data-list`` (training/mixture.py)."""
    from .training.mixture import parse_data_arg, read_list_file, train_mixture_iter

    sets = [parse_data_arg(pair) for pair in args.data or []]
    if args.data_list:
        sets += read_list_file(args.data_list)
    if args.val_ids is not None:
        raise CLIError("--val-ids holds out ids of one folder; with several sets, give each set's held-out "
                       "ids in the --data-list file.")
    recipe = None
    if args.normalization_high is not None or args.exclude_saturated or args.normalization_clip is not None:
        recipe = {"kind": "percentile", "low": 1.0, "high": args.normalization_high or 99.8}
        if args.exclude_saturated:
            recipe["exclude_saturated"] = True
        if args.normalization_clip is not None:
            if not args.normalization_clip > 0:
                raise CLIError(f"--normalization-clip is {args.normalization_clip:g}; give a ceiling above "
                               "0, such as 2 (twice the image's high percentile).")
            recipe["clip_high"] = args.normalization_clip
    return train_mixture_iter(sets, config, out=out, base=base, new_model=new_model,
                              normalization=recipe, monitor_per_set=args.monitor_per_set)


def _cmd_train(args) -> int:
    from tqdm import tqdm

    from .events import TrainStep, WarningEvent
    from .training.adaptation import short_run_options
    from .training.config import TrainConfig
    from .training.folders import train_folders_iter

    # fine-tuning a trained model (--base) and training from scratch have their own defaults, the
    # same as the Fine-tune widget's (training/adaptation.py); what the user gives wins
    given = {"lr": args.lr, "patch_size": args.patch_size, "batch_size": args.batch_size,
             "val_every": args.val_every, "precision": args.precision}
    chosen = {**short_run_options(args.base),
              **{k: v for k, v in given.items() if v is not None}}
    if args.patience is not None:
        chosen["early_stopping_patience"] = args.patience or None
    config = TrainConfig(
        annotation=args.annotation, epochs=args.epochs, minutes=args.minutes,
        steps_per_epoch=args.steps_per_epoch, val_fraction=args.val_fraction, seed=args.seed,
        touching_width=args.touching_width, core_fraction=args.core_fraction, keep=args.keep,
        device=args.device,
        checkpoint_path=args.checkpoint, checkpoint_minutes=args.checkpoint_minutes,
        **chosen,
    )  # checks the settings' ranges first
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise CLIError(f"--out {out} should end in .safetensors (the model bundle format).")
    if not out.parent.exists():
        raise CLIError(f"The folder {out.parent} does not exist; create it or choose another --out.")
    class_names = _class_names(args.classes, args.annotation)
    from .io import remove_stale_scratch

    for folder in {out.parent, Path(args.checkpoint).parent if args.checkpoint else out.parent}:
        removed = remove_stale_scratch(folder)
        if removed:
            print(f"note: removed {len(removed)} scratch item(s) that interrupted runs left in {folder} "
                  f"(e.g. {removed[0]}).", file=sys.stderr)
    base = args.base
    if args.widen_to is not None:
        if args.base is None:
            raise CLIError("--widen-to widens the model given with --base; without --base, choose the width "
                           "of a new model with --base-channels.")
        from .model.bundle import load_model
        from .model.widen import widen_bundle

        try:
            base = widen_bundle(load_model(args.base), args.widen_to, seed=args.seed)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    new_model = None
    if args.base is None:
        # seeded, so that re-running the same command finds its checkpoint's starting point
        new_model = {"base_channels": args.base_channels, "depth": args.depth, "seed": args.seed}
        if args.name:
            new_model["name"] = args.name
    several = args.data is not None or args.data_list is not None
    if several == (args.images is not None or args.labels is not None):
        raise CLIError("Give either --images and --labels, or one or more --data IMAGES LABELS (or "
                       "--data-list FILE).")
    if not several and (args.images is None or args.labels is None):
        raise CLIError("Give both --images and --labels.")
    try:
        if several:
            gen = _mixture_gen(args, base, out, new_model, config)
        else:
            gen = train_folders_iter(args.images, args.labels, config, out=out, base=base,
                                     val_ids=args.val_ids, new_model=new_model, class_names=class_names)
        bar = tqdm(unit="step", dynamic_ncols=True, delay=1.0)  # a refusal at the start prints no bar
        try:
            while True:
                try:
                    ev = next(gen)
                except StopIteration as done:
                    bundle = done.value
                    break
                if isinstance(ev, WarningEvent):
                    kind = "note" if ev.kind == "info" else "warning"
                    tqdm.write(f"{kind}: {ev.message}", file=sys.stderr)
                elif isinstance(ev, TrainStep):
                    bar.total = ev.total
                    bar.n = ev.step
                    if ev.val_loss is not None:
                        f1 = ev.metrics.get("f1@0.5")
                        tqdm.write(f"step {ev.step}: train loss {ev.loss:.4f}, "
                                   f"validation loss {ev.val_loss:.4f}"
                                   + (f", F1@0.5 {f1:.3f}" if f1 is not None else "")
                                   + f" ({ev.elapsed / 60:.1f} min)")
                    bar.set_postfix(loss=f"{ev.loss:.4f}", lr=f"{ev.lr:.1e}", refresh=False)
                    bar.refresh()
        except KeyboardInterrupt:
            gen.close()  # the trainer saves its checkpoint; nothing half-written is left at --out
            bar.close()
            print("interrupted; run the same command again to resume from the checkpoint"
                  if args.checkpoint else "interrupted; nothing saved (use --checkpoint to resume later)",
                  file=sys.stderr)
            return 130
        except BaseException:
            shown = bar.total is not None  # a bar has been drawn (after its delay)
            bar.close()
            if shown:
                print(file=sys.stderr)  # so that the error's sentence starts on its own line
            raise
        bar.close()
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    record = bundle.metadata.get("training", {})
    classes = f"{bundle.task}, classes {', '.join(bundle.class_names)}"
    print(f"Saved {out} ({classes}) after {record.get('steps', '?')} steps in "
          f"{record.get('time_s', 0) / 60:.1f} min ({record.get('stopped')}); best weights from step "
          f"{record.get('best_step')}.")
    if record.get("selection"):
        print(f"Weights returned: {record['selection']}.")
    metrics = {k: v for k, v in (record.get("metrics") or {}).items() if v is not None}
    if metrics:
        print("Validation (best weights): "
              + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
    return 0


# -- entry point -------------------------------------------------------------------------

COMMANDS = ["info", "segment", "train", "evaluate", "export-bioimageio"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-tiled-unet",
        description="Tiled U-Net segmentation and fine-tuning for microscopy images.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        globals()[f"_add_{name.replace('-', '_')}"](sub)
    return parser


def _quiet_about_abandoned_coroutines(previous):
    """An unraisable-exception hook that drops the reports of coroutines that zarr's event loop
    abandoned when a read failed or the command stopped (collected at exit, after their loop
    closed); everything else goes to ``previous``."""
    import inspect

    def hook(unraisable):
        if inspect.iscoroutine(unraisable.object) and isinstance(unraisable.exc_value, RuntimeError):
            return
        previous(unraisable)

    return hook


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    from .errors import InputError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        # zarr's and dask's event loops report tasks cut short by an error or a stop ("Task
        # exception was never retrieved", "Task was destroyed but it is pending"); the one
        # sentence below says what happened
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
        sys.unraisablehook = _quiet_about_abandoned_coroutines(sys.unraisablehook)
    try:
        with _stop_on_signals():
            return globals()[f"_cmd_{args.command.replace('-', '_')}"](args)
    except (InputError, CLIError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
