"""Block-wise slide segmentation: stitched objects equal a whole-image run, tissue mask,
OME-Zarr output, resume."""

from pathlib import Path

import numpy as np
import pytest

from napari_glandseg.errors import GlandsegError
from napari_glandseg.metrics import Overlap, object_f1
from napari_glandseg.postprocessing import postprocess
from napari_glandseg.slides import (
    ClassMapPredictor,
    ModelPredictor,
    SlideJob,
    SlideParams,
    iter_segment_slide,
    plan_slide,
    read_labels,
    segment_slide,
    tissue_mask,
)

SVS = Path(__file__).parent / "data" / "wsi" / "cmu_small_region.svs"


def _disks(shape, n, rmin, rmax, seed, touching=False):
    """A mask of random disks; with ``touching``, disks are placed in pairs that touch."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, bool)
    for _ in range(n):
        r = rng.uniform(rmin, rmax)
        cy, cx = rng.uniform(r, shape[0] - r), rng.uniform(r, shape[1] - 3 * r)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        if touching:  # a twin whose rim meets this disk's rim
            mask |= (yy - cy) ** 2 + (xx - cx - 2 * r + 1) ** 2 < r * r
    return mask.astype(np.uint8)


def _voronoi_classes(shape, n, seed):
    """Densely packed cells (no background): interior 1, 2-px boundary 2 between cells."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.int32)
    pts = rng.integers(0, shape, size=(n, 2))
    seeds[pts[:, 0], pts[:, 1]] = np.arange(1, n + 1)
    _, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    cells = seeds[iy, ix]
    edge = (cells != ndi.grey_erosion(cells, size=3)) | (cells != ndi.grey_dilation(cells, size=3))
    return np.where(edge, 2, 1).astype(np.uint8), cells


def _compare(stitched, reference):
    """Object F1 (GlaS), the fraction of objects matched one-to-one at IoU > 0.5, and the
    number of stitched objects that cover two reference objects (over-merged)."""
    ov = Overlap.of(stitched, reference)
    f1 = object_f1(ov)["object_f1"]
    s, r = stitched.ravel().astype(np.int64), reference.ravel().astype(np.int64)
    both = (s > 0) & (r > 0)
    pairs, inter = np.unique(np.stack([s[both], r[both]]), axis=1, return_counts=True)
    area_s, area_r = np.bincount(s), np.bincount(r)
    iou = inter / (area_s[pairs[0]] + area_r[pairs[1]] - inter)
    n = max(len(np.unique(s)) - 1, len(np.unique(r)) - 1)
    matched = (iou > 0.5).sum() / n
    # an over-merged object holds most of two reference objects
    big = pairs[0][inter > 0.5 * area_r[pairs[1]]]
    merged = int((np.bincount(big) > 1).sum()) if len(big) else 0
    return f1, matched, merged


def _stitch(tmp_path, image, post, block=128, overlap=40, **kw):
    res = segment_slide(image, tmp_path, predictor=ClassMapPredictor(),
                        params=SlideParams(block_size=block, overlap=overlap, tissue=False),
                        post=post, **kw)
    levels, _ = read_labels(res.store)
    return res, np.asarray(levels[0])


def test_objects_crossing_blocks_equal_a_whole_image_run(tmp_path):
    mask = _disks((640, 576), 70, 8, 22, seed=1)
    post = {"split": "distance", "h": 2.0, "min_size": 30}
    reference = postprocess(mask, **post)
    res, stitched = _stitch(tmp_path, mask, post)
    # many blocks, and many objects crossing their faces
    assert res.blocks == 5 * 5
    crossing = sum(len(np.unique(reference[:, x - 1: x + 1][reference[:, x - 1: x + 1] > 0]))
                   for x in range(128, 576, 128))
    assert crossing >= 10
    f1, matched, merged = _compare(stitched, reference)
    assert f1 >= 0.99 and matched >= 0.99 and merged == 0
    assert res.n_objects == len(np.unique(stitched)) - 1
    assert set(np.unique(stitched)) == set(range(res.n_objects + 1))  # ids 1..N, unique


