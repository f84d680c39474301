"""Automatic scale for images of unknown um/px (napari_glandseg.autoscale)."""

import numpy as np
import pytest
from skimage.io import imread
from skimage.transform import rescale

from napari_glandseg import autoscale
from napari_glandseg.errors import GlandsegError
from napari_glandseg.models import ModelCard


def _img(data_dir, rel):
    img = imread(data_dir / rel)
    return img[..., :3] if img.ndim == 3 else img


def _shrink(img, f):
    return rescale(img, f, channel_axis=-1 if img.ndim == 3 else None, anti_aliasing=f < 1,
                   preserve_range=True).astype(np.uint8)


@pytest.mark.parametrize("rel", ["glas/train_1_crop.png",
                                 "monuseg/TCGA-21-5784-01Z-00-DX1_crop.png",
                                 "wbc/dataset1_001.png"])
def test_the_blob_sigma_follows_the_images_scale(data_dir, rel):
    img = _img(data_dir, rel)
    native = autoscale.blob_sigma(img)
    for f in (0.5, 2.0):
        assert autoscale.blob_sigma(_shrink(img, f), near=native * f) == \
            pytest.approx(native * f, rel=0.12)


def _card(ref, **kw):
    return ModelCard(name="c", architecture="unet", in_channels=3, num_classes=1,
                     scale_reference=ref, **kw)


def test_a_shrunk_image_is_estimated_at_its_larger_pixels(data_dir):
    img = _img(data_dir, "glas/train_1_crop.png")
    ref = autoscale.scale_reference([img])
    card = _card(ref, pixel_size_um=1.24, data_pixel_size_um=0.62)
    native = autoscale.estimate_scale(img, card)
    assert native.factor == 1.0 and native.pixel_size_um == 0.62
    assert native.scale == pytest.approx(0.5)  # 0.62 -> 1.24 um/px
    half = autoscale.estimate_scale(_shrink(img, 0.5), card)
    assert half.pixel_size_um == pytest.approx(1.24, rel=0.12)
    assert half.scale == pytest.approx(1.0, rel=0.12) and not half.snapped
    assert "um/px" in half.describe()


def test_a_model_without_a_working_scale_gets_a_resize_factor_not_um(data_dir):
    """A card with a data scale but no working scale is never rescaled by um/px, so its
    estimate must be a factor (an um/px would be ignored downstream)."""
    img = _img(data_dir, "wbc/dataset1_001.png")
    card = _card(autoscale.scale_reference([img]), data_pixel_size_um=0.5)
    big = autoscale.estimate_scale(_shrink(img, 2.0), card)
    assert big.pixel_size_um is None and big.scale == pytest.approx(0.5, rel=0.12)


def test_a_scale_free_model_gets_a_resize_factor(data_dir):
    img = _img(data_dir, "wbc/dataset1_001.png")
    card = _card(autoscale.scale_reference([img]))
    big = autoscale.estimate_scale(_shrink(img, 2.0), card)
    assert big.pixel_size_um is None
    assert big.scale == pytest.approx(0.5, rel=0.12)  # objects twice as large: shrink 2x
    assert "2.0" in big.describe() or "1.9" in big.describe()
    assert "'" not in big.describe()  # no stray quote in the status line


def test_estimates_near_the_training_scale_snap_to_it(data_dir):
    img = _img(data_dir, "glas/train_1_crop.png")
    ref = autoscale.scale_reference([img])
    card = _card({**ref, "sigma_px": ref["sigma_px"] * 1.1}, data_pixel_size_um=0.62,
                 pixel_size_um=0.62)
    est = autoscale.estimate_scale(img, card)
    assert est.snapped and est.factor == 1.0 and est.scale == 1.0
    far = {k: ref[k] * 1.3 for k in ("sigma_px", "sigma_p10", "sigma_p90")}
    card = _card({**ref, **far}, data_pixel_size_um=0.62, pixel_size_um=0.62)
    est = autoscale.estimate_scale(img, card)
    assert not est.snapped and est.factor == pytest.approx(1.3, rel=0.05)
    # 1.3x off, but inside the training images' own spread of blob sizes: as they are
    card = _card({**ref, **far, "sigma_p10": ref["sigma_px"] * 0.9}, data_pixel_size_um=0.62,
                 pixel_size_um=0.62)
    est = autoscale.estimate_scale(img, card)
    assert est.snapped and est.factor == 1.0


