"""Read images, masks and whole slides; find image/mask pairs; write label images.

Qt-free. Images come back as :class:`ImageData`: the pixels (a NumPy array, or for slides and
other large TIFFs a list of lazy dask arrays, full resolution first), the pixel size in um/px
when the file states it, and whether the file is a mask (shown as a Labels layer).

Examples
--------
>>> import numpy as np, tempfile, os
>>> from napari_glandseg.io import read_image, write_labels
>>> labels = np.zeros((32, 48), dtype=np.uint16); labels[4:10, 4:10] = 300
>>> folder = tempfile.TemporaryDirectory()
>>> path = write_labels(os.path.join(folder.name, "cells_mask.tif"), labels)
>>> img = read_image(path)
>>> img.kind, img.data.shape, img.data.dtype.name, int(img.data.max())
('labels', (32, 48), 'uint16', 300)
>>> folder.cleanup()
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ._files import atomic_path
from ._types import Array, PathType
from .errors import GlandsegError, ImageReadError, OutputExistsError
from .labels import dtype_for_max, labels_dtype

#: Whole-slide formats read through OpenSlide (the ``slides`` extra): Hamamatsu NDPI and VMS/VMU,
#: 3DHistech MIRAX, Leica SCN, Ventana BIF. A ``.tif``/``.tiff`` that OpenSlide recognises as a
#: vendor's slide (Philips TIFF, Ventana, Trestle, Leica) is read through it too.
OPENSLIDE_SUFFIXES = (".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".svs") + OPENSLIDE_SUFFIXES
TIFF_SUFFIXES = (".tif", ".tiff", ".svs")
#: File-name endings that mark a mask (``name_anno.bmp`` is the original GlaS layout).
MASK_NAME_SUFFIXES = (
    "_anno", "_mask", "_masks", "_label", "_labels", "_instances", "_gt", "_seg",
)
#: Folder names whose files are masks, in the order a dataset search prefers them.
MASK_FOLDERS = ("masks", "labels", "instances", "instances_cc", "annotations", "gt",
                "corrected")
#: Where Save corrections writes a corrected result (never over the truth by default)
CORRECTED_FOLDER = "corrected"
IMAGE_FOLDERS = ("images", "imgs", "image")
#: An integer single-channel image with at most this many distinct values is taken as a mask.
MAX_MASK_VALUES = 32
#: TIFF series larger than this (bytes) open lazily instead of being read into memory.
LAZY_BYTES = 256 * 2**20
#: Lazy images get down-sampled views until the smallest side is below this.
MIN_PYRAMID_SIDE = 1024


@dataclass
class ImageData:
    """Pixels of one file and what napari needs to show them.

    Attributes
    ----------
    data : ndarray or list of dask arrays
        ``(Y, X)``, ``(Y, X, C)`` or ``(Z, Y, X[, C])``. A list is a multiscale pyramid, full
        resolution first, read lazily.
    kind : {"image", "labels"}
    pixel_size_um : float or None
        Microns per pixel at full resolution, when the file states it.
    path : Path
    rgb : bool
        The last axis holds RGB colour.
    """

    data: Array | list[Array]
    kind: str
    path: Path
    pixel_size_um: float | None = None
    rgb: bool = False
    metadata: dict = field(default_factory=dict)

    @property
    def multiscale(self) -> bool:
        return isinstance(self.data, list)

    @property
    def shape(self) -> tuple[int, ...]:
        full = self.data[0] if isinstance(self.data, list) else self.data
        return tuple(full.shape)

    @property
    def name(self) -> str:
        return self.path.stem

    def to_layer_data(self, name: str | None = None) -> tuple:
        """A napari ``LayerDataTuple``: ``(data, kwargs, layer_type)``."""
        kwargs: dict = {"name": name or self.name, "metadata": dict(self.metadata)}
        kwargs["metadata"]["source_path"] = str(self.path)
        if self.pixel_size_um:
            ndim = len(self.shape) - (1 if self.rgb else 0)
            kwargs["scale"] = (1.0,) * (ndim - 2) + (self.pixel_size_um, self.pixel_size_um)
            kwargs["metadata"]["pixel_size_um"] = self.pixel_size_um
            kwargs["units"] = ("pixel",) * (ndim - 2) + ("um", "um")
        if self.metadata.get("translate"):  # a region, written where it lay
            ndim = len(self.shape) - (1 if self.rgb else 0)
            kwargs["translate"] = (0.0,) * (ndim - 2) + tuple(self.metadata["translate"])
        if self.multiscale:
            kwargs["multiscale"] = True
        if self.kind == "image":
            kwargs["rgb"] = self.rgb
        return (self.data, kwargs, self.kind)


# --------------------------------------------------------------------------------------------
# reading


def is_mask_path(path: str | os.PathLike) -> bool:
    """True when the file's name or folder says it is a mask.

    >>> is_mask_path("glas/train/masks/train_1.png"), is_mask_path("train_1_anno.bmp")
    (True, True)
    >>> is_mask_path("glas/train/images/train_1.jpg")
    False
    """
    p = Path(path)
    stem = p.stem.lower()
    if stem.endswith(".ome"):
        stem = stem[:-4]
    if any(stem.endswith(s) for s in MASK_NAME_SUFFIXES):
        return True
    return p.parent.name.lower() in MASK_FOLDERS


def looks_like_mask(array: np.ndarray) -> bool:
    """True for an integer single-channel 2D array with few distinct values."""
    if array.ndim != 2 or not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        return False
    sample = array[:: max(1, array.shape[0] // 512), :: max(1, array.shape[1] // 512)]
    return len(np.unique(sample)) <= MAX_MASK_VALUES and len(np.unique(array)) <= MAX_MASK_VALUES


def mask_to_labels(array: np.ndarray) -> np.ndarray:
    """Turn a mask as stored on disk into label values napari and the metrics expect.

    - ``bool`` and ``{0, 255}`` masks become ``{0, 1}``;
    - a class mask coded with evenly spread grey levels up to the type's maximum (255 or
      65535), such as ``{0, 128, 255}`` in the white-blood-cell set, becomes class numbers
      ``0..K-1`` by level (``K`` <= 8): 0 always stays background, so a mask without
      background (``{128, 255}`` -> ``{1, 2}``) or an all-foreground one (``{255}`` ->
      ``{1}``) keeps its classes;
    - other at most 8 levels ending at the maximum become ``1..n`` in level order (0 stays 0);
    - anything else (binary 0/1, instance labels) is kept as it is.

    >>> mask_to_labels(np.array([[0, 128], [255, 255]], dtype=np.uint8)).tolist()
    [[0, 1], [2, 2]]
    >>> mask_to_labels(np.array([[0, 255]], dtype=np.uint8)).tolist()
    [[0, 1]]
    >>> mask_to_labels(np.array([[128, 255]], dtype=np.uint8)).tolist()
    [[1, 2]]
    >>> mask_to_labels(np.full((1, 2), 255, dtype=np.uint8)).tolist()
    [[1, 1]]
    >>> mask_to_labels(np.array([[0, 1, 7]], dtype=np.uint8)).tolist()  # instance ids: kept
    [[0, 1, 7]]
    """
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        # A colour-saved mask: it is a mask when its channels agree.
        if not np.array_equal(array[..., 0], array[..., 1]):
            raise GlandsegError(
                f"mask is a colour image with differing channels, shape {array.shape}; "
                "save masks as single-channel integer images"
            )
        array = array[..., 0]
    if array.dtype in (np.uint8, np.uint16):
        top = int(np.iinfo(array.dtype).max)
        values = np.unique(array)
        if len(values) <= 8 and values[-1] == top:
            return _grey_levels_to_classes(array, values, top)
    return array


def _grey_levels_to_classes(array: np.ndarray, values: np.ndarray, top: int) -> np.ndarray:
    """Class numbers for grey levels ending at ``top`` (see :func:`mask_to_labels`)."""
    classes = None
    for k in range(1, 8):  # the coarsest even grid k levels above 0 that all values sit on
        c = np.round(values.astype(np.float64) * k / top)
        if np.all(np.abs(c * top / k - values) <= 1):
            classes = c.astype(np.uint8)
            break
    if classes is None:  # uneven levels: their order, 0 kept as background
        classes = np.arange(len(values), dtype=np.uint8) + (values[0] != 0)
    out = np.zeros(array.shape, np.uint8)
    for v, c in zip(values, classes, strict=True):
        out[array == v] = c
    return out


def read_image(path: str | os.PathLike, as_labels: bool | None = None) -> ImageData:
    """Read one image, mask or slide.

    Parameters
    ----------
    path : str or Path
        PNG, JPEG, BMP, TIFF (multi-page, 8/16-bit), OME-TIFF or Aperio SVS; with the
        ``slides`` extra (openslide) also NDPI, MRXS, SCN, VMS/VMU, BIF and Philips TIFF
        (see :func:`slide_reader`).
    as_labels : bool, optional
        Force (True) or refuse (False) reading as a mask. By default a file is a mask when its
        name or folder says so (:func:`is_mask_path`) or it is an integer image with few values.

    Returns
    -------
    ImageData
        RGBA is composited over white to RGB. Large or pyramidal TIFFs are lazy multiscale.

    Raises
    ------
    ImageReadError
        The file is missing, of an unknown type, or cannot be decoded; the message names it.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"{p}: no such file")
    suffix = p.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ImageReadError(
            f"{p}: unsupported file type {suffix!r}; expected one of {', '.join(IMAGE_SUFFIXES)}"
        )
    try:
        if slide_reader(p) == "openslide":
            img = _read_openslide(p)
        elif suffix in TIFF_SUFFIXES:
            img = _read_tiff(p)
        else:
            img = ImageData(data=_read_plain(p), kind="image", path=p)
    except ImageReadError:
        raise
    except Exception as exc:  # decoders raise many types; name the file and the cause
        if not _has_image_signature(p):  # e.g. a text file named .png: say so, not "pyav"
            raise ImageReadError(f"{p}: not an image (its content is not {suffix[1:].upper()} "
                                 "or any image format)") from None
        raise ImageReadError(f"{p}: cannot read image ({type(exc).__name__}: {exc})") from exc

    arr = None  # the pixels of a single-level image, in memory
    if not isinstance(img.data, list):
        arr = np.asarray(img.data)
        if arr.ndim >= 3 and arr.shape[-1] == 4:
            arr = _composite_rgba(arr)
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        img.data = arr
    if as_labels is None:
        as_labels = arr is not None and (is_mask_path(p) or looks_like_mask(arr)
                                         or img.metadata.get("glandseg_kind") == "labels")
    if as_labels:
        if arr is None:
            raise ImageReadError(f"{p}: a multiscale slide cannot be opened as a mask")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ImageReadError(f"{p}: a mask must hold integers, found {arr.dtype}")
        try:
            img.data = mask_to_labels(arr)
        except GlandsegError as exc:
            raise ImageReadError(f"{p}: {exc}") from exc
        img.kind, img.rgb = "labels", False
    else:
        img.kind = "image"
        img.rgb = img.shape[-1] == 3 and len(img.shape) >= 3
    return img


