"""The settings of a segmentation run (torch-free: the command line takes its defaults from
them)."""

from __future__ import annotations

from dataclasses import dataclass

from .enums import Blend, Precision
from .errors import GlandsegError, as_enum


@dataclass
class SegmentParams:
    """Settings for :func:`iter_segment` (every field is also a keyword of :func:`segment`).

    Attributes
    ----------
    tile_size : int
        Largest side of the tiles the network sees (>= 16). Tiles are as many as this size
        needs, each shrunk (to a multiple of 32) until they just cover the image evenly.
    overlap : float
        Fraction of ``tile_size`` shared with a neighbouring tile, at least, in [0, 0.9].
    batch_size : int
        Tiles per forward pass; halved automatically on GPU out-of-memory.
    blend : Blend
    tta : bool
        Average over the 8 flips/rotations and return an uncertainty map.
    threshold : float
        Probability above which a binary model's pixel is foreground.
    device : str
        ``auto``, ``cuda``, ``mps`` or ``cpu``.
    precision : Precision
        ``auto`` as :func:`napari_glandseg.precision.resolve` decides (bf16 on a CPU only
        where it is measurably faster than fp32); ``fp32``, ``bf16``, ``fp16`` force it.
    channels_last : bool or None
        None: on (1.4-1.7x faster on this project's CPU and on CUDA convolutions).
    window_size : int
        Side of the windows a large image is read in.
    rescale : bool
        Resample to the model card's um/px when the image's pixel size is known.
    return_probabilities : bool
        Keep the probability map (for large images, in the zarr store as float16).
    store_dir : str or None
        Folder for a large result's zarr store (None: the system's temporary folder). The
        command line puts it beside its outputs.
    stain_normalization : bool
        Apply the card's stain normalisation, if it has one: the image's H&E stains are
        estimated once (from a subsample of the region) and every tile is mapped onto the
        card's reference stains with that estimate.
    """

    tile_size: int = 512
    overlap: float = 0.25
    batch_size: int = 4
    blend: Blend = Blend.GAUSSIAN
    tta: bool = False
    threshold: float = 0.5
    device: str = "auto"
    precision: Precision = Precision.AUTO
    channels_last: bool | None = None
    window_size: int = 4096
    rescale: bool = True
    return_probabilities: bool = True
    stain_normalization: bool = True
    store_dir: str | None = None
    scale: float | None = None

    def __post_init__(self):
        if self.scale is not None and (isinstance(self.scale, bool) or not isinstance(
                self.scale, int | float) or not 0.01 <= self.scale <= 100):
            raise GlandsegError(f"scale must be a number of model pixels per image pixel in "
                                f"[0.01, 100], got {self.scale!r}")
        if not isinstance(self.tile_size, int) or self.tile_size < 16:
            raise GlandsegError(f"tile_size must be an integer >= 16, got {self.tile_size!r}")
        if not 0 <= self.overlap <= 0.9:
            raise GlandsegError(f"overlap must be in [0, 0.9], got {self.overlap!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise GlandsegError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not 0 < self.threshold < 1:
            raise GlandsegError(f"threshold must be in (0, 1), got {self.threshold!r}")
        if self.window_size < self.tile_size:
            raise GlandsegError(f"window_size {self.window_size} is smaller than tile_size "
                                f"{self.tile_size}")
        self.blend = as_enum(Blend, self.blend, "blend")
        self.precision = as_enum(Precision, self.precision, "precision")


__all__ = ["SegmentParams"]
