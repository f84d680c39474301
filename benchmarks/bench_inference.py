"""Tiled inference throughput and peak memory: this engine vs MONAI vs the bare network.

    python benchmarks/bench_inference.py --data DATA [--size 4096] [--tile 512] [--arch A]

One RGB mosaic of ``--size`` x ``--size`` built from GlaS training images, the same network
(the default U-Net, or ``--arch effnet_unet``: glands-he's Lite1 U-Net; untrained weights:
timing only), the same tile size, overlap 0.25 and batch 4:

- ``ours``: :func:`napari_glandseg.segment` (Gaussian blending, labels + probabilities);
- ``monai``: ``monai.inferers.sliding_window_inference`` (mode="gaussian") + sigmoid/threshold;
- ``bare``: the network alone over the same tiles (normalise, stack, forward; no blending);
- ``ours-fp32``: ours forced to fp32 without channels-last, like ``bare`` and ``monai``, for
  the overhead ratios; ``ours`` is the default (``precision="auto"``, channels-last), which
  on a CPU with native bf16 uses bf16 autocast;
- ``ours-fp32-cl``: ours in fp32 with channels-last, the default on a CPU without bf16;
- ``ours-unfolded``: ours without folding the batch norms into the convolutions
  (:mod:`napari_glandseg.models.fold`), for that step's share.

Each engine runs in its own process; peak memory is the rise of the process's peak RSS over
its RSS just before the run (model and image already loaded). Ratios are against ``bare`` and
``monai`` from the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import data_default, rss_mb  # noqa: E402

warnings.filterwarnings("ignore")
ENGINES = ["bare", "monai", "ours-fp32", "ours-fp32-cl", "ours-unfolded", "ours"]
ARCH_KWARGS = {"unet": {}, "effnet_unet": {"variant": 1}}


def mosaic(data: Path, size: int) -> np.ndarray:
    from napari_glandseg.io import read_image

    folder = data / "glas" / "train" / "images"
    files = sorted(folder.glob("*.jpg"))
    if not files:
        raise SystemExit(f"no GlaS images under {folder}; pass --data DIR")
    out = np.zeros((size, size, 3), np.uint8)
    y = x = i = 0
    row_h = 0
    while y < size:
        tile = read_image(files[i % len(files)]).data
        i += 1
        h, w = min(tile.shape[0], size - y), min(tile.shape[1], size - x)
        out[y:y + h, x:x + w] = tile[:h, :w]
        row_h = max(row_h, h)
        x += w
        if x >= size:
            x, y, row_h = 0, y + row_h, 0
    return out


def run_engine(engine: str, data: Path, size: int, tile: int, arch: str = "unet") -> dict:
    import torch

    from napari_glandseg.inference import SegmentParams, _normalise, _tile_grid, segment
    from napari_glandseg.models import Model, ModelCard, build_model

    torch.manual_seed(0)
    image = mosaic(data, size)
    kwargs = ARCH_KWARGS[arch]
    card = ModelCard(name="bench", architecture=arch, in_channels=3, num_classes=1,
                     arch_kwargs=kwargs)
    model = Model(build_model(arch, 3, 1, **kwargs).eval(), card)
    if engine == "ours-unfolded":
        model._inference = model.net  # run the network as trained
    params = SegmentParams(tile_size=tile, overlap=0.25, batch_size=4)
    before = rss_mb()
    t0 = time.perf_counter()
    if engine == "bare":
        x = torch.from_numpy(_normalise(image, card.normalization, None))
        tiles = _tile_grid(size, size, tile, 0.25)
        with torch.inference_mode():
            for i in range(0, len(tiles), 4):
                batch = torch.stack([x[:, y:y + h, c:c + w] for y, c, h, w in tiles[i:i + 4]])
                model.net(batch)
    elif engine == "monai":
        from monai.inferers import sliding_window_inference

        x = torch.from_numpy(_normalise(image, card.normalization, None))[None]
        with torch.inference_mode():
            prob = torch.sigmoid(sliding_window_inference(
                x, (tile, tile), 4, model.net, overlap=0.25, mode="gaussian"))
            (prob > 0.5).to(torch.uint8)
    else:
        kw = {"ours-fp32": {"precision": "fp32", "channels_last": False},
              "ours-fp32-cl": {"precision": "fp32"}}.get(engine, {})
        segment(image, model, params=params, device="cpu", **kw)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"engine": engine, "seconds": seconds, "mpix_s": size * size / 1e6 / seconds,
            "peak_mb": peak - before}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=data_default(""),
                    required=data_default() is None)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--arch", choices=sorted(ARCH_KWARGS), default="unet")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_engine(args.one, args.data, args.size, args.tile, args.arch)))
        return
    rows = {}
    for engine in args.engines.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", engine, "--data",
                              str(args.data), "--size", str(args.size), "--tile",
                              str(args.tile), "--arch", args.arch],
                             capture_output=True, text=True, check=True)
        rows[engine] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  {engine}: {rows[engine]['seconds']:.1f} s", file=sys.stderr)
    import torch

    print(f"{args.size}x{args.size} RGB mosaic, tile {args.tile}, overlap 0.25, batch 4, "
          f"{args.arch} {ARCH_KWARGS[args.arch] or ''}, CPU {torch.get_num_threads()} threads")
    print("| engine | s | MPix/s | peak MB over start | time vs bare | MPix/s vs MONAI |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows.values():
        vs_bare = r["seconds"] / rows["bare"]["seconds"] if "bare" in rows else float("nan")
        vs_monai = r["mpix_s"] / rows["monai"]["mpix_s"] if "monai" in rows else float("nan")
        print(f"| {r['engine']} | {r['seconds']:.1f} | {r['mpix_s']:.3f} | {r['peak_mb']:.0f} | "
              f"{vs_bare:.2f}x | {vs_monai:.2f}x |")


if __name__ == "__main__":
    main()