#: The first bytes of the image formats read here.
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*",
               b"II+\x00", b"MM\x00+")


def _has_image_signature(p: Path) -> bool:
    with open(p, "rb") as f:
        head = f.read(8)
    return any(head.startswith(sig) for sig in _SIGNATURES)


def _read_plain(p: Path) -> np.ndarray:
    import imageio.v3 as iio

    arr = iio.imread(p)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)
    return arr


def _composite_rgba(arr: np.ndarray) -> np.ndarray:
    """RGBA -> RGB over a white background (unstained glass is white in H&E)."""
    from .preprocess import dtype_top

    rgb, alpha = arr[..., :3], arr[..., 3:4]
    top = dtype_top(arr.dtype)
    if np.all(alpha == top):
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.float32) / top
    out = rgb.astype(np.float32) * a + top * (1.0 - a)
    return np.round(out).astype(arr.dtype) if np.issubdtype(arr.dtype, np.integer) else out


def _read_tiff(p: Path) -> ImageData:
    import tifffile

    with tifffile.TiffFile(p) as tif:
        series = tif.series[0]
        pixel_size = _tiff_pixel_size(tif)
        nbytes = int(np.prod(series.shape)) * series.dtype.itemsize
        lazy = tif.is_svs or len(series.levels) > 1 or nbytes > LAZY_BYTES
        meta: dict[str, Any] = {"tiff_series": series.name or "0"}
        shaped = tif.shaped_metadata
        if shaped and shaped[0].get("glandseg") == "labels":  # written by write_labels
            meta["glandseg_kind"] = "labels"
            if isinstance(shaped[0].get("translate"), list | tuple):
                meta["translate"] = [float(t) for t in shaped[0]["translate"]][-2:]
        if tif.is_svs:
            meta["aperio"] = _aperio_fields(getattr(tif.pages[0], "description", ""))
        _check_tiff_page(p, tif.pages[0])
        if not lazy:
            data = series.asarray()
            return ImageData(data=data, kind="image", path=p, pixel_size_um=pixel_size,
                             metadata=meta)
        if series.axes not in ("YXS", "YX"):
            raise ImageReadError(
                f"{p}: large TIFF with axes {series.axes!r}; only 2D grey or RGB slides "
                "(axes YX or YXS) open lazily"
            )
    levels = open_tiff_levels(p)
    return ImageData(data=levels, kind="image", path=p, pixel_size_um=pixel_size, metadata=meta)


