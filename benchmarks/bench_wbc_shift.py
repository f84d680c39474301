"""How much another lab's smears change a white-blood-cell model: the WBC val images, shifted.

    python benchmarks/bench_wbc_shift.py --data DATA/wbc/dataset1 [--model wbc]
        [--model FILE.safetensors ...]

No second WBC dataset is available here, so another lab is simulated on the 60 validation
images (ids divisible by 5, never trained on): ``restain`` (the fixed H&E-space change of
``bench_finetune.py``: haematoxylin x1.6, eosin x0.5), ``zoom`` (cells 1.6x larger, as at a
higher magnification), ``both``, and ``hue`` (hue turned by 0.08 of the colour circle and
saturation x0.7: a stain of another colour). Each model segments each version as Segment
does (card defaults); printed: cell Dice (cytoplasm + nucleus vs background) and the Dice of
each class, pooled over the images.

``--sweep 0.33,0.5,1,2,3`` instead rescales the val images by each factor (cells that many
times their size, no pixel size given) and segments each as Segment does with automatic
scale on and off (:func:`napari_glandseg.pipeline.objects_from_image`); printed: cell Dice
per factor, and the worst factor's.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).parent))
from _common import data_default  # noqa: E402

SHIFTS = ("original", "restain", "zoom", "both", "hue")


def shifted(image: np.ndarray, mask: np.ndarray, shift: str):
    """``(image, mask)`` as another lab might show them (see the module docstring)."""
    from bench_finetune import restain
    from skimage.color import hsv2rgb, rgb2hsv

    from napari_glandseg.training import TrainingPair, resample_pairs

    if shift in ("zoom", "both"):  # training's resampling: 1.6 "um/px" seen at 1.0
        (zoomed,) = resample_pairs([TrainingPair(image, mask, "", 1.6)], 1.0)
        image, mask = zoomed.image, zoomed.mask
    if shift in ("restain", "both"):
        image = restain(image)
    if shift == "hue":
        hsv = rgb2hsv(image)
        hsv[..., 0] = (hsv[..., 0] + 0.08) % 1.0
        hsv[..., 1] *= 0.7
        image = (hsv2rgb(hsv) * 255).round().astype(np.uint8)
    return image, mask


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=data_default("wbc/dataset1"),
                    required=data_default() is None)
    ap.add_argument("--model", action="append", help="store name or file (default: wbc)")
    ap.add_argument("--sweep", help="comma-separated zoom factors, e.g. 0.33,0.5,1,2,3")
    args = ap.parse_args(argv)
    if args.sweep:
        return sweep(args, [float(f) for f in args.sweep.split(",")])

    from napari_glandseg.inference import segment
    from napari_glandseg.metrics import evaluate_dataset
    from napari_glandseg.models import load_model
    from napari_glandseg.training import pairs_from_folder, split_names

    pairs = pairs_from_folder(args.data)
    split = split_names([p.name for p in pairs], val_every=5)
    val = [p for p in pairs if split[p.name] == "val"]
    print(f"{len(val)} WBC validation images\n")
    print("| model | val images | cell Dice | cytoplasm Dice | nucleus Dice |")
    print("|---|---|---:|---:|---:|")
    for name in args.model or ["wbc"]:
        model = load_model(name, device="cpu")
        for shift in SHIFTS:
            items = []
            for p in val:
                image, mask = shifted(p.image, p.mask, shift)
                labels = np.asarray(segment(image, model, return_probabilities=False).labels)
                items.append((p.name, labels, mask))
            _, s = evaluate_dataset(items, classes=3, hausdorff=False)
            print(f"| {Path(name).stem} | {shift} | {s['dice']:.3f} | "
                  f"{s['per_class'][1]['dice']:.3f} | {s['per_class'][2]['dice']:.3f} |",
                  flush=True)


def rescaled(image: np.ndarray, mask: np.ndarray, factor: float):
    """``(image, mask)`` with cells ``factor`` times their size (training's resampling)."""
    from napari_glandseg.training import TrainingPair, resample_pairs

    if factor == 1.0:
        return image, mask
    (z,) = resample_pairs([TrainingPair(image, mask, "", factor)], 1.0)
    return z.image, z.mask


def sweep(args, factors):
    from napari_glandseg.metrics import evaluate_dataset
    from napari_glandseg.models import load_model
    from napari_glandseg.pipeline import FileParams, objects_from_image
    from napari_glandseg.training import pairs_from_folder, split_names

    pairs = pairs_from_folder(args.data)
    split = split_names([p.name for p in pairs], val_every=5)
    val = [p for p in pairs if split[p.name] == "val"]
    print(f"{len(val)} WBC validation images, rescaled; cell Dice (cytoplasm + nucleus)\n")
    print("| model | automatic scale | " + " | ".join(f"x{f:g}" for f in factors)
          + " | worst |")
    print("|---|---|" + "---:|" * (len(factors) + 1))
    for name in args.model or ["wbc"]:
        model = load_model(name, device="cpu")
        for auto in (True, False):
            dice = []
            for f in factors:
                items = []
                for p in val:
                    image, mask = rescaled(p.image, p.mask, f)
                    res = objects_from_image(image, model, FileParams(auto_scale=auto))
                    items.append((p.name, np.asarray(res.segment.labels), mask))
                _, s = evaluate_dataset(items, classes=3, hausdorff=False)
                dice.append(s["dice"])
            print(f"| {Path(name).stem} | {'on' if auto else 'off'} | "
                  + " | ".join(f"{d:.3f}" for d in dice) + f" | {min(dice):.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
