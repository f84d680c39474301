"""bioimage.io model packages: export validates offline, bioimageio.core reproduces the test
output, import round-trips exactly, and unsafe or unsupported packages are refused."""

import io
import socket
import zipfile
from hashlib import sha256
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("bioimageio.spec")

from napari_glandseg import cli  # noqa: E402
from napari_glandseg.bioimageio import export_bioimageio, import_bioimageio  # noqa: E402
from napari_glandseg.errors import GlandsegError  # noqa: E402
from napari_glandseg.inference import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from napari_glandseg.models import (  # noqa: E402
    ModelCard,
    build_model,
    import_model,
    list_models,
    load_model,
    save_checkpoint,
)

TILE, OVERLAP = 64, 0.25  # -> halo 8


def _tiny(tmp_path, name="tiny", arch="base_cnn", in_channels=3, num_classes=3, **card):
    kw = {"base_cnn": {"widths": [4, 8]}, "unet": {"features": [4, 4, 8, 8, 8, 4]}}[arch]
    torch.manual_seed(0)
    net = build_model(arch, in_channels, num_classes, **kw).eval()
    card = ModelCard(name=name, architecture=arch, in_channels=in_channels,
                     num_classes=num_classes, arch_kwargs=kw, **card)
    import_model(save_checkpoint(tmp_path / f"{name}.safetensors", net, card))
    return net


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """A tiny 3-class Base CNN (ImageNet normalisation) exported once for this module."""
    tmp = tmp_path_factory.mktemp("bioimageio")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GLANDSEG_MODELS_DIR", str(tmp / "store"))
        net = _tiny(tmp, class_names=["background", "interior", "boundary"],
                    pixel_size_um=0.62, description="tiny gland model for tests",
                    training_data="GlaS train split", data_licence="GlaS: research use only",
                    licence="MIT")
        path = export_bioimageio("tiny", tmp / "tiny.zip", tile_size=TILE, overlap=OVERLAP)
    return path, net


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _rdf(path) -> dict:
    with zipfile.ZipFile(path) as z:
        return yaml.safe_load(z.read("rdf.yaml"))


def _npy(path, member) -> np.ndarray:
    with zipfile.ZipFile(path) as z:
        return np.load(io.BytesIO(z.read(member)))


