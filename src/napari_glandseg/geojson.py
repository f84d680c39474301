"""Objects as GeoJSON, the way QuPath reads and writes them (Qt-free).

Export: every object of a label image becomes a ``Feature`` whose geometry is a ``Polygon``
(or ``MultiPolygon``) in level-0 pixel coordinates, holes kept, with QuPath's properties:
``objectType`` (``annotation`` or ``detection``), ``classification`` ``{name, color}`` and
``measurements`` (area and perimeter in um when the pixel size is known, else in pixels, plus
the object's ``Label``). Import: QuPath's GeoJSON export (a FeatureCollection, a list of
features or one feature) is rasterised back into instance labels.

Outlines come from scikit-image's marching squares (``find_contours`` at level 0.5, which
runs along the pixel edges between an object and its neighbours); shapely combines the rings
into polygons with holes (even-odd rule). Rasterisation takes a pixel when its centre is
inside (as ``skimage.draw.polygon`` does, by a faster scanline fill: :func:`fill_rings`);
marching-squares rings never pass through a pixel centre, so labels -> GeoJSON -> labels
gives back every pixel.

Coordinates: QuPath puts pixel (row r, column c) at [c, c + 1) x [r, r + 1); a label image
whose pixel (0, 0) lies at level-0 ``offset`` (y, x) and whose pixels are ``downsample``
level-0 pixels wide maps its pixel (r, c) to ``offset + (r, c) * downsample``.

Examples
--------
>>> import numpy as np
>>> labels = np.zeros((10, 10), np.int32); labels[2:8, 2:8] = 3; labels[4:6, 4:6] = 0
>>> fc = labels_to_geojson(labels, pixel_size_um=0.5)
>>> f = fc["features"][0]
>>> f["geometry"]["type"], len(f["geometry"]["coordinates"]), f["properties"]["objectType"]
('Polygon', 2, 'annotation')
>>> m = f["properties"]["measurements"]
>>> m["Label"], m["Area µm^2"]
(3, 8.0)
>>> back = geojson_to_labels(fc, labels.shape)
>>> bool(((back.labels > 0) == (labels > 0)).all()), int(back.labels.max())
(True, 3)
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._files import atomic_path
from ._types import PathType
from .errors import GlandsegError, OutputExistsError, as_enum

if TYPE_CHECKING:
    import pandas as pd

    from .models import ModelCard
    from .pipeline import FileResult

#: Default classification colour (QuPath's red) for objects without a class colour.
DEFAULT_COLOUR = (200, 0, 0)
_NAMESPACE = uuid.UUID("6b1e2c1a-6f0e-4a53-9d7e-2f4d6b1c9a10")


class ObjectType(str, Enum):
    """QuPath's object kinds: annotations are editable, detections are many and light."""

    ANNOTATION = "annotation"
    DETECTION = "detection"


def _rgb(colour) -> list[int]:
    """``#rrggbb``, an (r, g, b) of 0-255 ints or of 0-1 floats, to QuPath's [r, g, b]."""
    if colour is None:
        return list(DEFAULT_COLOUR)
    if isinstance(colour, str):
        s = colour.lstrip("#")
        if len(s) not in (6, 8):
            raise GlandsegError(f"colour {colour!r} is not #rrggbb")
        return [int(s[i: i + 2], 16) for i in (0, 2, 4)]
    c = np.asarray(colour, float).ravel()[:3]
    if c.size != 3:
        raise GlandsegError(f"colour {colour!r} needs three values")
    if c.max() <= 1.0:
        c = c * 255
    return [int(round(v)) for v in np.clip(c, 0, 255)]


def _polygon_of(mask: np.ndarray):
    """The shapely (Multi)Polygon of a padded boolean mask, in its index coordinates."""
    from shapely import make_valid
    from shapely.geometry import Polygon
    from skimage.measure import find_contours

    shape = None
    for ring in find_contours(mask.astype(np.uint8), 0.5, fully_connected="low"):
        if len(ring) < 4:
            continue
        poly = Polygon(ring[:, ::-1])  # (x, y)
        if not poly.is_valid:
            poly = make_valid(poly)
        shape = poly if shape is None else shape.symmetric_difference(poly)
    return shape


