import numpy as np
import pandas as pd
import pytest

from napari_glandseg.errors import GlandsegError
from napari_glandseg.io import read_image
from napari_glandseg.postprocessing import object_table, postprocess, write_csv


def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


@pytest.fixture
def touching():
    """Two touching nucleus-sized disks (radius 10 and 12 px, as in the MoNuSeg fixture)."""
    shape = (64, 80)
    return (_disk(shape, 32, 26, 10) | _disk(shape, 32, 46, 12)).astype(np.uint8)


@pytest.mark.parametrize("split", ["distance", "peaks"])
def test_watershed_splits_two_touching_disks_and_keeps_one_whole(touching, split):
    before = touching.copy()
    assert len(np.unique(postprocess(touching, split="none"))) == 2  # one merged object
    out = postprocess(touching, split=split)
    assert sorted(np.unique(out).tolist()) == [0, 1, 2]
    np.testing.assert_array_equal(out > 0, touching > 0)
    # each piece sits on its own disk: the split line runs near the neck at x ~ 35
    centroids = sorted(np.argwhere(out == i)[:, 1].mean() for i in (1, 2))
    assert centroids[0] < 30 < 40 < centroids[1]
    np.testing.assert_array_equal(touching, before)  # input unchanged
    single = _disk((64, 80), 32, 40, 14).astype(np.uint8)
    assert np.unique(postprocess(single, split=split)).tolist() == [0, 1]


def test_boundary_class_markers():
    shape = (64, 80)
    a, b = _disk(shape, 32, 26, 10), _disk(shape, 32, 46, 12)
    cls = np.zeros(shape, np.uint8)
    cls[a | b] = 2  # boundary
    cls[_disk(shape, 32, 26, 7) | _disk(shape, 32, 46, 9)] = 1  # interiors
    out = postprocess(cls, split="boundary")
    assert out.max() == 2
    # no boundary pixels (an empty or early prediction): connected interiors, no error
    binary = (cls > 0).astype(np.uint8)
    np.testing.assert_array_equal(postprocess(binary, split="boundary"),
                                  postprocess(binary, split="none"))
    with pytest.raises(GlandsegError, match="labels up to 14"):
        postprocess(cls * 7, split="boundary")


def test_small_objects_and_holes():
    mask = np.zeros((40, 40), np.uint8)
    mask[5:25, 5:25] = 1
    mask[12:15, 12:15] = 0  # 9 px hole
    mask[30:32, 30:32] = 1  # 4 px speck
    out = postprocess(mask, split="none", min_size=10)
    assert out.max() == 1 and out[13, 13] == 1 and out[31, 31] == 0
    kept = postprocess(mask, split="none", min_size=1, fill_holes=False)
    assert kept.max() == 2 and kept[13, 13] == 0
    small_holes = postprocess(mask, split="none", min_size=1, max_hole_size=4)
    assert small_holes[13, 13] == 0  # a 9 px hole is larger than 4
    with pytest.raises(GlandsegError, match="min_size must be a non-negative integer, got -1"):
        postprocess(mask, min_size=-1)
    with pytest.raises(GlandsegError, match="unknown split 'magic'"):
        postprocess(mask, split="magic")


def test_real_fixture_nuclei(data_dir):
    truth = read_image(data_dir / "monuseg/TCGA-21-5784-01Z-00-DX1_crop_instances.png").data
    merged = postprocess(truth > 0, split="none", min_size=1)
    split = postprocess(truth > 0, split="distance", min_size=1)
    n_true = len(np.unique(truth)) - 1
    # touching nuclei merge into fewer components; the watershed recovers most of them
    assert merged.max() < n_true
    assert abs(int(split.max()) - n_true) < abs(int(merged.max()) - n_true)


def test_object_table_and_csv(tmp_path):
    labels = np.zeros((20, 30), np.int32)
    labels[2:12, 3:13] = 1  # 10x10 square
    labels[15:17, 20:28] = 4
    image = np.zeros((20, 30, 3), np.uint8)
    image[labels == 1] = (30, 60, 90)
    t = object_table(labels, image, pixel_size_um=0.5)
    assert isinstance(t, pd.DataFrame) and t["label"].tolist() == [1, 4]
    row = t.iloc[0]
    assert row["area"] == 100 and row["solidity"] == 1.0 and row["mean_intensity"] == 60
    assert (row["centroid_y"], row["centroid_x"]) == (6.5, 7.5)
    assert row["area_um2"] == 25.0
    path = write_csv(t, tmp_path / "objects.csv")
    assert pd.read_csv(path)["label"].tolist() == [1, 4]
    with pytest.raises(GlandsegError, match="exists"):
        write_csv(t, path)


