"""EfficientNet-Lite0 / Lite1 / Lite2 U-Nets compared at equal CPU minutes on a training config.

    python benchmarks/compare_encoders.py --config src/napari_glandseg/configs/glands-he.json \
        --data DATA/glas --minutes 12 --runs ~/glandseg-runs/compare [--only 0,1,2]

Each encoder (ImageNet-pretrained) trains from the same config, seed and data. Its step time
is measured first (a few steps, at the precision the run will use), and the run is given as
many epochs as fit ``--minutes`` with the config's validation schedule, on a cosine schedule
that ends there: each gets the same CPU time, not the same steps. Every run keeps its folder
(``--runs``/liteN, resumable), and the table gives its best whole-image validation score by
the config's ``select`` (glands: ``objects_worst``, the worse of the benign and malignant
images) with the per-group scores. Only validation images are used.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--minutes", type=float, default=12.0)
    ap.add_argument("--runs", required=True, type=Path)
    ap.add_argument("--only", default="0,1,2")
    args = ap.parse_args(argv)

    from napari_glandseg.training import TrainParams, split_pairs, train
    from napari_glandseg.training.loop import _setup, _train_epoch

    config = json.loads(Path(args.config).read_text())
    data_keys = ("split_csv", "mask_folder", "val_fraction", "val_every", "group_column")
    split_csv = args.data / config["split_csv"] if config.get("split_csv") else None
    train_pairs, val_pairs = split_pairs(args.data, split_csv, config.get("mask_folder"),
                                         config.get("val_fraction", 0.2),
                                         config.get("val_every"), config.get("group_column"))
    base = {k: v for k, v in config.items() if k not in data_keys}
    rows = []
    for v in (int(x) for x in args.only.split(",")):
        enc = f"efficientnet-lite{v}"
        probe = TrainParams(**{**base, "encoder": enc, "name": f"probe-lite{v}",
                               "steps_per_epoch": 6, "epochs": 1})
        run = _setup(train_pairs, val_pairs, probe)
        gen = _train_epoch(run, time.perf_counter())
        next(gen)  # the first step warms up
        t = time.perf_counter()
        for _ in gen:
            pass
        per_step = (time.perf_counter() - t) / 5
        # one whole-image validation, timed on the untrained run (same cost later)
        from napari_glandseg.models import Model
        from napari_glandseg.training.validation import validate_images

        t = time.perf_counter()
        validate_images(Model(run.net, run.card, device=run.device), run.val_pairs,
                        tile_size=1024)
        per_val = time.perf_counter() - t
        spe, every = base["steps_per_epoch"], base.get("validate_every", 1)
        per_epoch = spe * per_step + per_val / every
        epochs = max(every, int(args.minutes * 60 / per_epoch) // every * every)
        print(f"{enc}: {per_step:.2f} s/step ({run.precision}), validation {per_val:.0f} s; "
              f"{epochs} epochs of {spe} steps in {args.minutes:g} min", file=sys.stderr,
              flush=True)
        params = TrainParams(**{**base, "encoder": enc, "name": f"compare-lite{v}",
                                "epochs": epochs, "patience": 0})
        t = time.perf_counter()
        res = train(train_pairs, val_pairs, params, run_dir=args.runs / f"lite{v}",
                    resume=(args.runs / f"lite{v}" / "state.pt").exists() or None)
        best = next(h for h in res.history if h["epoch"] == res.best_epoch)
        groups = {k.removeprefix("val_objects[").rstrip("]"): round(val, 4)
                  for k, val in best.items() if k.startswith("val_objects[")}
        rows.append({"encoder": enc, "s_per_step": round(per_step, 3), "steps": res.history[-1]
                     ["step"], "minutes": round((time.perf_counter() - t) / 60, 1),
                     "best_epoch": res.best_epoch, "score": round(res.best_score, 4),
                     "objects": round(best.get("val_objects", float("nan")), 4), **groups})
        print(json.dumps(rows[-1]), flush=True)
    keys = sorted({k for r in rows for k in r} - {"encoder"}, key=str)
    print("| encoder | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for r in rows:
        print(f"| {r['encoder']} | " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