def _polygonal(geom):
    """Only the polygonal parts of a geometry (make_valid may add lines or points)."""
    from shapely.geometry import GeometryCollection, MultiPolygon, Polygon

    if geom is None or geom.is_empty:
        return None
    if isinstance(geom, Polygon | MultiPolygon):
        return geom
    if isinstance(geom, GeometryCollection):
        parts = []
        for g in geom.geoms:
            if isinstance(g, Polygon):
                parts.append(g)
            elif isinstance(g, MultiPolygon):
                parts.extend(g.geoms)
        if parts:
            return parts[0] if len(parts) == 1 else MultiPolygon(parts)
    return None


def _object_classes(labels: np.ndarray, slices, classes) -> dict[int, int]:
    """Majority class (ignoring 0) of each object of a class map ``classes``."""
    out = {}
    for i, sl in enumerate(slices, 1):
        if sl is None:
            continue
        inside = labels[sl] == i
        votes = np.bincount(np.asarray(classes[sl])[inside].astype(np.int64).ravel())
        if votes.size > 1:
            votes[0] = 0
        out[i] = int(votes.argmax())
    return out


def labels_to_geojson(labels: np.ndarray, classes: np.ndarray | dict | None = None,
                      class_names: Sequence[str] | None = None,
                      class_colours: Sequence[str | Sequence[int]] | None = None,
                      pixel_size_um: float | None = None, offset: Sequence[float] = (0, 0),
                      downsample: float = 1.0, object_type: ObjectType | str = "annotation",
                      simplify: float = 0.0, table: pd.DataFrame | None = None) -> dict:
    """A GeoJSON FeatureCollection of the objects of ``labels`` (QuPath's flavour).

    Parameters
    ----------
    labels : array-like (Y, X), integer
        Instance labels (0 = background).
    classes : array-like (Y, X) or dict, optional
        A class map (each object takes its majority class, 0 ignored) or ``{label: class}``
        where a class is an index into ``class_names`` or a name. Default: class 1.
    class_names, class_colours : list, optional
        Names and colours (``#rrggbb`` or RGB) indexed by class; default one class "Object".
    pixel_size_um : float, optional
        Level-0 um per pixel: measurements are then in um (``Area µm^2``, ``Perimeter µm``).
    offset : (y, x)
        Level-0 position of ``labels[0, 0]`` (a region's corner).
    downsample : float
        Level-0 pixels per label pixel (labels of a coarser pyramid level).
    object_type : ``annotation`` or ``detection``
    simplify : float
        Douglas-Peucker tolerance in label pixels (0: exact outlines).
    table : pandas DataFrame, optional
        Extra per-object numbers (a ``label`` or ``index`` column names the object): their
        numeric columns join the measurements.
    """
    from scipy import ndimage as ndi
    from shapely import affinity
    from shapely.geometry import mapping

    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise GlandsegError(f"labels must be 2D integers, got shape {labels.shape} and dtype "
                            f"{labels.dtype}")
    if labels.size and labels.min() < 0:
        raise GlandsegError(f"labels have negative ids (minimum {labels.min()})")
    if not downsample > 0:
        raise GlandsegError(f"downsample must be positive, got {downsample!r}")
    if pixel_size_um is not None and not pixel_size_um > 0:
        raise GlandsegError(f"pixel_size_um must be positive, got {pixel_size_um!r}")
    object_type = as_enum(ObjectType, object_type, "object type").value
    names = list(class_names) if class_names else ["background", "Object"]
    colours = list(class_colours) if class_colours else [None] * len(names)
    oy, ox = (float(v) for v in offset)
    slices = ndi.find_objects(labels)
    if classes is None:
        cls_of = {}
    elif isinstance(classes, dict):
        cls_of = {int(k): v for k, v in classes.items()}
    else:
        classes = np.asarray(classes)
        if classes.shape != labels.shape:
            raise GlandsegError(f"class map has shape {classes.shape} but labels have "
                                f"{labels.shape}")
        cls_of = _object_classes(labels, slices, classes)
    extra = _extra_measurements(table)
    review = _review_marks(table)
    unit, factor = ("µm", pixel_size_um) if pixel_size_um else ("px", 1.0)
    features = []
    for i, sl in enumerate(slices, 1):
        if sl is None:
            continue
        y0, x0 = sl[0].start, sl[1].start
        mask = np.pad(labels[sl] == i, 1)
        geom = _polygonal(_polygon_of(mask))
        if geom is None:
            continue
        if simplify > 0:
            geom = _polygonal(geom.simplify(simplify, preserve_topology=True)) or geom
        # index coordinates (pixel centres at integers, padded by 1) -> level-0 pixel edges
        geom = affinity.affine_transform(
            geom, [downsample, 0, 0, downsample,
                   ox + (x0 - 1 + 0.5) * downsample, oy + (y0 - 1 + 0.5) * downsample])
        geom = geom.normalize()  # exterior clockwise in image (y down) coordinates
        cls = cls_of.get(i, 1)
        if isinstance(cls, str):
            name, colour = cls, None
            if cls in names:
                colour = colours[names.index(cls)] if names.index(cls) < len(colours) else None
        else:
            cls = int(cls)
            name = names[cls] if 0 <= cls < len(names) else f"Class {cls}"
            colour = colours[cls] if 0 <= cls < len(colours) else None
        meas = {"Label": i,
                f"Area {unit}^2": float(geom.area * factor**2),
                f"Perimeter {unit}": float(geom.length * factor)}
        meas.update(extra.get(i, {}))
        props = {"objectType": object_type,
                 "classification": {"name": name, "color": _rgb(colour)},
                 "measurements": meas}
        if i in review:  # the review queue's mark travels with the object
            props["review"] = review[i]
        features.append({
            "type": "Feature",
            "id": str(uuid.uuid5(_NAMESPACE, f"{i}:{geom.bounds}")),
            "geometry": mapping(geom),
            "properties": props,
        })
    return {"type": "FeatureCollection", "features": features}


