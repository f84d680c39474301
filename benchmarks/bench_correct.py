"""Correcting objects: a simulated annotator, the review queue's ranking, and tool latency.

1. **Simulated annotator** on the GlaS and MoNuSeg validation images (``split.csv`` val rows;
   never test): start from the bundled model's objects (``segment`` with TTA, then the card's
   ``postprocess``), and fix the errors the truth reveals with the object tools until object
   F1 >= 0.95 (GlaS rule), one tool use per fix:

   - a predicted object covering two or more true objects: ``split_seeds`` with one click
     inside each (the most interior pixel of each true object);
   - a true object cut into pieces: ``merge`` (one click per piece);
   - a predicted object matching no true object: ``delete`` (one click);
   - a missed true object: ``add_object`` with one click, grown from the probabilities;
   - anything the tools get wrong (a grown or split object with IoU < 0.5): painted with the
     brush, counted in brush strokes.

   Each fix is also costed in brush strokes: every connected region of pixels the fix
   changed takes ``ceil(width / brush)`` parallel strokes of a ``--brush``-pixel brush (at
   least one), where ``width`` is twice the region's largest inscribed radius.

2. **Ranking**: wrong objects (no true object with IoU >= 0.5) among the first 20% of the
   review queue, against the same share of a random order (mean of 200 shuffles, same run).

3. **Latency**: each tool on a 2000 x 2000 layer with 500 objects (median of 7 runs), with the
   cost of turning the edit into napari's ``data_setitem`` call, against a whole-layer
   ``np.isin`` + copy (what an edit that rewrites the layer costs at least).

Run: ``python benchmarks/bench_correct.py`` (about 10 minutes on 2 CPU cores, mostly TTA;
the model's outputs are cached in ``--cache``).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from napari_glandseg import correct as C

DATA = Path(os.environ.get("DATA", "DATA"))  # the public data sets (docs/data.md)
SETS = {  # name: (model, folder, image folder, truth folder, image suffix)
    "glas": ("glands-he", "glas", "train/images", "train/instances_cc", ".jpg"),
    "monuseg": ("nuclei-he", "monuseg", "train/images", "train/instances", ".jpg"),
}


# --------------------------------------------------------------------------------------------
# data and predictions


def val_names(folder: Path) -> list[str]:
    with open(folder / "split.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["name"] for r in rows if r["suggested_split"] == "val"
            and r.get("has_xml_instances", "1") != "0"]


def predict(model, image, cache: Path):
    """Objects, probabilities (C, Y, X) and TTA uncertainty of one image (cached)."""
    from napari_glandseg import postprocess, segment

    if cache.exists():
        z = np.load(cache)
        return z["objects"], z["probabilities"], z["uncertainty"]
    res = segment(image, model, tile_size=512, tta=True)
    objects = postprocess(res.labels, **model.card.postprocess).astype(np.int32)
    probs = np.asarray(res.probabilities, np.float16)
    unc = np.asarray(res.uncertainty, np.float16)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, objects=objects, probabilities=probs, uncertainty=unc)
    return objects, probs, unc


# --------------------------------------------------------------------------------------------
# the simulated annotator


def object_f1(pred, truth) -> float:
    from napari_glandseg.metrics import evaluate

    return evaluate(pred, truth, hausdorff=False)["object_f1"]


def overlaps(pred, truth):
    """Pixel counts of every (pred, truth) pair, as a dict of dicts, and the areas."""
    keep = (pred > 0) | (truth > 0)
    p, t = pred[keep].astype(np.int64), truth[keep].astype(np.int64)
    n_t = int(truth.max()) + 1
    pairs, counts = np.unique(p * n_t + t, return_counts=True)
    inter: dict = {}
    for code, c in zip(pairs, counts, strict=True):
        a, b = divmod(int(code), n_t)
        if a and b:
            inter.setdefault(a, {})[b] = int(c)
    return inter, np.bincount(pred.ravel()), np.bincount(truth.ravel(), minlength=n_t)


def inner_point(mask: np.ndarray) -> tuple[int, int]:
    """The pixel deepest inside ``mask`` (where an annotator would click)."""
    sl = ndi.find_objects(mask.astype(np.uint8))[0]
    d = ndi.distance_transform_edt(np.pad(mask[sl], 1))[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(d), d.shape)
    return int(y + sl[0].start), int(x + sl[1].start)


def brush_strokes(changed: np.ndarray, brush: int) -> int:
    """Parallel strokes of a ``brush``-wide brush to paint every changed region."""
    comps, n = ndi.label(changed, structure=np.ones((3, 3)))
    if not n:
        return 0
    strokes = 0
    for sl in ndi.find_objects(comps):
        region = np.pad(comps[sl] > 0, 1)
        width = 2 * ndi.distance_transform_edt(region).max()
        strokes += max(1, math.ceil(width / brush))
    return strokes


def iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / u if u else 0.0


def annotate(pred, truth, probs, brush: int, target: float = 0.95, rounds: int = 4) -> dict:
    """Fix ``pred`` towards ``truth`` with the tools; count clicks, tool uses and brush
    strokes (for the same fixes, and for the fallbacks the tools could not do)."""
    lab = pred.astype(np.int32).copy()
    count = {"actions": 0, "clicks": 0, "brush_equiv": 0, "fallback_strokes": 0,
             "merge": 0, "split": 0, "delete": 0, "add": 0, "paint": 0, "bad_add": 0,
             "bad_split": 0}
    start = object_f1(lab, truth)

    def use(edit: C.Edit, clicks: int, kind: str):
        nonlocal lab
        changed = edit.before != edit.after
        count["brush_equiv"] += brush_strokes(changed, brush)
        count["actions"] += 1
        count["clicks"] += clicks
        count[kind] += 1
        lab = edit.apply(lab)

    def paint(t_id: int, over: list[int]):
        """The brush fallback: erase ``over`` objects and paint true object ``t_id``."""
        nonlocal lab
        before = lab.copy()
        lab[np.isin(lab, over)] = 0
        lab[truth == t_id] = lab.max() + 1
        strokes = brush_strokes(before != lab, brush)
        count["fallback_strokes"] += strokes
        count["brush_equiv"] += strokes
        count["paint"] += 1

    for _ in range(rounds):
        if object_f1(lab, truth) >= target:
            break
        inter, p_area, t_area = overlaps(lab, truth)
        # true objects covered > 50% by one prediction each
        owner = {}
        for p, row in inter.items():
            for t, c in row.items():
                if c > 0.5 * t_area[t]:
                    owner.setdefault(p, []).append(t)
        touched: set = set()
        # merged: one prediction owns several true objects -> split with one seed each
        for p, ts in owner.items():
            if len(ts) < 2 or p in touched:
                continue
            seeds = [inner_point(truth == t) for t in ts]
            try:
                edit = C.split_seeds(lab, seeds, probabilities=probs, label=p)
            except Exception:  # noqa: BLE001 - a seed outside the object: paint instead
                continue
            use(edit, len(seeds), "split")
            touched.add(p)
            for k in edit.kept:
                best = max(ts, key=lambda t, k=k: np.count_nonzero((lab == k) & (truth == t)))
                if iou(lab == k, truth == best) < 0.5:
                    count["bad_split"] += 1
                    paint(best, [k])
        inter, p_area, t_area = overlaps(lab, truth)
        # pieces: several predictions mostly inside one true object -> merge them
        pieces: dict = {}
        for p, row in inter.items():
            t, c = max(row.items(), key=lambda kv: kv[1])
            if c > 0.5 * p_area[p]:
                pieces.setdefault(t, []).append(p)
        for t, ps in pieces.items():
            if len(ps) < 2:
                continue
            ps = sorted(ps, key=lambda p: -inter[p][t])
            use(C.merge(lab, ps), len(ps), "merge")
        inter, p_area, t_area = overlaps(lab, truth)
        # false positives: predictions that neither cover a true object nor lie inside one
        for p in np.flatnonzero(p_area):
            row = inter.get(int(p), {})
            owns = any(c > 0.5 * t_area[t] for t, c in row.items())
            inside = max(row.values(), default=0) > 0.5 * p_area[p]
            if p and not owns and not inside:
                use(C.delete(lab, int(p)), 1, "delete")
        inter, p_area, t_area = overlaps(lab, truth)
        # misses: true objects no prediction covers by more than half -> delete the small
        # pieces inside it, then add it with one click
        covered = {t for row in inter.values() for t, c in row.items() if c > 0.5 * t_area[t]}
        for t in np.flatnonzero(t_area):
            if not t or t in covered:
                continue
            t_mask = truth == t
            for p in [p for p, row in inter.items() if row.get(int(t), 0) > 0.5 * p_area[p]]:
                if (lab == p).any():
                    use(C.delete(lab, int(p)), 1, "delete")
            free = t_mask & (lab == 0)
            if np.count_nonzero(free) < 0.5 * np.count_nonzero(t_mask):
                paint(int(t), [])
                continue
            try:
                edit = C.add_object(lab, inner_point(free), probabilities=probs)
            except Exception:  # noqa: BLE001 - nothing to grow there: paint instead
                paint(int(t), [])
                continue
            use(edit, 1, "add")
            if iou(lab == edit.kept[0], t_mask) < 0.5:
                count["bad_add"] += 1
                paint(int(t), [edit.kept[0]])
        # matched but badly shaped (IoU < 0.5 with the true object it covers): paint
        inter, p_area, t_area = overlaps(lab, truth)
        for p, row in inter.items():
            t, c = max(row.items(), key=lambda kv: kv[1])
            u = p_area[p] + t_area[t] - c
            if c > 0.5 * t_area[t] and c / u < 0.5:
                paint(int(t), [p])
    count["start_f1"] = start
    count["end_f1"] = object_f1(lab, truth)
    return count


# --------------------------------------------------------------------------------------------
# ranking


def wrong_objects(pred, truth) -> set:
    inter, p_area, t_area = overlaps(pred, truth)
    wrong = set()
    for p in np.flatnonzero(p_area):
        if not p:
            continue
        row = inter.get(int(p), {})
        best = max((c / (p_area[p] + t_area[t] - c) for t, c in row.items()), default=0.0)
        if best < 0.5:
            wrong.add(int(p))
    return wrong


def ranking(items, weights=None, rng=None, top: float = 0.2) -> tuple[float, float, int, int]:
    """Share of wrong objects in the first ``top`` of each image's queue (pooled), and the
    same for random orders."""
    found = total = queue_top = 0
    rand = []
    for pred, truth, probs, unc, bclass in items:
        table = C.rank_objects(pred, probs, unc, boundary_class=bclass, weights=weights)
        wrong = wrong_objects(pred, truth)
        order = table["label"].to_numpy()
        k = max(1, round(top * len(order)))
        found += len(wrong & set(order[:k].tolist()))
        total += len(wrong)
        queue_top += k
        rand.append((order, wrong, k))
    shuffled = []
    for _ in range(200):
        f = 0
        for order, wrong, k in rand:
            f += len(wrong & set(rng.permutation(order)[:k].tolist()))
        shuffled.append(f)
    best = sum(min(k, len(wrong)) for _, wrong, k in rand)  # every wrong object first
    return (found / max(total, 1), float(np.mean(shuffled)) / max(total, 1), total, queue_top,
            best / max(total, 1))


# --------------------------------------------------------------------------------------------
# latency


def synthetic_layer(seed: int = 0, size: int = 2000, n: int = 500):
    """``n`` touching blobs on ``size``^2 (Voronoi cells cut to a disk) and a probability."""
    rng = np.random.default_rng(seed)
    side = math.ceil(math.sqrt(n))
    step = size / side
    seeds = np.zeros((size, size), np.int32)
    k = 0
    for i in range(side):
        for j in range(side):
            if k == n:
                break
            k += 1
            y = int((i + 0.5) * step + rng.uniform(-0.2, 0.2) * step)
            x = int((j + 0.5) * step + rng.uniform(-0.2, 0.2) * step)
            seeds[y, x] = k
    dist, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    lab = np.where(dist < 0.45 * step, seeds[iy, ix], 0).astype(np.int32)
    prob = ndi.gaussian_filter((lab > 0).astype(np.float32), 3)
    return lab, prob


def latency(repeats: int = 7) -> list[tuple[str, float, float]]:
    lab, prob = synthetic_layer()
    image = (255 - 200 * prob).astype(np.uint8)
    a = int(lab[1000, 1000]) or 1
    y0, x0, y1, x1 = C._bbox(lab, [a])
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    row = lab[cy, x1:]
    b = int(row[np.flatnonzero(row)[0]])  # the neighbour on the right
    holed = lab.copy()
    holed[cy - 5: cy + 5, cx - 5: cx + 5] = 0
    gone = C.delete(lab, a).apply(lab.copy())
    merged = C.merge(lab, [a, b]).apply(lab.copy())
    bx = (C._bbox(lab, [b])[1] + C._bbox(lab, [b])[3]) // 2
    tools = {
        "merge": lambda: C.merge(lab, [a, b]),
        "split (line)": lambda: C.split_line(lab, [(y0 - 2, cx), (y1 + 2, cx)]),
        "split (seeds)": lambda: C.split_seeds(merged, [(cy, cx), (cy, bx)],
                                               probabilities=prob),
        "delete": lambda: C.delete(lab, a),
        "add (probabilities)": lambda: C.add_object(gone, (cy, cx), probabilities=prob),
        "add (image)": lambda: C.add_object(gone, (cy, cx), image=image),
        "fill holes": lambda: C.fill_holes(holed, a),
        "relabel 1..N": lambda: C.relabel(lab),
    }

    def baseline():
        out = lab.copy()
        out[np.isin(out, [a, b])] = a
        return out

    base = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        baseline()
        base.append(time.perf_counter() - t0)
    base_ms = 1000 * float(np.median(base))
    rows = []
    for name, f in tools.items():
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            edit = f()
            edit.changes()  # what the widget hands to data_setitem
            ts.append(time.perf_counter() - t0)
        rows.append((name, 1000 * float(np.median(ts)), base_ms))
    return rows


# --------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--limit", type=int, help="at most this many images per set")
    ap.add_argument("--brush", type=int, default=10, help="brush diameter in pixels")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/glandseg-bench-correct"))
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args()

    if not args.skip_latency:
        print("Tool latency on a 2000 x 2000 layer with 500 objects (median of 7; includes "
              "the data_setitem indices):")
        for name, ms, base in latency():
            print(f"  {name:22s} {ms:7.1f} ms   ({ms / base:4.2f}x a whole-layer isin+copy "
                  f"of {base:.1f} ms)")
        from napari_glandseg.geojson import geojson_to_labels, labels_to_geojson

        lab, _ = synthetic_layer()
        t0 = time.perf_counter()
        fc = labels_to_geojson(lab, pixel_size_um=0.5)
        t1 = time.perf_counter()
        back = geojson_to_labels(fc, lab.shape).labels
        t2 = time.perf_counter()
        print(f"  GeoJSON: {len(fc['features'])} objects exported in {t1 - t0:.2f} s, imported "
              f"in {t2 - t1:.2f} s; pixels and ids kept: {100 * (back == lab).mean():.2f}%")

    from skimage import io

    from napari_glandseg import load_model

    rng = np.random.default_rng(0)
    for name in args.sets:
        model_name, folder, img_dir, truth_dir, suffix = SETS[name]
        root = args.data / folder
        names = val_names(root)[: args.limit]
        model = load_model(model_name)
        card = model.card
        bclass = card.class_names.index("boundary") if card.boundary_class and \
            "boundary" in card.class_names else None
        items, totals = [], {}
        t0 = time.perf_counter()
        for stem in names:
            image = io.imread(root / img_dir / f"{stem}{suffix}")
            truth = io.imread(root / truth_dir / f"{stem}.png").astype(np.int32)
            pred, probs, unc = predict(model, image, args.cache / model_name / f"{stem}.npz")
            probs = probs.astype(np.float32)
            unc = unc.astype(np.float32)
            items.append((pred, truth, probs, unc, bclass))
            c = annotate(pred, truth, probs, args.brush)
            for k, v in c.items():
                totals.setdefault(k, []).append(v)
        n = len(names)
        print(f"\n{name} val ({n} images, model {model_name}, "
              f"{time.perf_counter() - t0:.0f} s):")
        s = {k: float(np.sum(v)) for k, v in totals.items()}
        reached = sum(f >= 0.95 for f in totals["end_f1"])
        print(f"  object F1 {np.mean(totals['start_f1']):.3f} -> "
              f"{np.mean(totals['end_f1']):.3f}; {reached}/{n} images reach 0.95")
        print(f"  tool uses {s['actions']:.0f} ({s['clicks']:.0f} clicks: "
              f"{s['split']:.0f} splits, {s['merge']:.0f} merges, {s['delete']:.0f} deletes, "
              f"{s['add']:.0f} adds; {s['bad_split']:.0f} split pieces and {s['bad_add']:.0f} "
              f"added objects with IoU < 0.5) + {s['paint']:.0f} objects painted by brush "
              f"({s['fallback_strokes']:.0f} strokes)")
        work = s["clicks"] + s["fallback_strokes"]
        print(f"  the same fixes by brush ({args.brush}-px): {s['brush_equiv']:.0f} strokes; "
              f"tools {work:.0f} clicks+strokes = {s['brush_equiv'] / max(work, 1):.1f}x "
              f"fewer; per image {work / n:.1f} vs {s['brush_equiv'] / n:.1f}")
        for label, w in (("all signals", None),
                         ("without uncertainty", C.ReviewWeights(uncertainty=0))):
            share, rand, wrong, top, best = ranking(items, w, rng)
            print(f"  ranking ({label}): {100 * share:.0f}% of the {wrong} wrong objects in "
                  f"the first 20% of the queue ({top} objects) vs {100 * rand:.0f}% in random "
                  f"order: {share / max(rand, 1e-9):.1f}x (a perfect queue: {100 * best:.0f}%)")


if __name__ == "__main__":
    main()
