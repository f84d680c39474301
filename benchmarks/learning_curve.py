"""Learning curves of a training run: whole-image validation scores against steps.

    python benchmarks/learning_curve.py --run ~/glandseg-runs/glands-mine --png curve.png
    python benchmarks/learning_curve.py --name my-model        # a run without --run-dir
    python benchmarks/learning_curve.py --run ~/glandseg-runs/b --against ~/glandseg-runs/a

Reads the run folder's ``history.jsonl`` (``glandseg train --run-dir``), or the saved
state of a run without one (``<store>/training/<name>.state.pt``), and prints a Markdown
table of the validation epochs; with ``--png`` also draws them (matplotlib, no display
needed). Per-group scores (``objects[benign]``, ``objects[malignant]``) are drawn dashed.
``--against RUN`` compares two runs step by step on the score each selects on (two heads or
settings at an equal budget: the same schedule, the same validation steps).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KEYS = ("val_image_dice", "val_object_f1", "val_object_dice", "val_aji", "val_pq",
        "val_objects_worst")


def read_history(run: str | None, name: str | None) -> list[dict]:
    """One record per epoch, from a run folder or a run's saved state."""
    if run:
        path = Path(run).expanduser() / "history.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    import torch

    from napari_glandseg.training import state_path_for

    st = torch.load(state_path_for(name), map_location="cpu", weights_only=True)
    return list(st["history"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="a run folder (glandseg train --run-dir)")
    src.add_argument("--name", help="the model name of a run without a run folder")
    ap.add_argument("--png", help="write a plot here")
    ap.add_argument("--title", help="the plot's title (default: the run's name)")
    ap.add_argument("--against", help="another run folder: both selection scores by step")
    args = ap.parse_args(argv)
    if args.against:
        return compare(args.run, args.against, args.png)

    hist = [h for h in read_history(args.run, args.name) if h.get("score") is not None]
    if not hist:
        raise SystemExit("no validation epoch in this run yet")
    keys = [k for k in KEYS if k in hist[0]]
    groups = sorted({k for h in hist for k in h if k.startswith("val_objects[")})
    best = max(hist, key=lambda h: h["score"])
    cols = keys + groups
    print("| step | " + " | ".join(c.removeprefix("val_") for c in cols) + " | kept |")
    print("|---:|" + "---:|" * len(cols) + "---|")
    for h in hist:
        print(f"| {h['step']} | " + " | ".join(f"{h.get(k, float('nan')):.3f}" for k in cols)
              + f" | {'best so far' if h.get('best') else ''} |")
    print(f"best score {best['score']:.4f} at step {best['step']} (epoch {best['epoch']})")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
        steps = [h["step"] for h in hist]
        for k in keys:
            ax.plot(steps, [h[k] for h in hist], label=k.removeprefix("val_"), lw=1.2)
        for k in groups:
            ax.plot(steps, [h.get(k, float("nan")) for h in hist], ls="--", lw=1.0,
                    label=k.removeprefix("val_"))
        ax.axvline(best["step"], color="grey", ls=":", label="kept")
        ax.set_xlabel("training step (batch of 8)")
        ax.set_ylabel("validation score")
        title = args.title or Path(args.run or args.name).name
        ax.set_title(f"{title}: whole validation images, after post-processing", fontsize=9)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(args.png)
        print(f"wrote {args.png}")


def compare(run: str | None, other: str, png: str | None = None) -> None:
    """Both runs' selection scores at the steps both validated, their means over those
    steps and each one's best so far; with ``png`` both curves."""
    if not run:
        raise SystemExit("--against compares two run folders: give --run too")
    runs = {Path(r).expanduser().name: {h["step"]: h["score"] for h in read_history(r, None)
                                         if h.get("score") is not None}
            for r in (other, run)}
    (a, ha), (b, hb) = runs.items()
    steps = sorted(set(ha) & set(hb))
    if not steps:
        raise SystemExit("the two runs have no validation step in common")
    print(f"| step | {a} | {b} | {a} best so far | {b} best so far |")
    print("|---:|---:|---:|---:|---:|")
    for s in steps:
        print(f"| {s} | {ha[s]:.3f} | {hb[s]:.3f} | "
              f"{max(v for k, v in ha.items() if k <= s):.3f} | "
              f"{max(v for k, v in hb.items() if k <= s):.3f} |")
    mean_a = sum(ha[s] for s in steps) / len(steps)
    mean_b = sum(hb[s] for s in steps) / len(steps)
    print(f"mean over the {len(steps)} common validations (steps {steps[0]}-{steps[-1]}): "
          f"{a} {mean_a:.4f}, {b} {mean_b:.4f}")
    if png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
        for name, h in runs.items():
            ax.plot(steps, [h[s] for s in steps], label=name, lw=1.2)
        ax.set_xlabel("training step")
        ax.set_ylabel("selection score (whole val images)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(png)
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
