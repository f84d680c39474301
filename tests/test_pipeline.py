"""The per-file pipeline and the command line's segment/evaluate/models: one test per defect
of issue #14 that lives there (numbers in the test names' comments)."""

import json
import os
import shutil
import stat
from dataclasses import replace

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_glandseg import cli
from napari_glandseg.errors import GlandsegError
from napari_glandseg.inference import SegmentParams
from napari_glandseg.io import read_image, write_labels
from napari_glandseg.models import load_model
from napari_glandseg.pipeline import FileParams, postprocess_for, segment_file


@pytest.fixture
def fg_model(fg_model_factory):
    return fg_model_factory("pipe-fg")


@pytest.fixture
def png(tmp_path, data_dir):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(data_dir / "glas/train_1_crop.png", d / "a.png")
    return d / "a.png"


def _seg(*args):
    return cli.main(["segment", *map(str, args), "--quiet", "--tile", "128"])


def test_large_result_probabilities_are_written_before_the_store_goes(tmp_path, png, fg_model,
                                                                      monkeypatch):
    # defect 1: the zarr store (slides) was deleted before the probabilities were read
    import napari_glandseg.inference as inf

    monkeypatch.setattr(inf, "LARGE_PIXELS", 1000)  # this PNG takes the slide path
    out = tmp_path / "out"
    assert _seg(png, "--model", fg_model, "--out", out, "--probabilities") == 0
    probs = tifffile.imread(out / "a_probabilities.tif")
    assert probs.shape == (1, 256, 256) and probs.dtype == np.float32
    assert probs.min() > 0.99  # the model says foreground (logit 10) everywhere
    assert read_image(out / "a_labels.tif", as_labels=True).data.min() == 1
    assert sorted(p.name for p in out.iterdir()) == ["a_labels.tif", "a_probabilities.tif"]


def test_nan_pixels_fail_the_file_with_its_name(tmp_path, fg_model, capsys):
    # defect 2
    img = np.random.default_rng(0).random((64, 64, 3)).astype(np.float32)
    img[5, 5, 0] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", img, photometric="rgb")
    out = tmp_path / "out"
    assert _seg(tmp_path / "nan.tif", "--model", fg_model, "--out", out) == 1
    text = capsys.readouterr()
    assert "nan.tif" in text.out and "1 NaN or infinite pixel" in text.out
    assert "Traceback" not in text.err
    assert not (out / "nan_labels.tif").exists()


def test_min_size_and_card_postprocessing_apply_without_split(tmp_path, png, fg_model,
                                                             fg_model_factory):
    # defect 6: --min-size (and the card's settings) were ignored unless --split was given
    out = tmp_path / "out"
    assert _seg(png, "--model", fg_model, "--out", out) == 0
    assert read_image(out / "a_labels.tif", as_labels=True).data.max() == 1
    assert _seg(png, "--model", fg_model, "--out", out, "--min-size", "70000",
                "--overwrite") == 0
    assert read_image(out / "a_labels.tif", as_labels=True).data.max() == 0
    big = fg_model_factory("pipe-min", postprocess={"min_size": 70000})
    assert _seg(png, "--model", big, "--out", tmp_path / "o2") == 0
    assert read_image(tmp_path / "o2/a_labels.tif", as_labels=True).data.max() == 0