def _rewrite(src, dest, edit=None, files=None) -> Path:
    """A copy of a package with its rdf edited and members replaced (hashes updated)."""
    files = dict(files or {})
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    rdf = yaml.safe_load(members["rdf.yaml"])
    members.update(files)
    for w in rdf["weights"].values():
        if w and w["source"] in files:
            w["sha256"] = sha256(files[w["source"]]).hexdigest()
    if edit:
        edit(rdf)
    members["rdf.yaml"] = yaml.safe_dump(rdf).encode()
    with zipfile.ZipFile(dest, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    return Path(dest)


def test_package_validates_offline_and_describes_the_model(package, offline):
    from bioimageio.spec import load_model_description

    path, net = package
    descr = load_model_description(path, perform_io_checks=True)  # hashes every file
    assert descr.validation_summary.status == "valid-format", \
        descr.validation_summary.format_md()
    rdf = _rdf(path)
    assert rdf["format_version"].startswith("0.5")
    assert rdf["license"] == "MIT" and rdf["description"] == "tiny gland model for tests"
    assert rdf["cite"][0]["doi"] == "10.1016/j.media.2016.08.008"  # GlaS, from the card's text
    assert rdf["training_data"]["description"] == "GlaS train split"
    assert rdf["config"]["napari_glandseg"]["card"]["name"] == "tiny"
    (inp,), (out,) = rdf["inputs"], rdf["outputs"]
    y_in, y_out = inp["axes"][2], out["axes"][2]
    assert y_in["size"] == {"min": 18, "step": 2}  # stride 2; > 2 x halo
    assert y_in["scale"] == pytest.approx(0.62) and y_in["unit"] == "micrometer"
    assert y_out["halo"] == 8 and y_out["size"]["axis_id"] == "y"
    assert out["axes"][1]["channel_names"] == ["background", "interior", "boundary"]
    fixed = [p for p in inp["preprocessing"] if p["id"] == "fixed_zero_mean_unit_variance"][0]
    np.testing.assert_allclose(fixed["kwargs"]["mean"], IMAGENET_MEAN * 255, rtol=1e-6)
    np.testing.assert_allclose(fixed["kwargs"]["std"], IMAGENET_STD * 255, rtol=1e-6)
    assert [p["id"] for p in out["postprocessing"]][0] == "softmax"
    arch = rdf["weights"]["pytorch_state_dict"]["architecture"]
    assert arch["callable"] == "BaseCNN" and arch["kwargs"]["widths"] == [4, 8]
    assert rdf["weights"]["torchscript"]["parent"] == "pytorch_state_dict"
    from imageio.v3 import imread

    cover = imread(io.BytesIO(zipfile.ZipFile(path).read(rdf["covers"][0]["source"])))
    assert cover.shape == (64, 128, 3)  # input | input with the predicted classes

    # the test output is the model's softmax on the ImageNet-normalised test input
    x = _npy(path, "test_input.npy")
    expected = _npy(path, "test_output.npy")
    assert x.shape == (1, 3, 64, 64) and x.max() > 1  # a tile of the bundled sample, 0..255
    norm = (x[0].transpose(1, 2, 0) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    with torch.no_grad():
        probs = torch.softmax(net(torch.from_numpy(norm.transpose(2, 0, 1)[None].astype(
            np.float32))), 1).numpy()
    np.testing.assert_allclose(expected, probs, atol=1e-5)


def test_bioimageio_core_reproduces_test_output(package, offline):
    from bioimageio.core import test_model

    path, _ = package
    summary = test_model(path)  # both weight formats, test tensors and size parametrisation
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details
              if d.status == "failed"]
    assert summary.status == "passed", failed
    names = " ".join(d.name for d in summary.details)
    assert "Reproduce test outputs from test inputs (pytorch_state_dict)" in names
    assert "Reproduce test outputs from test inputs (torchscript)" in names


def test_import_round_trip_gives_identical_outputs(package, offline):
    import napari_glandseg

    path, net = package
    entry = napari_glandseg.import_bioimageio(path, name="back")  # the public API
    assert entry.source == "user" and entry.card.name == "back"
    card = load_model("back").card
    assert card.class_names == ["background", "interior", "boundary"]
    assert (card.normalization, card.pixel_size_um, card.licence) == ("imagenet", 0.62, "MIT")
    x = torch.randn(2, 3, 40, 24)
    with torch.no_grad():
        assert torch.equal(load_model("back").net(x), net(x))
    with pytest.raises(GlandsegError, match="already in the store"):
        import_bioimageio(path, name="back")


def test_monai_unet_by_import_path_round_trips_without_our_card(tmp_path, offline):
    """A U-Net is MONAI's BasicUNet by import path; an rdf without our card (as another tool
    would write it) still imports, with a card derived from the rdf."""
    net = _tiny(tmp_path, "em", arch="unet", in_channels=1, num_classes=1,
                class_names=["membrane", "cell"], pixel_size_um=0.004,
                normalization="percentile", licence="CC-BY-4.0")
    path = export_bioimageio("em", tmp_path / "em.zip", sample=np.random.default_rng(0)
                             .integers(0, 255, (40, 50), dtype=np.uint8),
                             tile_size=TILE, overlap=OVERLAP, torchscript=False)
    rdf = _rdf(path)
    arch = rdf["weights"]["pytorch_state_dict"]["architecture"]
    assert (arch["import_from"], arch["callable"]) == ("monai.networks.nets", "BasicUNet")
    assert arch["kwargs"]["features"] == [4, 4, 8, 8, 8, 4]
    assert [p["id"] for p in rdf["inputs"][0]["preprocessing"]][1] == "scale_range"
    assert rdf["outputs"][0]["postprocessing"][0]["id"] == "sigmoid"
    assert "torchscript" not in rdf["weights"] or not rdf["weights"]["torchscript"]
    # the state dict is MONAI's own (no wrapper prefix): MONAI loads it directly
    from monai.networks.nets import BasicUNet

    with zipfile.ZipFile(path) as z:
        state = torch.load(io.BytesIO(z.read("weights.pt")), weights_only=True)
    monai_net = BasicUNet(**arch["kwargs"]).eval()
    monai_net.load_state_dict(state)

    def drop_card(r):
        del r["config"]["napari_glandseg"]

    foreign = _rewrite(path, tmp_path / "foreign.zip", edit=drop_card)
    entry = import_bioimageio(foreign)
    card = entry.card
    assert (card.architecture, card.arch_kwargs) == ("unet", {"features": [4, 4, 8, 8, 8, 4],
                                                              "dropout": 0.0})
    assert (card.normalization, card.pixel_size_um, card.class_names) == (
        "percentile", 0.004, ["background", "cell"])
    x = torch.randn(1, 1, 32, 48)
    with torch.no_grad():
        assert torch.equal(load_model(entry.name).net(x), net(x))
        assert torch.equal(monai_net(x), net(x))


class _RunsCode:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):  # unpickling this would create the sentinel file
        return (open, (str(self.sentinel), "w"))


