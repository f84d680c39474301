"""One intensity rule for every dtype (preprocess.value_range): the same pixels segment alike
whatever they are stored as, a 16-bit original as its linear 8-bit export, and training,
inference and slides read in blocks all apply the whole image's rule."""

from pathlib import Path

import numpy as np
import pytest

from napari_glandseg.errors import GlandsegError
from napari_glandseg.io import read_image
from napari_glandseg.preprocess import norm_stats, normalise, standardise, value_range

GLAS = Path(__file__).resolve().parent / "data" / "glas"  # the repo's copy of the fixtures
CROP = GLAS / "testA_5_crop.png"


@pytest.fixture(scope="module")
def crop():
    return read_image(CROP).data  # (256, 256, 3) uint8, values 13..255


@pytest.fixture(scope="module")
def glands():
    from napari_glandseg.models import load_model

    return load_model("glands-he")


def _objects(source, model):
    from napari_glandseg.inference import SegmentParams
    from napari_glandseg.pipeline import FileParams, segment_file

    seg = SegmentParams(tile_size=256, device="cpu", precision="fp32")
    res = segment_file(source, model, FileParams(segment=seg))
    return np.asarray(res.labels), res.n_objects


def _stretch16(crop):
    """A 16-bit 'original' (values 3779..52199, with sub-8-bit detail) and its linear 8-bit
    export round(255 * (x - min) / (max - min))."""
    noise = np.random.default_rng(0).integers(0, 200, crop.shape)
    x16 = (crop.astype(np.uint16) * 200 + 1000 + noise).astype(np.uint16)
    lo, hi = float(x16.min()), float(x16.max())
    x8 = np.round(255 * (x16.astype(np.float64) - lo) / (hi - lo)).astype(np.uint8)
    return x16, x8


def test_the_same_pixels_in_any_dtype_give_the_same_objects(crop, glands):
    """Issue 23 item 2: on this crop uint8 gave 3 objects, float32 0..255, int64 and 8-bit
    values in uint16 1 each (normalise divided by the dtype's maximum). Now bit for bit
    alike."""
    ref, n = _objects(crop, glands)
    assert n >= 2  # objects to lose (glands-he 0.4 finds 2 glands on this crop)
    same = {"float32 0..255": crop.astype(np.float32), "float64 0..1": crop / 255.0,
            "int64": crop.astype(np.int64), "uint16 holding 8-bit": crop.astype(np.uint16),
            "uint16 v*257": crop.astype(np.uint16) * 257}
    for name, image in same.items():
        labels, count = _objects(image, glands)
        assert count == n, name
        np.testing.assert_array_equal(labels, ref, err_msg=name)


def test_a_16bit_original_segments_as_its_8bit_export(crop, glands, tmp_path):
    """Issue 22 item 4: a 16-bit TIFF and the 8-bit PNG linearly rescaled from it, read from
    files. Their network inputs differ by at most half a grey level (the PNG's rounding),
    measured: 99.99% of the pixels get the same label, and the same objects."""
    import imageio.v3 as iio
    import tifffile

    x16, x8 = _stretch16(crop)
    tifffile.imwrite(tmp_path / "original.tif", x16)
    iio.imwrite(tmp_path / "export.png", x8)
    a, na = _objects(tmp_path / "original.tif", glands)
    b, nb = _objects(tmp_path / "export.png", glands)
    assert na == nb and na >= 2
    assert np.mean((a > 0) == (b > 0)) > 0.999
    # the same objects: each of a's objects has its counterpart in b (IoU > 0.9)
    for k in range(1, na + 1):
        ids, counts = np.unique(b[a == k], return_counts=True)
        j = ids[np.argmax(counts)]
        assert j > 0 and np.sum((a == k) & (b == j)) / np.sum((a == k) | (b == j)) > 0.9


def test_the_rule_itself():
    u8 = np.array([[13, 255]], np.uint8)
    assert value_range(u8) == (0, 255)
    assert value_range(u8.astype(np.int64)) == value_range(u8.astype(np.float32)) == (0, 255)
    assert value_range(u8 / 255.0) == (0, 1)
    assert value_range(np.array([[1000, 30000]], np.uint16)) == (1000, 30000)
    assert value_range(np.array([[-3.0, 5.0]])) == (-3, 5)  # negative floats: min..max
    assert value_range(np.array([[0.0, 300.0]], np.float32)) == (0, 300)
    # every normalisation sees the same network input
    for mode in ("imagenet", "unit", "zscore", "percentile"):
        want = normalise(u8, mode, norm_stats(u8, (0, 0, 1, 2), mode))
        for other in (u8.astype(np.float32), u8.astype(np.int64), u8 / 255.0):
            got = normalise(other, mode, norm_stats(other, (0, 0, 1, 2), mode))
            np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{mode} {other.dtype}")
    with pytest.raises(GlandsegError, match="NaN"):
        value_range(np.array([[0.0, np.nan]]))