#: A TIFF strip or tile larger than this (decoded) is refused: reading any pixel of it would
#: need that much memory at once.
MAX_CHUNK_BYTES = 2**31


def _check_tiff_page(p: Path, page) -> None:
    """Refuse a TIFF whose header cannot be true (more pixels than an uncompressed file
    holds) or whose strips/tiles are too large to decode, before any pixel is read."""
    try:
        size = p.stat().st_size
        counts = [int(c) for c in page.databytecounts]
        itemsize = np.dtype(page.dtype).itemsize if page.dtype is not None else 1
    except (AttributeError, TypeError, ValueError):
        return  # not a plain page (e.g. JPEG-in-TIFF oddities): the decoder will tell
    declared = int(np.prod(page.shape)) * itemsize
    if int(page.compression) == 1 and declared > size:
        raise ImageReadError(
            f"{p}: the header declares {' x '.join(map(str, page.shape))} pixels "
            f"({declared / 2**30:.1f} GiB uncompressed) but the file holds {size} bytes: "
            "truncated or corrupt")
    if page.is_tiled:
        chunk = page.tilelength * page.tilewidth * page.samplesperpixel * itemsize
    else:
        chunk = min(page.rowsperstrip, page.imagelength) * page.imagewidth * \
            page.samplesperpixel * itemsize
    if chunk > MAX_CHUNK_BYTES or any(c > size for c in counts):
        raise ImageReadError(
            f"{p}: a strip or tile of {chunk / 2**30:.1f} GiB cannot be read piece by piece "
            "(or its byte counts exceed the file); save the image as a tiled TIFF")


