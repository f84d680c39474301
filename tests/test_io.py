import shutil
import tracemalloc

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_glandseg.errors import GlandsegError, ImageReadError
from napari_glandseg.io import (
    Pair,
    find_pairs,
    iter_image_files,
    labels_dtype,
    read_image,
    read_pair,
    write_labels,
)


def test_png_rgb_and_instance_mask(data_dir):
    img = read_image(data_dir / "glas/testA_5_crop.png")
    assert (img.kind, img.shape, img.rgb, img.data.dtype) == ("image", (256, 256, 3), True,
                                                              np.uint8)
    truth = read_image(data_dir / "glas/testA_5_crop_instances.png")
    assert truth.kind == "labels" and truth.data.dtype == np.uint16
    assert len(np.unique(truth.data)) == 9  # background + 8 glands


def test_mask_value_conventions(data_dir):
    wbc = read_image(data_dir / "wbc/dataset1_001_mask.png")  # 0/128/255 on disk
    assert wbc.kind == "labels" and sorted(np.unique(wbc.data)) == [0, 1, 2]
    em = read_image(data_dir / "isbi2012_em/0_crop_label.png")  # 0/255 on disk
    assert sorted(np.unique(em.data)) == [0, 1]
    raw = iio.imread(data_dir / "isbi2012_em/0_crop_label.png")
    np.testing.assert_array_equal(em.data, raw // 255)
    grey = read_image(data_dir / "isbi2012_em/0_crop.png")  # grey EM: an image, not a mask
    assert grey.kind == "image" and not grey.rgb and grey.shape == (256, 256)


def test_rgba_png_composited_over_white(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # opaque red-ish top half
    rgba[2:, :, 3] = 0  # transparent bottom half -> white
    iio.imwrite(tmp_path / "a.png", rgba)
    img = read_image(tmp_path / "a.png")
    assert img.shape == (4, 5, 3) and img.rgb
    assert img.data[0, 0].tolist() == [200, 0, 0]
    assert img.data[3, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize("ext", [".jpg", ".bmp"])
def test_jpeg_and_bmp(tmp_path, data_dir, ext):
    src = iio.imread(data_dir / "glas/train_1_crop.png")
    iio.imwrite(tmp_path / f"x{ext}", src)
    img = read_image(tmp_path / f"x{ext}")
    assert img.shape == (256, 256, 3) and img.kind == "image"
    tol = 20 if ext == ".jpg" else 0
    assert np.abs(img.data.astype(int) - src).mean() <= tol


def test_original_glas_anno_bmp_is_a_mask(tmp_path, data_dir):
    m = iio.imread(data_dir / "glas/train_1_crop_instances.png").astype(np.uint8)
    iio.imwrite(tmp_path / "train_1_anno.bmp", m)
    assert read_image(tmp_path / "train_1_anno.bmp").kind == "labels"


def test_tiff_16bit_multipage_and_resolution(tmp_path):
    rng = np.random.default_rng(0)
    grey16 = rng.integers(0, 65535, (3, 40, 50), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", grey16, photometric="minisblack",
                     resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    img = read_image(tmp_path / "stack.tif")
    assert img.kind == "image" and img.data.dtype == np.uint16 and img.shape == (3, 40, 50)
    np.testing.assert_array_equal(img.data, grey16)
    assert img.pixel_size_um == pytest.approx(0.25)
    data, kwargs, kind = img.to_layer_data()
    assert kind == "image" and kwargs["scale"] == (1.0, 0.25, 0.25)


def test_ome_tiff_pixel_size(tmp_path):
    rgb = np.zeros((30, 20, 3), np.uint8)
    tifffile.imwrite(tmp_path / "x.ome.tif", rgb, photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    img = read_image(tmp_path / "x.ome.tif")
    assert img.rgb and img.pixel_size_um == pytest.approx(0.5)


def test_svs_opens_lazily_as_multiscale(data_dir):
    import dask.array  # noqa: F401  (import cost is not part of the measurement)
    import imagecodecs  # noqa: F401
    import zarr  # noqa: F401

    path = data_dir / "wsi/cmu_small_region.svs"
    tracemalloc.start()
    img = read_image(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    full_bytes = 2967 * 2220 * 3
    assert img.multiscale and img.kind == "image" and img.rgb
    assert img.shape == (2967, 2220, 3)
    assert img.data[1].shape == (1484, 1110, 3)
    assert img.pixel_size_um == pytest.approx(0.499)
    assert img.metadata["aperio"]["AppMag"] == "20"
    assert peak < full_bytes / 10, f"opening read {peak} bytes of a {full_bytes}-byte slide"
    region = np.asarray(img.data[0][1000:1100, 1000:1100])
    assert region.shape == (100, 100, 3) and 50 < region.mean() < 250


def test_bad_files_named(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageReadError, match="broken.png"):
        read_image(tmp_path / "broken.png")
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ImageReadError, match="unsupported file type '.txt'"):
        read_image(tmp_path / "notes.txt")


def _dataset(tmp_path, data_dir, masks="masks"):
    (tmp_path / "images").mkdir(parents=True)
    (tmp_path / masks).mkdir()
    for stem in ("testA_5_crop", "train_1_crop"):
        shutil.copy(data_dir / f"glas/{stem}.png", tmp_path / "images" / f"{stem}.png")
        shutil.copy(data_dir / f"glas/{stem}_mask.png", tmp_path / masks / f"{stem}.png")
    return tmp_path


def test_find_pairs_layouts(tmp_path, data_dir):
    root = _dataset(tmp_path / "a", data_dir)
    pairs = find_pairs(root)
    assert [(p.image.name, p.mask.parent.name) for p in pairs] == [
        ("testA_5_crop.png", "masks"), ("train_1_crop.png", "masks")]
    # flat GlaS-style folder: name.png + name_mask.png / name_instances.png
    flat = find_pairs(data_dir / "glas", mask_folder="mask")
    assert [(p.image.name, p.mask.name) for p in flat] == [
        ("testA_5_crop.png", "testA_5_crop_mask.png"),
        ("train_1_crop.png", "train_1_crop_mask.png")]
    # a folder of datasets
    _dataset(tmp_path / "b" / "train", data_dir)
    _dataset(tmp_path / "b" / "testA", data_dir)
    assert len(find_pairs(tmp_path / "b")) == 4


def test_find_pairs_errors_and_images_without_masks(tmp_path, data_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(GlandsegError, match="no images found"):
        find_pairs(tmp_path / "empty")
    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(data_dir / "glas/train_1_crop.png", only / "a.png")
    assert find_pairs(only) == [Pair(only / "a.png", None)]


def test_mask_shape_mismatch_names_both_shapes(tmp_path, data_dir):
    iio.imwrite(tmp_path / "small_mask.png", np.zeros((10, 12), np.uint8))
    with pytest.raises(GlandsegError, match=r"\(10, 12\).*\(256, 256\)"):
        read_pair(Pair(data_dir / "glas/train_1_crop.png", tmp_path / "small_mask.png"))


@pytest.mark.parametrize("ext", [".tif", ".png"])
@pytest.mark.parametrize("top,dtype", [(7, np.uint8), (300, np.uint16), (70000, np.uint32)])
def test_write_labels_round_trip(tmp_path, ext, top, dtype):
    labels = np.zeros((20, 30), np.int64)
    labels[2:5, 3:9] = top
    labels[10:12, 10:12] = 1
    path = tmp_path / f"out_mask{ext}"
    if ext == ".png" and dtype == np.uint32:
        with pytest.raises(GlandsegError, match="PNG cannot hold"):
            write_labels(path, labels)
        return
    write_labels(path, labels)
    back = read_image(path)
    assert back.kind == "labels" and back.data.dtype == dtype
    np.testing.assert_array_equal(back.data, labels)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


def test_write_labels_refuses_overwrite_and_bad_input(tmp_path):
    p = write_labels(tmp_path / "a.tif", np.ones((3, 3), np.uint8))
    with pytest.raises(GlandsegError, match="exists"):
        write_labels(p, np.zeros((3, 3), np.uint8), overwrite=False)
    assert read_image(p, as_labels=True).data.max() == 1
    with pytest.raises(GlandsegError, match="dtype float"):
        write_labels(tmp_path / "b.tif", np.ones((3, 3)))
    with pytest.raises(GlandsegError, match="non-negative"):
        labels_dtype(np.array([-1, 2]))


def test_saved_labels_reopen_through_file_open_as_labels_at_their_scale(
        make_napari_viewer, tmp_path, monkeypatch):
    """Issue 23 item 9: napari's builtin reader also claims *.tif, so File > Open asked
    which reader to use and napari's (the default, or a remembered *.tif -> napari) gave an
    Image at scale 1. Labels saved with the plugin's writer now reopen, by napari's own
    choice, as Labels at their um/px and position; other TIFFs keep the user's choice."""
    import napari._qt.qt_viewer as qt_viewer
    from napari.settings import get_settings

    from napari_glandseg._napari import PLUGIN

    viewer = make_napari_viewer()
    prefs = get_settings().plugins
    prefs.extension2reader = {"*.tif": "napari"}  # the user once chose napari's reader
    labels = np.zeros((40, 60), np.uint8)
    labels[5:15, 5:25] = 1
    labels[20:30, 30:50] = 2
    layer = viewer.add_labels(labels, scale=(0.5, 0.5), translate=(10.0, 20.0))
    path = tmp_path / "objects [v2].tif"  # glob characters in the name are matched literally
    layer.save(str(path), plugin=PLUGIN)
    other = tmp_path / "other.tif"
    tifffile.imwrite(other, labels)

    def opened(**kw):
        before = len(viewer.layers)
        viewer.open(str(path), **kw)
        (back,) = viewer.layers[before:]
        return back

    for kw in ({"plugin": None}, {"plugin": PLUGIN}):  # File > Open is plugin=None
        back = opened(**kw)
        assert type(back).__name__ == "Labels", kw
        assert tuple(back.scale) == (0.5, 0.5) and tuple(back.translate) == (10.0, 20.0)
        np.testing.assert_array_equal(back.data, labels)
    (other_layer,) = viewer.open(str(other), plugin=None)  # the user's *.tif choice stands
    assert type(other_layer).__name__ == "Image"
    # the Qt File > Open path: no reader dialog for the saved file
    asked = []
    monkeypatch.setattr(qt_viewer, "handle_gui_reading", lambda *a, **k: asked.append(a))
    n = len(viewer.layers)
    viewer.window._qt_viewer._qt_open([str(path)], stack=False)
    assert asked == [] and type(viewer.layers[n]).__name__ == "Labels"
    # without any preference napari would ask; the saved file still needs no choice
    prefs.extension2reader = {k: v for k, v in prefs.extension2reader.items() if k != "*.tif"}
    assert type(opened(plugin=None)).__name__ == "Labels"


def test_remember_reader_keeps_the_users_choice_and_prunes(tmp_path, monkeypatch):
    pytest.importorskip("napari")
    import glob

    from napari.settings import get_settings

    import napari_glandseg._napari as hooks

    assert get_settings().config_path is None  # conftest: never the user's settings file
    prefs = get_settings().plugins
    monkeypatch.setattr(prefs, "extension2reader", dict(prefs.extension2reader))  # restored
    files = [tmp_path / f"{i}.tif" for i in range(4)]
    for f in files:
        f.write_bytes(b"")
    mine = str(files[0].resolve())
    prefs.extension2reader = {mine: "napari", "*.png": "napari-glandseg",
                              "/gone/x.tif": "napari-glandseg"}
    assert not hooks.remember_reader(files[0])  # the user's entry for that file stays
    monkeypatch.setattr(hooks, "REMEMBERED_FILES", 2)
    for f in files[1:]:
        assert hooks.remember_reader(f)
    kept = prefs.extension2reader
    assert kept[mine] == "napari" and kept["*.png"] == "napari-glandseg"
    assert "/gone/x.tif" not in kept  # a file that no longer exists
    assert [k for k in kept if k.startswith(glob.escape(str(tmp_path.resolve())))
            and kept[k] == "napari-glandseg"] == [str(f.resolve()) for f in files[2:]]


def test_iter_image_files(tmp_path, data_dir):
    files = iter_image_files([data_dir / "glas"])
    assert [f.name for f in files] == ["testA_5_crop.png", "train_1_crop.png"]
    assert iter_image_files([str(data_dir / "wbc" / "*.png")])[0].name == "dataset1_001.png"
    with pytest.raises(GlandsegError, match="nothing-here"):
        iter_image_files([tmp_path / "nothing-here*.png"])


@pytest.mark.parametrize("values, expected", [
    ([255], [1]),  # all foreground, saved as 0/255
    ([1], [1]),  # all foreground, saved as 0/1
    ([128, 255], [1, 2]),  # a WBC class mask without background
    ([0, 128, 255], [0, 1, 2]),
    ([0, 85, 170, 255], [0, 1, 2, 3]),
    ([0, 100, 255], [0, 1, 2]),  # uneven levels: their order, 0 stays background
    ([0, 3, 9], [0, 3, 9]),  # instance ids are kept
])
def test_mask_levels_keep_background_as_zero(tmp_path, values, expected):
    # defect 3: an all-255 mask read as all background; {128, 255} became {0, 1}
    mask = np.repeat(np.array(values, np.uint8), 4)[None].repeat(3, 0)
    iio.imwrite(tmp_path / "m_mask.png", mask)
    back = read_image(tmp_path / "m_mask.png")
    assert back.kind == "labels"
    assert sorted(np.unique(back.data).tolist()) == expected
    np.testing.assert_array_equal(back.data[0, ::4], expected)


def test_sixteen_bit_binary_mask(tmp_path):
    mask = np.zeros((4, 6), np.uint16)
    mask[1:3, 2:5] = 65535
    tifffile.imwrite(tmp_path / "m_mask.tif", mask)
    np.testing.assert_array_equal(read_image(tmp_path / "m_mask.tif").data, mask // 65535)


def test_an_all_foreground_mask_pairs_with_its_image(tmp_path, data_dir):
    iio.imwrite(tmp_path / "full_mask.png", np.full((256, 256), 255, np.uint8))
    _, mask = read_pair(Pair(data_dir / "glas/train_1_crop.png", tmp_path / "full_mask.png"))
    assert mask.data.min() == mask.data.max() == 1


def test_a_tiff_header_that_cannot_be_true_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    with tifffile.TiffFile(path, mode="r+") as tif:
        for tag in ("ImageWidth", "ImageLength", "RowsPerStrip"):
            tif.pages[0].tags[tag].overwrite(100000)
    with pytest.raises(ImageReadError, match=r"huge.tif: the header declares 100000 x 100000"):
        read_image(path)


def test_lazy_labels_are_written_tile_by_tile(tmp_path):
    import zarr

    labels = zarr.create_array(store={}, shape=(700, 900), chunks=(256, 256), dtype="uint32")
    labels[100:650, 50:800] = 70000
    labels[0, 0] = 3
    write_labels(tmp_path / "big.tif", labels, pixel_size_um=0.5)
    back = read_image(tmp_path / "big.tif", as_labels=True)
    assert back.data.dtype == np.uint32 and back.pixel_size_um == pytest.approx(0.5)
    np.testing.assert_array_equal(back.data, labels[:])
