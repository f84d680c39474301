"""The training loop: :func:`iter_train` yields progress, :func:`train` blocks; checkpoints,
run state and resume."""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._files import atomic_path
from .._types import PathType
from ..errors import GlandsegError
from ..models import (
    Model,
    ModelCard,
    build_from_card,
    load_model,
    resolve_device,
    save_checkpoint,
    user_dir,
)
from ..precision import autocast_dtype
from ..precision import resolve as resolve_precision
from ..preprocess import standardise
from ..progress import Progress, run_to_end
from ..stain import StainNorm, check_card_entry
from .augment import PatchSampler
from .data import (
    TrainingPair,
    resample_pairs,
    stain_normalised,
    stain_reference,
    with_pixel_size,
)
from .losses import make_loss
from .params import TrainParams
from .targets import Target, is_instance_mask, make_target
from .validation import _SELECT_KEY, Selection, _validate, validate_images


@dataclass
class TrainResult:
    """What :func:`train` returns: the best model, its file, the per-epoch history, and the
    best selection score (``history[-1]["score"]`` is the same measure)."""

    model: Model
    checkpoint: Path | None
    history: list
    best_epoch: int
    best_score: float
    stopped_early: bool = False

    @property
    def selected_on(self) -> str:
        return self.model.card.metrics.get("selected_on", "")


_ENCODER_PREFIXES = {
    "base_cnn": ("encoder.",),
    "unet": ("net.conv_0.", "net.down_"),
    "unetpp": ("net.conv_0_0.", "net.conv_1_0.", "net.conv_2_0.", "net.conv_3_0.",
               "net.conv_4_0."),
    "linknet34": ("encoder.",),
    "deeplabv3plus": ("encoder.",),
    "effnet_unet": ("encoder.",),
}


def freeze_encoder(net: torch.nn.Module, architecture: str) -> int:
    """Stop gradients to the encoder; returns how many tensors were frozen."""
    prefixes = _ENCODER_PREFIXES.get(architecture)
    if prefixes is None:
        raise GlandsegError(f"freeze_encoder is not available for {architecture!r}; "
                            "train all layers instead")
    n = 0
    for name, param in net.named_parameters():
        if name.startswith(prefixes):
            param.requires_grad_(False)
            n += 1
    return n


def train(train_pairs: list[TrainingPair], val_pairs: list[TrainingPair],
          params: TrainParams | None = None, resume: PathType | None = None,
          run_dir: PathType | None = None, **kwargs: Any) -> TrainResult:
    """Train to the end (blocking); see :func:`iter_train`."""
    return run_to_end(iter_train(train_pairs, val_pairs, params, resume=resume,
                                 run_dir=run_dir, **kwargs))


def _prepare(train_pairs, params):
    """The card and untrained (or base) network for this run."""
    if params.base_model:
        base = load_model(params.base_model)
        card = copy.deepcopy(base.card)
        net = copy.deepcopy(base.net)
        card.name = params.name
        return card, net
    in_ch = params.in_channels or (1 if train_pairs[0].image.ndim == 2 else
                                   train_pairs[0].image.shape[-1])
    levels = params.levels if params.target is Target.LEVELS else 0
    if levels:
        k = levels + 1
    elif params.num_classes:
        k = params.num_classes
    elif params.target is Target.BOUNDARY:
        k = 3
    else:
        k = 1
    names = params.class_names
    if not names and params.target is Target.BOUNDARY:
        names = ["background", "interior", "boundary"]
    elif not names and levels:
        names = ["background"] + [f"level {i}" for i in range(1, levels + 1)]
    card = ModelCard(name=params.name, architecture=params.architecture, in_channels=in_ch,
                     num_classes=k, arch_kwargs=dict(params.arch_kwargs),
                     class_names=names or [], normalization=params.normalization,
                     pixel_size_um=params.pixel_size_um,
                     data_pixel_size_um=params.data_pixel_size_um,
                     boundary_class=params.target is Target.BOUNDARY, levels=levels)
    net = build_from_card(card)
    if params.pretrained:
        from ..models.efficientnet import load_imagenet_encoder

        weights = load_imagenet_encoder(net)
        card.licence = "; ".join(x for x in (card.licence, f"encoder initialised from "
                                             f"{weights}") if x)
    return card, net