def open_tiff_levels(path: str | os.PathLike) -> list:
    """Lazy dask arrays for every resolution level of a TIFF's first series.

    The file is opened through tifffile's zarr store, so tiles are decoded only when a region
    is read: memory stays bounded whatever the slide's size. When the file has no pyramid of
    its own, strided views are added (2x, 4x, ...) until the smallest side is under
    :data:`MIN_PYRAMID_SIDE`, so napari can show the whole slide zoomed out.
    """
    import tifffile
    import zarr

    store = tifffile.imread(path, aszarr=True, series=0)
    node = zarr.open(store, mode="r")
    if isinstance(node, zarr.Array):
        return lazy_pyramid([node])
    return lazy_pyramid([a for _, a in sorted(node.arrays(), key=lambda kv: int(kv[0]))])


def lazy_pyramid(levels: Sequence[Array]) -> list:
    """Add strided 2x views to a list of lazy levels until the smallest side is under
    :data:`MIN_PYRAMID_SIDE`, so napari can show a large image zoomed out cheaply."""
    import dask.array as da

    levels = [lvl if isinstance(lvl, da.Array) else da.from_zarr(lvl) for lvl in levels]
    while min(levels[-1].shape[:2]) >= 2 * MIN_PYRAMID_SIDE:
        levels.append(levels[-1][::2, ::2])
    return levels


def _aperio_fields(description: str) -> dict:
    fields = {}
    for part in description.split("|")[1:]:
        if "=" in part:
            k, v = part.split("=", 1)
            fields[k.strip()] = v.strip()
    return fields


