"""Organs on grey abdominal MRI (UW-Madison GI tract): architectures compared on val per class.

    python benchmarks/compare_mri.py --data DATA/uwm_gi_mri
        [--steps 600 | --minutes 45] [--only unet,unetpp,deeplabv3plus,effnet_unet]
        [--set patch_size=512 --set elastic=0.5] [--json rows.json] [--keep DIR]

Seed 002 compares UNet, UNet++ and DeepLabV3+ on this data by per-class Dice; so does this
script, with the pretrained EfficientNet-Lite0 U-Net beside them. Every run trains from the
same settings (``configs/organs-mri.json``: class map background / large bowel / small bowel
/ stomach, per-image percentile normalisation, 256 px patches, DiceCE, seed 0) for the same
number of steps, or (``--minutes``) for the same CPU time: each architecture's step time is
measured first (a few steps after a warm-up) and its schedule sized to fill the minutes, so a
cheap network gets more steps and every cosine schedule runs to its end. ``--set`` changes a
setting of the config for every run. The runs use the ``train`` cases of ``split.csv``; the
checkpoint is selected on the
``val`` cases (the class map's Dice class by class, averaged over the organs: ``class_dice``,
the default for class maps of several classes; rows before it used the pooled Dice). Each selected
model is then scored on the whole val slices: Dice per class pooled over the slices, and the
mean of the three organs. ``--keep DIR`` keeps the trained models (to ship the best one).
Only val is used: the further cases are kept aside for independent evaluation.
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

#: architecture -> (label, arch_kwargs / training settings): the sizes the glands models use
RUNS = {
    "unet": ("U-Net", {"architecture": "unet",
                       "arch_kwargs": {"features": [16, 32, 64, 128, 256, 16]}}),
    "unetpp": ("UNet++", {"architecture": "unetpp",
                          "arch_kwargs": {"features": [16, 32, 64, 128, 256, 16]}}),
    "deeplabv3plus": ("DeepLabV3+ (ResNet-34 layers, widths 32-256)",
                      {"architecture": "deeplabv3plus",
                       "arch_kwargs": {"widths": [32, 64, 128, 256], "aspp_channels": 128}}),
    "effnet_unet": ("U-Net on EfficientNet-Lite0, ImageNet-pretrained",
                    {"encoder": "efficientnet-lite0", "pretrained": True, "arch_kwargs": {}}),
}


def score(model, pairs) -> dict:
    """Per-class pixel Dice pooled over the whole slices, and its mean over the organs."""
    import numpy as np

    from napari_glandseg.inference import segment
    from napari_glandseg.metrics import evaluate_dataset

    items = []
    for p in pairs:
        res = segment(p.image, model, tile_size=512, return_probabilities=False)
        items.append((p.name, np.asarray(res.labels), p.mask))
    k = model.card.num_classes
    _, s = evaluate_dataset(items, classes=k, hausdorff=False)
    per = {model.card.class_names[c]: s["per_class"][c]["dice"] for c in range(1, k)}
    return {"per_class": per, "mean": float(np.mean(list(per.values())))}


def step_seconds(params, train_pairs, val_pairs, warm: int = 3, timed: int = 6) -> float:
    """Seconds per training step of ``params``: ``timed`` steps after ``warm`` (the first
    steps build caches), in a throw-away run of the same settings."""
    from dataclasses import replace

    from napari_glandseg.training import iter_train

    probe = replace(params, name=f"{params.name}-probe", epochs=1,
                    steps_per_epoch=warm + timed)
    marks = []
    gen = iter_train(train_pairs, val_pairs, probe)
    try:
        for prog in gen:
            if prog.metrics and "loss" in prog.metrics:
                marks.append(time.perf_counter())
            if len(marks) == warm + timed:
                break
    finally:
        gen.close()
    return (marks[-1] - marks[warm - 1]) / timed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=data_default("uwm_gi_mri"),
                    required=data_default() is None)
    ap.add_argument("--steps", type=int, default=600, help="training steps per model")
    ap.add_argument("--minutes", type=float,
                    help="train each model for this much CPU time instead (its steps from "
                         "its measured step time)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config setting (JSON value), e.g. patch_size=512")
    ap.add_argument("--steps-per-epoch", type=int, default=50)
    ap.add_argument("--only", help="comma-separated runs (default: all)")
    ap.add_argument("--json", type=Path, help="write the rows here (after each run); rows "
                    "of other runs already there with the same budget and settings are kept, "
                    "so --only can finish a comparison in parts")
    ap.add_argument("--keep", type=Path, help="keep the trained models in this folder")
    args = ap.parse_args(argv)
    runs = [r.strip() for r in args.only.split(",")] if args.only else list(RUNS)
    for r in runs:
        if r not in RUNS:
            ap.error(f"unknown run {r!r}; choose from {', '.join(RUNS)}")

    store = str(args.keep) if args.keep else tempfile.mkdtemp(prefix="glandseg-mri-")
    Path(store).mkdir(parents=True, exist_ok=True)
    os.environ["GLANDSEG_MODELS_DIR"] = store
    import napari_glandseg
    from napari_glandseg.training import TrainParams, pairs_from_folder, train

    config = json.loads((Path(napari_glandseg.__file__).parent / "configs/organs-mri.json")
                        .read_text())
    for k in ("split_csv", "mask_folder", "data"):
        config.pop(k, None)
    for item in args.set:
        key, _, value = item.partition("=")
        config[key] = json.loads(value)
    csv = args.data / "split.csv"
    train_pairs = pairs_from_folder(args.data, csv, ("train",))
    val_pairs = pairs_from_folder(args.data, csv, ("val",))
    budget = f"{args.minutes:g} min" if args.minutes else f"{args.steps} steps"
    print(f"UW-Madison GI MRI: {len(train_pairs)} train, {len(val_pairs)} val slices; "
          f"{budget} per model; settings over the config: {args.set or 'none'}", flush=True)
    rows = []
    if args.json and args.json.exists():  # runs of the same budget done before are kept
        old = json.loads(args.json.read_text())
        if old.get("budget") == budget and old.get("set") == args.set:
            rows = [row for row in old["rows"] if row["run"] not in runs]
    try:
        for r in runs:
            label, settings = RUNS[r]
            # the config's encoder (the bundled model's) is not the other networks'
            own = {k: v for k, v in config.items()
                   if "encoder" in settings or k not in ("encoder", "pretrained")}
            base = {**own, **settings, "name": f"organs-mri-{r}",
                    "steps_per_epoch": args.steps_per_epoch}
            steps = args.steps
            if args.minutes:
                per_step = step_seconds(TrainParams(**base), train_pairs, val_pairs)
                # about 8 % of a run goes to validation and checkpoints
                steps = int(args.minutes * 60 * 0.92 / per_step)
                print(f"{label}: {per_step:.2f} s/step -> {steps} steps", flush=True)
            params = TrainParams(**{**base, "epochs": max(1, steps // args.steps_per_epoch)})
            t0 = time.perf_counter()
            result = train(train_pairs, val_pairs, params)
            s = score(result.model, val_pairs)
            n = sum(p.numel() for p in result.model.net.parameters()) / 1e6
            rows.append({"run": r, "label": label, **s, "params_m": n,
                         "best_epoch": result.best_epoch, "epochs": params.epochs,
                         "steps": params.epochs * params.steps_per_epoch,
                         "train_s": time.perf_counter() - t0})
            print(f"{label}: " + ", ".join(f"{c} {d:.3f}" for c, d in s["per_class"].items())
                  + f"; mean {s['mean']:.3f} (epoch {result.best_epoch}, "
                  f"{rows[-1]['train_s']:.0f} s)", flush=True)
            if args.json:
                args.json.write_text(json.dumps({"budget": budget, "set": args.set,
                                                 "rows": rows}, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(store, ignore_errors=True)
    names = list(rows[0]["per_class"]) if rows else []
    print("\n| architecture | " + " | ".join(names)
          + " | mean | parameters (M) | steps | best epoch | minutes |")
    print("|---|" + "---:|" * (len(names) + 5))
    for row in rows:
        print(f"| {row['label']} | " + " | ".join(f"{row['per_class'][c]:.3f}" for c in names)
              + f" | {row['mean']:.3f} | {row['params_m']:.2f} | {row['steps']} | "
              f"{row['best_epoch']}/{row['epochs']} | {row['train_s'] / 60:.0f} |")


if __name__ == "__main__":
    main()
