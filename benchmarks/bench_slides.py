"""Slides block by block: workers, memory per worker, tissue detection.

    python benchmarks/bench_slides.py --data DATA [--only workers,memory,tissue]
                                      [--size 4096] [--big 20000] [--work DIR]

Three measurements, each against a baseline run in the same process:

- **workers**: a ``--size``^2 RGB zarr mosaic of GlaS images (tissue everywhere), small U-Net
  (as bench_large.py), blocks of 1024 + 128 halo, on a dask LocalCluster of 1 then 2 worker
  processes (one torch thread each); throughput and the 2-vs-1 ratio;
- **memory**: peak RSS of each worker (2 workers) segmenting a 5000^2 and a ``--big``^2
  mosaic (blocks of 2048 + 128), over the worker's RSS before the run; the ratio shows that
  memory is bounded by the block, not the slide;
- **tissue**: the bundled glands-he model on the bundled SVS (``wsi/cmu_small_region.svs``),
  and the small U-Net on a mosaic where tissue islands cover about a quarter of the glass,
  each with the tissue mask on and off (in this process); the seconds and the speed-up.

Timings exclude starting the cluster (workers import torch once). The network is kept small
where the point is the block machinery, not the network.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import data_default, rss_mb  # noqa: E402
from bench_large import build_mosaic  # noqa: E402

warnings.filterwarnings("ignore")


def small_unet(path: Path) -> str:
    import torch

    from napari_glandseg.models import ModelCard, build_model, save_checkpoint

    torch.manual_seed(0)
    kw = {"features": [8, 8, 16, 16, 32, 8]}
    card = ModelCard(name="small", architecture="unet", in_channels=3, num_classes=1,
                     arch_kwargs=kw, postprocess={"split": "distance", "min_size": 30})
    return str(save_checkpoint(path, build_model("unet", 3, 1, **kw).eval(), card,
                               overwrite=True))


def _worker_setup(model):
    """One torch thread; imports and the model loaded before the clock starts."""
    import torch

    from napari_glandseg.inference import segment
    from napari_glandseg.slides.predictors import _cached_model

    torch.set_num_threads(1)
    segment(np.zeros((64, 64, 3), np.uint8), _cached_model(model), tile_size=64,
            device="cpu")
    return rss_mb()


def _worker_peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_cohort(slides, out, model, workers, block, overlap, tissue=False):
    import dask
    from distributed import Client, LocalCluster

    from napari_glandseg.inference import SegmentParams
    from napari_glandseg.slides import SlideParams
    from napari_glandseg.slides.cohort import segment_cohort, worker_environment

    # one core per worker, as the embedded cluster of --workers N gives on N cores
    with dask.config.set(worker_environment(workers, cores=workers)):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, memory_limit=0)
    with cluster, Client(cluster) as client:
        before = client.run(_worker_setup, model)
        t0 = time.perf_counter()
        res = segment_cohort(slides, out, model, client=client,
                             params=SlideParams(block_size=block, overlap=overlap,
                                                tissue=tissue),
                             seg=SegmentParams(tile_size=512, device="cpu",
                                               return_probabilities=True))
        seconds = time.perf_counter() - t0
        peaks = client.run(_worker_peak)
    if res.failed:
        raise SystemExit(f"failed: {res.failed}")
    rise = [peaks[w] - before[w] for w in peaks]
    return {"seconds": seconds, "peak_mb": max(peaks.values()), "rise_mb": max(rise),
            "objects": sum(r.n_objects for r in res.done)}


def in_process(path, out, model):
    """The same slide with iter_segment_slide in this process (one torch thread)."""
    import torch

    from napari_glandseg.inference import SegmentParams, segment
    from napari_glandseg.slides import SlideParams, segment_slide
    from napari_glandseg.slides.predictors import _cached_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    segment(np.zeros((64, 64, 3), np.uint8), _cached_model(model), tile_size=64, device="cpu")
    t0 = time.perf_counter()
    res = segment_slide(str(path), out, model, seg=SegmentParams(tile_size=512, device="cpu"),
                        params=SlideParams(block_size=1024, overlap=128, tissue=False))
    seconds = time.perf_counter() - t0
    torch.set_num_threads(threads)
    return {"seconds": seconds, "peak_mb": float("nan"), "objects": res.n_objects}


def mosaic_with_background(data: Path, size: int, path: Path, seed: int = 0) -> float:
    """Glass (RGB ~235) with rectangular GlaS tissue islands; a 1/16 level beside it (as a
    slide's pyramid). Returns the tissue fraction."""
    import zarr

    from napari_glandseg.io import read_image

    rng = np.random.default_rng(seed)
    files = sorted((data / "glas" / "train" / "images").glob("*.jpg"))[:12]
    tiles = []
    for f in files:
        t = read_image(f).data[:512, :768]
        tiles.append(np.pad(t, ((0, 512 - t.shape[0]), (0, 768 - t.shape[1]), (0, 0)),
                            mode="reflect"))
    z = zarr.open_array(str(path / "0"), mode="w", shape=(size, size, 3),
                        chunks=(1024, 1024, 3), dtype="uint8")
    # a tissue section: an ellipse of tiles covering about 30% of the glass, off centre
    gy, gx = np.mgrid[: size // 512, : size // 768]
    cy, cx = 0.45 * gy.shape[0], 0.4 * gx.shape[1]
    islands = ((gy - cy) / (0.33 * gy.shape[0])) ** 2 + ((gx - cx) / (0.3 * gx.shape[1])) ** 2 < 1
    for y in range(0, size, 1024):
        h = min(1024, size - y)
        row = np.full((h, size, 3), 235, np.uint8)
        row += rng.integers(0, 8, row.shape, dtype=np.uint8)
        for iy in range(y // 512, (y + h + 511) // 512):
            for ix in range(islands.shape[1]):
                if iy < islands.shape[0] and islands[iy, ix]:
                    t = tiles[(iy + ix) % len(tiles)]
                    ty0 = iy * 512 - y
                    a, b = max(0, ty0), min(h, ty0 + 512)
                    w = min(768, size - ix * 768, t.shape[1])
                    row[a:b, ix * 768: ix * 768 + w] = t[a - ty0: b - ty0, :w]
        z[y: y + h] = row
    low = np.asarray(z[::16, ::16])
    zl = zarr.open_array(str(path / "1"), mode="w", shape=low.shape, chunks=low.shape,
                         dtype="uint8")
    zl[:] = low
    return float(islands.mean())


def open_levels(path: Path):
    import dask.array as da

    return [da.from_zarr(str(path / "0")), da.from_zarr(str(path / "1"))]


def tissue_runs(levels, out: Path, model: str, block: int, overlap: int, seg, px=None):
    from napari_glandseg.slides import SlideParams, segment_slide

    rows = {}
    for tissue in (False, True):
        t0 = time.perf_counter()
        res = segment_slide(levels, out / f"t{int(tissue)}", model, seg=seg,
                            pixel_size_um=px, name="s",
                            params=SlideParams(block_size=block, overlap=overlap,
                                               tissue=tissue))
        rows[tissue] = {"seconds": time.perf_counter() - t0, "blocks": res.blocks,
                        "run": res.blocks - res.blocks_skipped_tissue,
                        "objects": res.n_objects,
                        "mask_s": res.info.get("tissue_seconds", 0.0)}
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=data_default(""),
                    required=data_default() is None)
    ap.add_argument("--only", default="workers,memory,tissue")
    ap.add_argument("--size", type=int, default=4096, help="mosaic side for workers")
    ap.add_argument("--big", type=int, default=20000, help="largest mosaic for memory")
    ap.add_argument("--bg-size", type=int, default=8192, help="mosaic with glass, for tissue")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    work = Path(args.work or tempfile.mkdtemp(prefix="glandseg-bench-slides-"))
    work.mkdir(parents=True, exist_ok=True)
    model = small_unet(work / "small.safetensors")
    lines = []
    try:
        if "workers" in only:
            path = work / f"mosaic_{args.size}.zarr"
            build_mosaic(args.data, args.size, path)
            rows = {"in this process, no dask": in_process(path, work / "w0", model)}
            for n in (1, 2):
                rows[n] = run_cohort([str(path)], work / f"w{n}", model, n, 1024, 128)
                print(f"  {n} worker(s): {rows[n]['seconds']:.1f} s", file=sys.stderr)
            mp = args.size ** 2 / 1e6
            lines += [f"Workers: {args.size}x{args.size} mosaic, small U-Net, blocks 1024 + 128, "
                      "1 torch thread per worker, CPU",
                      "| workers | s | MPix/s | vs 1 worker | peak RSS per worker MB |",
                      "|---|---:|---:|---:|---:|"]
            for n, r in rows.items():
                lines.append(f"| {n} | {r['seconds']:.1f} | {mp / r['seconds']:.2f} | "
                             f"{rows[1]['seconds'] / r['seconds']:.2f}x | {r['peak_mb']:.0f} |")
            lines.append("")
            shutil.rmtree(path, ignore_errors=True)
        if "memory" in only:
            rows = {}
            for size in (5000, args.big):
                path = work / f"mosaic_{size}.zarr"
                build_mosaic(args.data, size, path)
                rows[size] = run_cohort([str(path)], work / f"m{size}", model, 2, 2048, 128)
                shutil.rmtree(path, ignore_errors=True)
                shutil.rmtree(work / f"m{size}", ignore_errors=True)
                print(f"  {size}: {rows[size]['seconds']:.0f} s, rise "
                      f"{rows[size]['rise_mb']:.0f} MB", file=sys.stderr)
            lines += ["Memory: 2 workers, blocks 2048 + 128, small U-Net, CPU",
                      "| mosaic | image MB | s | peak RSS per worker MB | rise over start MB "
                      "| rise vs 5000^2 |", "|---|---:|---:|---:|---:|---:|"]
            for size, r in rows.items():
                lines.append(f"| {size}x{size} | {size * size * 3 / 2**20:.0f} | "
                             f"{r['seconds']:.0f} | {r['peak_mb']:.0f} | {r['rise_mb']:.0f} | "
                             f"{r['rise_mb'] / rows[5000]['rise_mb']:.2f}x |")
            lines.append("")
            print("\n".join(lines), flush=True)
            lines = []
        if only & {"tissue", "tissue-mosaic"}:
            from napari_glandseg.inference import SegmentParams
            from napari_glandseg.io import read_image

            svs = args.data / "wsi" / "cmu_small_region.svs"
            img = read_image(svs)
            levels = img.data if img.multiscale else [img.data]
            seg = SegmentParams(device="cpu")
            svs_rows = None
            if "tissue" in only:
                svs_rows = tissue_runs(levels, work / "svs", "glands-he", 512, 128, seg,
                                       img.pixel_size_um)
            path = work / "bg.zarr"
            frac = mosaic_with_background(args.data, args.bg_size, path)
            bg_rows = tissue_runs(open_levels(path), work / "bg", model, 1024, 128,
                                  SegmentParams(tile_size=512, device="cpu"))
            lines += ["Tissue detection (in this process, 2 CPU threads)",
                      "| image | model | tissue mask | blocks run | s | speed-up | mask s |",
                      "|---|---|---|---:|---:|---:|---:|"]
            for label, mname, rows in (
                    (f"bundled SVS {img.shape[1]}x{img.shape[0]}", "glands-he", svs_rows),
                    (f"{args.bg_size}^2 mosaic, {frac:.0%} tissue", "small U-Net", bg_rows)):
                if rows is None:
                    continue
                for tissue in (False, True):
                    r = rows[tissue]
                    lines.append(f"| {label} | {mname} | {'on' if tissue else 'off'} | "
                                 f"{r['run']}/{r['blocks']} | {r['seconds']:.1f} | "
                                 f"{rows[False]['seconds'] / r['seconds']:.2f}x | "
                                 f"{r['mask_s']:.2f} |")
            lines.append("")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print("\n".join(lines))
    print(f"(this process: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"
          f" MB, now {rss_mb():.0f} MB)")


if __name__ == "__main__":
    main()
