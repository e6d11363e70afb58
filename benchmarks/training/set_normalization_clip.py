"""Put a ceiling on a bundle's normalized values (``clip_high`` in its recipe), atomically.

    python benchmarks/training/set_normalization_clip.py MODEL.safetensors 2 --why "..."

Objects far brighter than the image's high percentile (saturated mitoses next to dim nuclei)
then reach the network at the ceiling, inside the brightness its training showed it, instead
of at 5-15x that level, where `nuclei-v2` drew false objects around them
(docs/models.md, Normalization). The weights do not change; the bundle records the ceiling
and why (``normalization_clip``). ``0`` takes the ceiling out again.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from napari_tiled_unet.model.bundle import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("ceiling", type=float, help="normalized value (1 = the high percentile); 0 removes it")
    ap.add_argument("--why", required=True, help="why, with the measurement (kept in the bundle)")
    args = ap.parse_args()
    bundle = load_model(args.model)
    recipe = dict(bundle.metadata["normalization"])
    if args.ceiling > 0:
        recipe["clip_high"] = args.ceiling
    else:
        recipe.pop("clip_high", None)
    bundle.metadata["normalization"] = recipe
    bundle.metadata["normalization_clip"] = {"clip_high": args.ceiling or None, "why": args.why,
                                             "date": datetime.date.today().isoformat()}
    bundle.save(args.model)
    print(recipe)


if __name__ == "__main__":
    main()
