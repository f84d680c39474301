"""Out-of-domain warnings: silent on images like the training images, loud on others."""

import numpy as np
import pytest

from napari_glandseg import domain
from napari_glandseg.errors import GlandsegError
from napari_glandseg.io import read_image


@pytest.fixture(scope="module")
def he_reference(request):
    from pathlib import Path

    root = Path(request.config.rootpath) / "tests/data/glas"
    images = [np.asarray(read_image(root / f"{s}.png").data)
              for s in ("testA_5_crop", "train_1_crop")]
    # more "training images": the two crops, flipped and rotated (same stain and texture)
    images += [im[::-1] for im in images] + [np.rot90(im) for im in images]
    return images, domain.reference(images)


def test_images_like_the_training_images_pass_and_others_are_named(he_reference, data_dir):
    images, entry = he_reference
    assert all(domain.distance(im, entry) <= entry["threshold"] for im in images)
    card = type("Card", (), {"name": "glands-he", "appearance": entry})()
    assert domain.warning(images[0], card) is None
    grey = np.asarray(read_image(data_dir / "isbi2012_em/0_crop.png").data)  # EM, grey
    line = domain.warning(grey, card)
    assert line is not None and "looks unlike glands-he's training images" in line
    smear = np.asarray(read_image(data_dir / "wbc/dataset1_001.png").data)
    assert domain.warning(smear, card) is not None


def test_a_pyramid_is_measured_on_a_small_level(he_reference):
    images, entry = he_reference
    big = np.kron(images[0], np.ones((4, 4, 1), np.uint8))  # 1024 px: a "slide"
    levels = [big, big[::2, ::2], big[::4, ::4]]
    # the pyramid's level of about 512 px and the image subsampled give the same vector
    np.testing.assert_allclose(domain.appearance(levels), domain.appearance(big[::2, ::2]))


def test_the_card_refuses_a_malformed_reference():
    from napari_glandseg.models import ModelCard

    with pytest.raises(GlandsegError, match="appearance is malformed"):
        ModelCard(name="x", architecture="unet", in_channels=3, num_classes=1,
                  appearance={"mean": [1.0]})


SAMPLE_FILES = {"glands-he": "glas_testA_5.jpg", "nuclei-he": "monuseg_TCGA-21-5784_crop.png",
                "wbc": "wbc_005.png", "membranes-em": "isbi2012_em_29_crop.png",
                "organs-mri": "uwm_gi_mri_case119_day0_slice_0081.png"}


def test_bundled_models_are_silent_on_their_samples_and_warn_elsewhere(data_dir):
    import tifffile

    from napari_glandseg.models import load_model
    from napari_glandseg.models.store import BUNDLED_DIR

    samples = BUNDLED_DIR.parent / "sample_data"
    cards = {name: load_model(name).card for name in SAMPLE_FILES}
    for name, card in cards.items():
        assert card.appearance["features"] == list(domain.FEATURES)
        image = np.asarray(read_image(samples / SAMPLE_FILES[name]).data)
        assert domain.warning(image, card) is None, name
    skin = tifffile.imread(data_dir / "wsi/cmu_small_region.svs")  # squamous skin, H&E
    assert domain.warning(skin, cards["glands-he"]) is not None
    mri = np.asarray(read_image(samples / SAMPLE_FILES["organs-mri"]).data)
    assert domain.warning(mri, cards["nuclei-he"]) is not None
    assert domain.warning(mri, cards["glands-he"]) is not None