@dataclass
class _Run:
    """Everything a training run holds between steps; saved whole for ``resume``."""

    params: TrainParams
    card: ModelCard
    net: torch.nn.Module
    opt: torch.optim.Optimizer
    device: torch.device
    sampler: PatchSampler
    val_set: list
    val_pairs: list
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    select: Selection
    amp: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    history: list = field(default_factory=list)
    epoch: int = 0  # the next epoch to run
    step: int = 0
    best: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0
    saved: Path | None = None
    data_desc: str = ""
    n_train: int = 0
    precision: str = "fp32"
    run_dir: Path | None = None
    data_names: dict = field(default_factory=dict)

    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE if self.run_dir else state_path_for(self.params.name)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / BEST_FILE if self.run_dir else \
            user_dir() / f"{self.params.name}.safetensors"

    @property
    def total_steps(self) -> int:
        return self.params.epochs * self.params.steps_per_epoch

    def lr_at(self, step: int) -> float:
        p = self.params
        if p.schedule == "constant":
            return p.lr
        warm = p.steps_per_epoch
        if step < warm:
            return p.lr * (step + 1) / warm
        t = (step - warm) / max(1, self.total_steps - warm)
        return p.lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def _check_pairs(train_pairs, val_pairs):
    train_pairs = [p if isinstance(p, TrainingPair) else TrainingPair(*p) for p in train_pairs]
    val_pairs = [p if isinstance(p, TrainingPair) else TrainingPair(*p) for p in val_pairs]
    if not train_pairs:
        raise GlandsegError("training needs at least one training pair")
    for p in train_pairs:
        if not p.mask.any():
            raise GlandsegError(f"pair {p.name!r} has no labelled pixels: label the objects "
                                "(or remove the pair) before training")
    return train_pairs, val_pairs


def _licence(given: str, card_licence: str) -> str:
    """The user's licence text, keeping the line that credits pretrained weights (their
    licence travels with the model whatever the user writes).

    >>> _licence("mine", "encoder initialised from X (Apache-2.0)")
    'mine; encoder initialised from X (Apache-2.0)'
    """
    i = card_licence.find("encoder initialised from")
    credit = card_licence[i:] if i >= 0 else ""
    if not given:
        return card_licence
    return given if credit in given else f"{given}; {credit}"


