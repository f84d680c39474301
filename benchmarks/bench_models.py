"""Parameters, GFLOPs and CPU forward time of each architecture at its default size.

    python benchmarks/bench_models.py [--size 512] [--repeats 3] [--threads N]

Times are the median of ``--repeats`` runs after one warm-up, batch 1, fp32, eval mode; the
last column is the time relative to U-Net measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode

from napari_glandseg.models import Architecture, build_model

warnings.filterwarnings("ignore")


def measure(arch: str, size: int, repeats: int, **arch_kwargs) -> dict:
    net = build_model(arch, 3, 1, **arch_kwargs).eval()
    x = torch.randn(1, 3, size, size)
    params = sum(p.numel() for p in net.parameters())
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            net(x)
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - t0)
    return {"arch": Architecture(arch).label, "params_m": params / 1e6,
            "gflops": counter.get_total_flops() / 2e9,  # multiply-adds, as papers report
            "ms": 1000 * statistics.median(times[1:])}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [measure(a.value, args.size, args.repeats) for a in Architecture]
    base = next(r["ms"] for r in rows if r["arch"] == "U-Net")
    print(f"1x3x{args.size}x{args.size}, CPU, {args.threads} threads, torch {torch.__version__}")
    print("| architecture | parameters (M) | GMACs | CPU ms | vs U-Net |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['arch']} | {r['params_m']:.2f} | {r['gflops']:.1f} | {r['ms']:.0f} | "
              f"{r['ms'] / base:.2f}x |")


if __name__ == "__main__":
    main()