def test_no_reference_and_a_bad_reference_are_named():
    with pytest.raises(GlandsegError, match="no scale reference"):
        autoscale.estimate_scale(np.zeros((64, 64, 3), np.uint8), _card({}))
    with pytest.raises(GlandsegError, match="sigma_px must be a positive number"):
        _card({"sigma_px": -2})


def test_the_reference_picks_the_percentile_that_varies_least(data_dir):
    imgs = [_img(data_dir, "glas/train_1_crop.png"), _img(data_dir, "glas/testA_5_crop.png")]
    ref = autoscale.scale_reference(imgs)
    assert ref["q"] in autoscale.QUANTILES and ref["images"] == 2
    assert ref["sigma_p10"] <= ref["sigma_px"] <= ref["sigma_p90"]


def test_a_bad_peak_rule_is_named():
    with pytest.raises(GlandsegError, match="peak must be 'nearest' or 'strongest'"):
        _card({"sigma_px": 20.0, "peak": "biggest"})


# two smears on which the peak nearest the reference is wrong at 1/3x (the whole field) and
# at 3x (a cell's texture), while the strongest is right
SMEARS = ("wbc/dataset1_025.png", "wbc/dataset1_040.png")


def test_the_reference_chooses_the_peak_that_recovers_its_images_rescaled(data_dir):
    ref = autoscale.scale_reference([_img(data_dir, rel) for rel in SMEARS])
    assert ref["peak"] == "strongest"


@pytest.mark.parametrize("f", [1 / 3, 3.0])
def test_a_smear_a_third_or_three_times_its_size_is_estimated(data_dir, f):
    """The bundled wbc card takes the strongest blob response (its reference says so);
    cells 3x their size have sigma ~70 px, beyond 64 px (the old largest sigma, which gave
    a factor 0.358 instead of 1/3)."""
    from napari_glandseg.models import load_model

    card = load_model("wbc").card
    assert card.scale_reference["peak"] == "strongest"
    for rel in SMEARS:
        est = autoscale.estimate_scale(_shrink(_img(data_dir, rel), f), card)
        assert est.factor == pytest.approx(1 / f, rel=0.05), rel
    nearest = _card({k: v for k, v in card.scale_reference.items() if k != "peak"},
                    pixel_size_um=card.pixel_size_um)
    est = autoscale.estimate_scale(_shrink(_img(data_dir, SMEARS[0]), f), nearest)
    assert abs(np.log(est.factor * f)) > 0.5  # the rule is what makes the difference


# ------------------------------------------------------------------ through the one route


def _wbc(data_dir, f=1.0):
    img = _img(data_dir, "wbc/dataset1_001.png")
    mask = imread(data_dir / "wbc/dataset1_001_mask.png")
    return (img if f == 1 else _shrink(img, f)), mask


def _cell_dice(labels, mask):
    from skimage.transform import resize

    truth = resize(mask > 0, labels.shape, order=0) > 0
    pred = np.asarray(labels) > 0
    return 2 * (pred & truth).sum() / (pred.sum() + truth.sum())