def _scale_reference(pairs, params: TrainParams, card) -> dict:
    """Automatic scale's reference (:func:`napari_glandseg.autoscale.scale_reference`) from
    up to 16 raw training images at the data's scale (the scale of images that do not say
    theirs)."""
    from ..autoscale import scale_reference

    default_px = params.data_pixel_size_um or card.data_pixel_size_um
    at_data = [p.image for p in pairs if p.pixel_size_um in (None, default_px)]
    return scale_reference(at_data[::max(1, len(at_data) // 16)]) if at_data else {}


def _targets(work_train, work_val, card, params: TrainParams):
    """The training and validation targets (at the working scale), whether the data mix
    instance labels with binary masks, and the gap width of the separation weight."""
    target_kind = Target.BOUNDARY if card.boundary_class else \
        Target.LEVELS if card.levels else params.target
    objects = target_kind in (Target.BOUNDARY, Target.LEVELS)
    # mixed data: binary masks among instance labels teach foreground, not the boundary
    mixed = objects and any(is_instance_mask(p.mask) for p in work_train) and \
        not all(is_instance_mask(p.mask) for p in work_train + work_val)
    gap_width = params.gap_width if params.gap_weight and objects else 0

    def target(p):
        return make_target(p.mask, target_kind, card.num_classes,
                           partial=mixed and not is_instance_mask(p.mask), gap_width=gap_width)

    return [target(p) for p in work_train], [target(p) for p in work_val], mixed, gap_width


def _setup(train_pairs, val_pairs, params: TrainParams) -> _Run:
    """Card, network, data at working scale, targets, optimiser: a run ready for epoch 0."""
    from ..models import list_models

    if any(m.name == params.name and m.source == "bundled" for m in list_models()):
        raise GlandsegError(f"{params.name!r} is a bundled model; train under another name "
                            f"(e.g. --name {params.name}-mine)")
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    # any dtype as its 8-bit equal, by inference's rule (preprocess.value_range)
    train_pairs, val_pairs = ([replace(p, image=standardise(p.image)) for p in ps]
                              for ps in (train_pairs, val_pairs))
    card, net = _prepare(train_pairs, params)
    for p in train_pairs + val_pairs:
        channels = 1 if p.image.ndim == 2 else p.image.shape[-1]
        if channels != card.in_channels:
            raise GlandsegError(f"pair {p.name!r} has {channels} channel(s) but the model "
                                f"takes {card.in_channels}")
    if params.auto_scale and not params.base_model and not card.scale_reference:
        card.scale_reference = _scale_reference(train_pairs, params, card)
    if not params.base_model and not card.appearance and len(train_pairs) >= 2:
        from ..domain import reference

        # the raw training images (inference compares raw images), at most 200 of them
        card.appearance = reference([p.image for p in
                                     train_pairs[::max(1, len(train_pairs) // 200)]])
    if params.stain_normalization is StainNorm.MACENKO and not card.stain_normalization:
        card.stain_normalization = stain_reference(train_pairs, params.stain_reference)
        check_card_entry(card.stain_normalization, card.in_channels)
    if card.stain_normalization:  # the images inference will see, not the raw ones
        train_pairs = stain_normalised(train_pairs, card.stain_normalization)
        val_pairs = stain_normalised(val_pairs, card.stain_normalization)
    # pairs whose file does not say their scale are at the card's data scale
    default_px = params.data_pixel_size_um or card.data_pixel_size_um
    val_pairs = with_pixel_size(val_pairs, default_px)
    work_train = resample_pairs(train_pairs, card.pixel_size_um, default_px)
    work_val = resample_pairs(val_pairs, card.pixel_size_um, default_px)
    device = resolve_device(params.device)
    net.to(device)
    if params.freeze_encoder:
        freeze_encoder(net, card.architecture)
    tr_targets, va_targets, mixed, gap_width = _targets(work_train, work_val, card, params)
    sampler = PatchSampler(work_train, tr_targets, params, card.normalization, rng)
    val_set = []
    if work_val:
        val_sampler = PatchSampler(work_val, va_targets, params, card.normalization,
                                   np.random.default_rng(params.seed + 1))
        val_set = [val_sampler.sample(augment=False) for _ in range(params.val_patches)]
    loss_fn = make_loss(params.loss, card.num_classes, partial=mixed,
                        gap_weight=params.gap_weight if gap_width else 0.0)
    trainable = [p for p in net.parameters() if p.requires_grad]
    opt_cls = torch.optim.AdamW if params.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(trainable, lr=params.lr, weight_decay=params.weight_decay)
    precision = resolve_precision(params.precision, device)
    amp = autocast_dtype(precision)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    net.to(memory_format=torch.channels_last)
    if params.postprocess:
        card.postprocess = dict(params.postprocess)
    select = params.select
    several = card.class_map and card.num_classes > 2  # more than one foreground class
    if select is Selection.AUTO:
        select = Selection.CLASS_DICE if several else Selection.PIXEL_DICE \
            if card.class_map or not card.postprocess else Selection.OBJECTS
    if select is Selection.CLASS_DICE and not several:
        raise GlandsegError("select='class_dice' scores a class map of more than one "
                            "foreground class, class by class; this model has "
                            f"{card.num_classes} class(es) (use pixel_dice or an object "
                            "score)")
    names = [p.name for p in train_pairs]
    data_desc = params.training_data or ", ".join(names[:5]) + (
        f" (+{len(names) - 5} more)" if len(names) > 5 else "")
    if mixed:
        n_bin = sum(not is_instance_mask(p.mask) for p in train_pairs)
        data_desc += (f"; {n_bin} of {len(train_pairs)} training masks binary (they teach "
                      "foreground and outer edges, not where touching objects meet)")
    data_names = {"train": sorted(p.name for p in train_pairs),
                  "val": sorted(p.name for p in val_pairs)}
    return _Run(params, card, net, opt, device, sampler, val_set, val_pairs, loss_fn, select,
                amp, scaler, data_desc=data_desc, n_train=len(train_pairs),
                precision=precision, data_names=data_names)


def _train_epoch(run: _Run, t0: float):
    """One epoch of steps, yielding a Progress per step; returns the step losses."""
    p, net, opt = run.params, run.net, run.opt
    net.train()
    losses = []
    for _ in range(p.steps_per_epoch):
        batch = [run.sampler.sample(p.augment) for _ in range(p.batch_size)]
        x = torch.from_numpy(np.stack([b[0] for b in batch])).to(run.device).contiguous(
            memory_format=torch.channels_last)
        y = torch.from_numpy(np.stack([b[1] for b in batch]).astype(np.int64)).to(run.device)
        for g in opt.param_groups:
            g["lr"] = run.lr_at(run.step)
        opt.zero_grad(set_to_none=True)
        if run.amp is not None:
            with torch.autocast(run.device.type, dtype=run.amp):
                logits = net(x)
            loss = run.loss_fn(logits.float(), y)
        else:
            loss = run.loss_fn(net(x), y)
        if not torch.isfinite(loss):
            kept = f"the best checkpoint {run.saved} is kept" if run.saved else \
                "no checkpoint was saved yet"
            raise GlandsegError(
                f"training stopped: the loss became {loss.item()} at epoch {run.epoch + 1}, "
                f"step {run.step + 1}; {kept}. Lower the learning rate (now {p.lr:g}).")
        if run.scaler is not None:
            run.scaler.scale(loss).backward()
            run.scaler.step(opt)
            run.scaler.update()
        else:
            loss.backward()
            opt.step()
        run.step += 1
        losses.append(loss.item())
        yield Progress(run.step, run.total_steps, f"epoch {run.epoch + 1}/{p.epochs}",
                       time.perf_counter() - t0, {"loss": losses[-1]})
    return losses


def _end_epoch(run: _Run, losses: list, t0: float) -> dict:
    """Score the validation patches; at a validation epoch (every ``validate_every``, and
    the last) the whole validation images too, keeping the checkpoint if the selection
    score improved; save the run state."""
    params, card = run.params, run.card
    blind = not run.val_pairs  # no validation images: the last epoch is the model
    val: dict = {"val_loss": None, "val_dice": None} if blind else \
        _validate(run.net, run.val_set, run.loss_fn, run.device, card.num_classes)
    whole = not blind and (run.epoch + 1 >= params.epochs
                           or (run.epoch + 1) % params.validate_every == 0)
    score, improved = None, blind
    if whole:
        val.update(validate_images(Model(run.net, card, device=run.device), run.val_pairs,
                                   tile_size=1024))  # one tile per image: 2x faster
        key = _SELECT_KEY[run.select]
        if key not in val:
            raise GlandsegError(f"select={run.select.value!r} needs object post-processing "
                                "in the card (postprocess); use select='pixel_dice' or give "
                                "postprocess")
        score = float(val[key])
        improved = score > run.best
    run.net.train()
    if improved:
        run.best = float("nan") if score is None else score
        run.best_epoch = run.epoch
        card.metrics = {k: round(float(v), 4) for k, v in val.items()
                        if k != "val_loss" and v is not None}
        card.metrics["epoch"] = run.epoch + 1
        card.metrics["step"] = run.step
        card.metrics["selected_on"] = "last epoch (no validation images)" if blind else \
            _SELECT_KEY[run.select]
        card.training = {**_settings(params), "select": run.select.value,
                         "train_pairs": run.n_train, "val_pairs": len(run.val_pairs),
                         "precision_used": run.precision}
        card.training_data = run.data_desc
        card.data_licence = params.data_licence or card.data_licence
        card.licence = _licence(params.licence, card.licence)
        card.description = params.description or card.description
        run.saved = save_checkpoint(run.checkpoint_path, run.net, card, overwrite=True)
    if whole:  # epochs since the best, for patience
        run.bad_epochs = run.epoch - run.best_epoch
    record = {"epoch": run.epoch + 1, "step": run.step, "train_loss": float(np.mean(losses)),
              **val, "score": score, "lr": run.lr_at(run.step - 1),
              "seconds": time.perf_counter() - t0,
              "checkpoint": str(run.saved) if run.saved else None, "best": improved}
    run.history.append(record)
    run.epoch += 1
    _save_state(run.state_path, run)
    if run.run_dir:
        _write_run_files(run, record)
    return record


def _write_run_files(run: _Run, record: dict) -> None:
    """A run folder's readable side: ``history.jsonl`` (the curve, one line per epoch,
    rewritten whole with the state so the two always agree) and ``log.txt`` (appended)."""
    assert run.run_dir is not None
    with atomic_path(run.run_dir / HISTORY_FILE) as tmp:
        Path(tmp).write_text("".join(json.dumps(_jsonable(r)) + "\n" for r in run.history))
    parts = [f"epoch {record['epoch']}", f"step {record['step']}",
             f"loss {record['train_loss']:.4f}"]
    if record["val_loss"] is not None:
        parts.append(f"val loss {record['val_loss']:.4f}")
    if record["score"] is not None:
        parts += [f"{_SELECT_KEY[run.select]} {record['score']:.4f}"]
        parts += [f"{k.removeprefix('val_')} {v:.4f}" for k, v in record.items()
                  if k.startswith(("val_objects[", "val_dice["))]
        parts += ["*best*" if record["best"] else f"best {run.best:.4f} at epoch "
                  f"{run.best_epoch + 1}"]
    parts.append(f"{record['seconds'] / 60:.1f} min")
    with open(run.run_dir / LOG_FILE, "a") as f:
        f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + "  ".join(parts) + "\n")


def _jsonable(record: dict) -> dict:
    return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in record.items()}


def iter_train(train_pairs: list[TrainingPair], val_pairs: list[TrainingPair],
               params: TrainParams | None = None, resume: PathType | None = None,
               run_dir: PathType | None = None,
               **kwargs: Any) -> Generator[Progress, None, TrainResult]:
    """Train or fine-tune, yielding :class:`~napari_glandseg.progress.Progress`.

    Yields one record per step (``metrics={"loss": ...}``) and one per epoch (``metrics``
    with ``train_loss``, ``val_loss``, patch ``val_dice``, whole-image scores
    ``val_image_dice``, ``val_object_f1``, ``val_object_dice``, ``val_objects``,
    ``val_aji``, ``val_pq``, the selection ``score``, ``lr``, ``checkpoint``, ``best``).
    Returns a :class:`TrainResult`.

    Data at another scale than the card's (``pixel_size_um``) are resampled to it. When the
    training masks mix instance labels with binary masks, a background / interior /
    boundary model learns the boundary only from the instance labels (binary masks teach
    foreground and their outer edges, :func:`partial_boundary_loss`).

    The checkpoint kept is the one with the best ``params.select`` score on the whole
    validation images after the card's post-processing (objects, not pixels).

    Parameters
    ----------
    train_pairs, val_pairs : list of TrainingPair
        Validation pairs must be ground truth the model is not trained on (never a model's
        own output). Without any (an empty list) nothing is scored and the last epoch's
        network is the model (its card says so): judge it by eye.
    params : TrainParams
    resume : str, Path or True, optional
        A training state to go on from (True: this run's own, in ``run_dir`` or the store's
        ``training/<name>.state.pt``): network, optimiser, history, best score, patience,
        the sampler's and torch's random state, next epoch and step. Training resumed after
        epoch k gives the same weights as training straight through. The state must be of
        the same network, settings (``epochs``, ``patience``, ``validate_every``,
        ``device`` and ``precision`` may differ) and data, else one line names the
        difference.
    run_dir : str or Path, optional
        Keep the whole run in this folder: ``state.pt`` (with ``state.prev.pt``, the one
        before), ``best.safetensors`` (the best checkpoint so far: a model at any time,
        ``glandseg models import DIR/best.safetensors --as NAME``), ``history.jsonl``
        (the validation curve) and ``log.txt``. Without it the checkpoint goes into the
        model store under ``params.name``.

    Raises
    ------
    GlandsegError
        Bad data or settings; a state that does not fit the run; or a NaN loss (the last
        good checkpoint is kept).
    """
    if params is None:
        params = TrainParams(**kwargs)
    elif kwargs:
        params = replace(params, **kwargs)
    train_pairs, val_pairs = _check_pairs(train_pairs, val_pairs)
    run = _setup(train_pairs, val_pairs, params)
    if run_dir is not None:
        run.run_dir = Path(run_dir)
        run.run_dir.mkdir(parents=True, exist_ok=True)
        if not resume and (run.state_path.exists() or run.checkpoint_path.exists()):
            raise GlandsegError(f"{run.run_dir} holds a training run; continue it with "
                                f"resume (glandseg train --resume {run.run_dir}) or choose "
                                "another folder")
    if resume:
        _restore(run, run.state_path if resume is True else Path(resume))
    t0 = time.perf_counter()
    stopped_early = False
    while run.epoch < params.epochs:
        if params.patience and run.bad_epochs >= params.patience:
            stopped_early = True
            break
        losses = yield from _train_epoch(run, t0)
        record = _end_epoch(run, losses, t0)
        said = "" if record["score"] is None else \
            f": {_SELECT_KEY[run.select]} {record['score']:.3f}"
        yield Progress(run.step, run.total_steps, f"epoch {record['epoch']}{said}",
                       time.perf_counter() - t0, dict(record))
    run.net.eval()
    best_model = load_model(run.saved) if run.saved else Model(run.net, run.card)
    return TrainResult(best_model, run.saved, run.history, run.best_epoch + 1, run.best,
                       stopped_early)


def _settings(params: TrainParams) -> dict:
    d = asdict(params)
    return {k: getattr(v, "value", v) for k, v in d.items()
            if k not in ("description", "training_data", "data_licence", "licence",
                         "postprocess")}


STATE_FILE, PREV_STATE_FILE, BEST_FILE = "state.pt", "state.prev.pt", "best.safetensors"
HISTORY_FILE, LOG_FILE = "history.jsonl", "log.txt"

#: settings a resumed run may change (a longer schedule, another device)
_RESUMABLE_CHANGES = ("epochs", "patience", "validate_every", "device", "precision")


def _save_state(path: Path, run: _Run) -> None:
    """Write the run state atomically; the state before it is kept as ``*.prev.pt`` (a
    damaged newest state still leaves one to resume from)."""
    card = run.card
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"net": run.net.state_dict(), "opt": run.opt.state_dict(),
                    "history": run.history, "epoch": run.epoch, "step": run.step,
                    "best": run.best, "best_epoch": run.best_epoch,
                    "bad_epochs": run.bad_epochs,
                    "saved": str(run.saved) if run.saved else "",
                    "rng": run.sampler.rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(),
                    "architecture": card.architecture,
                    "arch_json": json.dumps(card.arch_kwargs, sort_keys=True),
                    "num_classes": card.num_classes, "select": run.select.value,
                    "settings": json.dumps(_settings(run.params), sort_keys=True,
                                           default=str),
                    "data": run.data_names,
                    "scaler": run.scaler.state_dict() if run.scaler else {}}, tmp)
        if path.exists():
            os.replace(path, path.with_name(path.name.removesuffix(".pt") + ".prev.pt"))


def _restore(run: _Run, path) -> None:
    """Put a saved run state back: it must be for the same network and selection."""
    st = _load_state(path)
    card = run.card
    theirs: tuple = (st.get("architecture"), st.get("arch_json"), st.get("num_classes"))
    ours = (card.architecture, json.dumps(card.arch_kwargs, sort_keys=True), card.num_classes)
    if None in theirs:
        raise GlandsegError(f"{path}: an old training state without its network settings; "
                            "start the run again")
    if theirs != ours:
        raise GlandsegError(
            f"{path}: cannot resume: the state is for {theirs[0]} {theirs[1]} with "
            f"{theirs[2]} class(es) but this run builds {ours[0]} {ours[1]} with {ours[2]}; "
            "use the settings of the interrupted run, or another --name")
    if st.get("select") != run.select.value:
        raise GlandsegError(f"{path}: cannot resume: the run selected on {st.get('select')!r}, "
                            f"this one on {run.select.value!r}")
    if st.get("settings"):
        now = json.loads(json.dumps(_settings(run.params), default=str))
        # a setting newer than the state was at its default then
        was = {**json.loads(json.dumps(_settings(TrainParams()), default=str)),
               **json.loads(st["settings"])}
        changed = [k for k in sorted(set(was) | set(now))
                   if k not in _RESUMABLE_CHANGES and was.get(k) != now.get(k)]
        if changed:
            diff = "; ".join(f"{k} was {was.get(k)!r}, now {now.get(k)!r}"
                             for k in changed[:4])
            raise GlandsegError(f"{path}: cannot resume with other settings: {diff} (only "
                                f"{', '.join(_RESUMABLE_CHANGES)} may change)")
    if st.get("data") and st["data"] != run.data_names:
        for part in ("train", "val"):
            a, b = st["data"].get(part, []), run.data_names.get(part, [])
            if a != b:
                gone, new = sorted(set(a) - set(b)), sorted(set(b) - set(a))
                raise GlandsegError(
                    f"{path}: cannot resume on other data: the run's {part} images were "
                    f"{len(a)}, now {len(b)}" + (f"; missing {', '.join(gone[:3])}" if gone
                                                 else "")
                    + (f"; new {', '.join(new[:3])}" if new else ""))
    try:
        run.net.load_state_dict(st["net"])
        run.opt.load_state_dict(st["opt"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise GlandsegError(f"{path}: cannot resume: {exc}") from None
    run.history, run.epoch, run.step = st["history"], int(st["epoch"]), int(st["step"])
    run.best, run.best_epoch = float(st["best"]), int(st["best_epoch"])
    run.bad_epochs = int(st["bad_epochs"])
    run.saved = Path(st["saved"]) if st["saved"] and Path(st["saved"]).exists() else None
    if run.saved is None and run.best_epoch >= 0 and run.checkpoint_path.exists():
        run.saved = run.checkpoint_path  # a run folder moved elsewhere
    run.sampler.rng.bit_generator.state = st["rng"]
    torch.set_rng_state(st["torch_rng"])
    if run.scaler is not None and st.get("scaler"):
        run.scaler.load_state_dict(st["scaler"])


def _load_state(path) -> dict:
    path = Path(path)
    prev = path.with_name(path.name.removesuffix(".pt") + ".prev.pt")
    kept = (f"; the state one epoch earlier is kept in {prev.name}: rename it to "
            f"{path.name} to resume from there") if prev.exists() else ""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise GlandsegError(f"{path}: no such training state{kept}") from None
    except Exception as exc:
        raise GlandsegError(f"{path}: cannot resume from it ({type(exc).__name__}: "
                            f"{str(exc)[:120]}){kept}") from None


def state_path_for(name: str) -> Path:
    """Where a run named ``name`` keeps its training state (for ``resume``)."""
    return user_dir() / "training" / f"{name}.state.pt"
