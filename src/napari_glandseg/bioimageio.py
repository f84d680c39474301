"""bioimage.io model packages (format 0.5): export a stored model, import a package.

A bioimage.io package is what deepImageJ, ilastik, QuPath, BiaPy and ``bioimageio.core`` run.
:func:`export_bioimageio` writes one for a stored model with ``bioimageio.spec`` (the
description is built as ``bioimageio.spec`` objects and validated; no YAML is written by hand):

- ``pytorch_state_dict`` weights. The U-Net and ResNet U-Net are MONAI networks
  (``monai.networks.nets.BasicUNet`` / ``UNet``) and are described by import path; our own
  networks (Base CNN, LinkNet-34, UNet++, DeepLabV3+) by a source file in the package, a copy of
  :mod:`napari_glandseg.models.nets`, which needs only torch and MONAI, not this plugin.
- ``torchscript`` weights as a second format when the network scripts cleanly and the scripted
  network reproduces the eager output.
- Test input (a crop of the bundled sample image, or the image given) and the test output the
  model computes from it.
- Axes: batch, channel, y, x with the pixel size of the card in micrometres; sizes
  ``min + n * step`` where ``step`` is the network's total stride and the output halo is half of
  the tile overlap our tiling uses (``SegmentParams``: 512 px tiles, overlap 0.25 -> halo 64).
- Pre-processing equal to the card's normalisation (``imagenet``: fixed mean/std x 255;
  ``unit``: ``scale_linear`` 1/255; ``zscore``: ``zero_mean_unit_variance``; ``percentile``:
  ``scale_range`` 1..99.8 %), post-processing ``sigmoid`` (binary) or ``softmax`` (classes).
- The card's description, class names, licence, training data with its citation, authors, and
  the whole card in ``config.napari_glandseg`` (so an import gets it back unchanged).

Not in the package: stain normalisation (Macenko; the reference stays in the card in
``config``), object post-processing (hole filling, watershed/boundary splitting), TTA and the
Gaussian blending of tiles (consumers blend or crop tiles their own way).

:func:`import_bioimageio` reads a package into the store when its architecture is one this
plugin builds: its own exports, or a MONAI ``BasicUNet`` / ``UNet`` named by import path with
the settings our U-Net / ResNet U-Net use. Nothing from the package is executed: the
architecture is built by our own registry, the weights are read with
``torch.load(weights_only=True)`` (plain tensors only) and checked against their SHA-256.

``bioimageio.spec`` is an optional dependency: ``pip install 'napari-glandseg[bioimageio]'``.
"""

from __future__ import annotations

import hashlib
import math
import re
import shutil
import tempfile
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._files import atomic_path
from ._types import PathType
from .errors import CheckpointError, GlandsegError, OutputExistsError
from .models import (
    Architecture,
    ModelCard,
    ModelEntry,
    Normalization,
    find_model,
    import_model,
    load_checkpoint,
    nets,
)
from .progress import Progress, run_to_end

CONFIG_KEY = "napari_glandseg"
INSTALL_HINT = "pip install 'napari-glandseg[bioimageio]'"
#: What ``imagenet`` normalisation means in 0..255 pixel values (inference's constants x 255).
_PERCENTILES = (1.0, 99.8)
_EPS = 1e-6

#: Our architectures that are a MONAI network behind a ``net`` attribute, described in a
#: package by import path: architecture -> (import_from, callable).
_LIBRARY = {
    Architecture.UNET: ("monai.networks.nets", "BasicUNet"),
    Architecture.RESUNET: ("monai.networks.nets", "UNet"),
}

#: The datasets the bundled models were trained on: a name in the card's data text -> (the
#: citation text, its DOI). The card stores free text; bioimage.io wants a DOI or URL.
KNOWN_DATASETS = {
    "glas": ("Sirinukunwattana et al., Gland segmentation in colon histology images: The GlaS "
             "challenge contest, Medical Image Analysis 35, 2017", "10.1016/j.media.2016.08.008"),
    "monuseg": ("Kumar et al., A dataset and a technique for generalized nuclear segmentation "
                "for computational pathology, IEEE TMI 36(7), 2017", "10.1109/TMI.2017.2677499"),
    "isbi 2012": ("Arganda-Carreras et al., Crowdsourcing the creation of image segmentation "
                  "algorithms for connectomics, Frontiers in Neuroanatomy 9, 2015",
                  "10.3389/fnana.2015.00142"),
    "zheng": ("Zheng et al., Fast and robust segmentation of white blood cell images by "
              "self-supervised learning, Micron 107, 2018", "10.1016/j.micron.2018.01.010"),
}


def _spec():
    try:
        import bioimageio.spec  # noqa: F401
        from bioimageio.spec.model import v0_5
    except ImportError:
        raise GlandsegError(f"bioimage.io packages need bioimageio.spec: {INSTALL_HINT}") \
            from None
    return v0_5


# --------------------------------------------------------------------------------------------
# export


