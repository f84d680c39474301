"""Learning curves of a training run: validation object scores per epoch.

    python benchmarks/learning_curve.py --name glands-he-r2 --png docs/images/curve-glands.png

Reads the run's saved state (``<store>/training/<name>.state.pt``, written after every
epoch by ``glandseg train``) and prints a Markdown table of the per-epoch validation scores;
with ``--png`` also draws them (matplotlib, no display needed).
"""

from __future__ import annotations

import argparse


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True, help="the run's model name")
    ap.add_argument("--png", help="write a plot here")
    ap.add_argument("--every", type=int, default=1, help="print every N-th epoch")
    args = ap.parse_args(argv)

    import torch

    from napari_glandseg.training import state_path_for

    st = torch.load(state_path_for(args.name), map_location="cpu", weights_only=True)
    hist = st["history"]
    keys = [k for k in ("train_loss", "val_loss", "val_image_dice", "val_object_f1",
                        "val_object_dice", "val_aji", "val_pq") if k in hist[0]]
    print("| epoch | " + " | ".join(keys) + " | kept |")
    print("|---:|" + "---:|" * len(keys) + "---|")
    for h in hist:
        if h["epoch"] % args.every == 0 or h["best"] or h is hist[-1]:
            print(f"| {h['epoch']} | " + " | ".join(f"{h[k]:.3f}" for k in keys)
                  + f" | {'best so far' if h['best'] else ''} |")
    print(f"selected on {st['select']}: best {st['best']:.4f} at epoch {st['best_epoch'] + 1}")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        ep = [h["epoch"] for h in hist]
        for k in keys:
            if k.startswith("val_") and k != "val_loss":
                ax.plot(ep, [h[k] for h in hist], label=k.removeprefix("val_"))
        ax.axvline(st["best_epoch"] + 1, color="grey", ls=":", label="kept")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation score")
        ax.set_title(f"{args.name}: whole validation images, after post-processing")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.png)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
