"""Post-processing search (``glandseg tune``): settings scored in this process against one
worker process per core, in the same run.

    python benchmarks/bench_tune.py [--data DATA/glas] [--images 8] [--settings 48]

A bundled model segments ``--images`` GlaS val images once (not timed); then the first
``--settings`` of its candidate grid are scored with ``workers=1`` and with the default (one
process per core, the first setting in this process), and the script prints both times, their
ratio and whether the two tables are the same row for row.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).parent))
from _common import data_default  # noqa: E402


def _predictions(model, data, n):
    import numpy as np

    from napari_glandseg.inference import SegmentParams
    from napari_glandseg.metrics import as_instances
    from napari_glandseg.pipeline import FileParams, objects_from_image
    from napari_glandseg.training import pairs_from_folder

    val = pairs_from_folder(data, data / "split.csv", ("val",), "instances_cc")[:n]
    pairs = [(p.image, p.mask) for p in val]
    seg = FileParams(segment=SegmentParams(return_probabilities=False), postprocess=None)
    out = []
    for image, truth in pairs:
        res = objects_from_image(image, model, seg, in_memory=True,
                                 pixel_size_um=model.card.data_pixel_size_um)
        out.append((np.asarray(res.segment.labels), as_instances(truth)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=data_default("glas"))
    ap.add_argument("--model", default="glands-he")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--settings", type=int, default=48)
    args = ap.parse_args(argv)
    if args.data is None:
        ap.error("set --data to the GlaS folder, or DATA to the folder of public data sets")

    from napari_glandseg import tune as T
    from napari_glandseg.metrics import summarise_objects
    from napari_glandseg.models import load_model
    from napari_glandseg.pipeline import postprocess_for

    model = load_model(args.model)
    predictions = _predictions(model, args.data, args.images)
    card = model.card
    grid = T.candidate_grid(postprocess_for(card), card.boundary_class,
                            card.levels)[:args.settings]
    times, tables = {}, {}
    for label, workers in (("in this process", 1),
                           ("worker processes", T.default_workers(len(grid)))):
        t0 = time.perf_counter()
        done = dict(T._scored(grid, predictions, workers))
        times[label] = time.perf_counter() - t0
        tables[label] = [summarise_objects(done[j]) for j in range(len(grid))]
        print(f"{label} ({workers} worker(s)): {times[label]:.1f} s for {len(grid)} settings "
              f"x {len(predictions)} images", flush=True)
    same = tables["in this process"] == tables["worker processes"]
    ratio = times["in this process"] / times["worker processes"]
    print(f"speed-up {ratio:.2f}x on {os.cpu_count()} CPU(s); tables identical: {same}")


if __name__ == "__main__":
    main()