def test_unsafe_and_unsupported_packages_are_refused(package, tmp_path, offline):
    path, _ = package
    sentinel = tmp_path / "pwned"
    evil = io.BytesIO()
    torch.save({"head.weight": torch.zeros(1), "x": _RunsCode(sentinel)}, evil)
    cases = {
        "pickle": (_rewrite(path, tmp_path / "a.zip", files={"weights.pt": evil.getvalue()}),
                   "refused: this pickle holds objects"),
        "code": (_rewrite(path, tmp_path / "b.zip",
                          edit=lambda r: r["config"].pop("napari_glandseg")),
                 "code in the package .* never runs"),
        "tampered": (_rewrite(path, tmp_path / "c.zip", edit=lambda r: r["weights"][
            "pytorch_state_dict"]["architecture"]["kwargs"].update(widths=[4, 16])),
                     "does not match its napari-glandseg card"),
        "torchscript only": (_rewrite(path, tmp_path / "d.zip", edit=lambda r: r[
            "weights"].pop("pytorch_state_dict") and r["weights"]["torchscript"].pop("parent")),
                             "torchscript weights only; .* pytorch_state_dict"),
        "hash": (_rewrite(path, tmp_path / "e.zip", edit=lambda r: r["weights"][
            "pytorch_state_dict"].update(sha256="0" * 64)), "do not match their SHA-256"),
    }
    for what, (bad, message) in cases.items():
        with pytest.raises(GlandsegError, match=message):
            import_bioimageio(bad)
        assert not sentinel.exists(), what
    assert not [m for m in list_models() if m.source == "user"]
    not_zip = tmp_path / "x.zip"
    not_zip.write_text("hello")
    with pytest.raises(GlandsegError, match="not a bioimage.io package"):
        import_bioimageio(not_zip)


def test_foreign_monai_unet_with_other_settings_is_refused(package, tmp_path):
    path, _ = package

    def monai_defaults(r):
        r["config"].pop("napari_glandseg")
        r["weights"].pop("torchscript")
        r["weights"]["pytorch_state_dict"]["architecture"] = {
            "import_from": "monai.networks.nets", "callable": "BasicUNet",
            "kwargs": {"spatial_dims": 2, "in_channels": 3, "out_channels": 3}}

    bad = _rewrite(path, tmp_path / "m.zip", edit=monai_defaults)
    with pytest.raises(GlandsegError, match="norm 'batch' and act 'relu'"):
        import_bioimageio(bad)

    def other_library(r):
        monai_defaults(r)
        r["weights"]["pytorch_state_dict"]["architecture"].update(
            import_from="evil.nets", callable="Net")

    with pytest.raises(GlandsegError, match="evil.nets.Net is not one napari-glandseg builds"):
        import_bioimageio(_rewrite(path, tmp_path / "n.zip", edit=other_library))

    def other_weights(r):  # a buildable U-Net, but the weights are the Base CNN's
        monai_defaults(r)
        r["weights"]["pytorch_state_dict"]["architecture"]["kwargs"].update(
            norm="batch", act="relu")

    with pytest.raises(GlandsegError, match=r"w.zip:weights.pt: weights do not match "
                                            r"architecture 'unet'.*missing"):
        import_bioimageio(_rewrite(path, tmp_path / "w.zip", edit=other_weights))
    assert not [m for m in list_models() if m.source == "user"]


