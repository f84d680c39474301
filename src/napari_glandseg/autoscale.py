"""Automatic scale: the pixel size of an image that does not say it.

A model works at one scale (its card's ``pixel_size_um``); an image of unknown um/px (a PNG, a
JPEG, another lab's camera) is taken to be at the training data's scale, and when it is not,
glands fragment and cells are missed. Like cellpose's size model, the image's scale is
estimated from its content, here without a second network: the **characteristic blob scale**
of the image, the sigma at which the scale-normalised Laplacian of Gaussian of the image's
darkness (stained nuclei, cells, dark blobs) responds most strongly (99th percentile over the
image, interpolated between half-quarter-octave steps; Lindeberg 1998). That sigma is covariant with
the image's scale: an image shrunk by 0.5 gives half the sigma (measured on GlaS, MoNuSeg and
WBC images rescaled 0.5x-2x: within 5 % of the native sigma divided by the factor). The card's
``scale_reference`` holds the median sigma of its training images at the training data's
scale (:func:`scale_reference`), so the image's pixel size is ``data_pixel_size_um *
reference / sigma``. It is computed once per image (a second or so), on a centre crop.

Why not segment at a few candidate scales and compare object sizes: tried first, it needed a
network pass per candidate (30-50 s on 2 cores for a 775x522 GlaS image) and gland sizes vary
5x between benign and malignant glands, so the estimate followed the tissue rather than the
scale; nuclei, which every H&E image has, are far more constant (GlaS at 0.62 um/px gives
sigma ~3 px, MoNuSeg at 0.25 um/px ~8 px: both ~1.9 um).

Estimates within ``snap`` (15 %) of the assumed scale, or whose sigma lies within the
training images' own spread (10th-90th percentile), snap back to it: an image at the training
scale is segmented as before. MoNuSeg's organs differ in nuclear size (sigma 4.7-11.9 px at
0.25 um/px), so nuclei images are rescaled only beyond that spread. For a model whose card
knows no um/px (scale-free) the estimate is a resize factor relative to the training images
(:attr:`ScaleEstimate.scale`).

Examples
--------
>>> import numpy as np
>>> yy, xx = np.mgrid[:200, :200]
>>> img = np.full((200, 200), 230.0)
>>> for cy, cx in [(50, 50), (50, 150), (150, 50), (150, 150), (100, 100)]:
...     img[(yy - cy) ** 2 + (xx - cx) ** 2 < 8 ** 2] = 40
>>> s1 = blob_sigma(img)
>>> from skimage.transform import rescale
>>> s2 = blob_sigma(rescale(img, 2, preserve_range=True))
>>> bool(abs(s2 / s1 - 2) < 0.2)
True
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ._types import Array, Levels, as_levels
from .errors import GlandsegError

if TYPE_CHECKING:
    from .models.card import ModelCard

#: Sigmas tried (px): 1 .. 128 in quarter-octave steps (a white blood cell 3x its training
#: size has sigma ~70 px).
SIGMAS = tuple(2 ** (k / 4) for k in range(0, 29))
#: Longest side of the centre crop measured (px of the image).
MAX_SIDE = 1024
#: Estimates within this fraction of the assumed scale are taken as it.
SNAP = 0.15
#: How a reference picks the image's peak: ``nearest`` (the local maximum of the response
#: closest to the reference sigma: glands, whose lumens often respond more strongly than
#: their nuclei) or ``strongest`` (the global maximum: a smear of single cells, where the
#: nearest peak at 3x or 1/3x is a cell's texture or its whole field). Cards without the
#: key take ``nearest``.
PEAKS = ("nearest", "strongest")
#: Rescalings of its own images on which :func:`scale_reference` chooses the peak rule.
CHECK_FACTORS = (1 / 3, 0.5, 2.0, 3.0)


@dataclass
class ScaleEstimate:
    """What :func:`estimate_scale` found.

    Attributes
    ----------
    factor : float
        Estimated pixel size / assumed pixel size (1: the image is at the assumed scale;
        0.5: its pixels are half as large, so objects are twice as many pixels across).
    pixel_size_um : float or None
        The estimated um/px (None for a scale-free model).
    scale : float
        Model pixels per image pixel to segment with.
    sigma : float
        The image's characteristic blob sigma (px); ``reference`` the card's.
    """

    factor: float
    pixel_size_um: float | None
    scale: float
    sigma: float = float("nan")
    reference: float = float("nan")
    snapped: bool = False
    seconds: float = 0.0

    def describe(self) -> str:
        """One line for the CLI and the Segment widget."""
        if self.snapped:
            return "scale estimated from the image: that of the training images"
        if self.pixel_size_um is not None:
            return f"estimated {self.pixel_size_um:.3g} um/px from the image"
        return f"estimated objects {1 / self.factor:.2f}x the size of the training images"


def _darkness(image: np.ndarray) -> np.ndarray:
    """0..1, 1 where the image is darkest (stained nuclei, cells), robust to dtype/range."""
    a = np.asarray(image, dtype=np.float32)
    g = a[..., :3].mean(-1) if a.ndim == 3 else a
    lo, hi = np.percentile(g, [1, 99])
    return np.clip((hi - g) / max(float(hi - lo), 1e-6), 0, 1)


def blob_sigma(image: Array, near: float | None = None, q: float = 99.0,
               sigmas: Sequence[float] = SIGMAS) -> float:
    """The sigma (px) of the scale-normalised LoG with the strongest response (``q``-th
    percentile over the image) of the image's dark blobs; see the module's docstring. With
    ``near``, the local maximum of the response closest to it (in octaves): an image of glands
    has a peak at its nuclei and often a stronger one at its lumens.

    Sigmas of 4 px and more are measured on a 2^k block-averaged copy (with sigma / 2^k), so
    a 1024 px crop takes about a second."""
    return _peak(_responses(image, sigmas, (q,))[0], sigmas, near)


def _peak(resp: np.ndarray, sigmas, near: float | None) -> float:
    logs = np.log2(np.asarray(sigmas, float))
    peaks = [i for i in range(len(resp)) if (i == 0 or resp[i] >= resp[i - 1])
             and (i == len(resp) - 1 or resp[i] > resp[i + 1])]
    if near is None:
        i = int(np.argmax(resp))
    else:
        i = min(peaks, key=lambda j: abs(logs[j] - math.log2(near)))
    if 0 < i < len(resp) - 1:  # parabola through the peak, in log sigma
        a, b, c = resp[i - 1], resp[i], resp[i + 1]
        den = a - 2 * b + c
        off = 0.5 * (a - c) / den if den < 0 else 0.0
        return float(2 ** (logs[i] + off * (logs[i + 1] - logs[i])))
    return float(sigmas[i])


def _responses(image, sigmas, qs) -> np.ndarray:
    """(len(qs), len(sigmas)): percentiles ``qs`` of each sigma's normalised LoG response."""
    from scipy import ndimage as ndi
    from skimage.transform import downscale_local_mean

    d = _darkness(image)
    pyramid = {1: d}
    resp = []
    for s in sigmas:
        k = 1
        while s / (2 * k) >= 2 and min(d.shape) / (2 * k) >= 16:
            k *= 2
        if k not in pyramid:
            pyramid[k] = downscale_local_mean(d, (k, k))
        r = -(s / k) ** 2 * ndi.gaussian_laplace(pyramid[k], s / k, mode="reflect")
        resp.append(np.percentile(r, qs))
    return np.asarray(resp, float).T