def _tiff_pixel_size(tif) -> float | None:
    """Microns per pixel from Aperio's MPP, OME's PhysicalSizeX, or the resolution tags."""
    page = tif.pages[0]
    if tif.is_svs:
        m = re.search(r"MPP\s*=\s*([0-9.]+)", page.description or "")
        if m:
            return float(m.group(1))
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
            for el in root.iter():
                if el.tag.endswith("Pixels") and "PhysicalSizeX" in el.attrib:
                    size = float(el.attrib["PhysicalSizeX"])
                    unit = el.attrib.get("PhysicalSizeXUnit", "µm")
                    return size * {"nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}.get(unit, 1.0)
        except (ET.ParseError, ValueError):
            pass
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        num, den = tags["XResolution"].value
        res_unit = int(tags["ResolutionUnit"].value)
        if num and den:
            per_unit = num / den
            if res_unit == 3:  # centimetre
                return 1e4 / per_unit
            if res_unit == 2 and per_unit > 1000:  # inch; 72/96/300 dpi are screen/print defaults
                return 25400.0 / per_unit
    return None


# --------------------------------------------------------------------------------------------
# whole slides through OpenSlide (optional: the ``slides`` extra)

#: OpenSlide formats that tifffile reads as well as OpenSlide does, so they stay on tifffile:
#: plain tiled TIFFs and Aperio SVS (the same pixels and um/px, checked in the tests, with
#: the file's own tiles as chunks and no optional dependency).
TIFFFILE_FORMATS = (None, "generic-tiff", "aperio")
#: Chunks of an OpenSlide level are whole tiles of about this side (one read_region each).
OPENSLIDE_CHUNK = 1024


def _import_openslide(p: Path):
    """The openslide module, or the one line that says how to get it."""
    try:
        import openslide
    except (ImportError, OSError):  # not installed, or installed without its C library
        raise ImageReadError(f"{p}: reading {p.suffix.lower()} needs openslide: "
                             "pip install 'napari-glandseg[slides]'") from None
    return openslide


def openslide_format(path: str | os.PathLike) -> str | None:
    """OpenSlide's name for a file's format (``"hamamatsu"``, ``"philips"``, ``"aperio"``,
    ``"generic-tiff"``, ...), or None when OpenSlide is not installed or does not know it."""
    try:
        import openslide
    except (ImportError, OSError):
        return None
    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception:  # noqa: BLE001 - an unreadable file is the reader's to report
        return None


def slide_reader(path: str | os.PathLike) -> str:
    """Which library reads ``path``: ``"openslide"``, ``"tifffile"`` or ``"imageio"``.

    Vendor extensions (:data:`OPENSLIDE_SUFFIXES`) always go to OpenSlide (without it
    installed, reading them raises the one line that says how to install it); ``.tif``/``.tiff``
    go to OpenSlide when it is installed and reports a vendor format tifffile does not
    understand (a Philips TIFF opens in tifffile as a plain TIFF without its pyramid's pixel
    size); plain and OME-TIFF and Aperio SVS stay on tifffile.

    >>> slide_reader("a.ndpi"), slide_reader("a.svs"), slide_reader("a.png")
    ('openslide', 'tifffile', 'imageio')
    """
    suffix = Path(path).suffix.lower()
    if suffix in OPENSLIDE_SUFFIXES:
        return "openslide"
    if suffix in (".tif", ".tiff") and Path(path).is_file() \
            and openslide_format(path) not in TIFFFILE_FORMATS:
        return "openslide"
    return "tifffile" if suffix in TIFF_SUFFIXES else "imageio"


def check_readers(paths: Iterable[str | os.PathLike]) -> None:
    """Raise the install hint before any work when a file needs OpenSlide and it is missing
    (a batch would otherwise fail file by file with the same line)."""
    for p in paths:
        if Path(p).suffix.lower() in OPENSLIDE_SUFFIXES:
            _import_openslide(Path(p))


def _read_openslide(p: Path) -> ImageData:
    openslide = _import_openslide(p)
    try:
        slide = _openslide_handle(str(p), p.stat().st_mtime_ns)
    except openslide.OpenSlideError as exc:
        hint = (f" (a MIRAX slide needs its folder {p.stem}/ of .dat files beside it)"
                if p.suffix.lower() == ".mrxs" else "")
        raise ImageReadError(f"{p}: OpenSlide cannot read it{hint}: {exc}") from None
    props = slide.properties
    pixel_size = _openslide_mpp(props)
    keep = ("vendor", "objective-power", "mpp-x", "mpp-y", "background-color", "bounds-x",
            "bounds-y", "bounds-width", "bounds-height")
    meta = {"slide_reader": "openslide",
            "openslide": {k: props[f"openslide.{k}"] for k in keep if f"openslide.{k}" in props}}
    return ImageData(data=open_openslide_levels(p), kind="image", path=p,
                     pixel_size_um=pixel_size, metadata=meta)


def _openslide_mpp(props) -> float | None:
    """um/px from OpenSlide's ``mpp-x``/``mpp-y`` (their mean when a scanner's pixels are not
    quite square), None when the slide does not state it."""
    try:
        values = [float(props[f"openslide.mpp-{a}"]) for a in "xy" if f"openslide.mpp-{a}" in props]
    except ValueError:
        return None
    values = [v for v in values if v > 0 and np.isfinite(v)]
    return float(np.mean(values)) if values else None


@lru_cache(maxsize=8)
def _openslide_handle(path: str, mtime_ns: int):
    """One open OpenSlide per file (and version of it) per process; OpenSlide objects are
    thread-safe, so dask's threads share it. Workers of dask.distributed open their own."""
    import openslide

    return openslide.OpenSlide(path)


class _OpenSlideLevel:
    """One level of a slide as an array ``(Y, X, 3)`` uint8 that dask reads region by region:
    ``level[y0:y1, x0:x1]`` is one ``read_region`` (level-0 coordinates, rounded), its RGBA
    composited onto the slide's background colour (white unless the slide says otherwise), so
    the empty, transparent parts of a MIRAX or NDPI slide come out as glass, not black.

    Holds the path, not the open slide: it pickles, and each process opens the file once.
    """

    def __init__(self, path: str, mtime_ns: int, level: int):
        slide = _openslide_handle(path, mtime_ns)
        w, h = slide.level_dimensions[level]
        self.path, self.mtime_ns, self.level = path, mtime_ns, level
        self.downsample = float(slide.level_downsamples[level])
        bg = slide.properties.get("openslide.background-color", "FFFFFF")
        try:
            self.background = np.array([int(bg[i:i + 2], 16) for i in (0, 2, 4)], np.uint16)
        except (ValueError, IndexError):
            self.background = np.array([255, 255, 255], np.uint16)
        self.shape, self.dtype, self.ndim = (h, w, 3), np.dtype(np.uint8), 3

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        (y0, y1, sy), (x0, x1, sx) = (k.indices(n) for k, n in zip(key[:2], self.shape[:2],
                                                                   strict=True))
        h, w = max(0, y1 - y0), max(0, x1 - x0)
        if h == 0 or w == 0:
            return np.zeros((h, w, 3), np.uint8)[::sy, ::sx, key[2]]
        d = self.downsample
        region = _openslide_handle(self.path, self.mtime_ns).read_region(
            (int(round(x0 * d)), int(round(y0 * d))), self.level, (w, h))
        return _onto_background(np.asarray(region), self.background)[::sy, ::sx, key[2]]


def _onto_background(rgba: np.ndarray, background: np.ndarray) -> np.ndarray:
    """OpenSlide's (non-premultiplied) RGBA -> RGB over ``background``."""
    rgb, alpha = rgba[..., :3], rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint16)
    out = (rgb.astype(np.uint16) * a + background * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def open_openslide_levels(path: str | os.PathLike) -> list:
    """Lazy dask arrays ``(Y, X, 3)`` uint8 for every level of a slide OpenSlide reads, full
    resolution first, plus strided views while the smallest is large (:func:`lazy_pyramid`).

    Chunks are whole tiles of the level near :data:`OPENSLIDE_CHUNK` on a side (that side when
    the level is one large tile, as an NDPI level without restart markers is); nothing is
    decoded until a region is read. Level 0 is read exactly, and so is every level whose
    downsample is a whole number (NDPI, MIRAX, Philips); where a vendor's downsample is not
    (Leica, Ventana: 4.0001), OpenSlide places each chunk by ``x * downsample / downsample``
    and interpolates the fraction, up to ``0.5 / downsample`` px, as any OpenSlide tile is.
    """
    import dask.array as da
    from dask.base import tokenize

    p = Path(path)
    _import_openslide(p)
    mtime = p.stat().st_mtime_ns
    slide = _openslide_handle(str(p), mtime)
    levels = []
    for k in range(slide.level_count):
        level = _OpenSlideLevel(str(p), mtime, k)
        tile = [int(slide.properties.get(f"openslide.level[{k}].tile-{s}", 0) or 0)
                for s in ("height", "width")]
        chunks = tuple(t * max(1, round(OPENSLIDE_CHUNK / t)) if 0 < t <= 2 * OPENSLIDE_CHUNK
                       else OPENSLIDE_CHUNK for t in tile) + (3,)
        levels.append(da.from_array(level, chunks=chunks, asarray=False, fancy=False,
                                    meta=np.empty((0, 0, 3), np.uint8),
                                    name=f"openslide-{tokenize(str(p), mtime, k, chunks)}"))
    return lazy_pyramid(levels)


# --------------------------------------------------------------------------------------------
# datasets of image/mask pairs


@dataclass
class Pair:
    """An image file and its ground-truth mask file (None when there is none)."""

    image: Path
    mask: Path | None = None

    @property
    def name(self) -> str:
        return self.image.stem


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        (f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES),
        key=_natural_key,
    )


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def find_pairs(folder: str | os.PathLike, mask_folder: str | None = None) -> list[Pair]:
    """Find image/mask pairs in the layouts datasets use.

    Layouts, tried in order:

    1. ``folder/images/*`` with masks of the same stem in ``folder/masks`` (or ``labels``,
       ``instances``, ``instances_cc``, ...; ``mask_folder`` picks one), as in GlaS and MoNuSeg
       here;
    2. one flat folder with ``name.ext`` beside ``name_anno.ext``, ``name_mask.ext``,
       ``name_instances.ext``, ... (original GlaS);
    3. a folder of such datasets (``glas/`` holding ``train/`` and ``testA/``).

    Images without a mask are returned with ``mask=None``.

    Raises
    ------
    GlandsegError
        The folder does not exist or holds no images.
    """
    root = Path(folder)
    if not root.is_dir():
        raise GlandsegError(f"{root}: not a folder")
    pairs = _pairs_in(root, mask_folder)
    if not pairs:
        for sub in sorted((d for d in root.iterdir() if d.is_dir()), key=_natural_key):
            pairs.extend(_pairs_in(sub, mask_folder))
    if not pairs:
        raise GlandsegError(f"{root}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return pairs


def _pairs_in(root: Path, mask_folder: str | None) -> list[Pair]:
    image_dir = next((root / n for n in IMAGE_FOLDERS if (root / n).is_dir()), None)
    if image_dir is not None:
        if mask_folder is not None:
            if not (root / mask_folder).is_dir():
                raise GlandsegError(f"{root}: has no mask folder {mask_folder!r}")
            candidates = [root / mask_folder]
        else:
            candidates = [root / n for n in MASK_FOLDERS if (root / n).is_dir()]
        masks: dict[str, Path] = {}
        for d in reversed(candidates):  # earlier folders in MASK_FOLDERS win
            masks.update({f.stem: f for f in _images_in(d)})
        return [Pair(img, masks.get(img.stem)) for img in _images_in(image_dir)]

    files = _images_in(root)
    masks = {}
    for f in files:
        stem = f.stem
        for s in MASK_NAME_SUFFIXES:
            if stem.lower().endswith(s) and (mask_folder is None or s == f"_{mask_folder}"):
                masks.setdefault(stem[: -len(s)], f)
                break
    mask_files = {f for f in files if is_mask_path(f)}
    return [Pair(f, masks.get(f.stem)) for f in files if f not in mask_files]


def read_pair(pair: Pair) -> tuple[ImageData, ImageData | None]:
    """Read a pair; a mask whose shape differs from its image raises and names both shapes."""
    image = read_image(pair.image, as_labels=False)
    if pair.mask is None:
        return image, None
    mask = read_image(pair.mask, as_labels=True)
    spatial = image.shape[:-1] if image.rgb else image.shape
    if tuple(mask.shape) != tuple(spatial):
        raise GlandsegError(
            f"mask {pair.mask.name} has shape {mask.shape} but image {pair.image.name} has "
            f"shape {tuple(spatial)}"
        )
    return image, mask


#: Endings a prediction file may add to its image's stem (``<stem>_labels.tif``).
PRED_SUFFIXES = ("_labels", "_pred", "_prediction", "_mask", "_instances", "_anno")


def _stem_key(path: Path) -> str:
    stem = path.stem
    for s in PRED_SUFFIXES:
        if stem.endswith(s):
            return stem[: -len(s)]
    return stem


@dataclass
class StemPairing:
    """Two folders' files matched by stem: the pairs, and the files of each side that have
    no partner (so they can be reported, never silently left out)."""

    pairs: dict[str, tuple[Path, Path]]
    pred_only: list[Path]
    truth_only: list[Path]


def match_stems(pred_dir: PathType, truth_dir: PathType) -> StemPairing:
    """Pair two folders' image files by stem (``a_labels.tif`` pairs with ``a.png``) and list
    the files left without a partner on either side.

    Raises
    ------
    GlandsegError
        A folder is missing, or no stem is shared.
    """
    found = []
    for d in (Path(pred_dir), Path(truth_dir)):
        if not d.is_dir():
            raise GlandsegError(f"{d}: not a folder")
        found.append({_stem_key(f): f for f in _images_in(d)})
    keys = sorted(set(found[0]) & set(found[1]), key=lambda k: _natural_key(Path(k)))
    if not keys:
        raise GlandsegError(f"no file in {pred_dir} shares a file stem with one in {truth_dir}")
    only = [sorted((f for k, f in side.items() if k not in set(keys)), key=_natural_key)
            for side in found]
    return StemPairing({k: (found[0][k], found[1][k]) for k in keys}, only[0], only[1])


def pair_by_stem(pred_dir: PathType, truth_dir: PathType) -> dict[str, tuple[Path, Path]]:
    """The pairs of :func:`match_stems` (files without a partner are left out)."""
    return match_stems(pred_dir, truth_dir).pairs


# --------------------------------------------------------------------------------------------
# writing


def write_labels(
    path: str | os.PathLike,
    labels: Array,
    overwrite: bool = True,
    pixel_size_um: float | None = None,
    max_label: int | None = None,
    translate: Sequence[float] | None = None,
) -> Path:
    """Write a label image to a compressed TIFF or PNG, atomically.

    The file is written beside its destination under a temporary name and renamed into place,
    so a crash never leaves a half-written file. The smallest sufficient unsigned type is used;
    PNG holds at most uint16.

    Parameters
    ----------
    path : str or Path
        ``.tif``, ``.tiff`` or ``.png``.
    labels : array-like, (Y, X) or (Z, Y, X)
    overwrite : bool
        When False an existing file raises :class:`GlandsegError` instead of being replaced.
    pixel_size_um : float, optional
        Stored in the TIFF resolution tags.
    max_label : int, optional
        For a lazy (zarr or dask) 2D array: its largest value, which picks the type. Such an
        array is written to TIFF tile by tile, never loaded whole.
    translate : (y, x), optional
        Where the labels lie in world units (a region of a slide, in um): kept in a TIFF's
        metadata, so the file reopens where it was.
    """
    mark: dict[str, Any] = {"glandseg": "labels"}
    if translate is not None and np.any(np.asarray(translate, float)[-2:] != 0):
        mark["translate"] = [float(t) for t in np.asarray(translate, float)[-2:]]
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".tif", ".tiff", ".png"):
        raise GlandsegError(f"{p}: labels are written as .tif, .tiff or .png, not {suffix!r}")
    if p.exists() and not overwrite:
        raise OutputExistsError(p, "pass overwrite=True to replace it")
    if _is_lazy(labels) and suffix != ".png":
        dtype = np.dtype(labels.dtype)
        if not np.issubdtype(dtype, np.integer):
            raise GlandsegError(f"labels must be integers, got dtype {dtype}")
        if max_label is None:
            max_label = max((int(np.asarray(t).max()) for t in _tiles(labels)), default=0)
        with atomic_path(p, suffix) as tmp:
            _write_tiff(tmp, labels, dtype_for_max(max_label), pixel_size_um, metadata=mark)
        return p
    arr = np.asarray(labels)
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise GlandsegError(f"labels must be integers, got dtype {arr.dtype}")
    arr = arr.astype(labels_dtype(arr), copy=False)
    if suffix == ".png" and arr.dtype == np.uint32:
        raise GlandsegError(
            f"{p}: label values up to {int(arr.max())} need uint32, which PNG cannot hold; "
            "save as .tif"
        )
    with atomic_path(p, suffix) as tmp:
        if suffix == ".png":
            import imageio.v3 as iio

            iio.imwrite(tmp, arr, extension=".png")
        else:
            import tifffile

            kwargs: dict[str, Any] = {}
            if pixel_size_um:
                kwargs = {"resolution": (1e4 / pixel_size_um, 1e4 / pixel_size_um),
                          "resolutionunit": "CENTIMETER"}
            # the description marks the file as labels, so it reopens as labels
            tifffile.imwrite(tmp, arr, compression="zlib", metadata=mark, **kwargs)
    return p