def test_a_bad_file_does_not_stop_the_batch(tmp_path, png, fg_model, capsys):
    # defect 7: a TIFF whose header declares 100000 x 100000 pixels
    bad = png.parent / "huge.tif"
    tifffile.imwrite(bad, np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    with tifffile.TiffFile(bad, mode="r+") as tif:
        for tag in ("ImageWidth", "ImageLength", "RowsPerStrip"):
            tif.pages[0].tags[tag].overwrite(100000)
    (png.parent / "zz.png").write_bytes(b"not a png")
    shutil.copy(png, png.parent / "b.png")
    out = tmp_path / "out"
    assert _seg(png.parent, "--model", fg_model, "--out", out) == 1
    text = capsys.readouterr()
    assert "2 segmented, 0 skipped, 2 failed" in text.out
    assert "huge.tif: the header declares 100000 x 100000" in text.out
    assert "zz.png" in text.out and "Traceback" not in text.err
    assert sorted(p.name for p in out.iterdir()) == ["a_labels.tif", "b_labels.tif"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_output_folder_is_one_line(tmp_path, png, fg_model, capsys):
    # defect 7
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert _seg(png, "--model", fg_model, "--out", locked / "sub") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "locked/sub" in err and "Traceback" not in err
        assert _seg(png, "--model", fg_model, "--out", locked) == 2
        assert "cannot write to output folder" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_unwritable_output_is_one_line_even_as_root(tmp_path, png, fg_model, capsys):
    # defect 7: --out names an existing file, not a folder
    (tmp_path / "file").write_text("x")
    assert _seg(png, "--model", fg_model, "--out", tmp_path / "file") == 2
    err = capsys.readouterr().err
    assert err.startswith("glandseg: error: cannot create output folder") and \
        err.count("\n") == 1


def test_bad_config_files_are_one_line(tmp_path, capsys):
    # defect 7: a bad TOML file
    (tmp_path / "data").mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text("lr = = 3\n")
    assert cli.main(["train", "--config", str(cfg), "--data", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert "c.toml: not valid TOML" in err and err.count("\n") == 1


def test_unexpected_errors_are_one_line(monkeypatch, capsys):
    # defect 7: whatever goes wrong, the command line prints one line, not a traceback
    def boom(args):
        raise TypeError("'<' not supported between instances of 'str' and 'float'")

    monkeypatch.setattr(cli, "_models", boom)
    monkeypatch.delenv("GLANDSEG_DEBUG", raising=False)
    assert cli.main(["models"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("glandseg: internal error: TypeError") and err.count("\n") == 1


def test_a_failed_write_leaves_no_truncated_file_and_reruns(tmp_path, png, fg_model,
                                                           monkeypatch):
    # defect 8: a full disk left a truncated _probabilities.tif, and the rerun skipped it
    real = tifffile.imwrite

    def disk_full(path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"II*\x00 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", disk_full)
    out = tmp_path / "out"
    assert _seg(png, "--model", fg_model, "--out", out, "--probabilities") == 1
    assert list(out.iterdir()) == []  # nothing half-written, no labels: not "done"
    monkeypatch.setattr(tifffile, "imwrite", real)
    assert _seg(png, "--model", fg_model, "--out", out, "--probabilities") == 0
    assert tifffile.imread(out / "a_probabilities.tif").shape == (1, 256, 256)


def test_outputs_respect_the_umask(tmp_path, png, fg_model):
    # defect 10: outputs were 0600 whatever the umask
    old = os.umask(0o022)
    try:
        out = tmp_path / "out"
        assert _seg(png, "--model", fg_model, "--out", out, "--probabilities",
                    "--objects-csv") == 0
        os.umask(0o027)
        path = write_labels(tmp_path / "x.tif", np.ones((3, 3), np.uint8))
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == {"a_labels.tif": 0o644, "a_probabilities.tif": 0o644,
                     "a_objects.csv": 0o644}
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_evaluate_reports_images_without_a_partner(tmp_path, data_dir, capsys):
    # defect 11
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir()
    truth.mkdir()
    t = read_image(data_dir / "glas/testA_5_crop_instances.png").data
    for stem in ("a", "b"):
        write_labels(truth / f"{stem}.png", t)
    write_labels(pred / "a_labels.tif", t)
    write_labels(pred / "c_labels.tif", t)
    assert cli.main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--quiet",
                     "--json", str(tmp_path / "s.json"), "--no-hausdorff"]) == 0
    text = capsys.readouterr()
    assert "1 ground truth without a prediction: b.png" in text.err
    assert "1 prediction without ground truth: c_labels.tif" in text.err
    assert "not evaluated: 1 without a prediction, 1 without ground truth" in text.out
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["unpaired"] == {"no_prediction": ["b.png"], "no_truth": ["c_labels.tif"]}


def test_a_file_named_like_a_model_does_not_hide_it(tmp_path, png, fg_model, monkeypatch):
    # defect 16
    monkeypatch.chdir(tmp_path)
    (tmp_path / fg_model).write_text("my notes about this model")
    assert load_model(fg_model).card.name == fg_model
    assert _seg(png, "--model", fg_model, "--out", tmp_path / "out") == 0


def test_pixel_size_for_files_that_do_not_state_it(tmp_path, png, fg_model):
    out = tmp_path / "out"
    assert _seg(png, "--model", fg_model, "--out", out, "--pixel-size", "0.5",
                "--objects-csv") == 0
    assert read_image(out / "a_labels.tif", as_labels=True).pixel_size_um == pytest.approx(0.5)
    table = pd.read_csv(out / "a_objects.csv")
    assert table["area_um2"].tolist() == [256 * 256 * 0.25]
    assert _seg(png, "--model", fg_model, "--out", out, "--pixel-size", "-1") == 2


def test_pixel_size_rescales_to_the_models_scale(png, fg_model_factory):
    model = load_model(fg_model_factory("pipe-scale", pixel_size_um=1.0))
    res = segment_file(png, model, FileParams(segment=SegmentParams(tile_size=64),
                                              pixel_size_um=0.5))
    assert res.segment.info["scale"] == 0.5 and res.labels.shape == (256, 256)
    assert res.metadata()["pixel_size_um"] == 0.5 and res.metadata()["source_path"] == str(png)


def test_class_models_keep_their_classes(tmp_path):
    # a class model (not interior/boundary) is cleaned, not turned into object numbers
    import torch

    from napari_glandseg.models import Model, ModelCard

    class Halves(torch.nn.Module):  # class 1 on the left third, class 2 on the rest
        def forward(self, x):
            out = torch.zeros(x.shape[0], 3, *x.shape[-2:])
            w = x.shape[-1]
            out[:, 1, :, : w // 3] = 10
            out[:, 2, :, w // 3:] = 10
            return out

    card = ModelCard(name="halves", architecture="unet", in_channels=3, num_classes=3,
                     postprocess={"min_size": 10, "fill_holes": True})
    res = segment_file(np.zeros((40, 60, 3), np.uint8), Model(Halves(), card),
                       FileParams(segment=SegmentParams(tile_size=64), objects_csv=True))
    assert res.labels.dtype == np.uint8 and sorted(np.unique(res.labels).tolist()) == [1, 2]
    assert (res.labels[:, :20] == 1).all() and (res.labels[:, 20:] == 2).all()
    # the two parts touch: one object, of its majority class
    assert res.table["class"].tolist() == [2] and res.table["area"].tolist() == [40 * 60]


def test_postprocess_for_merges_card_and_overrides(fg_model):
    card = load_model(fg_model).card
    assert postprocess_for(card) is None
    p = postprocess_for(card, min_size=5)
    assert p.min_size == 5 and p.split.value == "none"
    with pytest.raises(GlandsegError, match="pixel size"):
        FileParams(pixel_size_um=float("nan"))
    with pytest.raises(GlandsegError, match="min_size"):
        postprocess_for(card, min_size=-1)


def test_mask_on_disk_conventions_round_trip(tmp_path):
    # defect 3 through the file: an all-255 mask and a WBC mask without background
    iio.imwrite(tmp_path / "all_mask.png", np.full((8, 8), 255, np.uint8))
    assert read_image(tmp_path / "all_mask.png").data.min() == 1
    wbc = np.full((8, 8), 128, np.uint8)
    wbc[:4] = 255
    iio.imwrite(tmp_path / "wbc_mask.png", wbc)
    assert sorted(np.unique(read_image(tmp_path / "wbc_mask.png").data)) == [1, 2]


def test_the_documented_api_is_exported():
    import napari_glandseg

    for name in ("iter_train", "iter_evaluate_dataset", "TrainingPair", "PostprocessParams",
                 "segment_file", "iter_segment_file", "FileParams", "check_model_name"):
        assert name in napari_glandseg.__all__
        assert getattr(napari_glandseg, name).__name__ == name


def _blobs(shape=(300, 340), n=40, seed=0):
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, np.uint8)
    for _ in range(n):
        r = int(rng.integers(3, 10))
        mask[disk(tuple(rng.integers(r, np.array(shape) - r)), r, shape=shape)] = 1
    mask[150:153, 150:153] = 1  # a tiny object min_size removes
    return mask


def _partition(labels):
    return sorted(tuple(np.flatnonzero(labels == i)) for i in np.unique(labels) if i)


def test_window_by_window_post_processing_matches_the_whole_image():
    from napari_glandseg.postprocessing import (
        PostprocessParams,
        iter_postprocess_windows,
        postprocess,
    )
    from napari_glandseg.progress import run_to_end

    mask = _blobs()
    params = PostprocessParams(split="none", min_size=20)
    whole = postprocess(mask, params)
    dst = np.zeros(mask.shape, np.uint32)
    n, table = run_to_end(iter_postprocess_windows(mask, dst, params, window=64, halo=32))
    assert n == whole.max() == len(table)
    assert _partition(dst) == _partition(whole)
    assert sorted(table["area"]) == sorted(np.bincount(whole.ravel())[1:])


def test_a_slide_sized_result_gives_the_same_files_as_an_image(tmp_path, monkeypatch):
    # the large-result path (zarr store, windows, tiled TIFF) against the in-memory one
    import torch

    import napari_glandseg.inference as inf
    from napari_glandseg.models import Model, ModelCard

    class Copy(torch.nn.Module):  # foreground where the (unit-normalised) input is bright
        def forward(self, x):
            return 20 * (x[:, :1] - 0.5)

    image = _blobs() * 255
    tifffile.imwrite(tmp_path / "blobs.tif", image)
    card = ModelCard(name="copy", architecture="unet", in_channels=1, num_classes=1,
                     normalization="unit", postprocess={"split": "none", "min_size": 20})
    params = FileParams(segment=SegmentParams(tile_size=64, window_size=128),
                        objects_csv=True, probabilities=True, window=96, halo=32)
    small = segment_file(tmp_path / "blobs.tif", Model(Copy(), card),
                         replace(params, out_dir=tmp_path / "small"))
    monkeypatch.setattr(inf, "LARGE_PIXELS", 1000)
    large = segment_file(tmp_path / "blobs.tif", Model(Copy(), card),
                         replace(params, out_dir=tmp_path / "large"))
    # the large run went through a zarr store, removed (discarded) once its files were written
    assert small.segment.store_path is None and large.segment.store_path is None
    assert large.labels is None and isinstance(small.labels, np.ndarray)
    assert not isinstance(large.segment.labels, np.ndarray)  # a zarr array, store gone
    assert not any(p.name.startswith("glandseg-") for p in (tmp_path / "large").iterdir())
    a = read_image(tmp_path / "small/blobs_labels.tif", as_labels=True).data
    b = read_image(tmp_path / "large/blobs_labels.tif", as_labels=True).data
    assert _partition(a) == _partition(b) and a.max() > 30
    ta, tb = (pd.read_csv(tmp_path / f"{d}/blobs_objects.csv") for d in ("small", "large"))
    cols = ["area", "centroid_y", "centroid_x", "mean_intensity"]
    pd.testing.assert_frame_equal(ta.sort_values(cols)[cols].reset_index(drop=True),
                                  tb.sort_values(cols)[cols].reset_index(drop=True))
    pa, pb = (tifffile.imread(tmp_path / f"{d}/blobs_probabilities.tif") for d in
              ("small", "large"))
    np.testing.assert_allclose(pa, pb, atol=1e-3)  # the store keeps float16


def test_an_output_that_cannot_be_written_fails_that_file_only(tmp_path, png, fg_model,
                                                              capsys):
    shutil.copy(png, png.parent / "b.png")
    out = tmp_path / "out"
    (out / "a_probabilities.tif").mkdir(parents=True)  # in the way of a's probabilities
    assert _seg(png.parent, "--model", fg_model, "--out", out, "--probabilities") == 1
    text = capsys.readouterr()
    assert "1 segmented, 0 skipped, 1 failed" in text.out and "a_probabilities.tif" in text.out
    assert "Traceback" not in text.err
    assert sorted(p.name for p in out.iterdir()) == [
        "a_probabilities.tif", "b_labels.tif", "b_probabilities.tif"]  # no a_labels: not done


def test_a_large_class_map_keeps_its_classes(tmp_path, monkeypatch):
    import torch

    import napari_glandseg.inference as inf
    from napari_glandseg.models import Model, ModelCard

    class Classes(torch.nn.Module):  # class 1 where the input is bright, 2 where mid-grey
        def forward(self, x):
            g = x[:, :1]
            return torch.cat([torch.zeros_like(g), 40 * (g - 0.75), 40 * (0.25 - (g - 0.5).abs())
                              - 5], 1)

    image = np.zeros((200, 260), np.uint8)
    image[20:60, 20:90] = 255
    image[100:160, 150:240] = 128
    image[30:33, 200:203] = 128  # too small: removed
    card = ModelCard(name="cls", architecture="unet", in_channels=1, num_classes=3,
                     normalization="unit", postprocess={"min_size": 20})
    params = FileParams(segment=SegmentParams(tile_size=64, window_size=128),
                        objects_csv=True, window=96, halo=48)
    small = segment_file(image, Model(Classes(), card), replace(params, out_dir=tmp_path / "s"))
    monkeypatch.setattr(inf, "LARGE_PIXELS", 1000)
    segment_file(image, Model(Classes(), card), replace(params, out_dir=tmp_path / "l"))
    a = read_image(tmp_path / "s/image_labels.tif", as_labels=True).data
    b = read_image(tmp_path / "l/image_labels.tif", as_labels=True).data
    np.testing.assert_array_equal(a, b)
    assert (a[20:60, 20:90] == 1).all() and (a[100:160, 150:240] == 2).all()
    assert a.sum() == 40 * 70 + 2 * 60 * 90  # the 3x3 speck is gone
    tb = pd.read_csv(tmp_path / "l/image_objects.csv").sort_values("area")
    assert tb["class"].tolist() == [1, 2] and small.table["class"].tolist() == [1, 2]


def test_batch_blocking_twin_reports_each_file(tmp_path, png, fg_model):
    from napari_glandseg.pipeline import segment_files

    (png.parent / "bad.png").write_bytes(b"no")
    seen = []
    report = segment_files([png, png.parent / "bad.png"], load_model(fg_model),
                           FileParams(out_dir=tmp_path / "o",
                                      segment=SegmentParams(tile_size=128)),
                           on_file=lambda event, f, detail: seen.append((event, f.name)))
    assert report.done == [png] and [f for f, _ in report.failed] == [png.parent / "bad.png"]
    assert seen == [("done", "a.png"), ("fail", "bad.png")]
    report = segment_files([png], load_model(fg_model), FileParams(out_dir=tmp_path / "o"))
    assert report.skipped == [png]
