"""GeoJSON exchange with QuPath (napari_glandseg.geojson)."""

import json

import numpy as np
import pytest
from skimage import io

from napari_glandseg.errors import GlandsegError
from napari_glandseg.geojson import (
    export_geojson,
    geojson_to_labels,
    labels_to_geojson,
    read_geojson,
)


def _ious(a, b):
    return {int(i): ((a == i) & (b == i)).sum() / ((a == i) | (b == i)).sum()
            for i in np.unique(a) if i}


@pytest.mark.parametrize("offset,downsample", [((0, 0), 1.0), ((1000, 2500), 1.0),
                                               ((64, 32), 2.0)])
def test_round_trip_keeps_every_real_nucleus(data_dir, offset, downsample):
    truth = io.imread(data_dir / "monuseg" / "TCGA-21-5784-01Z-00-DX1_crop_instances.png")
    truth = truth.astype(np.int32)
    fc = labels_to_geojson(truth, offset=offset, downsample=downsample)
    assert len(fc["features"]) == len(np.unique(truth)) - 1
    back = geojson_to_labels(json.dumps(fc), truth.shape, offset=offset, downsample=downsample)
    ious = _ious(truth, back.labels)
    assert min(ious.values()) >= 0.95
    assert (back.labels == truth).mean() > 0.999  # ids kept through the Label measurement


def test_coordinates_are_level0_pixel_edges_and_holes_are_kept():
    lab = np.zeros((12, 12), np.int32)
    lab[3, 5] = 1
    lab[4:11, 1:8] = 2
    lab[6:9, 3:6] = 0  # a 3x3 hole
    fc = labels_to_geojson(lab, offset=(100, 200), downsample=2.0)
    geoms = {f["properties"]["measurements"]["Label"]: f["geometry"] for f in fc["features"]}
    xy = np.asarray(geoms[1]["coordinates"][0])
    # pixel (3, 5) covers x in [210, 212), y in [106, 108) at level 0
    assert xy[:, 0].min() >= 210 and xy[:, 0].max() <= 212
    assert xy[:, 1].min() >= 106 and xy[:, 1].max() <= 108
    assert np.allclose(xy.mean(0)[:2], [211, 107], atol=0.3)
    assert len(geoms[2]["coordinates"]) == 2  # exterior + one hole
    back = geojson_to_labels(fc, lab.shape, offset=(100, 200), downsample=2.0).labels
    assert (back == lab).all()


def test_classes_colours_and_measurements_in_um():
    lab = np.zeros((20, 30), np.int32)
    lab[2:12, 2:12] = 1
    lab[2:12, 15:25] = 2
    classes = np.zeros_like(lab)
    classes[lab == 1] = 2
    classes[lab == 2] = 1
    classes[2:4, 15:25] = 2  # a minority of 2 inside object 2
    import pandas as pd

    table = pd.DataFrame({"label": [1, 2], "score": [0.25, 0.75], "y0": [2, 2],
                          "review": ["accepted", ""]})
    fc = labels_to_geojson(lab, classes=classes, class_names=["bg", "cytoplasm", "nucleus"],
                           class_colours=["#000000", "#ff3b30", "#34c759"],
                           pixel_size_um=0.5, object_type="detection", table=table)
    props = {f["properties"]["measurements"]["Label"]: f["properties"] for f in fc["features"]}
    assert props[1]["classification"] == {"name": "nucleus", "color": [52, 199, 89]}
    assert props[2]["classification"] == {"name": "cytoplasm", "color": [255, 59, 48]}
    assert props[1]["objectType"] == "detection"
    m = props[1]["measurements"]
    assert abs(m["Area µm^2"] - 100 * 0.25) < 0.2  # 100 pixels of 0.25 um^2, corners cut
    assert abs(m["Perimeter µm"] - 40 * 0.5) < 1.5
    assert m["score"] == 0.25 and "y0" not in m
    assert props[1]["review"] == "accepted" and "review" not in props[2]
    assert geojson_to_labels(fc, lab.shape).review == {1: "accepted"}
    assert "Area px^2" in labels_to_geojson(lab)["features"][0]["properties"]["measurements"]
    with pytest.raises(GlandsegError, match="object type"):
        labels_to_geojson(lab, object_type="cell")


