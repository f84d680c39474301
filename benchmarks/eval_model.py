"""Evaluate a model on a dataset split the way the challenges do, and time it.

    python benchmarks/eval_model.py --model glands-he --data DATA/glas \
        --truth-folder instances_cc --split test [--split val] [--bundle OUT.safetensors]

Segments every image of the chosen split(s) (``suggested_split`` in ``split.csv``), applies
the model card's post-processing, and scores against instance ground truth with
:func:`napari_glandseg.evaluate_dataset`. Also times segmenting a 1000x1000 crop. With
``--bundle`` the measured metrics go into the card and the model is written there with
float16 weights (the form shipped in the package).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")


def _split_names(data: Path, truth_folder, val_every, val_fraction) -> dict:
    """name -> split: ``split.csv`` when the folder has one, else the rule ``glandseg
    train`` uses (val_every, or the last val_fraction in name order)."""
    from napari_glandseg.io import find_pairs
    from napari_glandseg.training import read_split, split_names

    if (data / "split.csv").exists():
        return read_split(data / "split.csv")
    names = [p.name for p in find_pairs(data, mask_folder=truth_folder) if p.mask is not None]
    return split_names(names, val_fraction, val_every)


def evaluate_split(model, data: Path, split: str, truth_folder: str, tta: bool,
                   val_every=None, val_fraction=0.2):
    """Segment and score one split, on the objects the plugin shows
    (:func:`~napari_glandseg.pipeline.objects_of`): binary, boundary and levels models on
    the post-processed instances; class-map models on the cleaned class map (objects are
    its connected regions) with per-class Dice."""
    from napari_glandseg.inference import segment
    from napari_glandseg.io import find_pairs, read_image
    from napari_glandseg.metrics import evaluate_dataset
    from napari_glandseg.pipeline import objects_of, postprocess_for

    splits = _split_names(data, truth_folder, val_every, val_fraction)
    card = model.card
    # a class map of more than one foreground class is also scored class by class
    classes = card.num_classes if card.class_map and card.num_classes > 2 else None
    post = postprocess_for(card)  # the objects every route makes (objects_of below)
    items, seconds = [], 0.0
    for pair in find_pairs(data, mask_folder=truth_folder):
        if pair.mask is None or splits.get(pair.name) != split:
            continue
        image = read_image(pair.image, as_labels=False).data
        t0 = time.perf_counter()
        res = segment(image, model, tile_size=512, tta=tta, return_probabilities=False)
        obj = objects_of(res.labels, post, class_map=card.class_map)
        pred = obj.classes if classes else obj.labels
        seconds += time.perf_counter() - t0
        items.append((pair.name, pred, read_image(pair.mask, as_labels=True).data))
    rows, summary = evaluate_dataset(items, classes=classes)
    summary["seconds_per_image"] = seconds / max(len(items), 1)
    summary["items"] = items
    return rows, summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", type=Path, required=True, help="folder with train/testA/...")
    ap.add_argument("--truth-folder", default="instances_cc")
    ap.add_argument("--split", action="append", default=None)
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--val-every", type=int, help="no split.csv: ids divisible by N validate")
    ap.add_argument("--val-fraction", type=float, default=0.2,
                    help="no split.csv: the last fraction (name order) validates")
    ap.add_argument("--group-column", metavar="COLUMN",
                    help="a column of split.csv (GlaS: grade_glas): each group of a split "
                         "is also scored on its own (the card keeps them)")
    ap.add_argument("--version", help="the card's version (e.g. 0.4 for a new release)")
    ap.add_argument("--bundle", type=Path, help="write the model with metrics here (fp16)")
    ap.add_argument("--bundle-name", help="the bundled model's name in its card (e.g. the "
                                          "store name glands-he-r2 ships as glands-he)")
    args = ap.parse_args(argv)

    from napari_glandseg.inference import segment
    from napari_glandseg.models import load_model, save_checkpoint

    model = load_model(args.model)
    metrics = {}
    keys = ("dice", "iou", "object_f1", "object_dice", "object_hausdorff", "aji", "pq", "map")
    print(f"{model.name}: {model.card.summary().splitlines()[0]}")
    print("| split | images | " + " | ".join(keys) + " | s/image |")
    print("|---|---:|" + "---:|" * (len(keys) + 1))
    for split in args.split or ["val", "test"]:
        rows, s = evaluate_split(model, args.data, split, args.truth_folder, args.tta,
                                 args.val_every, args.val_fraction)
        metrics[split] = {k: round(float(s[k]), 4) for k in keys}
        metrics[split]["images"] = s["n_images"]
        print(f"| {split} | {s['n_images']} | " + " | ".join(f"{s[k]:.3f}" for k in keys)
              + f" | {s['seconds_per_image']:.2f} |")
        if args.group_column:
            from napari_glandseg.metrics import evaluate_dataset
            from napari_glandseg.training import read_groups

            groups = read_groups(args.data / "split.csv", args.group_column)
            for g in sorted(set(groups.values())):
                part = [it for it in s["items"] if groups.get(it[0]) == g]
                if not part:
                    continue
                _, sg = evaluate_dataset(part, classes=None)
                metrics[f"{split}[{g}]"] = {k: round(float(sg[k]), 4) for k in keys}
                metrics[f"{split}[{g}]"]["images"] = len(part)
                print(f"| {split} {g} | {len(part)} | "
                      + " | ".join(f"{sg[k]:.3f}" for k in keys) + " | |")
        for c, cm in s.get("per_class", {}).items():
            name = model.card.class_names[c]
            metrics[split][f"dice_{name}"] = round(float(cm["dice"]), 4)
            metrics[split][f"iou_{name}"] = round(float(cm["iou"]), 4)
            print(f"  {split} {name}: Dice {cm['dice']:.4f}  IoU {cm['iou']:.4f} (pooled)")
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 255, (1000, 1000, model.card.in_channels), dtype=np.uint8)
    segment(crop[:256, :256], model, tile_size=512)
    t0 = time.perf_counter()
    segment(crop if model.card.in_channels > 1 else crop[..., 0], model, tile_size=512)
    t1000 = time.perf_counter() - t0
    print(f"1000x1000 inference: {t1000:.2f} s on the CPU")
    metrics["cpu_seconds_1000x1000"] = round(t1000, 2)
    if args.bundle:
        card = model.card
        card.metrics = {**card.metrics, **metrics}
        if args.bundle_name:
            card.name = args.bundle_name
        if args.version:
            card.version = args.version
        save_checkpoint(args.bundle, model.net, card, half=True, overwrite=True)
        print(f"wrote {args.bundle} ({args.bundle.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
