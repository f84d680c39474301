"""Training data: image/mask pairs from arrays or dataset folders, splits, resampling to the
working scale and stain normalisation of the pairs."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .._types import PathType
from ..errors import GlandsegError
from ..io import find_pairs, read_pair
from ..preprocess import standardise


@dataclass
class TrainingPair:
    """An image ``(Y, X[, C])`` and its mask ``(Y, X)`` of the same height and width.

    ``group`` names the subset a validation image belongs to (GlaS's ``benign`` /
    ``malignant``): validation then scores each group on its own as well."""

    image: np.ndarray
    mask: np.ndarray
    name: str = ""
    pixel_size_um: float | None = None
    group: str | None = None

    def __post_init__(self):
        self.image, self.mask = np.asarray(self.image), np.asarray(self.mask)
        if self.image.shape[:2] != self.mask.shape[:2] or self.mask.ndim != 2:
            raise GlandsegError(f"pair {self.name!r}: mask shape {self.mask.shape} does not "
                                f"match image shape {self.image.shape}")
        if not np.issubdtype(self.mask.dtype, np.integer) and self.mask.dtype != bool:
            raise GlandsegError(f"pair {self.name!r}: mask must be integer, got "
                                f"{self.mask.dtype}")


def read_split(csv_path: PathType) -> dict[str, str]:
    """``name -> split`` from a split CSV (``name`` and ``suggested_split`` or ``split``)."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise GlandsegError(f"{csv_path}: empty split file")
    col = next((c for c in ("suggested_split", "split") if c in rows[0]), None)
    if "name" not in rows[0] or col is None:
        raise GlandsegError(f"{csv_path}: needs columns 'name' and 'suggested_split' or "
                            f"'split', has {', '.join(rows[0])}")
    return {r["name"]: r[col] for r in rows}


