import importlib
import subprocess
import sys

import numpy as np
import pytest
from npe2 import PluginManifest

from napari_glandseg import _napari

CORE = ["napari_glandseg", "napari_glandseg.io", "napari_glandseg.models", "napari_glandseg.cli",
        "napari_glandseg._napari", "napari_glandseg.errors", "napari_glandseg.inference"]


def _manifest():
    return PluginManifest.from_distribution("napari-glandseg")


def test_manifest_validates_and_every_python_name_imports():
    manifest = _manifest()
    assert manifest.name == "napari-glandseg"
    for command in manifest.contributions.commands:
        module, attr = command.python_name.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), command.python_name
    result = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-glandseg"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_core_imports_without_qt_or_napari():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in CORE)
            + "import napari_glandseg as g; g.load_model; g.list_models; g.segment\n"
            + "from napari_glandseg import postprocess, evaluate, train, segment\n"
            + "assert all(callable(f) for f in (postprocess, evaluate, train, segment))\n"
            + "bad = [m for m in ('qtpy', 'PyQt6', 'PyQt5', 'PySide6', 'napari', 'magicgui')"
            + " if m in sys.modules]\nprint(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_reader_accepts_images_only(data_dir):
    assert _napari.get_reader(str(data_dir / "CREDITS.md")) is None
    reader = _napari.get_reader(str(data_dir / "glas/testA_5_crop.png"))
    layers = reader([str(data_dir / "glas/testA_5_crop.png"),
                     str(data_dir / "glas/testA_5_crop_mask.png")])
    assert [(kind, kw["name"]) for _, kw, kind in layers] == [
        ("image", "testA_5_crop"), ("labels", "testA_5_crop_mask")]
    assert layers[0][1]["rgb"] is True


def test_writer_hook_writes_atomically(tmp_path):
    labels = np.zeros((8, 8), np.uint16)
    labels[2:4, 2:4] = 5
    out = _napari.write_labels_layer(str(tmp_path / "l.tif"), labels,
                                     {"metadata": {"pixel_size_um": 0.5}})
    from napari_glandseg.io import read_image

    back = read_image(out[0], as_labels=True)
    assert back.pixel_size_um == pytest.approx(0.5) and back.data[3, 3] == 5


@pytest.mark.parametrize("sample,shape,n_objects", [
    ("sample_glas", (522, 775, 3), 22), ("sample_monuseg", (256, 256, 3), 41),
    ("sample_em", (256, 256), 45), ("sample_wbc", (120, 120, 3), 2)])
def test_sample_data_has_image_and_truth(sample, shape, n_objects):
    (img, img_kw, img_kind), (lab, lab_kw, lab_kind) = getattr(_napari, sample)()
    assert img_kind == "image" and img.shape == shape
    assert lab_kind == "labels" and lab_kw["name"].endswith("[truth]")
    assert len(np.unique(lab)) - 1 == n_objects
    assert "research use" in img_kw["metadata"]["credit"]