def test_export_refuses_bad_destination(package, tmp_path):
    path, _ = package
    _tiny(tmp_path)
    with pytest.raises(GlandsegError, match="is a .zip file"):
        export_bioimageio("tiny", tmp_path / "tiny.safetensors")
    with pytest.raises(GlandsegError, match="exists"):
        export_bioimageio("tiny", path)
    with pytest.raises(GlandsegError, match="no model named"):
        export_bioimageio("nope", tmp_path / "nope.zip")
    with pytest.raises(GlandsegError, match="uint16; .* give an 8-bit sample"):
        export_bioimageio("tiny", tmp_path / "t.zip", sample=np.ones((40, 40, 3), np.uint16))
    assert not (tmp_path / "t.zip").exists()


def test_export_generator_reports_progress_and_cancels_cleanly(tmp_path):
    from napari_glandseg.bioimageio import iter_export_bioimageio

    _tiny(tmp_path)
    out = tmp_path / "out" / "c.zip"
    gen = iter_export_bioimageio("tiny", out, tile_size=TILE, torchscript=False)
    steps = [next(gen), next(gen), next(gen)]
    assert [p.done for p in steps] == [0, 1, 2] and steps[-1].total == 4
    gen.close()  # what the widget's worker.quit() does
    assert not out.exists() and not list(out.parent.glob("*"))


def test_cli_export_and_import(tmp_path, capsys):
    _tiny(tmp_path, num_classes=1, class_names=["background", "gland"])
    out = tmp_path / "pkg.zip"
    assert cli.main(["models", "export", "tiny", str(out), "--bioimageio", "--tile", "64",
                     "--author", "A. Pathologist", "--author", "B. Engineer"]) == 0
    assert _rdf(out)["outputs"][0]["axes"][2]["halo"] == 8
    assert [a["name"] for a in _rdf(out)["authors"]] == ["A. Pathologist", "B. Engineer"]
    assert cli.main(["models", "export", "tiny", str(out), "--bioimageio"]) == 2
    assert "exists" in capsys.readouterr().err
    assert cli.main(["models", "import", str(out), "--as", "again"]) == 0
    assert "imported again" in capsys.readouterr().out
    assert load_model("again").card.class_names == ["background", "gland"]
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip
    assert cli.main(["models", "import", str(bad)]) == 2
    assert "not a bioimage.io package" in capsys.readouterr().err


def test_model_widget_exports_and_imports_packages(make_napari_viewer, qtbot, tmp_path,
                                                   notes):
    _tiny(tmp_path, num_classes=1, class_names=["background", "gland"])
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-glandseg", "Model")
    out = tmp_path / "w.zip"
    assert w.export("tiny", out)  # the .zip chooses the bioimage.io format, in a worker
    with qtbot.waitSignal(w.export_worker.finished, timeout=60_000):
        pass
    assert notes[-1] == ("info", f"exported tiny to {out}")
    assert _rdf(out)["weights"]["pytorch_state_dict"]["architecture"]["callable"] == "BaseCNN"
    assert w.import_file(out, name="from-zip")
    assert w.model_box.currentData() == "from-zip"
    assert load_model("from-zip").card.class_names == ["background", "gland"]
    assert not w.import_file(out, name="from-zip")  # exists: a notification, no traceback
    assert notes[-1][0] == "error" and "already in the store" in notes[-1][1]


def test_the_package_says_when_images_must_be_resampled():
    from napari_glandseg.bioimageio import _documentation
    from napari_glandseg.models import ModelCard

    entry = None  # not read by the documentation
    working = ModelCard(name="g", architecture="unet", in_channels=3, num_classes=3,
                        pixel_size_um=1.24, data_pixel_size_um=0.62)
    text = _documentation(working, entry, 512, 0.25, 64, True)
    assert "1.24 um/px" in text and "resample such images by 0.5" in text
    same = ModelCard(name="n", architecture="unet", in_channels=3, num_classes=3,
                     pixel_size_um=0.25, data_pixel_size_um=0.25)
    assert "resample" not in _documentation(same, entry, 512, 0.25, 64, True)