def _crop(image, side: int = MAX_SIDE) -> np.ndarray:
    h, w = image.shape[:2]
    y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return np.asarray(image[y0:y0 + side, x0:x0 + side])


def model_scale(card: ModelCard, pixel_size_um: float | None) -> float:
    """Model pixels per image pixel for an image at ``pixel_size_um`` (1: scale-free)."""
    if card.pixel_size_um and pixel_size_um:
        return pixel_size_um / card.pixel_size_um
    return 1.0


def estimate_scale(image: Levels, card: ModelCard, snap: float = SNAP) -> ScaleEstimate:
    """Estimate the scale of ``image`` (Y, X[, C]; a pyramid list: its full resolution) for
    the model of ``card`` (a :class:`~napari_glandseg.models.ModelCard` or a model).

    Raises
    ------
    GlandsegError
        The card has no ``scale_reference`` (see :func:`scale_reference`).
    """
    card = getattr(card, "card", card)
    ref = (card.scale_reference or {}).get("sigma_px")
    if not ref:
        raise GlandsegError(f"model {card.name!r} has no scale reference for automatic scale; "
                            "give the image's pixel size instead")
    t0 = time.perf_counter()
    data = as_levels(image)[0]
    peak = card.scale_reference.get("peak", "nearest")
    sigma = blob_sigma(_crop(data), near=ref if peak == "nearest" else None,
                       q=card.scale_reference.get("q", 99.0))
    factor = ref / sigma  # image px size / training data's px size
    lo = card.scale_reference.get("sigma_p10", ref)
    hi = card.scale_reference.get("sigma_p90", ref)
    # as close as snap, or inside the spread of the training images' own blob sizes
    snapped = abs(math.log(factor)) < math.log(1 + snap) or lo <= sigma <= hi
    if snapped:
        factor = 1.0
    # in um/px only for a model with a working scale (inference rescales to it); otherwise
    # a resize factor relative to the training images
    assumed = card.data_pixel_size_um or card.pixel_size_um
    px = assumed * factor if assumed and card.pixel_size_um else None
    return ScaleEstimate(factor=factor, pixel_size_um=px,
                         scale=model_scale(card, px) if px else factor,
                         sigma=sigma, reference=float(ref), snapped=snapped,
                         seconds=time.perf_counter() - t0)