def test_dense_touching_objects_do_not_over_merge(tmp_path):
    # touching disk pairs split by the watershed ...
    mask = _disks((512, 512), 45, 9, 16, seed=2, touching=True)
    post = {"split": "distance", "h": 2.0, "min_size": 30}
    reference = postprocess(mask, **post)
    _, stitched = _stitch(tmp_path / "a", mask, post)
    f1, matched, merged = _compare(stitched, reference)
    assert f1 >= 0.99 and merged == 0
    # ... and a fully packed tissue of cells: every cell touches its neighbours, across every
    # block face (plain face adjacency joins them all into a few giant objects)
    classes, _ = _voronoi_classes((512, 512), 400, seed=3)
    post = {"split": "boundary", "min_size": 40, "fill_holes": False}
    reference = postprocess(classes, **post)
    res, stitched = _stitch(tmp_path / "b", classes, post, overlap=32)
    # boundary pixels go to one cell or the other by a watershed on the distance to the
    # image's (or the block's) edge; which cell a pixel belongs to is decided by interiors
    interior = classes == 1
    f1, matched, merged = _compare(stitched * interior, reference * interior)
    assert len(np.unique(reference)) > 300
    assert f1 >= 0.99 and matched >= 0.99 and merged == 0


@pytest.mark.parametrize("split", [{"split": "levels", "marker_level": 3},
                                   {"split": "level_peaks", "level_h": 0.8, "smooth": 2.0}])
