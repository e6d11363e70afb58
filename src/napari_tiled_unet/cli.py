"""The ``napari-tiled-unet`` command line: thin over the same engine as the widgets.

Each subcommand is an ``_add_<name>(subparsers)`` that registers it and a ``_cmd_<name>(args)``
that runs it and returns the exit status. Messages for the user go to stderr as one
sentence; a failure exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any


class CLIError(Exception):
    """A failure to report to the user as one sentence, with exit status 1."""


# -- info --------------------------------------------------------------------------------


def _format_value(value: Any, indent: int = 2) -> str:
    if isinstance(value, dict):
        if not value:
            return "-"
        pad = " " * indent
        return "\n" + "\n".join(f"{pad}{k}: {_format_value(v, indent + 2)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if value else "-"
    return "-" if value is None or value == "" else str(value)


def describe_bundle(bundle) -> str:
    """A readable, multi-line description of a :class:`ModelBundle`'s metadata."""
    meta = bundle.metadata
    lines = []
    if "imported_from" in meta:
        src = meta["imported_from"]
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
    lines += [f"{k}: {_format_value(v)}" for k, v in fields]
    return "\n".join(lines)


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="show what a model file contains")
    p.add_argument("model", help="a .safetensors bundle, a PyTorch-UNet .pth, or a built-in model name")
    p.add_argument("--json", action="store_true", help="print the metadata as JSON")


def _cmd_info(args) -> int:
    from .model.bundle import load_model

    bundle = load_model(args.model)
    if args.json:
        print(json.dumps(bundle.metadata, indent=2, sort_keys=True))
    else:
        print(describe_bundle(bundle))
    return 0


# -- entry point -------------------------------------------------------------------------

COMMANDS = ["info"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-tiled-unet",
        description="Tiled U-Net segmentation and fine-tuning for microscopy images.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        globals()[f"_add_{name}"](sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    from .model.bundle import BundleError
    from .normalization import ImageError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return globals()[f"_cmd_{args.command}"](args)
    except (BundleError, ImageError, CLIError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