def _review_marks(table) -> dict[int, str]:
    """``{label: "accepted" | "corrected"}`` from a features table's ``review`` column."""
    if table is None or not len(table) or "review" not in table:
        return {}
    key = "label" if "label" in table else "index"
    return {int(i): str(r) for i, r in zip(table[key], table["review"], strict=True)
            if isinstance(r, str) and r}


def _extra_measurements(table) -> dict[int, dict]:
    if table is None or not len(table):
        return {}
    key = "label" if "label" in table else "index" if "index" in table else None
    if key is None:
        raise GlandsegError("the object table needs a 'label' or 'index' column")
    skip = {key, "label", "index", "y0", "x0", "y1", "x1", "rank"}
    cols = [c for c in table.columns if c not in skip
            and np.issubdtype(np.asarray(table[c]).dtype, np.number)]
    out = {}
    for row in table[[key, *cols]].itertuples(index=False):
        vals = {c: float(v) for c, v in zip(cols, row[1:], strict=True) if np.isfinite(v)}
        out[int(row[0])] = vals
    return out


def write_geojson(path: PathType, collection: dict, overwrite: bool = False) -> Path:
    """Write a FeatureCollection atomically (refuses to replace a file unless ``overwrite``)."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise OutputExistsError(p)
    with atomic_path(p, suffix=".geojson") as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(collection, fh, ensure_ascii=False)
    return p


def export_geojson(labels: np.ndarray, path: PathType, overwrite: bool = False,
                   **kwargs: Any) -> Path:
    """:func:`labels_to_geojson` written to ``path`` (see :func:`write_geojson`)."""
    return write_geojson(path, labels_to_geojson(labels, **kwargs), overwrite=overwrite)


# --------------------------------------------------------------------------------------------
# import


@dataclass
class ImportedObjects:
    """What :func:`geojson_to_labels` returns.

    Attributes
    ----------
    labels : ndarray (Y, X), int32
        One id per polygonal feature (later features paint over earlier ones).
    class_of : dict
        Object id -> classification name ("" when unclassified).
    colours : dict
        Classification name -> [r, g, b].
    skipped : int
        Features without a polygon (points, lines) or wholly outside the labels.
    review : dict
        Object id -> review mark (``accepted``, ``corrected``) written by our export.
    """

    labels: np.ndarray
    class_of: dict = field(default_factory=dict)
    colours: dict = field(default_factory=dict)
    skipped: int = 0
    review: dict = field(default_factory=dict)

    def class_map(self, class_names: Sequence[str]) -> np.ndarray:
        """A class-index map for training truth: each object's pixels take the index of its
        classification in ``class_names`` (objects of other classes stay 0)."""
        index = {n: k for k, n in enumerate(class_names)}
        lut = np.zeros(int(self.labels.max(initial=0)) + 1, np.uint8)
        for i, name in self.class_of.items():
            lut[i] = index.get(name, 0)
        return lut[self.labels]


def read_geojson(source: PathType | dict | list) -> list[dict]:
    """The features of a GeoJSON file, string or object (FeatureCollection, list of
    features, one feature or a bare geometry)."""
    if isinstance(source, str | os.PathLike) and not str(source).lstrip().startswith(("{", "[")):
        p = Path(source)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise GlandsegError(f"cannot read {p}: {exc.strerror or exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GlandsegError(f"{p} is not GeoJSON: {exc}") from None
    elif isinstance(source, str):
        try:
            data = json.loads(source)
        except json.JSONDecodeError as exc:
            raise GlandsegError(f"not GeoJSON: {exc}") from None
    else:
        data = source
    if isinstance(data, list):
        return [f if f.get("type") == "Feature" else {"type": "Feature", "geometry": f,
                                                      "properties": {}} for f in data]
    if not isinstance(data, dict) or "type" not in data:
        raise GlandsegError("not GeoJSON: expected a FeatureCollection, a Feature or a list "
                            "of features")
    if data["type"] == "FeatureCollection":
        return list(data.get("features") or [])
    if data["type"] == "Feature":
        return [data]
    return [{"type": "Feature", "geometry": data, "properties": {}}]


def _label_ids(features) -> list[int] | None:
    """The features' own ``Label`` measurements when every one has a distinct positive one."""
    ids = []
    for f in features:
        m = (f.get("properties") or {}).get("measurements") or {}
        if isinstance(m, list):  # QuPath <= 0.3: [{"name": ..., "value": ...}]
            m = {d.get("name"): d.get("value") for d in m if isinstance(d, dict)}
        v = m.get("Label")
        if not isinstance(v, int | float) or v <= 0 or v != int(v):
            return None
        ids.append(int(v))
    return ids if len(set(ids)) == len(ids) else None