def test_an_enlarged_image_of_unknown_size_is_segmented_at_its_estimated_scale(data_dir):
    """A smear imaged at twice the magnification: taken at the training scale the cell is
    missed in part; at the estimated scale it is found as on the native image."""
    from napari_glandseg.models import load_model
    from napari_glandseg.pipeline import FileParams, objects_from_image

    model = load_model("wbc")
    native, mask = _wbc(data_dir)
    big, _ = _wbc(data_dir, 2.0)
    base = _cell_dice(objects_from_image(native, model).labels, mask)
    auto = objects_from_image(big, model)
    est = auto.scale_estimate
    assert est is not None and est.scale == pytest.approx(0.5, rel=0.15)
    assert "estimated" in auto.segment.info["scale_estimate"]
    assert _cell_dice(auto.labels, mask) > base - 0.03
    off = objects_from_image(big, model, FileParams(auto_scale=False))
    assert off.scale_estimate is None
    # a pixel size given, or a block of a slide (the whole slide's stats): no estimate
    assert objects_from_image(big, model, pixel_size_um=0.62).scale_estimate is None
    assert objects_from_image(big, model, FileParams(pixel_size_um=0.62)).scale_estimate \
        is None
    from napari_glandseg.inference import image_stats

    stats = image_stats(big, model)
    assert objects_from_image(big, model, stats=stats).scale_estimate is None
    # a pyramid or a lazy array (a slide) is taken as its blocks are: no estimate
    import dask.array as da

    assert objects_from_image([big, big[::2, ::2]], model).scale_estimate is None
    assert objects_from_image(da.from_array(big), model).scale_estimate is None
    # the H&E models carry no reference: their estimates lowered native Dice (README)
    assert not load_model("glands-he").card.scale_reference
    assert not load_model("nuclei-he").card.scale_reference


def test_the_cli_says_the_estimate_and_can_be_told_not_to(tmp_path, data_dir, capsys):
    from napari_glandseg import cli

    big, _ = _wbc(data_dir, 2.0)
    from skimage.io import imsave

    imsave(tmp_path / "big.png", big, check_contrast=False)
    assert cli.main(["segment", str(tmp_path / "big.png"), "--model", "wbc", "--out",
                     str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "big.png -> " in err and "estimated objects 2.0" in err and "x the size" in err
    assert cli.main(["segment", str(tmp_path / "big.png"), "--model", "wbc", "--out",
                     str(tmp_path / "out2"), "--no-auto-scale"]) == 0
    assert "estimated" not in capsys.readouterr().err


def test_training_records_the_reference_unless_told_not_to(data_dir):
    from napari_glandseg.training import TrainParams, pairs_from_folder, train

    glas = pairs_from_folder(data_dir / "glas")
    small = {"architecture": "unet", "arch_kwargs": {"features": [8, 8, 16, 16, 32, 8]},
             "patch_size": 64, "batch_size": 2, "val_patches": 2, "epochs": 1,
             "steps_per_epoch": 1}
    card = train(glas, glas, TrainParams(name="ref", **small)).model.card
    expected = autoscale.scale_reference([p.image for p in glas])
    assert card.scale_reference == expected and card.scale_reference["sigma_px"] > 0
    off = train(glas, glas, TrainParams(name="noref", auto_scale=False, **small)).model.card
    assert off.scale_reference == {}
    # fine-tuning keeps its base's choice: a base shipped without a reference stays so
    small.pop("architecture"), small.pop("arch_kwargs")
    tuned = train(glas, glas, TrainParams(name="tuned", base_model="noref", **small))
    assert tuned.model.card.scale_reference == {}


@pytest.mark.parametrize("kw", [{"pixel_size_um": 1.24, "data_pixel_size_um": 0.62},
                                {"data_pixel_size_um": 0.5}, {}])
def test_the_words_for_a_card_that_cannot_estimate_name_the_scale_it_uses(kw):
    """Segment's greyed "Estimate the scale" names the scale used instead: the um/px that
    the working scale actually assumes for an image without a pixel size, or none."""
    from napari_glandseg import scale

    card = _card({}, **kw)
    assert not scale.can_estimate(card, np.zeros((64, 64, 3), np.uint8))
    words = scale.estimate_unused(card)
    assumed = scale.working_scale(np.zeros((64, 64, 3)), card).assumed_pixel_size_um
    if assumed and card.pixel_size_um:
        assert f"{assumed:g} um/px" in words
    else:
        assert "their own scale" in words and "um/px" not in words
    assert scale.estimate_unused(_card({"sigma_px": 3.0})) == ""
