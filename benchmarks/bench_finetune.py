"""Why fine-tune: adapt the bundled glands-he to a new lab's staining from a few images.

    python benchmarks/bench_finetune.py --data DATA [--train-images 4]

The "new lab" is simulated (no second gland dataset is available here): the 20 GlaS
validation images get one fixed, strong H&E stain change (haematoxylin x1.6, eosin x0.5 in
HED space). glands-he is fine-tuned on ``--train-images`` of them and scored, before and
after, on the others with its own post-processing: Dice and GlaS object F1 / Dice, plus the
wall time. The original (unshifted) images are scored too, to show what is kept.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from _common import data_default  # noqa: E402

warnings.filterwarnings("ignore")


def restain(rgb: np.ndarray) -> np.ndarray:
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(np.clip(rgb / 255.0, 1e-6, 1))
    hed[..., 0] *= 1.6
    hed[..., 1] *= 0.5
    return (np.clip(hed2rgb(hed), 0, 1) * 255).round().astype(np.uint8)


def score(model, pairs):
    from napari_glandseg.inference import segment
    from napari_glandseg.metrics import evaluate_dataset
    from napari_glandseg.postprocessing import postprocess

    items = [(p.name, postprocess(segment(p.image, model, tile_size=512).labels,
                                  **model.card.postprocess), p.mask) for p in pairs]
    _, s = evaluate_dataset(items, hausdorff=False)
    return {k: s[k] for k in ("dice", "object_f1", "object_dice")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=data_default(""),
                    required=data_default() is None)
    ap.add_argument("--train-images", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args(argv)
    os.environ.setdefault("GLANDSEG_MODELS_DIR", tempfile.mkdtemp())
    from napari_glandseg.models import load_model
    from napari_glandseg.training import TrainingPair, TrainParams, pairs_from_folder, train

    glas = args.data / "glas"
    val = pairs_from_folder(glas, glas / "split.csv", ("val",), mask_folder="instances_cc")
    shifted = [TrainingPair(restain(p.image), p.mask, p.name) for p in val]
    k = args.train_images
    tune, held_out, original = shifted[:k], shifted[k:], val[k:]
    base = load_model("glands-he")
    before = score(base, held_out)
    kept_before = score(base, original)
    t0 = time.perf_counter()
    result = train(tune, tune, TrainParams(
        name="glands-he-newlab", base_model="glands-he", epochs=args.epochs,
        steps_per_epoch=args.steps, lr=5e-4, batch_size=8, patch_size=256, val_patches=16))
    seconds = time.perf_counter() - t0
    after = score(result.model, held_out)
    kept_after = score(result.model, original)
    print(f"glands-he fine-tuned on {k} re-stained GlaS val images, {args.epochs}x{args.steps} "
          f"steps, {seconds:.0f} s on the CPU; scored on the other {len(held_out)}")
    print("| images | model | Dice | object F1 | object Dice |")
    print("|---|---|---:|---:|---:|")
    for label, m, s in (("re-stained", "glands-he", before),
                        ("re-stained", "fine-tuned", after),
                        ("original", "glands-he", kept_before),
                        ("original", "fine-tuned", kept_after)):
        print(f"| {label} | {m} | {s['dice']:.3f} | {s['object_f1']:.3f} | "
              f"{s['object_dice']:.3f} |")


if __name__ == "__main__":
    main()