def test_objects_that_touch_stay_apart_when_post_processed_again():
    # two touching glands already separated (a Segment result), one small fragment
    objs = np.zeros((40, 60), np.int32)
    objs[5:35, 5:30] = 4
    objs[5:35, 30:55] = 9
    objs[0:2, 0:2] = 7
    for split in ("none", "distance"):
        merged = postprocess(objs, split=split, min_size=10)
        kept = postprocess(objs, split=split, min_size=10, objects=True)
        assert merged.max() == 1 or split == "distance"  # the union is one blob
        assert kept.max() == 2  # the two stay two, the fragment goes
        assert (kept[5:35, 5:30] == kept[10, 10]).all()
        assert (kept[5:35, 30:55] == kept[10, 40]).all()
        assert kept[10, 10] != kept[10, 40]
        assert ((kept > 0) == (objs > 0) & (objs != 7)).all()  # no pixel lost at the contact


@pytest.mark.parametrize("split", ["distance", "boundary"])
def test_objects_without_a_watershed_marker_keep_their_component(split):
    """The markers can miss an object: a 2-px-wide one has no distance maximum of height
    h = 2, a boundary-only one no interior. It is kept whole (its connected component), not
    dropped with its pixels."""
    shape = (60, 80)
    disk = _disk(shape, 30, 20, 12)
    bar = np.zeros(shape, bool)
    bar[10:50, 55:57] = True  # 80 px, 2 px wide: distance 1 everywhere
    if split == "distance":
        labels = (disk | bar).astype(np.uint8)
    else:
        labels = np.zeros(shape, np.uint8)
        labels[disk] = 2
        labels[_disk(shape, 30, 20, 9)] = 1  # the disk's interior
        labels[bar] = 2  # boundary only
    out = postprocess(labels, split=split, min_size=30, h=2.0)
    assert out.max() == 2
    assert (out[bar] == out[30, 56]).all() and out[30, 56] > 0  # the bar, whole
    assert (out[disk] == out[30, 20]).all() and out[30, 20] != out[30, 56]


def test_objects_are_8_connected():
    """Objects are 8-connected everywhere (glands, nuclei, masks from any tool): two squares
    that touch at a corner are one object, for the metrics' masks, post-processing, the
    window-by-window path and the class-map objects."""
    from napari_glandseg.labels import as_instances
    from napari_glandseg.postprocessing import PostprocessParams, iter_postprocess_windows
    from napari_glandseg.progress import run_to_end

    mask = np.zeros((30, 30), np.uint8)
    mask[2:10, 2:10] = 1
    mask[10:18, 10:18] = 1  # meets the first square at one corner only
    assert as_instances(mask).max() == 1
    for split in ("none", "distance"):
        assert postprocess(mask, split=split, min_size=0, h=50.0).max() == 1, split
    params = PostprocessParams(split="none", min_size=0)
    for class_map in (False, True):
        dst = np.zeros(mask.shape, np.uint32)
        n, _ = run_to_end(iter_postprocess_windows(mask, dst, params, window=16, halo=8,
                                                   class_map=class_map))
        assert n == 1 and dst.max() == 1, class_map


def test_window_tables_read_each_objects_own_pixels():
    """Window by window, each object's mean intensity comes from its own pixels (the
    window's region of the image), as the whole-image table gives it."""
    from napari_glandseg.postprocessing import PostprocessParams, iter_postprocess_windows
    from napari_glandseg.progress import run_to_end

    labels = np.zeros((96, 96), np.int32)
    image = np.zeros((96, 96), np.uint8)
    for k, (y, x) in enumerate([(5, 5), (5, 60), (40, 30), (70, 8), (70, 70)], 1):
        labels[y:y + 12, x:x + 12] = k
        image[y:y + 12, x:x + 12] = 40 * k  # each object its own grey
    params = PostprocessParams(split="none", min_size=0, fill_holes=False)
    dst = np.zeros(labels.shape, np.uint32)
    n, table = run_to_end(iter_postprocess_windows(labels, dst, params, window=32, halo=16,
                                                   image=image, objects=True))
    assert n == 5
    whole = object_table(labels, image)
    got = {(round(r.centroid_y), round(r.centroid_x)): r.mean_intensity
           for r in table.itertuples()}
    want = {(round(r.centroid_y), round(r.centroid_x)): r.mean_intensity
            for r in whole.itertuples()}
    assert got == want and sorted(want.values()) == [40, 80, 120, 160, 200]