def _source_name(source) -> str:
    """``"path: "`` for a file source (to start a message with), else ``""``."""
    if isinstance(source, str | os.PathLike) and not str(source).lstrip().startswith(("{", "[")):
        return f"{source}: "
    return ""


def geojson_to_labels(source: PathType | dict | list, shape: Sequence[int],
                      offset: Sequence[float] = (0, 0), downsample: float = 1.0,
                      object_types: Iterable[str] | None = None) -> ImportedObjects:
    """Rasterise GeoJSON polygons (e.g. QuPath annotations) into instance labels.

    ``shape`` (Y, X) is the label image's, ``offset`` its level-0 corner and ``downsample``
    level-0 pixels per label pixel, as in :func:`labels_to_geojson`. ``object_types`` keeps
    only features of those QuPath kinds (e.g. ``["annotation"]``). Object ids are the
    features' ``Label`` measurements when all have distinct ones (a round trip keeps the
    ids), else 1..N in file order.
    """
    from shapely.geometry import shape as to_shape

    if len(shape) < 2:
        raise GlandsegError(f"shape must be (Y, X), got {shape!r}")
    h, w = int(shape[0]), int(shape[1])
    if not downsample > 0:
        raise GlandsegError(f"downsample must be positive, got {downsample!r}")
    features = read_geojson(source)
    if object_types is not None:
        keep = {as_enum(ObjectType, t, "object type").value for t in object_types}
        features = [f for f in features
                    if (f.get("properties") or {}).get("objectType", "annotation") in keep]
    oy, ox = (float(v) for v in offset)
    ids = _label_ids(features) or list(range(1, len(features) + 1))
    dtype = np.int32 if max(ids, default=0) < 2**31 else np.int64
    labels = np.zeros((h, w), dtype)
    out = ImportedObjects(labels)

    def to_index(coords):
        xy = np.asarray(coords, float)[:, :2]
        return (xy[:, 1] - oy) / downsample - 0.5, (xy[:, 0] - ox) / downsample - 0.5

    for n, (i, f) in enumerate(zip(ids, features, strict=True), 1):
        try:
            geom = _polygonal(to_shape(f.get("geometry"))) if f.get("geometry") else None
        except (ValueError, TypeError, AttributeError, KeyError):
            geom = None
        if geom is None:
            out.skipped += 1
            continue
        drawn = 0
        for poly in getattr(geom, "geoms", [geom]):
            rings = [np.column_stack(to_index(poly.exterior.coords))]
            rings += [np.column_stack(to_index(hole.coords)) for hole in poly.interiors]
            if not all(np.isfinite(r).all() for r in rings):
                raise GlandsegError(
                    f"{_source_name(source)}feature {n} of {len(features)} has a NaN or "
                    "infinite vertex coordinate; fix or remove that object and import again")
            rr, cc = fill_rings(rings, (h, w))
            labels[rr, cc] = i
            drawn += rr.size
        if not drawn:
            out.skipped += 1
            continue
        props = f.get("properties") or {}
        cls = props.get("classification") or {}
        name = cls.get("name", "") if isinstance(cls, dict) else str(cls)
        out.class_of[i] = name
        if isinstance(props.get("review"), str) and props["review"]:
            out.review[i] = props["review"]
        if name and "color" in cls and name not in out.colours:
            out.colours[name] = _rgb(cls["color"]) if not isinstance(cls["color"], int) \
                else _int_rgb(cls["color"])
    return out


