"""Train every architecture, and U-Net with each loss, on GlaS with one budget; score on testA.

    python benchmarks/compare_architectures.py --data ../shared/data/glas
        [--steps 200] [--batch-size 4] [--patch-size 256] [--split testA]
        [--only unet,resunet] [--losses bce,dice_ce,bce_focal_dice] [--json results.json]
        [--unet-features 16,16,32,64,128,16]

Every run trains from scratch at the architecture's default size (what the Model widget
builds) on the GlaS ``train`` rows of ``split.csv``, with the same seed, the same patches
in the same order, the same optimiser (AdamW, cosine schedule) and the same number of steps;
the checkpoint with the best Dice on 16 patches of the ``val`` rows is kept. The target is
the binary gland mask; glands are separated by the distance watershed that glands-he's card
uses (h=12, min 500 px). Each model is then scored on the whole ``--split`` images (pixel
Dice, IoU and accuracy pooled over the split; GlaS object F1 and object Dice), and timed:
CPU ms for one 512x512 tile (batch 1, fp32, median of 3 after a warm-up, as
``bench_models.py``, all measured before any training), relative to U-Net in the same run.

The first table compares architectures with the default loss (MONAI ``DiceCELoss``); the
second compares losses on U-Net (its ``dice_ce`` row is the same run as in the first).
The default budget (200 steps of 4 patches, about 20 minutes on 2 CPU cores for the lot)
ranks the architectures early in training; on a GPU use ``--steps 3000 --batch-size 8``.
``--unet-features`` sizes every U-Net run (e.g. the bundled models' 16-128 widths, to weigh
size against accuracy). Models are trained in a temporary store, deleted afterwards.
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

POSTPROCESS = {"split": "distance", "h": 12.0, "min_size": 500, "fill_holes": True}


def run(arch: str, loss: str, train_pairs, val_pairs, test_pairs, args, speed) -> dict:
    """Train one model and score it; a row of the table (``speed``: bench_models.measure)."""
    import numpy as np

    from napari_glandseg.inference import segment
    from napari_glandseg.metrics import evaluate_dataset
    from napari_glandseg.postprocessing import PostprocessParams, postprocess
    from napari_glandseg.training import TrainParams, train

    epochs = max(1, args.steps // args.steps_per_epoch)
    params = TrainParams(
        name=f"cmp-{arch}-{loss}", architecture=arch, arch_kwargs=_kwargs(arch, args),
        loss=loss, target="mask",
        patch_size=args.patch_size, batch_size=args.batch_size, epochs=epochs,
        steps_per_epoch=args.steps_per_epoch, lr=args.lr, val_patches=16, seed=0,
        pixel_size_um=0.62, postprocess=POSTPROCESS)
    t0 = time.perf_counter()
    result = train(train_pairs, val_pairs, params)
    train_s = time.perf_counter() - t0
    post = PostprocessParams(**POSTPROCESS)
    items = []
    for p in test_pairs:
        res = segment(p.image, result.model, tile_size=1024, return_probabilities=False)
        items.append((p.name, postprocess(np.asarray(res.labels), post), p.mask))
    _, s = evaluate_dataset(items, hausdorff=False)
    return {"arch": speed["arch"], "architecture": arch, "loss": loss,
            "dice": s["dice"], "iou": s["iou"], "accuracy": s["accuracy"],
            "object_f1": s["object_f1"], "object_dice": s["object_dice"],
            "params_m": speed["params_m"], "cpu_ms_512": speed["ms"],
            "train_s": train_s, "best_epoch": result.best_epoch,
            "best_val_score": result.best_score}


def _kwargs(arch: str, args) -> dict:
    if arch == "unet" and args.unet_features:
        return {"features": [int(v) for v in args.unet_features.split(",")]}
    return {}


def table(rows: list[dict], first: str, key) -> str:
    base = next((r["cpu_ms_512"] for r in rows if r["architecture"] == "unet"), None)
    lines = [f"| {first} | Dice | IoU | accuracy | object F1 | object Dice | parameters (M) "
             "| CPU ms / 512² | vs U-Net | train s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['cpu_ms_512'] / base:.2f}x" if base else "-"
        lines.append(f"| {key(r)} | {r['dice']:.3f} | {r['iou']:.3f} | {r['accuracy']:.3f} | "
                     f"{r['object_f1']:.3f} | {r['object_dice']:.3f} | {r['params_m']:.2f} | "
                     f"{r['cpu_ms_512']:.0f} | {ratio} | {r['train_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    from napari_glandseg.models import Architecture
    from napari_glandseg.training import Loss

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/glas"),
                    help="the GlaS folder (train/, testA/, split.csv)")
    ap.add_argument("--steps", type=int, default=200, help="training steps per model")
    ap.add_argument("--steps-per-epoch", type=int, default=25,
                    help="validation (and checkpoint choice) every this many steps")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--patch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--split", default="testA", help="the GlaS folder to score on")
    ap.add_argument("--max-images", type=int, help="score on the first N images only")
    ap.add_argument("--only", help="comma-separated architectures (default: all)")
    ap.add_argument("--losses", default="bce,dice_ce,bce_focal_dice",
                    help="losses to compare on U-Net (empty: none)")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--unet-features", help="U-Net widths, 6 comma-separated integers "
                    "(default: MONAI BasicUNet's 32,32,64,128,256,32)")
    args = ap.parse_args(argv)

    archs = [a.value for a in Architecture]
    if args.only:
        archs = [Architecture(a.strip()).value for a in args.only.split(",")]
    losses = [Loss(v.strip()).value for v in args.losses.split(",") if v.strip()]

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
              "patches per model, seed 0", flush=True)
        done: dict[tuple[str, str], dict] = {}
        for arch, loss in [(a, "dice_ce") for a in archs] + [("unet", x) for x in losses]:
            if (arch, loss) in done:
                continue
            row = run(arch, loss, train_pairs, val_pairs, test_pairs, args, speed[arch])
            done[(arch, loss)] = row
            print(f"{row['arch']} + {loss}: Dice {row['dice']:.3f}, object F1 "
                  f"{row['object_f1']:.3f}, object Dice {row['object_dice']:.3f} "
                  f"({row['train_s']:.0f} s training)", flush=True)
    finally:
        shutil.rmtree(store, ignore_errors=True)

    arch_rows = [done[(a, "dice_ce")] for a in archs]
    loss_rows = [done[("unet", x)] for x in losses]
    print(f"\nArchitectures (loss dice_ce), scored on GlaS {args.split}:\n")
    print(table(arch_rows, "architecture", lambda r: r["arch"]))
    if loss_rows:
        print(f"\nLosses (U-Net), scored on GlaS {args.split}:\n")
        print(table(loss_rows, "loss", lambda r: r["loss"]))
    if args.json:
        args.json.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                         "rows": list(done.values())}, indent=1))


if __name__ == "__main__":
    main()