def test_a_levels_map_splits_across_blocks_as_in_a_whole_image(tmp_path, split):
    from napari_glandseg.training.targets import distance_levels

    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:512, :512]
    inst = np.zeros((512, 512), np.int32)
    for i in range(1, 80, 2):  # pairs of disks pressed together, many across block faces
        r = rng.uniform(9, 16)
        cy, cx = rng.uniform(r, 512 - r), rng.uniform(r, 512 - 3 * r)
        inst[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = i
        inst[(yy - cy) ** 2 + (xx - cx - 1.6 * r) ** 2 < r * r] = i + 1
    levels = distance_levels(inst, 4)
    post = {**split, "min_size": 30, "fill_holes": False}
    reference = postprocess(levels, **post)
    assert len(np.unique(reference)) - 1 > 1.5 * len(np.unique(postprocess(
        levels > 0, split="none", min_size=30))) - 1  # the pairs are split
    _, stitched = _stitch(tmp_path, levels, post)
    f1, matched, merged = _compare(stitched, reference)
    assert f1 >= 0.99 and matched >= 0.99 and merged == 0


def test_large_objects_need_an_overlap_as_large_as_they_are(tmp_path):
    # the known trap: objects ~100 px across, blocks of 256; an overlap of 128 joins them
    mask = _disks((768, 768), 20, 35, 55, seed=4)
    post = {"split": "distance", "h": 2.0, "min_size": 30}
    reference = postprocess(mask, **post)
    _, good = _stitch(tmp_path / "good", mask, post, block=256, overlap=128)
    assert _compare(good, reference)[0] >= 0.99


def test_table_is_in_microns_and_matches_the_labels(tmp_path):
    import pandas as pd

    mask = _disks((400, 400), 25, 8, 20, seed=5)
    post = {"split": "distance", "h": 2.0, "min_size": 30}
    res, stitched = _stitch(tmp_path, mask, post, pixel_size_um=0.5)
    table = pd.read_csv(res.table)
    assert len(table) == res.n_objects
    from skimage.measure import regionprops_table

    ref = pd.DataFrame(regionprops_table(stitched, properties=("label", "area", "perimeter",
                                                               "centroid")))
    merged = table.merge(ref, on="label")
    assert np.allclose(merged.area_um2, merged.area * 0.25)
    assert np.allclose(merged.perimeter_um, merged.perimeter * 0.5)
    assert np.allclose(merged.centroid_y_um, (merged["centroid-0"] + 0.5) * 0.5)
    assert np.allclose(merged.centroid_x_um, (merged["centroid-1"] + 0.5) * 0.5)
    # ClassMapPredictor's probability is 1 on the mask; filled holes (0) lower the mean
    assert (table["class"] == "foreground").all()
    assert (table.mean_probability > 0.99).all() and (table.mean_probability <= 1).all()
    # QuPath GeoJSON beside it: one detection per object, in level-0 pixels, back to labels
    from napari_glandseg.geojson import geojson_to_labels, read_geojson

    features = read_geojson(res.geojson)
    assert len(features) == res.n_objects
    back = geojson_to_labels(features, stitched.shape).labels
    assert np.array_equal(back > 0, stitched > 0)


def test_ome_zarr_pyramid_and_scale_read_back(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    mask = _disks((600, 520), 30, 8, 20, seed=6)
    res, stitched = _stitch(tmp_path, mask, {"split": "none", "min_size": 1},
                            block=256, overlap=32, pixel_size_um=0.25)
    levels, px = read_labels(res.store)
    assert px == 0.25
    assert [tuple(lv.shape) for lv in levels] == [(600, 520), (300, 260), (150, 130)]
    assert np.array_equal(np.asarray(levels[1]), stitched[::2, ::2])
    assert np.array_equal(np.asarray(levels[2]), stitched[::4, ::4])
    # an NGFF reader sees a label image with um scales doubling per level
    nodes = list(Reader(parse_url(str(res.store / "labels" / "glandseg")))())
    node = next(n for n in nodes if n.data)
    ms = node.metadata
    assert [tuple(d.shape) for d in node.data] == [(600, 520), (300, 260), (150, 130)]
    scales = [t[0]["scale"] for t in ms["coordinateTransformations"]]
    assert scales == [[0.25, 0.25], [0.5, 0.5], [1.0, 1.0]]
    assert ms["axes"][0]["unit"] == "micrometer"
    # the plugin's layer data for napari: multiscale labels in um
    from napari_glandseg.slides import labels_layer_data

    data, kwargs, kind = labels_layer_data(res.store)
    assert kind == "labels" and kwargs["scale"] == (0.25, 0.25) and kwargs["multiscale"]
    # in um from the start, as the reader gives the slide (units set after the layer is added
    # left napari's canvas warning of mixed units, with no unit on the scale bar)
    assert kwargs["units"] == ("um", "um")
    # no work files left, the finished store refuses to be replaced silently
    assert not (tmp_path / "image.glandseg-work").exists()
    with pytest.raises(GlandsegError, match="exists"):
        plan_slide(mask, tmp_path, SlideJob.make(predictor=ClassMapPredictor()))


def test_rerun_resumes_skipping_finished_blocks(tmp_path):
    mask = _disks((384, 384), 20, 8, 18, seed=7)
    params = SlideParams(block_size=128, overlap=32, tissue=False)
    post = {"split": "distance", "min_size": 30}

    class Counting(ClassMapPredictor):
        calls = 0

        def __call__(self, levels, box, working=None, stats=None):
            Counting.calls += 1
            if Counting.calls == 5:
                raise RuntimeError("worker lost")
            return super().__call__(levels, box, working, stats)

    with pytest.raises(RuntimeError):
        segment_slide(mask, tmp_path, predictor=Counting(), params=params, post=post)
    assert len(list((tmp_path / "image.glandseg-work").glob("stats_*.npz"))) == 4
    # other settings would mix two runs' blocks: refused, named
    with pytest.raises(GlandsegError, match="other settings.*overlap"):
        segment_slide(mask, tmp_path, predictor=Counting(), post=post,
                      params=SlideParams(block_size=128, overlap=48, tissue=False))

    class Other(ClassMapPredictor):  # another model: its blocks are not this run's
        identity = "another model"

    with pytest.raises(GlandsegError, match=r"other settings \(predictor\)"):
        segment_slide(mask, tmp_path, predictor=Other(), params=params, post=post)
    with pytest.raises(GlandsegError, match="give a model"):
        SlideJob.make(post=post, params=params)
    res = segment_slide(mask, tmp_path, predictor=Counting(), params=params, post=post)
    assert Counting.calls == 5 + 9 - 4 and res.blocks_run == 5
    stitched = np.asarray(read_labels(res.store)[0][0])
    assert _compare(stitched, postprocess(mask, **post))[0] >= 0.99


def test_tissue_mask_on_the_bundled_slide():
    from napari_glandseg.io import read_image

    img = read_image(SVS)
    tm = tissue_mask(img.data, max_side=512)
    low = np.asarray(img.data[0][:: int(tm.downsample), :: int(tm.downsample)])
    grey = low.mean(-1)[: tm.mask.shape[0], : tm.mask.shape[1]]
    assert tm.threshold is not None and 0.2 < tm.fraction < 0.95
    # glass (bright) is outside the mask, stained tissue (dark) inside
    assert grey[~tm.mask].mean() > 215 and grey[tm.mask].mean() < grey[~tm.mask].mean() - 30


def test_tissue_mask_skips_glass_blocks_and_keeps_all_tissue(tmp_path):
    rng = np.random.default_rng(0)
    img = np.full((512, 512, 3), 235, np.uint8) + rng.integers(0, 8, (512, 512, 3), np.uint8)
    img[40:200, 60:220] = (160, 70, 140)  # tissue in the top-left blocks only
    plan = plan_slide(img, tmp_path, SlideJob.make(
        predictor=ClassMapPredictor(),
        params=SlideParams(block_size=128, overlap=16, tissue_side=128)))
    assert plan.todo == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # no glass: Otsu would split tissue in two, so everything is tissue
    tissue_only = np.full((256, 256, 3), (170, 80, 150), np.uint8)
    tissue_only[::7] = (90, 30, 80)
    assert tissue_mask(tissue_only).fraction == 1.0
    no_tissue = SlideJob.make(predictor=ClassMapPredictor(),
                              params=SlideParams(block_size=128, overlap=16, tissue=False))
    assert len(plan_slide(img, tmp_path / "b", no_tissue).todo) == 16


def test_bad_parameters_name_the_value():
    with pytest.raises(GlandsegError, match="block_size"):
        SlideParams(block_size=100)
    with pytest.raises(GlandsegError, match="overlap"):
        SlideParams(block_size=128, overlap=100)
    with pytest.raises(GlandsegError, match="model"):
        next(iter_segment_slide(np.zeros((8, 8)), "/nonexistent"))


def test_model_run_on_a_slide_file(tmp_path, fg_model_factory):
    """The real path: an SVS file, a model from the store, tissue on."""
    # a model working at 4x the slide's pixel size: inference rescales each block (and the
    # network sees 16x fewer pixels, so the test stays quick)
    name = fg_model_factory("fg", pixel_size_um=2.0)
    from napari_glandseg.inference import SegmentParams

    res = segment_slide(str(SVS), tmp_path, name, params=SlideParams(block_size=384,
                                                                     overlap=64),
                        seg=SegmentParams(tile_size=256, device="cpu", precision="fp32"),
                        post={"split": "none", "min_size": 1})
    levels, px = read_labels(res.store)
    # segmented on the pyramid level nearest the model's scale (2x here): the labels cover
    # the slide's extent in um at that level's pixel size
    assert px == pytest.approx(res.pixel_size_um) and px >= 0.499
    assert levels[0].shape[0] * px == pytest.approx(2967 * 0.499, rel=1e-3)
    assert levels[0].shape[1] * px == pytest.approx(2220 * 0.499, rel=1e-3)
    lab = np.asarray(levels[1])
    assert res.blocks_skipped_tissue >= 1
    assert res.n_objects >= 1 and lab.max() >= 1


def test_napari_opens_the_labels_over_the_slide(tmp_path, make_napari_viewer):
    """File > Open on NAME.ome.zarr (the plugin's reader) gives multiscale Labels in um that
    lie exactly over the slide opened from its SVS."""
    from napari_glandseg import _napari

    # a class map the size of the bundled slide, at its um/px
    from napari_glandseg.io import read_image

    slide = read_image(SVS)
    mask = np.zeros(slide.shape[:2], np.uint8)
    mask[1000:1400, 700:1200] = 1
    res = segment_slide(mask, tmp_path, predictor=ClassMapPredictor(), name="cmu",
                        pixel_size_um=slide.pixel_size_um,
                        params=SlideParams(block_size=1024, overlap=64, tissue=False),
                        post={"split": "none", "min_size": 1})
    assert _napari.get_zarr_reader(str(tmp_path / "other.png")) is None
    assert _napari.get_zarr_reader(str(res.store)) is _napari.read_zarr_layers
    viewer = make_napari_viewer()
    viewer.open(str(SVS), plugin="napari-glandseg")
    [layer] = viewer.open(str(res.store), plugin="napari-glandseg")
    assert layer.multiscale and type(layer).__name__ == "Labels"
    assert np.allclose(layer.scale, viewer.layers[0].scale)
    assert np.allclose(layer.extent.world, viewer.layers[0].extent.world[:, :2])
    # the object sits where it was drawn, in um
    yx = layer.world_to_data((1200 * slide.pixel_size_um, 900 * slide.pixel_size_um))
    assert np.allclose(yx, (1200, 900))
    assert int(layer.data[0][1200, 900]) == 1 and int(layer.data[0][900, 900]) == 0


def test_blocks_share_the_whole_slides_normalisation(tmp_path, fg_model_factory, monkeypatch):
    """A model with an image-level normalisation: a pale block and a dark block are
    normalised with the statistics of the whole slide, not each with its own (which would
    stretch the pale block's few grey levels to full contrast and change objects at seams)."""
    import napari_glandseg.inference as inf
    from napari_glandseg.inference import SegmentParams
    from napari_glandseg.preprocess import norm_stats

    name = fg_model_factory("pct", normalization="percentile")
    rng = np.random.default_rng(0)
    image = np.empty((256, 512, 3), np.uint8)
    image[:, :256] = rng.integers(30, 60, (256, 256, 3))    # dark half
    image[:, 256:] = rng.integers(180, 230, (256, 256, 3))  # pale half
    seen = []
    real = inf._normalise
    monkeypatch.setattr(inf, "_normalise", lambda raw, mode, stats: (
        seen.append(tuple(np.round(np.concatenate(stats), 3))), real(raw, mode, stats))[1])
    segment_slide(image, tmp_path, name, params=SlideParams(block_size=128, overlap=16,
                                                            tissue=False),
                  seg=SegmentParams(tile_size=64, device="cpu", precision="fp32"),
                  post={"split": "none", "min_size": 1})
    whole = norm_stats(image, (0, 0, 256, 512), "percentile")
    assert len(seen) >= 8 and len(set(seen)) == 1
    np.testing.assert_allclose(seen[0], np.concatenate(whole), atol=1.0)


def test_unknown_pixel_size_slide_gives_what_segment_gives(tmp_path, fg_model_factory):
    """A pyramid whose pixel size is unknown, and a model working at twice its training
    data's pixel size: blocks are read on the level inference reads (level 1, from the
    card's data scale), so the stitched labels are segment's, not blocks whose labels land
    in their top-left quarter (level 0 planned, level 1 segmented, the rest padded)."""
    from napari_glandseg.inference import SegmentParams
    from napari_glandseg.models import load_model
    from napari_glandseg.pipeline import FileParams, segment_file

    name = fg_model_factory("half", pixel_size_um=1.0, data_pixel_size_um=0.5)
    full = np.full((512, 384, 3), 200, np.uint8)
    levels = [full, full[::2, ::2]]
    seg = SegmentParams(tile_size=64, device="cpu", precision="fp32")
    post = {"split": "none", "min_size": 1, "fill_holes": False}
    res = segment_slide(levels, tmp_path, name, params=SlideParams(block_size=128, overlap=16,
                                                                   tissue=False),
                        seg=seg, post=post)
    ref = segment_file(levels, load_model(name), FileParams(segment=seg, postprocess=post))
    lab = np.asarray(read_labels(res.store)[0][0])
    assert ref.segment.info["level"] == 1 and ref.labels.shape == (256, 192)
    assert lab.shape == ref.labels.shape
    assert (lab > 0).mean() == (ref.labels > 0).mean() == 1.0
    assert res.n_objects == int(ref.labels.max()) == 1


def test_a_block_of_another_shape_is_an_error_not_cropped():
    from napari_glandseg.slides.predictors import _fit

    assert _fit(np.ones((4, 5)), (4, 5)).shape == (4, 5)
    with pytest.raises(RuntimeError, match=r"\(8, 10\).*\(4, 5\)"):
        _fit(np.ones((8, 10)), (4, 5))


def test_a_block_is_segmented_at_the_working_scale_it_is_handed(fg_model_factory):
    """The plan decides the level and rescale once (scale.resolve) and every block runs at
    exactly that: a predictor handed level 0 reads level 0, even where its own geometry
    would choose level 1 (no second decision, no level round trip)."""
    from napari_glandseg.inference import SegmentParams
    from napari_glandseg.scale import resolve

    name = fg_model_factory("half2", pixel_size_um=1.0, data_pixel_size_um=0.5)
    full = np.full((256, 192, 3), 200, np.uint8)
    levels = [full, full[::2, ::2]]
    pred = ModelPredictor(name, SegmentParams(tile_size=64, device="cpu", precision="fp32"))
    own = pred.geometry(levels, None)
    assert own.level == 1 and own == resolve(levels, pred.card)
    classes, prob = pred(levels, (0, 0, 64, 96), own, None)
    assert classes.shape == prob.shape == (64, 96)
    level0 = resolve(levels, pred.card, 1.0)  # pixels at the model's scale: level 0
    assert level0.level == 0 and level0.scale == 1.0
    classes, prob = pred(levels, (0, 0, 200, 150), level0, None)
    assert classes.shape == prob.shape == (200, 150) and (classes > 0).all()


def test_a_slide_unlike_the_models_training_images_is_named_and_a_like_one_is_not(tmp_path):
    """Squamous skin (the bundled SVS) is not colon glands: planning it with glands-he says
    so, as Segment does for an image; a GlaS image planned as a slide does not."""
    from skimage.io import imread

    from napari_glandseg._napari import SAMPLE_DIR

    job = SlideJob.make("glands-he", params=SlideParams(tissue=False))
    skin = plan_slide(str(SVS), tmp_path / "skin", job)
    assert "looks unlike glands-he" in skin.info["appearance"]
    glas = imread(SAMPLE_DIR / "glas_testA_5.jpg")[..., :3]
    assert "appearance" not in plan_slide(glas, tmp_path / "glas", job).info
    # what a ClassMapPredictor cannot say, it does not
    plain = SlideJob.make(predictor=ClassMapPredictor(), params=SlideParams(tissue=False))
    assert "appearance" not in plan_slide(glas[..., 0], tmp_path / "plain", plain).info