def read_groups(csv_path: PathType, column: str) -> dict[str, str]:
    """``name -> group`` from column ``column`` of a split CSV (GlaS: ``grade_glas``)."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or column not in rows[0]:
        raise GlandsegError(f"{csv_path}: no column {column!r} to group validation images by"
                            f" (columns: {', '.join(rows[0]) if rows else 'none'})")
    return {r["name"]: r[column] for r in rows if r[column]}


def pairs_from_folder(folder: PathType, split_csv: PathType | None = None,
                      splits: Sequence[str] = ("train",), mask_folder: str | None = None,
                      limit: int | None = None,
                      group_column: str | None = None) -> list[TrainingPair]:
    """Read image/mask pairs from a dataset folder (layouts of :func:`~napari_glandseg.io.
    find_pairs`), keeping those whose split (from ``split_csv``) is in ``splits``.

    ``mask_folder`` may be a list: each image takes its mask from the first folder that
    has one (``["instances", "masks"]``: instance labels where they exist, binary masks
    for the others; see :func:`iter_train` for how such mixed data trains).
    ``group_column``: a column of ``split_csv`` that gives each pair its ``group``.
    """
    split = read_split(split_csv) if split_csv else None
    groups = read_groups(split_csv, group_column) if split_csv and group_column else {}
    folders = ([mask_folder] if mask_folder is None or isinstance(mask_folder, str)
               else list(mask_folder))
    found = [{fp.image: fp for fp in find_pairs(folder, f)} for f in folders]
    pairs = []
    for first in found[0].values():
        p = next((f[first.image] for f in found
                  if first.image in f and f[first.image].mask is not None), first)
        if p.mask is None or (split is not None and split.get(p.name) not in splits):
            continue
        image, mask = read_pair(p)
        assert mask is not None  # pairs without a mask were skipped above
        pairs.append(TrainingPair(np.asarray(image.data), np.asarray(mask.data), p.name,
                                  image.pixel_size_um, groups.get(p.name)))
        if limit and len(pairs) >= limit:
            break
    if not pairs:
        raise GlandsegError(f"{folder}: no image/mask pairs"
                            + (f" in split {', '.join(splits)}" if split else ""))
    return pairs


def split_pairs(folder: PathType, split_csv: PathType | None = None,
                mask_folder: str | None = None, val_fraction: float = 0.2,
                val_every: int | None = None, group_column: str | None = None,
                ) -> tuple[list[TrainingPair], list[TrainingPair]]:
    """Training and validation pairs of a dataset folder.

    With a split CSV: its ``train`` and ``val`` rows. With ``val_every`` = N: the pairs whose
    name ends in an integer divisible by N validate (WBC's "every 5th id"). Otherwise the
    last ``val_fraction`` of the pairs in natural name order (a contiguous block, as
    near-duplicate neighbouring EM slices need) is validation.

    Examples
    --------
    >>> [n for n in ("001", "005", "010", "a_15") if _id_divisible(n, 5)]
    ['005', '010', 'a_15']
    """
    if split_csv:
        return (pairs_from_folder(folder, split_csv, ("train",), mask_folder),
                pairs_from_folder(folder, split_csv, ("val",), mask_folder,
                                  group_column=group_column))
    pairs = pairs_from_folder(folder, None, mask_folder=mask_folder)
    if len(pairs) < 2 and val_every is None:
        return pairs, pairs
    split = split_names([p.name for p in pairs], val_fraction, val_every)
    train = [p for p in pairs if split[p.name] == "train"]
    val = [p for p in pairs if split[p.name] == "val"]
    if val_every is not None and (not val or not train):
        raise GlandsegError(f"val_every={val_every}: {len(train)} training and {len(val)} "
                            f"validation pairs in {folder}; names must end in a number")
    return train, val


def split_names(names: list[str], val_fraction: float = 0.2,
                val_every: int | None = None) -> dict[str, str]:
    """name -> ``"train"`` or ``"val"`` by the rule :func:`split_pairs` uses without a split
    CSV (``names`` in natural order): every ``val_every``-th id, else the last
    ``val_fraction``. Scripts that score a model's validation images use it too.

    >>> split_names(["1", "2", "3", "4", "5"], val_fraction=0.4)
    {'1': 'train', '2': 'train', '3': 'train', '4': 'val', '5': 'val'}
    """
    if val_every is not None:
        if int(val_every) < 2:
            raise GlandsegError(f"val_every must be an integer >= 2, got {val_every!r}")
        return {n: "val" if _id_divisible(n, int(val_every)) else "train" for n in names}
    n_val = max(1, int(round(len(names) * val_fraction)))
    return {n: "val" if i >= len(names) - n_val else "train" for i, n in enumerate(names)}


def _id_divisible(name: str, n: int) -> bool:
    m = re.search(r"(\d+)$", name)
    return m is not None and int(m.group(1)) % n == 0


def holdout_split(pairs: list[TrainingPair], val_fraction: float = 0.2,
                  ) -> tuple[list[TrainingPair], list[TrainingPair]]:
    """Training and validation pairs from what a user corrected in napari.

    Several pairs: the last ``val_fraction`` of them validate. One pair: its bottom
    ``val_fraction`` of rows validates and the rest trains, so no pixel is in both.
    """
    if not pairs:
        raise GlandsegError("no training pairs: pair an image with a Labels layer")
    if len(pairs) > 1:
        n_val = max(1, int(round(len(pairs) * val_fraction)))
        return pairs[:-n_val], pairs[-n_val:]
    p = pairs[0]
    cut = int(round(p.image.shape[0] * (1 - val_fraction)))
    if cut < 16 or p.image.shape[0] - cut < 16:
        raise GlandsegError(f"pair {p.name!r} is too small ({p.image.shape[0]} rows) to hold "
                            "out a validation strip; add another pair")
    return ([TrainingPair(p.image[:cut], p.mask[:cut], f"{p.name} (top)", p.pixel_size_um)],
            [TrainingPair(p.image[cut:], p.mask[cut:], f"{p.name} (bottom)",
                          p.pixel_size_um)])


def with_pixel_size(pairs: list[TrainingPair], default_um: float | None) -> list[TrainingPair]:
    """The pairs, those whose file did not say their scale taking ``default_um`` (the
    data's scale, e.g. a card's ``data_pixel_size_um``)."""
    if not default_um:
        return list(pairs)
    return [p if p.pixel_size_um else replace(p, pixel_size_um=default_um) for p in pairs]


def resample_pairs(pairs: list[TrainingPair], pixel_size_um: float | None,
                   default_pixel_size_um: float | None = None) -> list[TrainingPair]:
    """The pairs at working scale ``pixel_size_um``: images anti-aliased, masks (instance
    labels kept) by nearest neighbour. A pair's own pixel size wins over
    ``default_pixel_size_um``; pairs of unknown size, or within 5% of the working scale, are
    kept as they are."""
    from skimage.transform import resize

    if not pixel_size_um:
        return list(pairs)
    out = []
    for p in pairs:
        src = p.pixel_size_um or default_pixel_size_um
        if not src or abs(src / pixel_size_um - 1) < 0.05:
            out.append(p)
            continue
        f = src / pixel_size_um
        h, w = (max(1, round(n * f)) for n in p.image.shape[:2])
        img = resize(p.image, (h, w) + p.image.shape[2:], order=1, preserve_range=True,
                     anti_aliasing=f < 1)
        if np.issubdtype(p.image.dtype, np.integer):
            img = np.round(img)
        mask = resize(p.mask, (h, w), order=0, preserve_range=True, anti_aliasing=False)
        out.append(replace(p, image=img.astype(p.image.dtype), mask=mask.astype(p.mask.dtype),
                           pixel_size_um=pixel_size_um))
    return out


def stain_reference(pairs: list[TrainingPair], reference: str | None = None) -> dict:
    """The card entry of a Macenko reference: fitted on a pooled sample of the pairs'
    images, Macenko's ``"standard"`` reference, or fitted on the image at path
    ``reference``."""
    from ..stain import MacenkoStains, fit_macenko, fit_macenko_pixels, tissue_sample

    if reference == "standard":
        return MacenkoStains.standard().to_card("Macenko's standard reference")
    if reference:
        from ..io import read_image

        return fit_macenko(standardise(np.asarray(read_image(reference).data))).to_card(
            Path(reference).name)
    if any(p.image.ndim != 3 or p.image.shape[-1] not in (3, 4) for p in pairs):
        raise GlandsegError("stain normalisation needs RGB training images")
    per_image = max(2**20 // len(pairs), 4096)
    pooled = np.concatenate([tissue_sample(p.image, per_image) for p in pairs])
    return fit_macenko_pixels(pooled).to_card(f"the {len(pairs)} training images")


def stain_normalised(pairs: list[TrainingPair], entry: dict) -> list[TrainingPair]:
    """The pairs with each image mapped onto the reference stains of card ``entry``, each
    with its own source stains (as inference does). Images with too little stained tissue
    to estimate stains are kept as they are, with a warning."""
    import warnings

    from ..stain import MacenkoStains, apply_macenko, fit_macenko

    reference = MacenkoStains.from_card(entry)
    out = []
    for p in pairs:
        try:
            image = apply_macenko(p.image, fit_macenko(p.image), reference)
        except GlandsegError as exc:
            warnings.warn(f"pair {p.name!r} is not stain-normalised: {exc}", stacklevel=2)
            image = p.image
        out.append(replace(p, image=image))
    return out
