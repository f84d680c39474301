"""Train every architecture, and U-Net with each target, on GlaS with one budget; score on testA.

    python benchmarks/compare_architectures.py --data DATA/glas
        [--steps 200] [--batch-size 4] [--patch-size 256] [--pixel-size 1.24]
        [--split testA] [--only unet,resunet] [--variants gap,mask,bce]
        [--json results.json] [--unet-features 16,16,32,64,128,16]

Every run trains from scratch at the architecture's default size (what the Model widget
builds) on the GlaS ``train`` rows of ``split.csv``, as ``glands-he`` is trained: at its
working scale (``--pixel-size``, 1.24 um/px, where a 256 px patch holds whole glands), on
background / interior / boundary targets, with the same seed, the same patches in the same
order, the same optimiser (AdamW, cosine schedule) and the same number of steps. The
checkpoint is selected as the bundled models' are, on **object** scores (mean of object F1
and object Dice) of the whole ``val`` images after the previous glands-he's
post-processing (distance watershed h=32, min 2000 px; kept so the tables stay
comparable). Each model is then scored on the whole ``--split`` images (pixel Dice and IoU
pooled; GlaS object F1 and object Dice; AJI) and timed: CPU ms for one
512x512 tile (batch 1, fp32, median of 3 after a warm-up, as ``bench_models.py``, all
measured before any training), relative to U-Net in the same run.

The first table compares architectures (loss DiceCE, boundary target); the second compares
ways of separating glands on U-Net: the boundary class (the first table's row), the boundary
class with U-Net's separation weight on the gaps between glands (``gap``: ``gap_weight`` 5),
a plain foreground mask split only by the watershed (``mask``), and the boundary class with
cross-entropy alone (``bce``). ``--unet-features`` sizes every U-Net run. Models are trained
in a temporary store, deleted afterwards. On a GPU use ``--steps 3000 --batch-size 8``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).parent))
from _common import data_default  # noqa: E402

#: the previous glands-he's post-processing (chosen on the val images by ``glandseg tune``;
#: kept fixed so that reruns of the tables stay comparable).
POSTPROCESS = {"split": "distance", "h": 32.0, "min_size": 2000, "fill_holes": True}
#: U-Net variants of the second table: (label, training settings).
VARIANTS = {
    "boundary": ("boundary class, DiceCE", {}),
    "gap": ("boundary class + gap weight 5, DiceCE", {"gap_weight": 5.0}),
    "mask": ("foreground mask only, DiceCE", {"target": "mask"}),
    "bce": ("boundary class, cross-entropy", {"loss": "bce"}),
}


def run(arch: str, variant: str, train_pairs, val_pairs, test_pairs, args, speed) -> dict:
    """Train one model and score it; a row of the table (``speed``: bench_models.measure)."""
    import numpy as np

    from napari_glandseg.inference import segment
    from napari_glandseg.metrics import evaluate_dataset
    from napari_glandseg.postprocessing import PostprocessParams, postprocess
    from napari_glandseg.training import TrainParams, train

    epochs = max(1, args.steps // args.steps_per_epoch)
    settings = {"loss": "dice_ce", "target": "boundary", **VARIANTS[variant][1]}
    params = TrainParams(
        name=f"cmp-{arch}-{variant}", architecture=arch, arch_kwargs=_kwargs(arch, args),
        patch_size=args.patch_size, batch_size=args.batch_size, epochs=epochs,
        steps_per_epoch=args.steps_per_epoch, lr=args.lr, val_patches=8, seed=0,
        pixel_size_um=args.pixel_size, data_pixel_size_um=0.62, select="objects",
        zoom=1.4, colour_jitter=0.1, stain_jitter=0.1, blur=0.2,
        postprocess=POSTPROCESS, **settings)
    t0 = time.perf_counter()
    result = train(train_pairs, val_pairs, params)
    train_s = time.perf_counter() - t0
    post = PostprocessParams(**POSTPROCESS)
    items = []
    for p in test_pairs:
        res = segment(p.image, result.model, pixel_size_um=0.62, tile_size=1024,
                      return_probabilities=False)
        items.append((p.name, postprocess(np.asarray(res.labels), post), p.mask))
    _, s = evaluate_dataset(items, hausdorff=False)
    return {"arch": speed["arch"], "architecture": arch, "variant": variant,
            "variant_label": VARIANTS[variant][0],
            "dice": s["dice"], "iou": s["iou"], "aji": s["aji"],
            "object_f1": s["object_f1"], "object_dice": s["object_dice"],
            "params_m": speed["params_m"], "cpu_ms_512": speed["ms"],
            "train_s": train_s, "best_epoch": result.best_epoch, "epochs": epochs,
            "best_val_score": result.best_score}


def _kwargs(arch: str, args) -> dict:
    if arch == "unet" and args.unet_features:
        return {"features": [int(v) for v in args.unet_features.split(",")]}
    return {}


def table(rows: list[dict], first: str, key) -> str:
    base = next((r["cpu_ms_512"] for r in rows if r["architecture"] == "unet"), None)
    lines = [f"| {first} | Dice | IoU | object F1 | object Dice | AJI | val objects (epoch) "
             "| parameters (M) | CPU ms / 512² | vs U-Net | train s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['cpu_ms_512'] / base:.2f}x" if base else "-"
        lines.append(f"| {key(r)} | {r['dice']:.3f} | {r['iou']:.3f} | "
                     f"{r['object_f1']:.3f} | {r['object_dice']:.3f} | {r['aji']:.3f} | "
                     f"{r['best_val_score']:.3f} ({r['best_epoch']}/{r['epochs']}) | "
                     f"{r['params_m']:.2f} | {r['cpu_ms_512']:.0f} | {ratio} | "
                     f"{r['train_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    from napari_glandseg.models import Architecture

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=data_default("glas"),
                    required=data_default() is None,
                    help="the GlaS folder (train/, testA/, split.csv)")
    ap.add_argument("--steps", type=int, default=200, help="training steps per model")
    ap.add_argument("--steps-per-epoch", type=int, default=25,
                    help="validation (and checkpoint choice) every this many steps")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--patch-size", type=int, default=256)
    ap.add_argument("--pixel-size", type=float, default=1.24,
                    help="working scale in um/px (GlaS is 0.62)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--split", default="testA", help="the GlaS folder to score on")
    ap.add_argument("--max-images", type=int, help="score on the first N images only")
    ap.add_argument("--only", help="comma-separated architectures (default: all)")
    ap.add_argument("--variants", default="gap,mask,bce",
                    help=f"U-Net variants to compare with the boundary class "
                         f"({', '.join(VARIANTS)}; empty: none)")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--unet-features", help="U-Net widths, 6 comma-separated integers "
                    "(default: MONAI BasicUNet's 32,32,64,128,256,32)")
    args = ap.parse_args(argv)

    archs = [a.value for a in Architecture]
    if args.only:
        archs = [Architecture(a.strip()).value for a in args.only.split(",")]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")

    from bench_models import measure

    # timed first, all together, before training fills the caches and the process
    speed = {a: measure(a, 512, 3, **_kwargs(a, args)) for a in dict.fromkeys(archs + ["unet"])}
    store = tempfile.mkdtemp(prefix="glandseg-compare-")
    os.environ["GLANDSEG_MODELS_DIR"] = store
    try:
        from napari_glandseg.training import pairs_from_folder

        csv = args.data / "split.csv"
        train_pairs = pairs_from_folder(args.data, csv, ("train",), mask_folder="instances_cc")
        val_pairs = pairs_from_folder(args.data, csv, ("val",), mask_folder="instances_cc")
        test_pairs = pairs_from_folder(args.data / args.split, None,
                                       mask_folder="instances_cc", limit=args.max_images)
        print(f"GlaS: {len(train_pairs)} train, {len(val_pairs)} val, {len(test_pairs)} "
              f"{args.split}; {args.steps} steps of {args.batch_size}x{args.patch_size}² "
              f"patches per model at {args.pixel_size} um/px, seed 0", flush=True)
        done: dict[tuple[str, str], dict] = {}
        runs = [(a, "boundary") for a in archs] + [("unet", v) for v in variants]
        for arch, variant in runs:
            if (arch, variant) in done:
                continue
            row = run(arch, variant, train_pairs, val_pairs, test_pairs, args, speed[arch])
            done[(arch, variant)] = row
            print(f"{row['arch']} + {row['variant_label']}: Dice {row['dice']:.3f}, object F1 "
                  f"{row['object_f1']:.3f}, object Dice {row['object_dice']:.3f}, val objects "
                  f"{row['best_val_score']:.3f} at epoch {row['best_epoch']} "
                  f"({row['train_s']:.0f} s training)", flush=True)
            if args.json:  # after each run, so an interrupted comparison keeps its rows
                args.json.write_text(json.dumps(
                    {"settings": {k: str(v) for k, v in vars(args).items()},
                     "rows": list(done.values())}, indent=1))
    finally:
        shutil.rmtree(store, ignore_errors=True)

    arch_rows = [done[(a, "boundary")] for a in archs]
    var_rows = [done[("unet", v)] for v in dict.fromkeys(["boundary", *variants])
                if ("unet", v) in done]
    print(f"\nArchitectures (boundary class, DiceCE), scored on GlaS {args.split}:\n")
    print(table(arch_rows, "architecture", lambda r: r["arch"]))
    if len(var_rows) > 1:
        print(f"\nSeparating glands (U-Net), scored on GlaS {args.split}:\n")
        print(table(var_rows, "target and loss", lambda r: r["variant_label"]))


if __name__ == "__main__":
    main()
