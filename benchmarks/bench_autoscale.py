"""Automatic scale on images of unknown um/px: validation images rescaled 0.5x-2x.

    python benchmarks/bench_autoscale.py --data DATA [--only wbc,glands,nuclei]
        [--factors 0.5,0.71,1,1.41,2] [--json rows.json]

Each validation image (never a test image) is rescaled by a factor (anti-aliased when
shrunk; its truth by nearest neighbour) and segmented by the bundled model through the
per-file route (``pipeline.objects_from_image``) three ways, the file saying no pixel size:

- ``assumed``: automatic scale off; the image is taken at the training data's scale (what
  happened before automatic scale);
- ``auto``: the default; the scale is estimated from the image (:mod:`napari_glandseg.autoscale`);
- ``oracle``: the true pixel size given (``--pixel-size``), the best any estimate can do.

Scores, pooled over the images of a set: foreground Dice (and nucleus Dice for wbc, object F1
for glands and nuclei). The issue's target: with ``auto``, Dice at every factor within 0.03 of
the native image's (factor 1). Also printed: how often the estimate is within 15 % of the
truth, and the estimate's median time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import json
import sys
import warnings
from pathlib import Path

import numpy as np
from _common import data_default  # noqa: E402

warnings.filterwarnings("ignore")

SETS = {  # name: the bundled model (load() reads its val images)
    "wbc": "wbc",
    "glands": "glands-he",
    "nuclei": "nuclei-he",
}


def load(name: str, data: Path):
    from napari_glandseg.training import pairs_from_folder, split_pairs

    if name == "wbc":
        return split_pairs(data / "wbc/dataset1", None, None, 0.2, 5)[1]
    if name == "glands":
        return pairs_from_folder(data / "glas", data / "glas/split.csv", ("val",),
                                 mask_folder="instances_cc")
    return pairs_from_folder(data / "monuseg", data / "monuseg/split.csv", ("val",),
                             mask_folder="instances")


def rescaled(p, f: float):
    from skimage.transform import rescale, resize

    if f == 1:
        return p.image, p.mask
    img = rescale(p.image, f, channel_axis=-1 if p.image.ndim == 3 else None,
                  anti_aliasing=f < 1, preserve_range=True).astype(p.image.dtype)
    mask = resize(p.mask, img.shape[:2], order=0, preserve_range=True,
                  anti_aliasing=False).astype(p.mask.dtype)
    return img, mask


def run(model, img, mode: str, f: float):
    """Objects of ``img`` (the native image rescaled by ``f``) segmented in ``mode``."""
    from napari_glandseg.inference import SegmentParams
    from napari_glandseg.pipeline import FileParams, objects_from_image

    card = model.card
    seg = SegmentParams(return_probabilities=False)
    if mode == "oracle":
        data_px = card.data_pixel_size_um or card.pixel_size_um
        if data_px:
            res = objects_from_image(img, model, FileParams(segment=seg, auto_scale=False),
                                     pixel_size_um=data_px / f)
        else:  # scale-free model: model pixels per image pixel
            res = objects_from_image(img, model, FileParams(
                segment=SegmentParams(return_probabilities=False, scale=1 / f),
                auto_scale=False))
    else:
        res = objects_from_image(img, model, FileParams(segment=seg,
                                                        auto_scale=mode == "auto"))
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=data_default(""),
                    required=data_default() is None)
    ap.add_argument("--only", default="wbc,glands,nuclei")
    ap.add_argument("--factors", default="0.5,0.71,1,1.41,2")
    ap.add_argument("--max-images", type=int, default=0, help="first N images of a set")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    from napari_glandseg.metrics import evaluate_dataset
    from napari_glandseg.models import load_model

    factors = [float(v) for v in args.factors.split(",")]
    rows = []
    for name in [s.strip() for s in args.only.split(",")]:
        model = load_model(SETS[name])
        pairs = load(name, args.data)
        if args.max_images:
            pairs = pairs[:args.max_images]
        print(f"{name}: {len(pairs)} val images, model {model.card.name}, reference "
              f"{model.card.scale_reference}", flush=True)
        for f in factors:
            row = {"set": name, "factor": f, "images": len(pairs)}
            good, times = [], []
            for mode in ("assumed", "auto", "oracle"):
                items, nuc = [], []
                for p in pairs:
                    img, truth = rescaled(p, f)
                    res = run(model, img, mode, f)
                    if mode == "auto":
                        est = res.scale_estimate
                        times.append(est.seconds if est else 0.0)
                        if est is not None:
                            good.append(abs(np.log(est.factor * f)) < np.log(1.15))
                    labels = np.asarray(res.labels)
                    if name == "wbc":  # class maps: cells and nuclei
                        nuc.append((p.name, (labels == 2).astype(np.uint8),
                                    (truth == 2).astype(np.uint8)))
                        items.append((p.name, (labels > 0).astype(np.uint8),
                                      (truth > 0).astype(np.uint8)))
                    else:
                        items.append((p.name, labels, truth))
                _, s = evaluate_dataset(items, hausdorff=False)
                row[f"{mode}_dice"] = s["dice"]
                if name == "wbc":
                    row[f"{mode}_nucleus_dice"] = evaluate_dataset(nuc, hausdorff=False)[1]["dice"]
                else:
                    row[f"{mode}_object_f1"] = s["object_f1"]
            row["estimate_within_15pct"] = float(np.mean(good)) if good else float("nan")
            row["estimate_seconds"] = float(np.median(times)) if times else float("nan")
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))
    print()
    for name in dict.fromkeys(r["set"] for r in rows):
        rs = [r for r in rows if r["set"] == name]
        native = next((r for r in rs if r["factor"] == 1), None)
        extra = "nucleus_dice" if name == "wbc" else "object_f1"
        print(f"\n{name}: Dice assumed / auto / oracle, auto - native auto; {extra} auto; "
              "estimate within 15 %\n")
        print(f"| factor | Dice assumed | Dice auto | Dice oracle | auto - native | "
              f"{extra} assumed | {extra} auto | estimate within 15 % |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rs:
            d = r["auto_dice"] - native["auto_dice"] if native else float("nan")
            print(f"| {r['factor']:g} | {r['assumed_dice']:.3f} | {r['auto_dice']:.3f} | "
                  f"{r['oracle_dice']:.3f} | {d:+.3f} | {r[f'assumed_{extra}']:.3f} | "
                  f"{r[f'auto_{extra}']:.3f} | {r['estimate_within_15pct']:.0%} |")


if __name__ == "__main__":
    sys.exit(main())