def write_probabilities(path: str | os.PathLike, probabilities: Array, overwrite: bool = True,
                        pixel_size_um: float | None = None) -> Path:
    """Write a ``(C, Y, X)`` probability map as a float32 compressed TIFF, atomically; a
    lazy (zarr or dask) array is written tile by tile."""
    p = Path(path)
    if p.suffix.lower() not in (".tif", ".tiff"):
        raise GlandsegError(f"{p}: probabilities are written as .tif or .tiff")
    if p.exists() and not overwrite:
        raise OutputExistsError(p, "pass overwrite=True to replace it")
    with atomic_path(p, p.suffix) as tmp:
        _write_tiff(tmp, probabilities, np.dtype(np.float32), pixel_size_um,
                    photometric="minisblack")
    return p


#: Side of the tiles a lazy array is written in.
WRITE_TILE = 512


def _is_lazy(arr) -> bool:
    return not isinstance(arr, np.ndarray) and hasattr(arr, "shape") and hasattr(arr, "dtype")


def _tiles(arr, tile: int = WRITE_TILE, dtype=None):
    """The ``tile`` x ``tile`` tiles of a 2D or (C, Y, X) array in TIFF order (each plane,
    rows of tiles), read one at a time."""
    planes = [arr] if len(arr.shape) == 2 else [arr[c] for c in range(arr.shape[0])]
    h, w = arr.shape[-2:]
    for plane in planes:
        for y in range(0, h, tile):
            for x in range(0, w, tile):
                t = np.asarray(plane[y: y + tile, x: x + tile])
                yield t if dtype is None else t.astype(dtype, copy=False)