def test_blocks_use_the_whole_images_range(crop, glands):
    """A block of a 16-bit image (a slide's block, a ROI) is mapped by the whole image's
    range, not its own: with the whole image's statistics it gets the labels the whole-image
    run gives there; with its own (the per-block estimate) it would not."""
    from napari_glandseg.inference import image_stats, segment
    from napari_glandseg.slides import ModelPredictor

    x16, _ = _stretch16(crop)
    x16[:128] = (x16[:128] // 2).astype(np.uint16)  # the top half darker: its own range differs
    kw = dict(tile_size=256, device="cpu", precision="fp32", return_probabilities=False)
    whole = np.asarray(segment(x16, glands, **kw).labels)
    stats = image_stats(x16, glands)
    assert stats.value_range == value_range(x16)
    region = (0, 0, 128, 256)
    block = np.asarray(segment(x16, glands, region=region, stats=stats, **kw).labels)
    np.testing.assert_array_equal(block, whole[:128])
    roi = np.asarray(segment(x16, glands, region=region, **kw).labels)  # a ROI, no stats
    np.testing.assert_array_equal(roi, whole[:128])
    # the Slides path asks for the whole slide's statistics for any non-8-bit slide
    predictor = ModelPredictor("glands-he")
    working = predictor.geometry([x16], None)
    assert predictor.image_stats([x16], working).value_range == value_range(x16)
    # 8-bit, fixed normalisation: nothing to read
    assert predictor.image_stats([crop], working) is None


def test_training_normalises_by_the_same_rule(crop):
    """Training patches of the same pixels stored as uint8, uint16 and floats are the same
    network input, and a 16-bit original's patches are its 8-bit export's (to half a grey
    level): training standardises its pairs by the whole image's range, as inference does,
    not each patch by its own."""
    from napari_glandseg.training import TrainingPair, TrainParams
    from napari_glandseg.training.loop import _setup

    mask = (crop[..., 0] < 200).astype(np.uint8)
    params = TrainParams(name="dtype-check", epochs=1, steps_per_epoch=1, patch_size=64,
                         val_patches=3, device="cpu", architecture="base_cnn",
                         arch_kwargs={"widths": [4, 8]})

    def patches(image):
        pair = TrainingPair(image, mask, "crop")
        return _setup([pair], [pair], params).val_set

    x16, x8 = _stretch16(crop)
    for a, b, tol in [(crop, crop.astype(np.uint16), 0), (crop, crop.astype(np.float32), 1e-6),
                      (crop, crop / 255.0, 1e-6), (x8, x16, 0.5 / 255 / 0.224 + 1e-6)]:
        for (x, t), (y, u) in zip(patches(a), patches(b), strict=True):
            np.testing.assert_allclose(y, x, atol=tol, rtol=0, err_msg=str(b.dtype))
            np.testing.assert_array_equal(u, t)
    assert standardise(crop) is crop  # uint8: no copy


def test_percentile_normalisation_ignores_a_few_outliers():
    """``percentile`` maps the 1st..99.8th percentiles (per channel) to 0..1, so a few hot
    or dead pixels (0.05% each here) leave every other pixel's value as it was; the
    image's own min..max would let them stretch the whole image."""
    img = np.clip(np.random.default_rng(1).normal(128, 20, (200, 200)), 0, 255).astype(np.uint8)
    box = (0, 0, 200, 200)
    lo, spread = norm_stats(img, box, "percentile")
    assert lo[0] == pytest.approx(np.percentile(img, 1.0))
    assert lo[0] + spread[0] == pytest.approx(np.percentile(img, 99.8))
    assert img.min() + 20 < lo[0] and lo[0] + spread[0] < img.max() - 10
    x = normalise(img, "percentile", (lo, spread))
    assert x.min() < 0 < 1 < x.max()  # the tails beyond the percentiles are not clipped
    hot = img.copy()
    hot.flat[:20], hot.flat[20:40] = 255, 0  # the percentiles move by a grey level or two
    y = normalise(hot, "percentile", norm_stats(hot, box, "percentile"))
    np.testing.assert_allclose(y.ravel()[40:], x.ravel()[40:], atol=0.03)  # 3 grey levels
