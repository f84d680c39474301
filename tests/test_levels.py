"""Distance-levels models (the deep watershed transform): targets, loss, post-processing,
tuning, cards, training and resuming runs from before the setting existed."""

import json

import numpy as np
import pytest
import torch

import napari_glandseg.training as tr
from napari_glandseg.errors import GlandsegError
from napari_glandseg.models import ModelCard
from napari_glandseg.postprocessing import PostprocessParams, Split, postprocess
from napari_glandseg.training import TrainParams, make_target, train
from napari_glandseg.training.targets import distance_levels
from napari_glandseg.tune import _entry, candidate_grid, tune

SMALL = {"architecture": "unet", "arch_kwargs": {"features": [8, 8, 16, 16, 32, 8]},
         "patch_size": 96, "batch_size": 4, "val_patches": 4}


@pytest.fixture(scope="module")
def glas(request):
    from pathlib import Path

    return tr.pairs_from_folder(Path(request.config.rootpath) / "tests/data/glas")


def _side_by_side():
    """Two 12 x 12 objects touching along a whole side: their union is one rectangle, whose
    distance transform has a single ridge."""
    inst = np.zeros((20, 34), np.int32)
    inst[4:16, 4:16], inst[4:16, 16:28] = 1, 2
    return inst


def test_levels_rise_from_each_objects_own_edge_to_its_centre():
    inst = _side_by_side()
    inst[17:19, 30:32] = 3  # a 2 x 2 speck still reaches the top level
    lev = distance_levels(inst, 4)
    row = lev[10]
    assert row[4] == 1 and row[15] == 1 and row[16] == 1 and row[27] == 1  # both edges
    assert lev[10, 9:11].max() == 4 and lev[10, 21:23].max() == 4  # two hills
    assert lev[17:19, 30:32].max() == 4 and lev[0, 0] == 0
    assert set(np.unique(lev[inst > 0])) == {1, 2, 3, 4}


def test_a_binary_mask_teaches_only_its_outline_and_background():
    t = make_target((_side_by_side() > 0).astype(np.uint8), tr.Target.LEVELS, 5,
                    partial=True)
    assert t[10, 4] == 1 and t[4, 10] == 1 and t[0, 0] == 0
    # the contact between the two objects is not drawn: unknown, not an edge
    assert t[10, 15] == t[10, 16] == tr.UNKNOWN_FG
    with pytest.raises(GlandsegError, match="at least 2 levels"):
        make_target(_side_by_side(), tr.Target.LEVELS, 2)


def test_the_levels_split_separates_what_the_distance_split_merges():
    inst = _side_by_side()
    lev = distance_levels(inst, 4)
    common = dict(min_size=5, fill_holes=False)
    out = postprocess(lev, split="levels", marker_level=3, **common)
    assert out.max() == 2
    for i in (1, 2):  # each object found whole, and nothing else
        got = np.bincount(out[inst == i]).argmax()
        assert got > 0 and ((out == got) == (inst == i)).mean() == 1.0
    # the same foreground split by its own distance transform: one object
    assert postprocess(lev > 0, split="distance", h=2.0, **common).max() == 1
    # seeds at level 1 are the connected foreground: nothing is split
    assert postprocess(lev, split="levels", marker_level=1, **common).max() == 1
    with pytest.raises(GlandsegError, match="distance-levels map"):
        postprocess(inst * 40, split="levels")
    with pytest.raises(GlandsegError, match="marker_level must be in 1..64"):
        PostprocessParams(split="levels", marker_level=0)


def test_level_peaks_find_a_hill_whose_top_stops_short():
    # a network unsure of a small object's centre gives it fewer levels than a large one
    yy, xx = np.mgrid[:40, :70]
    inst = np.zeros((40, 70), np.int32)
    inst[(yy - 20) ** 2 + (xx - 22) ** 2 < 16 ** 2] = 1
    inst[((yy - 20) ** 2 + (xx - 47) ** 2 < 10 ** 2) & (inst == 0)] = 2  # pressed against it
    lev = distance_levels(inst, 4)
    lev[inst == 2] = np.minimum(lev[inst == 2], 2)  # its top stops at level 2
    common = dict(min_size=20, fill_holes=False)
    # seeds at level 3 miss it: it is flooded from its neighbour
    assert postprocess(lev, split="levels", marker_level=3, **common).max() == 1
    out = postprocess(lev, split="level_peaks", level_h=0.5, smooth=2.0, **common)
    assert out.max() == 2
    for i in (1, 2):
        got = np.bincount(out[inst == i]).argmax()
        assert got > 0 and ((out == got) & (inst == i)).sum() > 0.85 * (inst == i).sum()
    # a top lower than level_h above the pass between them seeds nothing of its own
    assert postprocess(lev, split="level_peaks", level_h=3.0, smooth=2.0, **common).max() == 1
    with pytest.raises(GlandsegError, match="level_h must be positive"):
        PostprocessParams(split="level_peaks", level_h=0)
    with pytest.raises(GlandsegError, match="smooth must be 0 or more"):
        PostprocessParams(split="level_peaks", smooth=-1.0)
    with pytest.raises(GlandsegError, match="split 'level_peaks' needs a distance-levels"):
        postprocess(inst * 40, split="level_peaks")