def _write_tiff(tmp, arr, dtype, pixel_size_um, **kwargs) -> None:
    import tifffile

    if pixel_size_um:
        kwargs.update(resolution=(1e4 / pixel_size_um, 1e4 / pixel_size_um),
                      resolutionunit="CENTIMETER")
    if _is_lazy(arr):
        tifffile.imwrite(tmp, _tiles(arr, dtype=dtype), shape=tuple(arr.shape), dtype=dtype,
                         tile=(WRITE_TILE, WRITE_TILE), compression="zlib", **kwargs)
    else:
        tifffile.imwrite(tmp, np.asarray(arr).astype(dtype, copy=False), compression="zlib",
                         **kwargs)


def iter_image_files(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files, folders and glob patterns into a sorted list of image files."""
    import glob

    out: list[Path] = []
    for item in inputs:
        s = str(item)
        p = Path(s)
        if p.is_dir():
            out.extend(f for f in _images_in(p) if not is_mask_path(f))
        elif p.is_file():
            out.append(p)
        else:
            matches = sorted(glob.glob(s))
            if not matches:
                raise GlandsegError(f"{s}: no such file, folder or matching pattern")
            out.extend(Path(m) for m in matches if Path(m).suffix.lower() in IMAGE_SUFFIXES)
    check_readers(out)
    return list(dict.fromkeys(out))

