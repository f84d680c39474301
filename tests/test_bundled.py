"""The bundled models: complete cards, and real segmentations of the bundled samples.

The samples are images or crops each model never trained on (GlaS testA_5, ISBI slice 29
and WBC image 005 are in their validation or test splits), except the MoNuSeg crop, whose
image is one of its training images. The floors sit a little under what each model
scores today, so a broken model, loader or pre-processing fails them.
"""

import numpy as np
import pytest

from napari_glandseg import _napari
from napari_glandseg.inference import segment
from napari_glandseg.metrics import pixel_metrics
from napari_glandseg.models import list_models, load_model
from napari_glandseg.postprocessing import PostprocessParams, postprocess

BUNDLED = ("glands-he", "nuclei-he", "membranes-em", "wbc", "organs-mri")


def test_every_bundled_model_is_listed_as_bundled():
    assert [m.name for m in list_models() if m.source == "bundled"] == sorted(BUNDLED)


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_card_says_data_licence_scale_and_metrics(name):
    card = load_model(name).card
    assert "research use only" in card.licence and card.data_licence and card.training_data
    assert card.pixel_size_um is None or card.pixel_size_um > 0
    assert card.normalization in ("imagenet", "percentile", "zscore", "none")
    assert card.postprocess and PostprocessParams(**card.postprocess)
    val = card.metrics["val"]
    # the lowest, organs-mri (24 training slices): 0.789 on its 5 val slices; the others > 0.77
    assert 0.5 < val["dice"] <= 1 and 0 < val["object_f1"] <= 1 and val["images"] > 0
    assert card.metrics["cpu_seconds_1000x1000"] > 0
    licence_line = next(x for x in card.summary().splitlines() if x.startswith("licence:"))
    assert licence_line.startswith("licence: weights: research use only")  # said once


@pytest.mark.parametrize("name,sample,floor", [
    ("glands-he", "sample_glas", 0.83),  # 0.868 today on the whole testA_5 (22 glands)
    ("nuclei-he", "sample_monuseg", 0.83),  # 0.864
    ("membranes-em", "sample_em", 0.91),  # 0.937
])
def test_bundled_model_segments_its_sample(name, sample, floor):
    (image, _, _), (truth, _, _) = getattr(_napari, sample)()
    model = load_model(name, device="cpu")
    labels = np.asarray(segment(image, model, tile_size=256).labels)
    objects = postprocess(labels, PostprocessParams(**model.card.postprocess))
    assert objects.max() > 1  # separate objects, not one blob
    assert pixel_metrics(objects > 0, truth > 0)["dice"] > floor


def test_wbc_finds_cytoplasm_and_nucleus_of_its_sample():
    (image, _, _), (truth, _, _) = _napari.sample_wbc()
    model = load_model("wbc", device="cpu")
    assert model.card.class_names == ["background", "cytoplasm", "nucleus"]
    labels = np.asarray(segment(image, model, tile_size=128).labels)
    per_class = pixel_metrics(labels, truth, classes=3)["per_class"]
    # 0.828 and 0.754 today: image 005 is below the validation average (0.914 / 0.941);
    # the colour-robust model gave up 0.02-0.04 here (0.846 / 0.794 before) for a hue shift
    # of another lab's stain (cell Dice 0.75 -> 0.97 on the shifted val images)
    assert per_class[1]["dice"] > 0.80 and per_class[2]["dice"] > 0.72


def test_organs_mri_segments_its_sample_alike_from_8_and_16_bits():
    """The sample opens with its model; the 16-bit original it was rescaled from (any
    linear stretch) gives the same class map as the 8-bit PNG."""
    from napari_glandseg.pipeline import objects_from_image

    (image, _, _), (truth, _, _) = _napari.sample_mri()
    model = load_model("organs-mri", device="cpu")
    assert model.card.class_names == ["background", "large bowel", "small bowel", "stomach"]
    assert not model.card.scale_reference  # MRI: no automatic scale
    eight = np.asarray(objects_from_image(image, model).labels)
    per_class = pixel_metrics(eight, truth, classes=4)["per_class"]
    # 0.3 today: large bowel 0.133, small bowel 0.648, stomach 0.676 (0.2: 0.192 / 0.835 /
    # 0.054); the stomach, which 0.2 missed, is found, and every organ is seen
    assert np.mean([per_class[c]["dice"] for c in (1, 2, 3)]) > 0.45
    assert per_class[3]["dice"] > 0.5 and min(per_class[c]["dice"] for c in (1, 2, 3)) > 0.1
    sixteen = image.astype(np.uint16) * 97 + 1200  # a 16-bit range, as scanners store it
    same = np.asarray(objects_from_image(sixteen, model).labels)
    assert (same == eight).mean() > 0.999
    as_float = np.asarray(objects_from_image(image.astype(np.float32), model).labels)
    assert (as_float == eight).mean() > 0.999