QUPATH = """{"type": "FeatureCollection", "features": [
 {"type": "Feature", "id": "a1", "geometry": {"type": "Polygon", "coordinates": [
   [[10, 10], [30, 10], [30, 30], [10, 30], [10, 10]],
   [[15, 15], [25, 15], [25, 25], [15, 25], [15, 15]]]},
  "properties": {"objectType": "annotation",
                 "classification": {"name": "Tumor", "color": [200, 0, 0]}}},
 {"type": "Feature", "id": "a2", "geometry": {"type": "MultiPolygon", "coordinates": [
   [[[40, 5], [50, 5], [50, 15], [40, 15], [40, 5]]],
   [[[40, 30], [45, 30], [45, 35], [40, 35], [40, 30]]]]},
  "properties": {"objectType": "annotation", "classification": {"name": "Stroma",
                 "color": -16711936}, "measurements": [{"name": "Area", "value": 125}]}},
 {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]},
  "properties": {"objectType": "annotation"}},
 {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
   [[0, 0], [8, 0], [8, 8], [0, 8], [0, 0]]]},
  "properties": {"objectType": "detection"}}
]}"""


def test_import_qupath_annotations(tmp_path):
    path = tmp_path / "annotations.geojson"
    path.write_text(QUPATH, encoding="utf-8")
    out = geojson_to_labels(path, (40, 60))
    lab = out.labels
    assert out.skipped == 1  # the point
    assert (lab[12, 12] == 1) and lab[20, 20] == 0  # the hole stays empty
    assert ((lab == 1).sum()) == 400 - 100
    assert (lab == 2).sum() == 100 + 25  # both parts of the MultiPolygon
    assert lab[3, 3] == 4
    assert out.class_of == {1: "Tumor", 2: "Stroma", 4: ""}
    assert out.colours == {"Tumor": [200, 0, 0], "Stroma": [0, 255, 0]}
    cm = out.class_map(["background", "Tumor", "Stroma"])
    assert cm[12, 12] == 1 and cm[10, 45] == 2 and cm[3, 3] == 0
    only = geojson_to_labels(path, (40, 60), object_types=["annotation"]).labels
    assert only[3, 3] == 0 and only.max() == 2
    # a region (y 10-30, x 40-60) sees only its part: rows 10-15 of the first square
    part = geojson_to_labels(path, (20, 20), offset=(10, 40)).labels
    assert (part == 2).sum() == 5 * 10 and (part[:5, :10] == 2).all()


def test_a_nan_vertex_is_one_clear_error(tmp_path):
    """Python's json reads NaN (QuPath scripts and numpy dumps write it); the scanline fill
    raised a raw 'cannot convert float NaN to integer'. Now one line naming the file and
    the feature (the Correct widget shows it as a notification)."""
    square = [[1, 1], [8, 1], [8, 8], [1, 8], [1, 1]]
    bad = [[1, 1], [float("nan"), 1], [8, 8], [1, 8], [1, 1]]
    fc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
         "properties": {}} for ring in (square, bad)]}
    path = tmp_path / "nan.geojson"
    path.write_text(json.dumps(fc), encoding="utf-8")  # writes NaN
    with pytest.raises(GlandsegError, match=r"nan.geojson: feature 2 of 2 has a NaN or "
                                            r"infinite vertex") as exc:
        geojson_to_labels(path, (10, 10))
    assert "\n" not in str(exc.value)
    fc["features"][1]["geometry"]["coordinates"][0][2] = [float("inf"), 8]
    fc["features"][1]["geometry"]["coordinates"][0][1] = [8, 1]
    with pytest.raises(GlandsegError, match="feature 2 of 2"):
        geojson_to_labels(fc, (10, 10))


