"""Training speed on the CPU: our loop vs a bare torch loop, same model, data and batches.

    python benchmarks/bench_training.py --data DATA [--steps 20]

Default U-Net, batch 8 of 256x256 GlaS patches, DiceCE loss, AdamW. ``bare`` is the
textbook loop (sample with the same sampler, forward, loss, backward, step) in fp32;
``bare-channels-last`` the same with channels-last memory, which our loop always uses;
``bare-auto`` the same at the precision ``napari_glandseg.precision`` chooses here;
``ours-fp32`` is :func:`napari_glandseg.train` forced to fp32 (its time over
``bare-channels-last`` is the loop's overhead); ``ours`` is the default (bf16 autocast only
where it is measurably faster, else fp32; its time over ``bare-auto`` is the overhead).
Validation is kept to 2 patches so the loops compare like for like.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from _common import data_default  # noqa: E402

warnings.filterwarnings("ignore")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=data_default(""),
                    required=data_default() is None)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args(argv)
    os.environ["GLANDSEG_MODELS_DIR"] = tempfile.mkdtemp()
    import torch

    from napari_glandseg.models import build_model
    from napari_glandseg.training import (
        Loss,
        PatchSampler,
        Target,
        TrainParams,
        make_loss,
        make_target,
        pairs_from_folder,
        train,
    )

    pairs = pairs_from_folder(args.data / "glas", args.data / "glas" / "split.csv", limit=10)
    common = {"architecture": "unet", "patch_size": 256, "batch_size": 8, "epochs": 1,
              "steps_per_epoch": args.steps, "val_patches": 2, "seed": 0}

    def bare_loop(channels_last: bool, amp=None) -> float:
        """The textbook loop: same sampler, model, loss and optimiser (fp32, or autocast to
        ``amp``)."""
        torch.manual_seed(0)
        params = TrainParams(**common)
        net = build_model("unet", 3, 1).train()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        net.to(memory_format=fmt)
        targets = [make_target(p.mask, Target.MASK, 1) for p in pairs]
        sampler = PatchSampler(pairs, targets, params, "imagenet", np.random.default_rng(0))
        loss_fn = make_loss(Loss.DICE_CE, 1)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            batch = [sampler.sample(True) for _ in range(8)]
            x = torch.from_numpy(np.stack([b[0] for b in batch])).contiguous(
                memory_format=fmt)
            y = torch.from_numpy(np.stack([b[1] for b in batch]).astype(np.int64))
            opt.zero_grad()
            with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
                out = net(x)
            loss = loss_fn(out.float(), y)
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    bare = bare_loop(False)
    from napari_glandseg.precision import autocast_dtype, resolve

    chosen = resolve("auto", "cpu")
    rows = {"bare": bare, "bare-channels-last": bare_loop(True),
            f"bare-auto ({chosen})": bare_loop(True, autocast_dtype(chosen))}
    for name, precision in (("ours-fp32", "fp32"), ("ours", "auto")):
        t0 = time.perf_counter()
        train(pairs[:8], pairs[8:], TrainParams(name=name, precision=precision, **common))
        rows[name] = time.perf_counter() - t0
    print(f"default U-Net, batch 8 x 256^2 GlaS patches, {args.steps} steps, CPU "
          f"{torch.get_num_threads()} threads (ours includes 1 validation + checkpoint save)")
    auto = rows[f"bare-auto ({chosen})"]
    print("| loop | s | steps/s | time vs bare fp32 | vs bare-channels-last | vs bare-auto |")
    print("|---|---:|---:|---:|---:|---:|")
    for k, v in rows.items():
        print(f"| {k} | {v:.1f} | {args.steps / v:.2f} | {v / bare:.2f}x | "
              f"{v / rows['bare-channels-last']:.2f}x | {v / auto:.2f}x |")


if __name__ == "__main__":
    main()
