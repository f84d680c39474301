"""One route from image to objects: the per-file pipeline (CLI, Segment widget), training's
validation, tuning and slides make the same objects for the same card, at the same pyramid
level, and a region gets the whole run's labels there."""

import copy

import numpy as np
import pytest

from napari_glandseg.inference import SegmentParams
from napari_glandseg.metrics import Overlap, as_instances, object_scores
from napari_glandseg.models import Model, load_model
from napari_glandseg.pipeline import FileParams, segment_file
from napari_glandseg.training import TrainingPair, iter_validation_rows

SEG = SegmentParams(tile_size=128, return_probabilities=False)  # as validation and tune run


@pytest.fixture(scope="module")
def nuclei():
    """The bundled nuclei model on the MoNuSeg sample (touching nuclei: splitting matters)."""
    from napari_glandseg import _napari

    (image, _, _), (truth, _, _) = _napari.sample_monuseg()
    return load_model("nuclei-he"), np.asarray(image), as_instances(np.asarray(truth))


def _with_entry(model, entry: dict, name: str = "route") -> Model:
    card = copy.deepcopy(model.card)
    card.name, card.postprocess = name, dict(entry)
    card.metrics = {"selected_on": "val_objects"}
    return Model(model.net, card)


def _same_objects(a, b) -> bool:
    """The same partition into objects, whatever the numbering."""
    a, b = np.asarray(a), np.asarray(b)
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return pairs.shape[1] == len(np.unique(a[a > 0])) == len(np.unique(b[b > 0]))


# a card entry that names no split (as a training config's {"min_size": ...} gives), one
# that names the watershed, and none at all
ENTRIES = [{"min_size": 80, "min_distance": 10, "fill_holes": True},
           {"split": "distance", "h": 1.0, "min_size": 30}, {}]


@pytest.mark.parametrize("kind", range(len(ENTRIES)), ids=["no-split", "watershed", "empty"])
def test_every_route_makes_the_objects_users_get(tmp_path, nuclei, kind):
    from napari_glandseg.models import import_model, save_checkpoint
    from napari_glandseg.postprocessing import PostprocessParams
    from napari_glandseg.slides import SlideParams, read_labels, segment_slide
    from napari_glandseg.tune import tune

    model, image, truth = nuclei
    entry, name = ENTRIES[kind], f"route-{kind}"
    model = _with_entry(model, entry, name)
    # what users get: glandseg segment / the Segment widget (objects measured)
    users = segment_file(image, model, FileParams(segment=SEG, objects_csv=True)).labels
    assert users.max() >= 10
    differ = []  # the routes whose objects are not the users'
    # slides (--ome-zarr, the Slides widget, distributed): one block holds the whole image
    import_model(save_checkpoint(tmp_path / f"{name}.safetensors", model.net, model.card))
    res = segment_slide(image, tmp_path / "out", name, seg=SEG,
                        params=SlideParams(block_size=256, overlap=32, tissue=False))
    if not _same_objects(np.asarray(read_labels(res.store)[0][0]), users):
        differ.append("slides")
    if entry:  # (no post-processing: the network's classes, no objects to select on)
        want = object_scores(Overlap.of(as_instances(users), truth))
        # training's checkpoint selection and Fine-tune's table
        row = next(iter_validation_rows(model, [TrainingPair(image, truth, "m")],
                                        tile_size=128, device="cpu"))
        if any(row[k] != pytest.approx(want[k]) for k in ("object_f1", "aji", "pq")):
            differ.append("validation")
        # tuning: the card's own setting scores what users get (the grid holds both
        # readings of an entry without a split: not split, and the settings' default)
        grid = [PostprocessParams(**{"split": "none", **entry}), PostprocessParams(**entry)]
        tuned = tune(model, [TrainingPair(image, truth, "m")], metric="aji", tile_size=128,
                     grid=grid)
        if tuned.current_score != pytest.approx(want["aji"]):
            differ.append("tune")
    assert differ == []


def test_the_post_process_widget_adopts_the_cards_objects():
    """The Segment widget hands the Post-process widget the card's settings as a plain
    entry (layer metadata); read back, they are the settings every route uses."""
    from napari_glandseg.models import ModelCard
    from napari_glandseg.pipeline import entry_of, postprocess_for
    from napari_glandseg.postprocessing import PostprocessParams

    for entry in ENTRIES[:2]:
        card = ModelCard(name="c", architecture="unet", in_channels=3, num_classes=1,
                         postprocess=entry)
        assert PostprocessParams(**entry_of(postprocess_for(card))) == postprocess_for(card)
    assert postprocess_for(card, split="peaks").split.value == "peaks"


def test_a_region_runs_on_the_whole_images_tile_grid():
    """A region (a Shapes ROI) is segmented with the tiles of the whole-image run that
    cover it, so its classes and probabilities are the whole run's there, exactly: an
    untrained network sees tile edges, so another grid would change them."""
    import torch

    from napari_glandseg.models import ModelCard, build_model
    from napari_glandseg.pipeline import objects_from_image

    torch.manual_seed(0)
    net = build_model("base_cnn", 3, 1, widths=[4, 8]).eval()
    card = ModelCard(name="r", architecture="base_cnn", in_channels=3, num_classes=1,
                     arch_kwargs={"widths": [4, 8]}, normalization="unit",
                     postprocess={"split": "none", "min_size": 1})
    model = Model(net, card)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (300, 280, 3), dtype=np.uint8)
    seg = SegmentParams(tile_size=64, overlap=0.25, device="cpu", precision="fp32")
    params = FileParams(segment=seg)
    whole = objects_from_image(image, model, params).segment
    box = (37, 45, 141, 170)  # not on the tile grid
    part = objects_from_image(image, model, params, region=box).segment
    y0, x0, y1, x1 = box
    np.testing.assert_allclose(part.probabilities, whole.probabilities[:, y0:y1, x0:x1],
                               atol=1e-5)
    assert np.array_equal(part.labels, whole.labels[y0:y1, x0:x1])
