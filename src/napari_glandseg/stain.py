"""Macenko H&E stain normalisation, fitted once per image and applied tile by tile.

A model trained with stain normalisation keeps its reference stains in its card
(``ModelCard.stain_normalization``); inference estimates the stains of each new image once,
from a subsample, and maps every tile onto the reference with that one estimate.

Estimating the stain vectors is torchstain's ``MacenkoNormalizer.fit`` (Macenko et al., ISBI
2009). Applying them is written here because torchstain's ``normalize`` re-estimates the
source stains from whatever array it is given: called per tile it would give each tile its
own stains (visible seams), and called on a whole slide it needs the slide in memory. With the
source stains fixed, the mapping is a per-pixel function, so tiles and windows are
normalised exactly as the whole image would be.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> he = np.array([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])  # H and E optical densities
>>> conc = rng.gamma(2.0, 0.3, size=(2, 64 * 64))
>>> rgb = (240 * np.exp(-(he @ conc))).T.reshape(64, 64, 3).clip(0, 255).astype(np.uint8)
>>> stains = fit_macenko(rgb)
>>> stains.matrix.shape, stains.max_concentrations.shape
((3, 2), (2,))
>>> out = apply_macenko(rgb, stains, MacenkoStains.standard())
>>> out.shape, out.dtype
((64, 64, 3), dtype('uint8'))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._types import Array
from .enums import StainNorm  # noqa: F401  (defined with the other modes)
from .errors import GlandsegError

#: Transmitted light intensity, and the optical-density floor below which a pixel is
#: background (Macenko's and torchstain's defaults).
IO, BETA, ALPHA = 240.0, 0.15, 1.0
#: Fewest tissue pixels (optical density above BETA in every channel) for a stable estimate.
MIN_TISSUE_PIXELS = 500


@dataclass
class MacenkoStains:
    """Stain vectors (3x2, columns haematoxylin and eosin, in optical density) and the 99th
    percentile concentration of each stain."""

    matrix: np.ndarray
    max_concentrations: np.ndarray

    def __post_init__(self):
        self.matrix = np.asarray(self.matrix, np.float64)
        self.max_concentrations = np.asarray(self.max_concentrations, np.float64)
        if self.matrix.shape != (3, 2) or self.max_concentrations.shape != (2,):
            raise GlandsegError(f"Macenko stains need a 3x2 matrix and 2 maximum "
                                f"concentrations, got shapes {self.matrix.shape} and "
                                f"{self.max_concentrations.shape}")
        if not (np.all(np.isfinite(self.matrix)) and np.all(self.max_concentrations > 0)):
            raise GlandsegError(f"invalid Macenko stains: matrix {self.matrix.tolist()}, "
                                f"max concentrations {self.max_concentrations.tolist()}")

    @classmethod
    def standard(cls) -> MacenkoStains:
        """The reference of Macenko's and torchstain's reference implementation."""
        return cls(np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]]),
                   np.array([1.9705, 1.0308]))

    def to_card(self, source: str = "") -> dict:
        """The form kept in ``ModelCard.stain_normalization``."""
        return {"method": StainNorm.MACENKO.value,
                "stain_matrix": np.round(self.matrix, 6).tolist(),
                "max_concentrations": np.round(self.max_concentrations, 6).tolist(),
                "reference": source}

    @classmethod
    def from_card(cls, entry: dict) -> MacenkoStains:
        try:
            return cls(entry["stain_matrix"], entry["max_concentrations"])
        except (KeyError, TypeError, ValueError) as exc:
            raise GlandsegError(f"the card's stain_normalization is not a Macenko reference "
                                f"({exc!r}): {entry!r}") from None


def check_card_entry(entry: dict, in_channels: int) -> None:
    """Validate ``ModelCard.stain_normalization`` ({} or a Macenko reference)."""
    if not entry:
        return
    if not isinstance(entry, dict) or entry.get("method") != StainNorm.MACENKO.value:
        raise GlandsegError(f"stain_normalization must be empty or a Macenko reference "
                            f"(method 'macenko'), got {entry!r}")
    if in_channels != 3:
        raise GlandsegError(f"stain normalisation needs an RGB model, this one has "
                            f"{in_channels} input channel(s)")
    MacenkoStains.from_card(entry)


def _as_uint8_scale(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    rgb = np.asarray(rgb)
    if rgb.ndim < 2 or rgb.shape[-1] not in (3, 4):
        raise GlandsegError(f"stain normalisation needs an RGB image (..., 3), got shape "
                            f"{rgb.shape}")
    from .preprocess import dtype_top

    return rgb[..., :3], 255.0 / dtype_top(rgb.dtype)


def tissue_sample(rgb: Array, max_pixels: int = 2**20) -> np.ndarray:
    """Up to about ``max_pixels`` RGB pixels (N, 3) of ``rgb`` on a regular grid, in the
    0..255 scale; works on dask and zarr arrays without reading everything."""
    h, w = rgb.shape[:2]
    step = max(1, int(math.sqrt(h * w / max_pixels)))
    arr, factor = _as_uint8_scale(np.asarray(rgb[::step, ::step]))
    return (arr.reshape(-1, 3).astype(np.float64) * factor)


def fit_macenko(rgb: Array, max_pixels: int = 2**20) -> MacenkoStains:
    """Estimate an image's stain vectors and maximum concentrations.

    Parameters
    ----------
    rgb : array-like, (Y, X, 3)
        An H&E image (any integer dtype or float 0..1; NumPy, dask or zarr).
    max_pixels : int
        Subsample larger images on a regular grid to about this many pixels.

    Raises
    ------
    GlandsegError
        When the image is not RGB, or fewer than ``MIN_TISSUE_PIXELS`` pixels are stained
        (a blank or background image gives no stain estimate).
    """
    if len(rgb.shape) != 3:
        raise GlandsegError(f"stain normalisation needs an RGB image (..., 3), got shape "
                            f"{tuple(rgb.shape)}")
    return fit_macenko_pixels(tissue_sample(rgb, max_pixels))


def fit_macenko_pixels(pixels: np.ndarray) -> MacenkoStains:
    """:func:`fit_macenko` on RGB pixels (N, 3) in the 0..255 scale, e.g. pooled from
    several images with :func:`tissue_sample`."""
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

    pixels = np.asarray(pixels, np.float64)
    if pixels.ndim != 2 or pixels.shape[1] != 3:
        raise GlandsegError(f"pixels must be (N, 3), got shape {pixels.shape}")
    od = -np.log((pixels + 1) / IO)
    n_tissue = int(np.count_nonzero(np.all(od >= BETA, axis=1)))
    if n_tissue < MIN_TISSUE_PIXELS:
        raise GlandsegError(f"too little stained tissue to estimate H&E stains "
                            f"({n_tissue} of {len(pixels)} sampled pixels; need "
                            f"{MIN_TISSUE_PIXELS})")
    norm = NumpyMacenkoNormalizer()
    norm.fit(pixels[:, None, :], Io=IO, alpha=ALPHA, beta=BETA)
    return MacenkoStains(norm.HERef, norm.maxCRef)


def apply_macenko(rgb: np.ndarray, source: MacenkoStains, reference: MacenkoStains,
                  chunk_rows: int = 512) -> np.ndarray:
    """Map ``rgb`` from its ``source`` stains onto ``reference`` stains.

    Parameters
    ----------
    rgb : ndarray, (Y, X, 3) or (Y, X, 4)
        Any integer dtype or float 0..1; alpha is dropped.
    source, reference : MacenkoStains
        From :func:`fit_macenko` on the whole image, and the model's reference.

    Returns
    -------
    ndarray, (Y, X, 3), the input's dtype and range
        What torchstain's ``MacenkoNormalizer.normalize`` gives for the whole image, computed
        pixel by pixel (so any crop of the result equals the result of the crop).
    """
    arr, factor = _as_uint8_scale(rgb)
    unmix = np.linalg.pinv(source.matrix)  # the least-squares concentrations of each pixel
    scale = (reference.max_concentrations / source.max_concentrations)[:, None]
    out = np.empty(arr.shape, np.float32)
    for r in range(0, arr.shape[0], chunk_rows):
        block = arr[r: r + chunk_rows].reshape(-1, 3).astype(np.float64) * factor
        conc = unmix @ (-np.log((block.T + 1) / IO)) * scale
        mixed = np.minimum(IO * np.exp(-reference.matrix @ conc), 255.0)
        out[r: r + chunk_rows] = mixed.T.reshape(arr[r: r + chunk_rows].shape)
    out = np.floor(out)  # torchstain truncates to uint8; so do we, to match it exactly
    if arr.dtype == np.uint8:
        return out.astype(np.uint8)
    back = out / factor
    return (np.round(back) if np.issubdtype(arr.dtype, np.integer) else back).astype(arr.dtype)
