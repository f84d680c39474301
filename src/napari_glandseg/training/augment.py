"""Random training patches (foreground-favouring) and their augmentation."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..preprocess import norm_stats, normalise, standardise

if TYPE_CHECKING:
    from .data import TrainingPair
    from .params import TrainParams


class PatchSampler:
    """Random patches from pairs, centred on foreground with ``foreground_fraction``."""

    def __init__(self, pairs: list[TrainingPair], targets: list[np.ndarray],
                 params: TrainParams, normalization: str, rng: np.random.Generator) -> None:
        self.pairs, self.targets, self.p, self.norm, self.rng = pairs, targets, params, \
            normalization, rng
        self.fg = [np.flatnonzero(t > 0) for t in targets]
        areas = np.array([t.size for t in targets], float)
        self.weights = areas / areas.sum()
        # each image by its whole range (preprocess's rule, as inference maps it), never a
        # patch by its own; then whole-image statistics (None for fixed normalisations)
        self.images = [standardise(p.image) for p in pairs]
        self.stats = [norm_stats(im, (0, 0, *im.shape[:2]), normalization)
                      for im in self.images]

    def sample(self, augment: bool) -> tuple[np.ndarray, np.ndarray]:
        i = int(self.rng.choice(len(self.pairs), p=self.weights))
        image, target = self.images[i], self.targets[i]
        size = self.p.patch_size
        # room for free rotation and zoom: cut a larger patch, transform, then crop
        big = int(math.ceil(size * 1.5)) if augment else size
        h, w = target.shape
        if len(self.fg[i]) and self.rng.random() < self.p.foreground_fraction:
            cy, cx = divmod(int(self.rng.choice(self.fg[i])), w)
        else:
            cy, cx = int(self.rng.integers(0, h)), int(self.rng.integers(0, w))
        img = _crop_pad(image, cy, cx, big)
        tgt = _crop_pad(target, cy, cx, big)
        if augment:
            img, tgt = _augment(img, tgt, size, self.p, self.rng)
        x = normalise(img, self.norm, self.stats[i])
        return x, tgt


def _crop_pad(a: np.ndarray, cy: int, cx: int, size: int) -> np.ndarray:
    y0, x0 = cy - size // 2, cx - size // 2
    pad = [(max(0, -y0), max(0, y0 + size - a.shape[0])),
           (max(0, -x0), max(0, x0 + size - a.shape[1]))] + [(0, 0)] * (a.ndim - 2)
    if any(p != (0, 0) for p in pad):
        mode = "reflect" if all(p[0] < a.shape[k] and p[1] < a.shape[k]
                                for k, p in enumerate(pad[:2])) else "edge"
        a = np.pad(a, pad, mode="reflect" if mode == "reflect" else "edge")
        y0, x0 = y0 + pad[0][0], x0 + pad[1][0]
    return a[y0:y0 + size, x0:x0 + size]


def _augment(img, tgt, size, p: TrainParams, rng):
    """Geometric (flips, rot90, free rotation, zoom) then photometric augmentation.

    Returns the image in its own dtype and range, so normalisation treats augmented and
    plain patches alike.
    """
    from scipy.ndimage import affine_transform

    dtype = img.dtype
    top = float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0
    angle = rng.uniform(0, 2 * np.pi)
    zoom = np.exp(rng.uniform(-np.log(p.zoom), np.log(p.zoom)))
    c, s = np.cos(angle) / zoom, np.sin(angle) / zoom
    matrix = np.array([[c, -s], [s, c]])
    centre_in = np.array(tgt.shape[:2]) / 2
    offset = centre_in - matrix @ np.array([size / 2, size / 2])
    out_shape = (size, size)
    # an elastic deformation only when asked for: a run without it draws what it always drew
    if p.elastic > 0 and rng.random() < p.elastic:
        from scipy.ndimage import map_coordinates

        coords = _elastic_coordinates(size, matrix, offset, rng)

        def warp(a, order):
            return map_coordinates(a, coords, order=order, mode="reflect")
    else:
        def warp(a, order):
            return affine_transform(a, matrix, offset, out_shape, order=order, mode="reflect")
    if img.ndim == 3:
        img = np.stack([warp(img[..., k].astype(np.float32), 1)
                        for k in range(img.shape[-1])], -1)
    else:
        img = warp(img.astype(np.float32), 1)
    tgt = warp(tgt, 0)
    if rng.random() < 0.5:
        img, tgt = img[:, ::-1], tgt[:, ::-1]
    k = int(rng.integers(0, 4))
    img, tgt = np.rot90(img, k), np.rot90(tgt, k)
    x = img / top
    if img.ndim == 3 and img.shape[-1] == 3 and p.stain_jitter > 0:
        x = _stain_jitter(x, p.stain_jitter, rng)
    if img.ndim == 3 and img.shape[-1] == 3 and p.colour_jitter > 0:
        x = _hue_saturation(x, p.colour_jitter, rng)
    if p.blur > 0 and rng.random() < p.blur:
        from scipy.ndimage import gaussian_filter

        sigma = rng.uniform(0.5, 1.5)
        x = gaussian_filter(x, (sigma, sigma, 0) if x.ndim == 3 else sigma)
    x = x * rng.uniform(0.85, 1.15) + rng.uniform(-0.08, 0.08)  # contrast, brightness
    x = np.clip(x, 0, 1) ** np.exp(rng.uniform(-0.2, 0.2))  # gamma
    x = x * top
    if np.issubdtype(dtype, np.integer):
        x = np.round(x)
    return np.ascontiguousarray(x.astype(dtype)), np.ascontiguousarray(tgt)


def _elastic_coordinates(size: int, matrix: np.ndarray, offset: np.ndarray,
                         rng: np.random.Generator) -> np.ndarray:
    """Where each pixel of a ``size`` x ``size`` output patch samples its input: the patch's
    rotation and zoom (``matrix``, ``offset``, as ``affine_transform`` takes them) after a
    smooth random displacement (Simard et al., ICDAR 2003): uniform noise smoothed with a
    Gaussian of ``size / 16`` px, scaled to a peak of up to ``size / 24`` px (about 10 px on
    a 256 px patch). Written with SciPy rather than MONAI's ``Rand2DElastic`` so that it
    shares one interpolation with the rotation and draws from the run's own generator (a
    resumed run stays exact)."""
    from scipy.ndimage import gaussian_filter

    peak = rng.uniform(0, size / 24)
    disp = []
    for _ in range(2):
        field = gaussian_filter(rng.uniform(-1, 1, (size, size)), size / 16)
        disp.append(field * (peak / max(float(np.abs(field).max()), 1e-6)))
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    yy, xx = yy + disp[0], xx + disp[1]
    iy = matrix[0, 0] * yy + matrix[0, 1] * xx + offset[0]
    ix = matrix[1, 0] * yy + matrix[1, 1] * xx + offset[1]
    return np.stack([iy, ix])


def _hue_saturation(x, strength, rng):
    """Shift hue by up to ``strength`` / 2 of the colour circle and scale saturation by up to
    1 +- ``strength`` (another scanner or stain batch)."""
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(np.clip(x, 0, 1))
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-strength, strength) / 2) % 1.0
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(1 - strength, 1 + strength), 0, 1)
    return hsv2rgb(hsv)


def _stain_jitter(x, sigma, rng):
    """H&E stain augmentation (Tellez et al. 2018): scale and shift each HED channel."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(np.clip(x, 1e-6, 1))
    hed = hed * rng.uniform(1 - sigma, 1 + sigma, 3) + rng.uniform(-sigma, sigma, 3) * 0.05
    return hed2rgb(hed)