#: Percentiles of the LoG response a reference may choose between.
QUANTILES = (90.0, 97.0, 99.0, 99.7)


def scale_reference(images: Iterable[Array]) -> dict:
    """The card's ``scale_reference`` from training images at the training data's scale: the
    percentile ``q`` (of :data:`QUANTILES`) whose blob sigma varies least between the images
    (a smear of single cells is best told by its 90th, tissue full of nuclei by its 99th),
    the median sigma at it, and its spread (10th-90th percentile over the images); and the
    ``peak`` rule (of :data:`PEAKS`) that best recovers known rescalings of these images
    (:data:`CHECK_FACTORS`, up to 8 of them: the mean error in octaves, so that the rare
    image a rule gets wrong by an octave or more counts).

    >>> yy, xx = np.mgrid[:240, :240]
    >>> img = np.full((240, 240), 230.0)
    >>> for cy, cx in [(60, 60), (60, 180), (180, 60), (180, 180)]:
    ...     img[(yy - cy) ** 2 + (xx - cx) ** 2 < 20 ** 2] = 40
    >>> ref = scale_reference([img])
    >>> ref["peak"] in PEAKS, 15 < ref["sigma_px"] < 30  # discs of radius 20
    (True, True)
    """
    crops = [_crop(np.asarray(img)) for img in images]
    curves = [_responses(img, SIGMAS, QUANTILES) for img in crops]
    if not curves:
        raise GlandsegError("a scale reference needs at least one image")
    best: tuple[float, dict] | None = None
    for j, q in enumerate(QUANTILES):
        sig = np.array([_peak(c[j], SIGMAS, None) for c in curves])
        med = float(np.median(sig))
        sig = np.array([_peak(c[j], SIGMAS, med) for c in curves])  # as estimates pick
        p10, p50, p90 = np.percentile(sig, [10, 50, 90])
        spread = math.log(p90 / p10)
        if best is None or spread < best[0]:
            best = (spread, {"q": q, "sigma_px": round(float(p50), 3),
                             "sigma_p10": round(float(p10), 3),
                             "sigma_p90": round(float(p90), 3), "images": len(curves)})
    assert best is not None  # one entry per quantile, at least one image
    ref = best[1]
    ref["peak"] = _peak_rule(crops[:: max(1, len(crops) // 8)], ref)
    return ref


def _peak_rule(images: list[np.ndarray], ref: dict) -> str:
    """The peak rule (of :data:`PEAKS`) whose scale estimates of ``images`` rescaled by
    :data:`CHECK_FACTORS` are closest to the truth (mean error in octaves; ties:
    ``nearest``)."""
    from skimage.transform import rescale

    errors: dict[str, list[float]] = {p: [] for p in PEAKS}
    for img in images:
        grey = _darkness(img)
        for f in CHECK_FACTORS:
            small = rescale(grey, f, order=1, anti_aliasing=f < 1)
            if min(small.shape) < 16:
                continue
            resp = _responses(1.0 - small, SIGMAS, (ref["q"],))[0]
            for p in PEAKS:
                sigma = _peak(resp, SIGMAS, ref["sigma_px"] if p == "nearest" else None)
                # the image's pixels are 1/f of the training data's: factor should be 1/f
                errors[p].append(abs(math.log2(ref["sigma_px"] / sigma * f)))
    mean = {p: float(np.mean(e)) if e else 0.0 for p, e in errors.items()}
    return "strongest" if mean["strongest"] < mean["nearest"] else "nearest"
