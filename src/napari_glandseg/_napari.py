"""npe2 reader, writer and sample-data hooks. Qt-free: they only turn files into layer tuples."""

from __future__ import annotations

import os
from pathlib import Path

from .io import IMAGE_SUFFIXES, Pair, read_image, read_pair, write_labels

SAMPLE_DIR = Path(__file__).parent / "sample_data"
PLUGIN = "napari-glandseg"
#: Files whose reader choice :func:`remember_reader` keeps at most (the oldest go first).
REMEMBERED_FILES = 200


def get_reader(path):
    """Return a reader for image files we understand, else None (napari tries other readers)."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    if not paths or any(Path(p).suffix.lower() not in IMAGE_SUFFIXES for p in paths):
        return None
    return read_layers


def read_layers(path) -> list[tuple]:
    paths = [path] if isinstance(path, str | Path) else list(path)
    return [read_image(p).to_layer_data() for p in paths]


def get_zarr_reader(path):
    """A reader for the OME-Zarr labels ``glandseg segment --ome-zarr`` writes, else None."""
    if not isinstance(path, str | Path) or not str(path).rstrip("/").endswith(".zarr"):
        return None
    if not (Path(path) / "labels" / "glandseg").is_dir():
        return None
    return read_zarr_layers


def read_zarr_layers(path) -> list[tuple]:
    """A slide's labels as a multiscale Labels layer in um (it lies over the slide)."""
    from .slides import labels_layer_data

    return [labels_layer_data(path)]


def write_labels_layer(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer for Labels to .tif/.tiff/.png (atomic).

    A TIFF keeps the layer's um/px (its ``pixel_size_um``, else a square layer scale other
    than 1) and its position (``translate``, a region of a slide) and is marked as labels;
    :func:`remember_reader` makes napari open the file with this plugin's reader, so
    File > Open gives back a Labels layer at that scale and place.
    """
    pixel_size = (meta.get("metadata") or {}).get("pixel_size_um")
    scale = meta.get("scale")
    if not pixel_size and scale is not None and len(scale) >= 2 and \
            scale[-1] == scale[-2] and scale[-1] != 1:
        pixel_size = float(scale[-1])
    if isinstance(data, list):  # a multiscale layer: its full resolution
        data = data[0]
    written = write_labels(path, data, pixel_size_um=pixel_size, translate=meta.get("translate"))
    remember_reader(written)
    return [str(written)]


def remember_reader(path) -> bool:
    """Tell napari that the file at ``path`` (labels this plugin wrote) opens with this
    plugin's reader: an entry for that one file in napari's reader preferences (Preferences
    > Plugins, where it can be removed), as napari's own "remember" choice makes.

    napari's builtin reader also claims ``*.tif`` and ``*.png``, so File > Open asked which
    reader to use, and its default (or a remembered ``*.tif`` -> napari) gave an Image at
    scale 1. A file's own entry is the most specific match, so the file reopens as Labels
    at its um/px and position, while other TIFFs keep whatever the user chose. A user's
    entry for the very same file is kept; entries of files that no longer exist are dropped
    and at most :data:`REMEMBERED_FILES` are kept. Never fails a save: returns whether the
    preference was recorded.
    """
    import glob
    import sys

    if "napari" not in sys.modules:  # not inside napari (a script): nothing to tell it
        return False
    try:
        from napari.settings import get_settings

        plugins = get_settings().plugins
        key = glob.escape(os.path.realpath(path))
        prefs = dict(plugins.extension2reader)
        if prefs.get(key, PLUGIN) != PLUGIN:
            return False
        prefs.pop(key, None)  # re-added last: the most recent
        ours = [k for k, v in prefs.items() if v == PLUGIN and _one_file(k)]
        kept = [k for k in ours if os.path.isfile(_unescape(k))]  # oldest first
        for k in set(ours) - set(kept[len(kept) + 1 - REMEMBERED_FILES:]):
            del prefs[k]
        prefs[key] = PLUGIN
        plugins.extension2reader = prefs
        return True
    except Exception:  # noqa: BLE001 (no napari, read-only settings: the file is written)
        return False


def _unescape(pattern: str) -> str:
    """glob.escape undone: ``[*]`` -> ``*``, ``[?]`` -> ``?``, ``[[]`` -> ``[``."""
    import re

    return re.sub(r"\[([*?\[])\]", r"\1", pattern)


def _one_file(pattern: str) -> bool:
    """Whether a reader-preference pattern is one absolute file path (as
    :func:`remember_reader` writes it), not a wildcard pattern."""
    import glob

    path = _unescape(pattern)
    return os.path.isabs(path) and glob.escape(path) == pattern


def _sample(stem: str, what: str, truth: str = "instances",
            model: str | None = None) -> list[tuple]:
    """The sample's image and truth layers; a class-map truth (``truth="classes"``) is drawn
    in the colours of ``model``'s classes, as its predictions are."""
    path = next(SAMPLE_DIR / f"{stem}{ext}" for ext in (".png", ".jpg")
                if (SAMPLE_DIR / f"{stem}{ext}").exists())
    image, truth_img = read_pair(Pair(path, SAMPLE_DIR / f"{stem}_{truth}.png"))
    credit = f"{what}; see napari_glandseg/sample_data/CREDITS.md (research use only)"
    img = image.to_layer_data()
    img[1]["metadata"]["credit"] = credit
    lab = truth_img.to_layer_data(name=f"{stem} [truth]")
    if model is not None:
        from .models import read_card
        from .models.store import model_path

        card = read_card(model_path(model))
        if card.fits_classes(lab[0]):
            lab[1]["colormap"] = card.label_colours()
    lab[1]["metadata"]["credit"] = credit
    lab[1]["metadata"]["glandseg_role"] = "truth"
    lab[1]["metadata"]["source_image"] = img[1].get("name", stem)  # for Save corrections
    return [img, lab]


def sample_glas() -> list[tuple]:
    """A whole GlaS colon H&E image (testA_5, 775x522, 20x) and its gland instance labels."""
    return _sample("glas_testA_5", "GlaS, Sirinukunwattana et al. 2017")


def sample_monuseg() -> list[tuple]:
    """A 256x256 MoNuSeg H&E crop and its nucleus instance labels."""
    return _sample("monuseg_TCGA-21-5784_crop", "MoNuSeg, Kumar et al. 2017, CC BY-NC-SA 4.0")


def sample_em() -> list[tuple]:
    """A 256x256 crop of ISBI 2012 EM slice 29 and its cell-profile instance labels."""
    return _sample("isbi2012_em_29_crop", "ISBI 2012 EM, Cardona et al. 2010, non-commercial")


def sample_mri() -> list[tuple]:
    """An axial abdominal MRI slice (UW-Madison GI tract, case 119 day 0 slice 81, 512x512
    grey, a validation case of organs-mri) and its organ class map (1 large bowel, 2 small
    bowel, 3 stomach)."""
    return _sample("uwm_gi_mri_case119_day0_slice_0081", "UW-Madison GI tract MRI, "
                   "Lee et al. 2024", truth="classes", model="organs-mri")


def sample_wbc() -> list[tuple]:
    """A 120x120 white blood cell image (dataset 1, id 005) and its class map
    (1 cytoplasm, 2 nucleus)."""
    return _sample("wbc_005", "WBC dataset 1, Zheng et al. 2018", truth="classes",
                   model="wbc")