def export_bioimageio(
    name: str,
    dest: PathType,
    *,
    sample: np.ndarray | PathType | None = None,
    authors: list[str] | None = None,
    tile_size: int | None = None,
    overlap: float | None = None,
    torchscript: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write the stored model ``name`` as a bioimage.io model package (a ``.zip``).

    Parameters
    ----------
    name : str
        A model in the store (:func:`napari_glandseg.models.list_models`).
    dest : str or Path
        The ``.zip`` to write (atomically).
    sample : array or str or Path, optional
        The test input, ``(Y, X)`` or ``(Y, X, C)`` (cropped or padded to a valid size). By
        default the bundled sample image made for the model, or one with its channel count.
    authors : list of str, optional
        Names for the package's authors (default: "napari-glandseg developers").
    tile_size, overlap : optional
        The tiling the package advertises (default: :class:`SegmentParams`' 512 and 0.25);
        the output halo is ``round(tile_size * overlap / 2)``.
    torchscript : bool
        Also write TorchScript weights when the network scripts cleanly.
    overwrite : bool
        Replace an existing ``dest``.

    Returns
    -------
    Path
        ``dest``.
    """
    return run_to_end(iter_export_bioimageio(
        name, dest, sample=sample, authors=authors, tile_size=tile_size, overlap=overlap,
        torchscript=torchscript, overwrite=overwrite))


def iter_export_bioimageio(
    name: str,
    dest: PathType,
    *,
    sample: np.ndarray | PathType | None = None,
    authors: list[str] | None = None,
    tile_size: int | None = None,
    overlap: float | None = None,
    torchscript: bool = True,
    overwrite: bool = False,
) -> Generator[Progress, None, Path]:
    """The generator form of :func:`export_bioimageio`: yields :class:`Progress` between its
    four steps (closing it stops the export and leaves no file behind), returns ``dest``."""
    t0 = time.perf_counter()

    def step(done, message):
        return Progress(done, 4, message, time.perf_counter() - t0)

    v = _spec()
    from bioimageio.spec import ValidationContext, save_bioimageio_package
    from bioimageio.spec.utils import save_array

    from .inference import SegmentParams

    dest = Path(dest)
    if dest.suffix.lower() != ".zip":
        raise GlandsegError(f"{dest}: a bioimage.io package is a .zip file")
    if dest.exists() and not overwrite:
        raise OutputExistsError(dest)
    defaults = SegmentParams()
    tile_size = defaults.tile_size if tile_size is None else tile_size
    overlap = defaults.overlap if overlap is None else overlap
    SegmentParams(tile_size=tile_size, overlap=overlap)  # validates both

    entry = find_model(name)
    yield step(0, f"reading {name}")
    model = load_checkpoint(entry.path)  # a fresh CPU copy, not the cached one
    card, net = model.card, model.net.eval()
    multiple = int(getattr(net, "multiple", 1))
    halo = max(1, round(tile_size * overlap / 2))
    min_size = multiple * math.ceil((2 * halo + multiple) / multiple)

    raw = _test_image(sample, card, entry.name)
    raw = _fit_size(raw, min_size, multiple, tile_size)  # test tensors of at most a tile
    x, probs = _predict(net, raw, card)
    yield step(1, "test output computed")

    with tempfile.TemporaryDirectory(prefix="glandseg-bioimageio-") as tmp:
        root = Path(tmp)
        save_array(root / "test_input.npy", raw.transpose(2, 0, 1)[None].astype(np.float32))
        save_array(root / "test_output.npy", probs[None].astype(np.float32))
        torchscript_ok = torchscript and _write_torchscript(net, x, multiple,
                                                            root / "weights.torchscript.pt")
        yield step(2, "TorchScript " + ("written" if torchscript_ok else "skipped"))
        _cover(raw, probs, card, root / "cover.png")
        (root / "README.md").write_text(_documentation(card, entry, tile_size, overlap, halo,
                                                       torchscript_ok))
        # relative file names in the description are resolved against ``root``
        with ValidationContext(root=root, perform_io_checks=True, log_warnings=False):
            licence = _licence(card, root)
            arch, state = _architecture(v, card, net, root)
            torch.save(state, root / "weights.pt")
            try:
                descr = _describe(v, card, root, arch, licence, authors, tile_size, overlap,
                                  halo, min_size, multiple, torchscript_ok, net)
            except ValueError as exc:  # pydantic's ValidationError: say which field, briefly
                first = str(exc).splitlines()[1:3]
                raise GlandsegError(f"model {name!r} cannot be described as a bioimage.io "
                                    f"model: {' '.join(x.strip() for x in first)}") from None
            with atomic_path(dest, ".zip") as out:
                Path(out).unlink()
                save_bioimageio_package(descr, output_path=Path(out))
    yield step(4, f"wrote {dest.name}")
    return dest


def _test_image(sample, card: ModelCard, name: str) -> np.ndarray:
    """(Y, X, C) test input in the image's own value range."""
    if sample is None:
        from . import _napari
        from .samples import model_sample

        key = model_sample(name)
        if key is None:
            key = "glas" if card.in_channels == 3 else "em"
        sample = getattr(_napari, f"sample_{key}")()[0][0]
    elif isinstance(sample, str | Path):
        from .io import read_image

        sample = read_image(sample, as_labels=False).data
        if isinstance(sample, list):  # multiscale: the coarsest level is plenty for a test
            sample = sample[-1]
    arr = np.asarray(sample)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise GlandsegError(f"test image must be (Y, X) or (Y, X, C), got shape {arr.shape}")
    if arr.shape[-1] != card.in_channels:
        if card.in_channels == 1 and arr.shape[-1] == 3:
            arr = arr.mean(-1, keepdims=True).astype(arr.dtype)
        else:
            raise GlandsegError(f"test image has {arr.shape[-1]} channel(s); model "
                                f"{card.name!r} takes {card.in_channels}")
    fixed = card.normalization in (Normalization.IMAGENET.value, Normalization.UNIT.value)
    if fixed and arr.dtype != np.uint8:
        # the package's pre-processing divides by 255, as ours does for 8-bit images only
        raise GlandsegError(f"test image is {arr.dtype}; model {card.name!r} normalises "
                            f"'{card.normalization}', which the package describes for 8-bit "
                            "images: give an 8-bit sample")
    return arr


def _fit_size(arr: np.ndarray, min_size: int, step: int, max_size: int) -> np.ndarray:
    """Crop (from the centre) or mirror-pad each spatial axis to a size ``min + n * step``
    of at most ``max(min_size, max_size)``."""
    for axis in (0, 1):
        n = min(arr.shape[axis], max(min_size, max_size))
        size = min_size if n <= min_size else min_size + (n - min_size) // step * step
        if n < size:
            pad = [(0, 0)] * 3
            pad[axis] = (0, size - n)
            arr = np.pad(arr, pad, mode="symmetric")
        else:
            start = (arr.shape[axis] - size) // 2
            arr = np.take(arr, range(start, start + size), axis=axis)
    return np.ascontiguousarray(arr)


def _predict(net, raw: np.ndarray, card: ModelCard):
    """Normalise as inference does and run the network on the whole test image."""
    from .inference import _norm_stats, _normalise, _probabilities

    stats = _norm_stats(raw, (0, 0, *raw.shape[:2]), card.normalization)
    x = torch.from_numpy(_normalise(raw, card.normalization, stats))[None]
    with torch.inference_mode():
        probs = _probabilities(net(x).float())[0].numpy()
    return x, probs


def _architecture(v, card: ModelCard, net, root: Path):
    """The architecture description and the state dict that goes with it."""
    state = {k: t.detach().cpu().contiguous() for k, t in net.state_dict().items()}
    arch = Architecture(card.architecture)
    if arch in _LIBRARY:
        import_from, name = _LIBRARY[arch]
        kwargs = _library_kwargs(arch, card)
        state = {k.removeprefix("net."): t for k, t in state.items()}
        return v.ArchitectureFromLibraryDescr(import_from=import_from, callable=name,
                                              kwargs=kwargs), state
    # Our own network: a copy of nets.py, which imports only torch (and MONAI's blocks).
    shutil.copyfile(nets.__file__, root / "glandseg_nets.py")
    kwargs = {"in_channels": card.in_channels, "num_classes": card.num_classes,
              **_plain(card.arch_kwargs)}
    return v.ArchitectureFromFileDescr(source=Path("glandseg_nets.py"),
                                       callable=type(net).__name__, kwargs=kwargs), state


def _library_kwargs(arch: Architecture, card: ModelCard) -> dict:
    """The MONAI constructor's arguments, exactly as nets.py passes them."""
    import inspect

    ak = _plain(card.arch_kwargs)
    if arch is Architecture.UNET:
        sig = inspect.signature(nets.UNet.__init__).parameters
        features = ak.get("features", list(sig["features"].default))
        return {"spatial_dims": 2, "in_channels": card.in_channels,
                "out_channels": card.num_classes, "features": list(features), "norm": "batch",
                "act": "relu", "dropout": float(ak.get("dropout", sig["dropout"].default))}
    sig = inspect.signature(nets.ResUNet.__init__).parameters
    channels = list(ak.get("channels", sig["channels"].default))
    return {"spatial_dims": 2, "in_channels": card.in_channels,
            "out_channels": card.num_classes, "channels": channels,
            "strides": [2] * (len(channels) - 1),
            "num_res_units": int(ak.get("num_res_units", sig["num_res_units"].default)),
            "norm": "batch", "dropout": float(ak.get("dropout", sig["dropout"].default))}


def _plain(obj):
    """Tuples -> lists, so kwargs are plain YAML values."""
    if isinstance(obj, dict):
        return {str(k): _plain(x) for k, x in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(x) for x in obj]
    return obj


def _cover(raw: np.ndarray, probs: np.ndarray, card: ModelCard, path: Path) -> None:
    """A 2:1 cover: the test input beside it overlaid with the predicted classes in the
    card's colours (bioimageio.spec's default cover generator does not handle our tensors)."""
    from imageio.v3 import imwrite

    img = raw.astype(np.float32)
    lo, hi = np.percentile(img, [0.5, 99.5])
    img = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    img = np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img[..., :3]
    labels = (probs[0] > 0.5).astype(int) if card.binary else probs.argmax(0)
    colours = np.array([[int(c[i:i + 2], 16) / 255 for i in (1, 3, 5)]
                        for c in card.class_colours], np.float32)
    overlay = np.where(labels[..., None] > 0, 0.45 * img + 0.55 * colours[labels], img)
    cover = np.concatenate([img, overlay], axis=1)
    imwrite(path, (cover * 255).round().astype(np.uint8))


def _write_torchscript(net, x: torch.Tensor, step: int, path: Path) -> str | None:
    """TorchScript of ``net``: ``torch.jit.script`` when it scripts, else ``torch.jit.trace``
    (our SegNet's pad/crop does not script). Kept only if it reproduces the eager network on
    the test input and on another valid size (a trace must not have baked in the shape);
    returns how it was made, or None."""
    import warnings

    other = torch.rand(2, x.shape[1], x.shape[2] + 2 * step, x.shape[3] + step) * 4 - 2
    for how in ("script", "trace"):
        try:
            with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
                warnings.simplefilter("ignore")
                ts = (torch.jit.script(net) if how == "script"
                      else torch.jit.trace(net, x, check_trace=False))
                if all(torch.allclose(ts(t), net(t), rtol=1e-4, atol=1e-5) for t in (x, other)):
                    ts.save(str(path))
                    return how
        except Exception:  # noqa: S112 - best effort: the state dict is the primary format
            continue
    return None


def _licence(card: ModelCard, root: Path):
    """An SPDX id when the card's licence is one, else a LICENSE.txt with the card's text."""
    from bioimageio.spec.utils import get_spdx_licenses

    text = card.licence.strip()
    ids = {lic["licenseId"] for lic in get_spdx_licenses()["licenses"]}
    if text in ids:
        return text
    lines = [f"Model weights: {text or 'not stated'}"]
    if card.data_licence:
        lines.append(f"Training data: {card.data_licence}")
    (root / "LICENSE.txt").write_text("\n".join(lines) + "\n")
    from bioimageio.spec.model.v0_5 import FileDescr

    return FileDescr(source=Path("LICENSE.txt"))


def _citations(v, card: ModelCard) -> list:
    text = f"{card.training_data} {card.data_licence}".lower()
    return [v.CiteEntry(text=t, doi=doi) for key, (t, doi) in KNOWN_DATASETS.items()
            if key in text]


def _rdf_name(card: ModelCard) -> str:
    label = Architecture(card.architecture).label
    name = re.sub(r"[^A-Za-z0-9_+\- ()]", "_", f"{card.name} ({label})")
    return name[:128]


def _describe(v, card, root, arch, licence, authors, tile_size, overlap, halo, min_size,
              multiple, torchscript_ok, net):
    from bioimageio.spec.dataset.v0_3 import DatasetDescr

    unit = "micrometer" if card.pixel_size_um else None
    scale = float(card.pixel_size_um or 1.0)
    channel_names = (["grey"] if card.in_channels == 1 else ["red", "green", "blue"]
                     if card.in_channels == 3 else [f"c{i}" for i in range(card.in_channels)])
    size = v.ParameterizedSize(min=min_size, step=multiple)
    in_axes = [v.BatchAxis(), v.ChannelAxis(channel_names=channel_names),
               v.SpaceInputAxis(id="y", size=size, unit=unit, scale=scale),
               v.SpaceInputAxis(id="x", size=size, unit=unit, scale=scale)]
    out_names = [card.class_names[1]] if card.binary else list(card.class_names)
    out_axes = [v.BatchAxis(), v.ChannelAxis(channel_names=[_axis_name(n) for n in out_names])]
    for ax in ("y", "x"):
        out_axes.append(v.SpaceOutputAxisWithHalo(
            id=ax, halo=halo, unit=unit, scale=scale,
            size=v.SizeReference(tensor_id="input", axis_id=ax)))
    inputs = [v.InputTensorDescr(
        id="input", axes=in_axes, test_tensor=v.FileDescr(source=Path("test_input.npy")),
        description=f"image, {card.in_channels} channel(s), values 0..255 (8-bit)",
        preprocessing=_preprocessing(v, card))]
    post = ([v.SigmoidDescr()] if card.binary
            else [v.SoftmaxDescr(kwargs=v.SoftmaxKwargs(axis="channel"))])
    outputs = [v.OutputTensorDescr(
        id="output", axes=out_axes, test_tensor=v.FileDescr(source=Path("test_output.npy")),
        description=("foreground probability" if card.binary else "class probabilities"),
        data=v.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        postprocessing=post)]

    torch_version = torch.__version__.split("+")[0]
    weights = v.WeightsDescr(
        pytorch_state_dict=v.PytorchStateDictWeightsDescr(
            source=Path("weights.pt"), architecture=arch, pytorch_version=torch_version,
            dependencies=_environment(root)),
        torchscript=(v.TorchscriptWeightsDescr(
            source=Path("weights.torchscript.pt"), pytorch_version=torch_version,
            parent="pytorch_state_dict", comment=f"torch.jit.{torchscript_ok} of the same network")
            if torchscript_ok else None),
    )
    cite = _citations(v, card)
    training_data = None
    if card.training_data:
        training_data = DatasetDescr(
            name=_rdf_name(card)[:60] + " training data", description=card.training_data[:1024],
            cite=cite, license=None, documentation=None)
    config = {CONFIG_KEY: {"card": _plain(__import__("json").loads(card.to_json())),
                           "tile_size": tile_size, "overlap": overlap},
              "bioimageio": {
                  "architecture_type": Architecture(card.architecture).label,
                  "task": "semantic segmentation",
                  "model_parameter_count": sum(p.numel() for p in net.parameters())}}
    tags = ["napari-glandseg", "segmentation", "2d", "pytorch", card.architecture]
    return v.ModelDescr(
        name=_rdf_name(card),
        description=(card.description or f"{card.name}: napari-glandseg model")[:1024],
        authors=[v.Author(name=a) for a in (authors or ["napari-glandseg developers"])],
        cite=cite,
        license=licence,
        documentation=v.FileDescr(source=Path("README.md")),
        covers=[v.FileDescr(source=Path("cover.png"))],
        tags=tags,
        version=card.version if re.fullmatch(r"\d+(\.\d+)*", card.version) else None,
        inputs=inputs,
        outputs=outputs,
        weights=weights,
        training_data=training_data,
        config=config,
    )


def _axis_name(name: str) -> str:
    return str(name)[:128] or "class"


def _environment(root: Path):
    """A conda environment file: torch and MONAI (the nets use MONAI's blocks)."""
    from importlib.metadata import version

    from bioimageio.spec.conda_env import CondaEnv, PipDeps
    from bioimageio.spec.model.v0_5 import FileDescr
    from bioimageio.spec.utils import write_yaml

    env = CondaEnv(name="napari-glandseg-model", channels=["conda-forge"],
                   dependencies=[f"pytorch>={torch.__version__.split('+')[0].rsplit('.', 1)[0]}",
                                 "pip", PipDeps(pip=[f"monai>={version('monai')}"])])
    write_yaml(env.model_dump(mode="json", exclude_none=True), root / "environment.yaml")
    return FileDescr(source=Path("environment.yaml"))


def _preprocessing(v, card: ModelCard) -> list:
    from .inference import IMAGENET_MEAN, IMAGENET_STD

    mode = Normalization(card.normalization)
    spatial = ["y", "x"]
    if mode is Normalization.IMAGENET:
        if card.in_channels == 3:
            return [v.FixedZeroMeanUnitVarianceDescr(
                kwargs=v.FixedZeroMeanUnitVarianceAlongAxisKwargs(
                    mean=[float(m) * 255 for m in IMAGENET_MEAN],
                    std=[float(s) * 255 for s in IMAGENET_STD], axis="channel"))]
        return [v.FixedZeroMeanUnitVarianceDescr(kwargs=v.FixedZeroMeanUnitVarianceKwargs(
            mean=float(IMAGENET_MEAN.mean()) * 255, std=float(IMAGENET_STD.mean()) * 255))]
    if mode is Normalization.UNIT:
        return [v.ScaleLinearDescr(kwargs=v.ScaleLinearKwargs(gain=1 / 255))]
    if mode is Normalization.ZSCORE:
        return [v.ZeroMeanUnitVarianceDescr(kwargs=v.ZeroMeanUnitVarianceKwargs(
            axes=spatial, eps=_EPS))]
    return [v.ScaleRangeDescr(kwargs=v.ScaleRangeKwargs(
        axes=spatial, min_percentile=_PERCENTILES[0], max_percentile=_PERCENTILES[1],
        eps=_EPS))]


def _documentation(card: ModelCard, entry: ModelEntry, tile_size, overlap, halo,
                   torchscript_ok) -> str:
    lost = [
        "object post-processing (hole filling, watershed / boundary splitting into instances): "
        f"napari-glandseg applies {card.postprocess or 'none'}",
        "Gaussian blending of overlapping tiles and test-time augmentation",
    ]
    if card.pixel_size_um and card.data_pixel_size_um and \
            abs(card.pixel_size_um / card.data_pixel_size_um - 1) > 0.1:
        lost.append(
            f"resampling to the working scale: the network sees images at "
            f"{card.pixel_size_um:g} um/px (the axes' scale), its training data were "
            f"{card.data_pixel_size_um:g} um/px; resample such images by "
            f"{card.data_pixel_size_um / card.pixel_size_um:g} before the network and the "
            "output back (napari-glandseg does), or the objects come out the wrong size")
    if card.stain_normalization:
        lost.append("Macenko stain normalisation onto the training stains (the reference is in "
                    f"config.{CONFIG_KEY}.card.stain_normalization); without it, results on "
                    "differently stained slides may be worse")
    return "\n".join([
        f"# {card.name}",
        "",
        "Exported from napari-glandseg as a bioimage.io model package.",
        "",
        "```",
        card.summary(),
        "```",
        "",
        "## Running it",
        "",
        f"Tiles of {tile_size} px overlapping by {overlap:g} (an output halo of {halo} px) are "
        "what napari-glandseg uses. Input values are 8-bit (0..255); the pre-processing in "
        "the description normalises them as the model was trained. The output is "
        + ("the foreground probability." if card.binary else
           "one probability per class: " + ", ".join(card.class_names) + "."),
        "",
        "Weights: pytorch_state_dict" + (", torchscript" if torchscript_ok else "") + ".",
        "",
        "## Not in this package",
        "",
        *[f"- {item}" for item in lost],
        "",
        "# Validation",
        "",
        "The scores above were measured by napari-glandseg on the held-out split named in the "
        "card (with its post-processing). The test output in this package is the network's "
        "output for the test input; `bioimageio test` reproduces it.",
        "",
    ])


# --------------------------------------------------------------------------------------------
# import


def import_bioimageio(package: PathType, name: str | None = None,
                      overwrite: bool = False) -> ModelEntry:
    """Read a bioimage.io model package into the store.

    Accepted: packages exported by napari-glandseg, and packages whose ``pytorch_state_dict``
    architecture is ``monai.networks.nets.BasicUNet`` (batch norm, ReLU) or
    ``monai.networks.nets.UNet`` (2D, stride 2, batch norm) with the pre-processing one of our
    normalisations. Anything else is refused with a message saying what is needed. No code
    from the package runs; weights are read as plain tensors.

    Parameters
    ----------
    package : str or Path
        The ``.zip`` (or its ``rdf.yaml`` / ``bioimageio.yaml``).
    name : str, optional
        Store name (default: the card's name, or one made from the package's name).
    overwrite : bool
        Replace a stored model of that name.
    """
    _spec()
    from bioimageio.spec import InvalidDescr, load_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    p = Path(package)
    if not p.exists():
        raise GlandsegError(f"{p}: no such file")
    try:
        descr = load_description(p, format_version="latest", perform_io_checks=False)
    except Exception as exc:
        raise GlandsegError(f"{p}: not a bioimage.io package ({str(exc).splitlines()[0]})") \
            from None
    if not isinstance(descr, ModelDescr):  # invalid, another kind, or not the latest format
        detail = ""
        if isinstance(descr, InvalidDescr):
            errors = descr.validation_summary.details[-1].errors if \
                descr.validation_summary.details else []
            detail = f": {errors[0].loc} {errors[0].msg}" if errors else ""
        raise GlandsegError(f"{p}: not a valid bioimage.io model description{detail}")
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise GlandsegError(f"{p}: has {len(descr.inputs)} inputs and {len(descr.outputs)} "
                            "outputs; napari-glandseg models take one image and give one map")
    wd = descr.weights.pytorch_state_dict
    if wd is None:
        have = ", ".join(k for k, x in descr.weights if x is not None)
        raise GlandsegError(
            f"{p}: has {have} weights only; napari-glandseg imports pytorch_state_dict weights "
            f"with {_NEEDS}")
    for kind, tensor in (("input", descr.inputs[0]), ("output", descr.outputs[0])):
        axes = [(a.type, str(a.id)) for a in tensor.axes]
        if axes != [("batch", "batch"), ("channel", "channel"), ("space", "y"),
                    ("space", "x")]:
            raise GlandsegError(f"{p}: {kind} axes {', '.join(i for _, i in axes)}; "
                                "napari-glandseg models have axes batch, channel, y, x")
    card = _card_from(descr, wd, p)
    if name is not None:
        card.name = name
    state = _read_state(wd, p)
    if Architecture(card.architecture) in _LIBRARY and not all(k.startswith("net.")
                                                                 for k in state):
        state = {f"net.{k}": t for k, t in state.items()}
    with tempfile.TemporaryDirectory(prefix="glandseg-import-") as tmp:
        pt = Path(tmp) / "weights.pt"
        torch.save(state, pt)
        # the store's import loads it into the network the card builds (shapes checked)
        try:
            return import_model(pt, name=card.name, card=card, overwrite=overwrite)
        except CheckpointError as exc:
            raise GlandsegError(str(exc).replace(str(pt), f"{p}:{wd.source}")) from None


_NEEDS = ("an architecture it can build: a package exported by napari-glandseg, or "
          "monai.networks.nets.BasicUNet (norm 'batch', act 'relu') or monai.networks.nets.UNet "
          "(spatial_dims 2, strides 2, norm 'batch') by import path")


def _card_from(descr, wd, p: Path) -> ModelCard:
    from bioimageio.spec.model.v0_5 import ArchitectureFromLibraryDescr

    arch = wd.architecture
    extra = getattr(descr.config, "model_extra", None) or {}
    ours = extra.get(CONFIG_KEY) if isinstance(extra, dict) else None
    if isinstance(ours, dict) and isinstance(ours.get("card"), dict):
        try:
            card = ModelCard.from_dict(dict(ours["card"]))
        except GlandsegError as exc:
            raise GlandsegError(f"{p}: bad napari-glandseg card in config: {exc}") from None
        _check_arch_matches(card, arch, p)
        return card
    if not isinstance(arch, ArchitectureFromLibraryDescr):
        raise GlandsegError(
            f"{p}: its architecture is code in the package ({arch.callable} from "
            f"{getattr(arch, 'source', '?')}), which napari-glandseg never runs; it imports "
            f"pytorch_state_dict weights with {_NEEDS}")
    return _card_from_library(descr, arch, p)


def _check_arch_matches(card: ModelCard, arch, p: Path) -> None:
    from bioimageio.spec.model.v0_5 import ArchitectureFromLibraryDescr

    a = Architecture(card.architecture)
    if isinstance(arch, ArchitectureFromLibraryDescr):
        expected: tuple[str, str] | str | None = _LIBRARY.get(a)
        got: tuple[str, str] | str = (arch.import_from, arch.callable)
        kwargs_ok = expected is not None and dict(arch.kwargs) == _library_kwargs(a, card)
    else:
        from .models import NETWORKS

        expected = NETWORKS[a].__name__
        got = arch.callable
        kwargs_ok = dict(arch.kwargs) == {"in_channels": card.in_channels,
                                          "num_classes": card.num_classes,
                                          **_plain(card.arch_kwargs)}
    if got != expected or not kwargs_ok:
        raise GlandsegError(f"{p}: its architecture ({got}, {dict(arch.kwargs)}) does not match "
                            f"its napari-glandseg card ({card.architecture}, "
                            f"{card.arch_kwargs}); refusing a modified package")


def _card_from_library(descr, arch, p: Path) -> ModelCard:
    """A card for a MONAI BasicUNet/UNet package from another tool."""
    kw = dict(arch.kwargs)
    where = f"{arch.import_from}.{arch.callable}"

    def need(key, ok, what):
        if key in kw and not ok(kw[key]):
            raise GlandsegError(f"{p}: {where} with {key}={kw[key]!r}; napari-glandseg builds "
                                f"it only with {key} {what}")

    if arch.import_from != "monai.networks.nets" or arch.callable not in ("BasicUNet", "UNet"):
        raise GlandsegError(f"{p}: architecture {where} is not one napari-glandseg builds; it "
                            f"needs {_NEEDS}")
    if kw.get("spatial_dims", 3 if arch.callable == "BasicUNet" else None) != 2:
        raise GlandsegError(f"{p}: {where} with spatial_dims={kw.get('spatial_dims', 3)!r}; "
                            "napari-glandseg models are 2D (spatial_dims 2)")
    def norm(x):
        return _layer_name(x) == "batch"

    extra_arch: dict = {}
    if arch.callable == "BasicUNet":
        allowed = {"spatial_dims", "in_channels", "out_channels", "features", "norm", "act",
                   "dropout", "bias", "upsample"}
        need("norm", norm, "'batch'")
        need("act", lambda x: _layer_name(x) == "relu", "'relu'")
        need("bias", lambda x: x is True, "True")
        need("upsample", lambda x: x == "deconv", "'deconv'")
        if "norm" not in kw or "act" not in kw:
            raise GlandsegError(f"{p}: {where} without norm/act uses MONAI's defaults (instance "
                                "norm, LeakyReLU); napari-glandseg's U-Net needs norm 'batch' "
                                "and act 'relu'")
        architecture = Architecture.UNET
        if "features" in kw:
            extra_arch["features"] = list(kw["features"])
    else:
        allowed = {"spatial_dims", "in_channels", "out_channels", "channels", "strides",
                   "num_res_units", "norm", "dropout"}
        need("norm", norm, "'batch'")
        need("strides", lambda s: all(int(x) == 2 for x in s), "all 2")
        if kw.get("norm") is None:
            raise GlandsegError(f"{p}: {where} without norm uses instance norm; "
                                "napari-glandseg's ResNet U-Net needs norm 'batch'")
        architecture = Architecture.RESUNET
        extra_arch["channels"] = list(kw.get("channels", []))
        if len(kw.get("strides", [])) != len(extra_arch["channels"]) - 1:
            raise GlandsegError(f"{p}: {where} needs one stride per down-sampling "
                                "(len(strides) == len(channels) - 1)")
        if "num_res_units" in kw:
            extra_arch["num_res_units"] = int(kw["num_res_units"])
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise GlandsegError(f"{p}: {where} with {', '.join(unknown)}; napari-glandseg builds "
                            f"it only from {', '.join(sorted(allowed))}")
    if "dropout" in kw:
        extra_arch["dropout"] = float(kw["dropout"])
    tin, tout = descr.inputs[0], descr.outputs[0]
    in_ch = _channels(tin)
    n_out = _channels(tout)
    if kw.get("in_channels") != in_ch or kw.get("out_channels") != n_out:
        raise GlandsegError(f"{p}: {where} has in/out channels {kw.get('in_channels')}/"
                            f"{kw.get('out_channels')} but its tensors have {in_ch}/{n_out}")
    names = _channel_names(tout)
    class_names = (["background", names[0] if names else "object"] if n_out == 1
                   else names or [])
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", descr.name).strip("-.")[:64] or "bioimageio-model"
    return ModelCard(
        name=base, architecture=architecture.value, in_channels=in_ch, num_classes=n_out,
        arch_kwargs=extra_arch, class_names=class_names, pixel_size_um=_pixel_size(tin),
        normalization=_normalization_of(tin, p).value, description=descr.description,
        training_data=_training_text(descr), licence=str(descr.license or ""),
        version=str(descr.version or "0.1.0"),
        training={"imported_from": "bioimage.io", "package": p.name,
                  "authors": [a.name for a in descr.authors]},
    )


def _layer_name(x) -> str:
    """MONAI's norm/act argument: a name, or (name, {args})."""
    return str(x[0] if isinstance(x, list | tuple) and x else x).lower()


def _channels(tensor) -> int:
    for a in tensor.axes:
        if a.type == "channel":
            return len(a.channel_names)
    return 1


def _channel_names(tensor) -> list[str]:
    for a in tensor.axes:
        if a.type == "channel":
            return [str(n) for n in a.channel_names]
    return []


def _pixel_size(tensor) -> float | None:
    for a in tensor.axes:
        if a.type == "space" and a.id == "x" and a.unit:
            factor = {"micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3}.get(str(a.unit))
            return float(a.scale) * factor if factor else None
    return None


def _training_text(descr) -> str:
    td = descr.training_data
    if td is None:
        return ""
    return str(getattr(td, "description", "") or getattr(td, "name", "") or
               getattr(td, "id", ""))


def _normalization_of(tensor, p: Path) -> Normalization:
    """Which of our normalisations the package's pre-processing is, or a refusal."""
    from .inference import IMAGENET_MEAN, IMAGENET_STD

    ops = [op for op in tensor.preprocessing if op.id != "ensure_dtype"]
    what = ", ".join(op.id for op in ops) or "none"
    if len(ops) == 1:
        op = ops[0]
        k: Any = getattr(op, "kwargs", None)
        if op.id == "scale_linear" and np.allclose(np.atleast_1d(k.gain), 1 / 255) and \
                np.allclose(np.atleast_1d(k.offset), 0):
            return Normalization.UNIT
        if op.id == "zero_mean_unit_variance":
            return Normalization.ZSCORE
        if op.id == "scale_range" and np.allclose(
                (k.min_percentile, k.max_percentile), _PERCENTILES):
            return Normalization.PERCENTILE
        if op.id == "fixed_zero_mean_unit_variance":
            mean, std = np.atleast_1d(k.mean), np.atleast_1d(k.std)
            if mean.size == 3 and np.allclose(mean, IMAGENET_MEAN * 255, atol=1e-3) and \
                    np.allclose(std, IMAGENET_STD * 255, atol=1e-3):
                return Normalization.IMAGENET
            if mean.size == 1 and np.allclose(mean, IMAGENET_MEAN.mean() * 255, atol=1e-3) and \
                    np.allclose(std, IMAGENET_STD.mean() * 255, atol=1e-3):
                return Normalization.IMAGENET
    raise GlandsegError(
        f"{p}: pre-processing {what} is none of napari-glandseg's normalisations (scale_linear "
        "gain 1/255; zero_mean_unit_variance; scale_range 1..99.8 %; ImageNet mean/std x 255)")


def _read_state(wd, p: Path) -> dict:
    """The state dict, read as plain tensors (never unpickling objects), hash checked."""
    from .models.checkpoint import _load_pickle_state

    try:
        data = wd.get_reader().read()
        bad_hash = wd.sha256 is not None and hashlib.sha256(data).hexdigest() != str(wd.sha256)
    except Exception as exc:
        bad_hash = "sha256" in str(exc).lower()  # bioimageio.spec's reader checks it too
        if not bad_hash:
            raise GlandsegError(f"{p}: cannot read the weights {wd.source} ({exc})") from None
    if bad_hash:
        raise GlandsegError(f"{p}: the weights {wd.source} do not match their SHA-256 in the "
                            "description (corrupt or modified package)")
    with tempfile.TemporaryDirectory(prefix="glandseg-weights-") as tmp:
        f = Path(tmp) / "weights.pt"
        f.write_bytes(data)
        try:
            state = _load_pickle_state(f)
        except CheckpointError as exc:
            raise GlandsegError(str(exc).replace(str(f), f"{p.name}:{wd.source}")) from None
    return state


__all__ = ["export_bioimageio", "import_bioimageio", "iter_export_bioimageio"]
