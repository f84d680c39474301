"""Tiles sized to the image vs fixed tiles: time and agreement of a segmentation.

    python benchmarks/bench_tiles.py [--model organs-mri] [--sizes 600,1000,1500,2048]

For each square image side, one image (MRI slices tiled, or random grey when ``$DATA`` is not
set) is segmented with the bundled model at tile 512, overlap 0.25, batch 4, twice in the same
process: with tiles cut as :func:`napari_glandseg.inference._tile_grid` cuts them (as many as
a grid of 512 needs, each only as large as that count needs) and with the fixed 512 tiles of
:func:`napari_glandseg.inference._grid` (the last one flush with the edge; as MONAI's
sliding window). Reports the pixels through the network, the best of ``--repeat`` times of
each, their ratio, and how many pixels' labels differ.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import data_default  # noqa: E402

warnings.filterwarnings("ignore")


def image_of(side: int, data: Path | None, channels: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    if data is None or not (data / "uwm_gi_mri").is_dir():
        shape = (side, side, channels) if channels > 1 else (side, side)
        return rng.integers(0, 255, shape, dtype=np.uint8)
    from skimage.io import imread

    slices = [imread(p) for p in sorted((data / "uwm_gi_mri" / "images").glob("*.png"))[:9]]
    grey = [s if s.ndim == 2 else s[..., 0] for s in slices]
    reps = -(-side // grey[0].shape[0])
    rows = [np.hstack([grey[(r * reps + c) % len(grey)] for c in range(reps)])
            for r in range(reps)]
    out = np.vstack(rows)[:side, :side]
    return np.repeat(out[..., None], channels, -1) if channels > 1 else out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="organs-mri")
    ap.add_argument("--data", type=Path, default=data_default(""))
    ap.add_argument("--sizes", default="600,1000,1500,2048")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    from napari_glandseg import inference
    from napari_glandseg.models import load_model

    model = load_model(args.model)
    fitted = inference._tile_grid

    def run(image, cut):
        inference._tile_grid = cut
        try:
            best, res = float("inf"), None
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                res = inference.segment(image, model, tile_size=args.tile, overlap=0.25,
                                        batch_size=4, return_probabilities=False)
                best = min(best, time.perf_counter() - t0)
            return best, res.labels
        finally:
            inference._tile_grid = fitted

    inference.segment(image_of(256, args.data, model.card.in_channels), model)  # warm up
    print(f"{model.name}, tile {args.tile}, overlap 0.25, batch 4, CPU "
          f"{torch.get_num_threads()} threads, best of {args.repeat}")
    print("| side | pixels through the network: fitted / fixed | fitted s | fixed s | "
          "time, fixed / fitted | labels differing |")
    print("|---:|---:|---:|---:|---:|---:|")
    for side in (int(s) for s in args.sizes.split(",")):
        image = image_of(side, args.data, model.card.in_channels)
        px = [sum(t[2] * t[3] for t in cut(side, side, args.tile, 0.25))
              for cut in (fitted, inference._grid)]
        t_fit, lab_fit = run(image, fitted)
        t_fix, lab_fix = run(image, inference._grid)
        differ = float(np.mean(np.asarray(lab_fit) != np.asarray(lab_fix)))
        print(f"| {side} | {px[0] / 1e6:.2f} / {px[1] / 1e6:.2f} MPix | {t_fit:.2f} | "
              f"{t_fix:.2f} | {t_fix / t_fit:.2f}x | {100 * differ:.2f} % |", flush=True)


if __name__ == "__main__":
    main()