def test_partial_loss_takes_any_number_of_levels():
    loss = tr.partial_boundary_loss
    unknown = torch.full((1, 1, 1), tr.UNKNOWN_FG)
    fg = torch.tensor([-9.0, 0.0, 0.0, 4.0, 0.0]).view(1, 5, 1, 1)
    bg = torch.tensor([9.0, -4.0, -4.0, -4.0, -4.0]).view(1, 5, 1, 1)
    assert float(loss(fg, unknown, dice=False)) < 1e-3
    assert float(loss(bg, unknown, dice=False)) > 10
    level3 = torch.full((1, 1, 1), 3, dtype=torch.long)
    assert float(loss(bg, level3, dice=False)) == pytest.approx(
        float(torch.nn.functional.cross_entropy(bg, level3)))
    assert np.isfinite(float(loss(fg, level3)))  # with Dice over the 4 levels


def test_cards_of_levels_models_are_checked():
    card = ModelCard(name="lv", architecture="unet", in_channels=3, num_classes=5, levels=4)
    assert not card.class_map and "4 distance levels" in card.summary()
    assert ModelCard(name="c", architecture="unet", in_channels=3, num_classes=5).class_map
    with pytest.raises(GlandsegError, match="num_classes must be 5"):
        ModelCard(name="lv", architecture="unet", in_channels=3, num_classes=3, levels=4)
    with pytest.raises(GlandsegError, match="levels must be 0 or an integer"):
        ModelCard(name="lv", architecture="unet", in_channels=3, num_classes=2, levels=1)
    with pytest.raises(GlandsegError, match="4 levels has 5 classes"):
        TrainParams(target="levels", num_classes=3)


def test_tuning_tries_each_seed_level():
    grid = candidate_grid({"split": "levels", "marker_level": 2, "min_size": 20},
                          boundary=False, levels=4)
    seeds = {p.marker_level for p in grid if p.split is Split.LEVELS}
    assert seeds == {2, 3, 4}
    peaks = {(p.smooth, p.level_h) for p in grid if p.split is Split.LEVEL_PEAKS}
    assert len(peaks) == 9 and (2.0, 0.8) in peaks
    assert not any(p.split in (Split.LEVELS, Split.LEVEL_PEAKS)
                   for p in candidate_grid(None, boundary=True))
    entry = _entry(PostprocessParams(split="level_peaks", level_h=0.5, smooth=3.0))
    assert (entry["level_h"], entry["smooth"]) == (0.5, 3.0) and "marker_level" not in entry
    entry = _entry(PostprocessParams(split="levels", marker_level=3, min_size=20))
    assert entry["marker_level"] == 3 and "h" not in entry


def test_a_levels_model_trains_segments_and_splits(glas, data_dir):
    from napari_glandseg.inference import segment
    from napari_glandseg.io import read_image
    from napari_glandseg.pipeline import postprocess_for

    res = train(glas, glas, TrainParams(
        name="levels-test", target="levels", levels=3, epochs=1, steps_per_epoch=2,
        postprocess={"split": "levels", "marker_level": 2, "min_size": 20}, **SMALL))
    card = res.model.card
    assert card.levels == 3 and card.num_classes == 4 and not card.boundary_class
    assert card.class_names == ["background", "level 1", "level 2", "level 3"]
    assert card.training["target"] == "levels" and card.training["levels"] == 3
    assert postprocess_for(card).split is Split.LEVELS
    out = segment(read_image(data_dir / "glas/testA_5_crop.png").data, res.model,
                  tile_size=128)
    assert set(np.unique(out.labels)) <= {0, 1, 2, 3}
    # tuning keeps the winning split's own settings (the seed level once fell back to the
    # default)
    result = tune(res.model, glas, "objects", grid=[
        PostprocessParams(split="levels", marker_level=3, min_size=20)], tile_size=128)
    assert result.best["marker_level"] == 3 and result.best["split"] == "levels"
    assert "h" not in result.best
    result = tune(res.model, glas, "objects", grid=[PostprocessParams(
        split="level_peaks", level_h=1.2, smooth=3.0, min_size=20)], tile_size=128)
    assert (result.best["level_h"], result.best["smooth"]) == (1.2, 3.0)


def test_a_run_from_before_the_levels_setting_resumes(glas, tmp_path):
    params = TrainParams(name="older-run", epochs=1, steps_per_epoch=1, **SMALL)
    train(glas, glas, params, run_dir=tmp_path)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    settings = json.loads(state["settings"])
    del settings["levels"]  # as a state written before the setting existed
    state["settings"] = json.dumps(settings)
    torch.save(state, tmp_path / "state.pt")
    more = train(glas, glas, TrainParams(name="older-run", epochs=2, steps_per_epoch=1,
                                         **SMALL), run_dir=tmp_path, resume=True)
    assert [h["epoch"] for h in more.history] == [1, 2]
