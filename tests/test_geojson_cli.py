"""``glandseg segment --geojson`` writes the objects for QuPath beside the labels."""

import json
import shutil

import numpy as np
import pytest

from napari_glandseg import cli


def test_segment_geojson_writes_objects_in_level0_pixels(tmp_path, data_dir, fg_model_factory,
                                                         capsys):
    model = fg_model_factory("cli-geo")
    shutil.copy(data_dir / "glas/train_1_crop.png", tmp_path / "a.png")
    out = tmp_path / "out"
    code = cli.main(["segment", str(tmp_path / "a.png"), "--model", model, "--out", str(out),
                     "--tile", "128", "--min-size", "0", "--geojson", "--quiet"])
    assert code == 0, capsys.readouterr()
    fc = json.loads((out / "a_objects.geojson").read_text(encoding="utf-8"))
    (f,) = fc["features"]  # the model calls everything foreground: one object
    xy = np.asarray(f["geometry"]["coordinates"][0])
    assert xy.min(0) == pytest.approx([0, 0], abs=0.5)
    assert xy.max(0) == pytest.approx([256, 256], abs=0.5)
    assert f["properties"]["classification"]["name"] == "cli-geo"
    assert sorted(p.name for p in out.iterdir()) == ["a_labels.tif", "a_objects.geojson"]
    assert cli.main(["segment", str(tmp_path / "a.png"), "--model", model, "--out",
                     str(out / "z"), "--geojson", "--ome-zarr", "--quiet"]) == 2
    assert "--geojson is for per-file runs" in capsys.readouterr().err