def fill_rings(rings: Sequence[np.ndarray],
               shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the pixels whose centres lie inside ``rings`` (even-odd rule, so
    holes are rings too), clipped to ``shape``; each ring is an (N, 2) array of (row, col)
    in index coordinates (pixel centres at integers).

    A scanline fill written here because ``skimage.draw.polygon`` tests every pixel of the
    box against every edge (13.9 ms for a 300-vertex outline on this machine); this
    intersects each row with the edges once (0.42 ms, 33x faster) and takes the same pixels
    wherever no centre lies exactly on an edge, which never happens for outlines from
    :func:`labels_to_geojson`.

    >>> rr, cc = fill_rings([np.array([[0.5, 0.5], [0.5, 3.5], [2.5, 3.5], [2.5, 0.5]])],
    ...                     (5, 5))
    >>> sorted(zip(rr.tolist(), cc.tolist()))
    [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    """
    h, w = int(shape[0]), int(shape[1])
    a = np.concatenate([np.asarray(r, float)[:, :2] for r in rings])
    b = np.concatenate([np.roll(np.asarray(r, float)[:, :2], -1, axis=0) for r in rings])
    empty = np.zeros(0, np.intp), np.zeros(0, np.intp)
    if not len(a):
        return empty
    r0, r1 = max(0, int(np.ceil(a[:, 0].min()))), min(h - 1, int(np.floor(a[:, 0].max())))
    c0, c1 = max(0, int(np.ceil(a[:, 1].min()))), min(w - 1, int(np.floor(a[:, 1].max())))
    if r0 > r1 or c0 > c1:
        return empty
    rows = np.arange(r0, r1 + 1, dtype=float)[:, None]
    (ya, xa), (yb, xb) = a.T, b.T
    cross = (rows >= np.minimum(ya, yb)) & (rows < np.maximum(ya, yb))  # half-open in y
    with np.errstate(invalid="ignore", divide="ignore"):
        x = xa + (rows - ya) * (xb - xa) / (yb - ya)
    x = np.sort(np.where(cross, x, np.inf), axis=1)[:, : max(int(cross.sum(1).max()), 2)]
    starts, ends = x[:, 0::2], x[:, 1::2][:, : x[:, 0::2].shape[1]]
    ok = np.isfinite(starts) & np.isfinite(ends)
    row_of = np.broadcast_to(np.arange(len(rows))[:, None], starts.shape)[ok]
    # pixel centres c with start <= c < end, as +1/-1 marks summed along each row
    first = np.clip(np.ceil(starts[ok]) - c0, 0, c1 - c0 + 1).astype(np.intp)
    last = np.clip(np.ceil(ends[ok]) - c0, 0, c1 - c0 + 1).astype(np.intp)
    marks = np.zeros((len(rows), c1 - c0 + 2), np.int32)
    np.add.at(marks, (row_of, first), 1)
    np.add.at(marks, (row_of, last), -1)
    rr, cc = np.nonzero(np.cumsum(marks, axis=1)[:, :-1] > 0)
    return rr + r0, cc + c0


def _int_rgb(v: int) -> list[int]:
    """QuPath <= 0.2 stored colours as one packed (A)RGB integer."""
    return [(v >> 16) & 255, (v >> 8) & 255, v & 255]


# --------------------------------------------------------------------------------------------
# the per-file pipeline's writer (``glandseg segment --geojson``)

#: Output file name: ``<stem><suffix>`` beside the labels.
GEOJSON_SUFFIX = "_objects.geojson"


def card_classification(card: ModelCard) -> tuple[list, list, bool]:
    """Class names and colours for a model's objects, and whether its labels are a class map.

    A class model (several classes, no boundary class) names each object by its class; an
    instance model (binary or background / interior / boundary) has one class of objects,
    named after the model.
    """
    class_map = card.class_map
    if class_map:
        return list(card.class_names), list(card.class_colours), True
    colour = card.class_colours[1] if len(card.class_colours) > 1 else None
    return ["background", card.name], [None, colour], False


def pipeline_writer(card: ModelCard, object_type: ObjectType | str = "annotation",
                    ) -> Callable[[FileResult], dict]:
    """An extra output step for :class:`napari_glandseg.pipeline.FileParams` ``writers``:
    writes ``<stem>_objects.geojson`` beside the labels, in level-0 pixel coordinates of the
    input (region offset and pyramid level accounted for)."""
    object_type = as_enum(ObjectType, object_type, "object type").value
    names, colours, class_map = card_classification(card)

    def write(result) -> dict:
        labels_path = Path(result.outputs["labels"])
        stem = result.path.stem if result.path is not None else \
            labels_path.name.removesuffix("_labels.tif")
        dest = labels_path.parent / f"{stem}{GEOJSON_SUFFIX}"
        labels = np.asarray(result.labels)
        classes = None
        if class_map:
            from .labels import as_instances

            classes, labels = labels, as_instances(labels > 0)
        res = result.segment
        px = result.pixel_size_um
        export_geojson(labels, dest, overwrite=True, classes=classes, class_names=names,
                       class_colours=colours, offset=res.offset, downsample=res.downsample,
                       pixel_size_um=px / res.downsample if px else None,
                       object_type=object_type,
                       table=None if class_map else result.table)
        return {"geojson": dest}

    return write
