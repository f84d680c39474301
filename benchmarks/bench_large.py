"""Peak memory segmenting a 20000 x 20000 RGB image stored as a chunked zarr mosaic.

    python benchmarks/bench_large.py --data DATA [--size 20000] [--work DIR]

Builds the mosaic from GlaS training images on disk (zarr, 1024^2 chunks), opens it lazily
with dask, and segments it window by window with a small U-Net (memory is what is measured:
the network is kept small so the run takes minutes on a CPU). Prints the rise of peak RSS
over the RSS just before the run, next to the size of the image and of its labels, and the
same for a 4x smaller mosaic in the same run (the ratio shows memory does not grow with the
image). Aim: under 2 GB beyond the model.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import data_default  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _common import rss_mb  # noqa: E402

warnings.filterwarnings("ignore")


def build_mosaic(data: Path, size: int, path: Path):
    import zarr

    from napari_glandseg.io import read_image

    files = sorted((data / "glas" / "train" / "images").glob("*.jpg"))[:12]
    if not files:
        raise SystemExit(f"no GlaS images under {data}; pass --data DIR")
    tiles = []
    for f in files:
        t = read_image(f).data[:512, :768]
        pad = ((0, 512 - t.shape[0]), (0, 768 - t.shape[1]), (0, 0))
        tiles.append(np.pad(t, pad, mode="reflect"))
    z = zarr.open_array(str(path), mode="w", shape=(size, size, 3), chunks=(1024, 1024, 3),
                        dtype="uint8")
    for y in range(0, size, 1024):
        row = np.zeros((min(1024, size - y), size, 3), np.uint8)
        for x in range(0, size, 768):
            t = tiles[(y // 512 + x // 768) % len(tiles)]
            h, w = min(512, row.shape[0]), min(768, size - x)
            row[:h, x:x + w] = t[:h, :w]
            row[h:2 * h, x:x + w] = t[:min(h, row.shape[0] - h), :w][::-1]
        z[y:y + row.shape[0]] = row


def run_one(path: str, size: int) -> dict:
    import dask.array as da
    import torch

    from napari_glandseg.inference import segment
    from napari_glandseg.models import Model, ModelCard, build_model

    torch.manual_seed(0)
    kw = {"features": [8, 8, 16, 16, 32, 8]}
    card = ModelCard(name="small", architecture="unet", in_channels=3, num_classes=1,
                     arch_kwargs=kw)
    model = Model(build_model("unet", 3, 1, **kw).eval(), card)
    image = da.from_zarr(path)
    before = rss_mb()
    t0 = time.perf_counter()
    res = segment(image, model, tile_size=512, batch_size=4, window_size=4096,
                  return_probabilities=False)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    shutil.rmtree(res.store_path, ignore_errors=True)
    return {"size": size, "seconds": seconds, "peak_mb": peak,
            "image_mb": size * size * 3 / 2**20, "labels_mb": size * size / 2**20}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=data_default(""),
                    required=data_default() is None)
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--work", type=Path, default=None, help="where the zarr mosaics go")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]))))
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="glandseg-bench-"))
    rows = []
    try:
        for size in (args.size // 4, args.size):
            path = work / f"mosaic_{size}.zarr"
            build_mosaic(args.data, size, path)
            out = subprocess.run([sys.executable, __file__, "--one", str(path), str(size)],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            shutil.rmtree(path, ignore_errors=True)
            print(f"  {size}: {rows[-1]['seconds']:.0f} s", file=sys.stderr)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print("Lazy zarr RGB mosaic, small U-Net, tile 512, window 4096, CPU")
    print("| image | image MB | labels MB | s | MPix/s | peak MB over start | vs smaller |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']}x{r['size']} | {r['image_mb']:.0f} | {r['labels_mb']:.0f} | "
              f"{r['seconds']:.0f} | {r['size'] ** 2 / 1e6 / r['seconds']:.1f} | "
              f"{r['peak_mb']:.0f} | {r['peak_mb'] / rows[0]['peak_mb']:.2f}x |")


if __name__ == "__main__":
    main()