def test_export_writes_atomically_and_refuses_to_overwrite(tmp_path):
    lab = np.zeros((8, 8), np.int32)
    lab[2:5, 2:5] = 1
    dest = tmp_path / "objects.geojson"
    export_geojson(lab, dest)
    assert json.loads(dest.read_text(encoding="utf-8"))["type"] == "FeatureCollection"
    with pytest.raises(GlandsegError, match="exists"):
        export_geojson(lab, dest)
    export_geojson(np.zeros((8, 8), np.int32), dest, overwrite=True)
    assert read_geojson(dest) == []
    assert [p.name for p in tmp_path.iterdir()] == ["objects.geojson"]
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(GlandsegError, match="not GeoJSON"):
        read_geojson(bad)
    with pytest.raises(GlandsegError, match="cannot read"):
        read_geojson(tmp_path / "missing.geojson")


def test_pipeline_writer_uses_level0_coordinates_and_card_classes(tmp_path):
    from types import SimpleNamespace

    from napari_glandseg.geojson import pipeline_writer
    from napari_glandseg.models import ModelCard

    inst = ModelCard(name="glands-x", architecture="unet", in_channels=3, num_classes=3,
                     class_names=["background", "interior", "boundary"], boundary_class=True,
                     class_colours=["#000000", "#ff3b30", "#34c759"])
    labels = np.zeros((20, 20), np.int32)
    labels[2:6, 3:9] = 1
    seg = SimpleNamespace(offset=(100, 40), downsample=2.0)
    result = SimpleNamespace(path=tmp_path / "slide.svs", labels=labels, segment=seg,
                             pixel_size_um=1.0, table=None,
                             outputs={"labels": tmp_path / "slide_labels.tif"})
    out = pipeline_writer(inst)(result)
    assert out == {"geojson": tmp_path / "slide_objects.geojson"}
    (f,) = json.loads(out["geojson"].read_text(encoding="utf-8"))["features"]
    xy = np.asarray(f["geometry"]["coordinates"][0])
    assert xy[:, 0].min() == pytest.approx(40 + 3 * 2, abs=1.1)
    assert xy[:, 1].max() == pytest.approx(100 + 6 * 2, abs=1.1)
    assert f["properties"]["classification"] == {"name": "glands-x", "color": [255, 59, 48]}
    # 24 label pixels of 1 um = 4 level-0 pixels of 0.5 um each: 24 um^2 (corners cut)
    assert f["properties"]["measurements"]["Area µm^2"] == pytest.approx(23.5)
    # a class model: objects are connected regions, named by their class
    cls = ModelCard(name="wbc-x", architecture="unet", in_channels=3, num_classes=3,
                    class_names=["background", "cytoplasm", "nucleus"])
    classes = np.zeros((20, 20), np.uint8)
    classes[2:6, 3:9] = 2
    classes[10:15, 10:15] = 1
    result.labels = classes
    out = pipeline_writer(cls, object_type="detection")(result)
    feats = json.loads(out["geojson"].read_text(encoding="utf-8"))["features"]
    assert sorted(f["properties"]["classification"]["name"] for f in feats) == [
        "cytoplasm", "nucleus"]
    assert {f["properties"]["objectType"] for f in feats} == {"detection"}


def test_scanline_fill_takes_the_pixels_skimage_takes():
    from skimage.draw import polygon

    from napari_glandseg.geojson import fill_rings

    rng = np.random.default_rng(3)
    for _ in range(20):  # random star-shaped outlines, partly outside the image
        n = int(rng.integers(3, 40))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(5, 30, n)
        cy, cx = rng.uniform(-10, 60, 2)
        ring = np.column_stack([cy + rad * np.sin(ang), cx + rad * np.cos(ang)])
        want = np.zeros((50, 60), bool)
        want[polygon(ring[:, 0], ring[:, 1], (50, 60))] = True
        got = np.zeros((50, 60), bool)
        got[fill_rings([ring], (50, 60))] = True
        assert (got == want).all()
    # a hole is a second ring (even-odd rule)
    outer = np.array([[0.5, 0.5], [0.5, 9.5], [9.5, 9.5], [9.5, 0.5]])
    hole = np.array([[3.5, 3.5], [3.5, 6.5], [6.5, 6.5], [6.5, 3.5]])
    got = np.zeros((12, 12), bool)
    got[fill_rings([outer, hole], (12, 12))] = True
    assert got.sum() == 81 - 9 and not got[5, 5] and got[2, 2]
