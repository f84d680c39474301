"""Cohorts on dask.distributed: same labels as one process, failures isolated, resume."""

import numpy as np
import pytest

from napari_glandseg.errors import GlandsegError
from napari_glandseg.slides import ClassMapPredictor, SlideParams, read_labels, segment_slide
from napari_glandseg.slides.cohort import CohortParams, iter_segment_cohort, segment_cohort

PARAMS = SlideParams(block_size=128, overlap=32, tissue=False)
POST = {"split": "distance", "h": 2.0, "min_size": 30}
#: threads of this process: quick to start on a 2-core machine
LOCAL = CohortParams(workers=1, threads_per_worker=2, processes=False)


def _disks(seed, shape=(384, 320)):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, np.uint8)
    for _ in range(20):
        r = rng.uniform(8, 18)
        cy, cx = rng.uniform(r, shape[0] - r), rng.uniform(r, shape[1] - r)
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1
    return mask


class Failing(ClassMapPredictor):
    """Raises on the slide whose pixels are all 7 (a stand-in for a corrupt slide)."""

    def __call__(self, levels, box, working=None, stats=None):
        if int(np.asarray(levels[0][:1, :1])[0, 0]) == 7:
            raise RuntimeError("corrupt tile")
        return super().__call__(levels, box, working, stats)


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as c:
        yield c


def test_cohort_equals_one_process_and_a_failure_is_isolated(tmp_path, client):
    images = [_disks(1), np.full((256, 256), 7, np.uint8), _disks(2)]
    seen = []
    gen = iter_segment_cohort(images, tmp_path / "dist", predictor=Failing(), params=PARAMS,
                              post=POST, client=client)
    while True:
        try:
            seen.append(next(gen))
        except StopIteration as stop:
            res = stop.value
            break
    # one progress bar over the cohort: it ends at its total, never goes back
    assert seen[-1].done == seen[-1].total and seen[-1].total >= 2 * 9
    assert all(a.done <= b.done for a, b in zip(seen, seen[1:], strict=False))
    assert [r.name for r in sorted(res.done, key=lambda r: r.name)] == ["image0", "image2"]
    assert len(res.failed) == 1 and res.failed[0][0] == "image1"
    assert "corrupt tile" in res.failed[0][1]
    for r, img in zip(sorted(res.done, key=lambda r: r.name), (images[0], images[2]),
                      strict=True):
        alone = segment_slide(img, tmp_path / "alone", predictor=ClassMapPredictor(),
                              params=PARAMS, post=POST, name=r.name)
        dist = np.asarray(read_labels(r.store)[0][0])
        assert np.array_equal(dist, np.asarray(read_labels(alone.store)[0][0]))
        assert r.n_objects == alone.n_objects > 5


def test_rerun_skips_finished_slides_and_blocks(tmp_path, client):
    images = [_disks(3), _disks(4)]
    first = segment_cohort(images, tmp_path, predictor=ClassMapPredictor(), params=PARAMS,
                           post=POST, client=client)
    assert len(first.done) == 2
    again = segment_cohort(images, tmp_path, predictor=ClassMapPredictor(), params=PARAMS,
                           post=POST, client=client)
    assert again.skipped == ["image0", "image1"] and not again.done
    # a half-done slide: its finished blocks keep their markers and are not run again
    from napari_glandseg.slides import SlideJob, plan_slide, run_block

    job = SlideJob.make(predictor=ClassMapPredictor(), params=PARAMS, post=POST)
    plan = plan_slide(_disks(5), tmp_path, job, name="image2")
    for iy, ix in plan.todo[:5]:
        run_block(plan, iy, ix)
    third = segment_cohort([*images, _disks(5)], tmp_path, predictor=ClassMapPredictor(),
                           params=PARAMS, post=POST, client=client)
    assert [r.name for r in third.done] == ["image2"]
    assert third.done[0].blocks_run == len(plan.todo) - 5


def test_embedded_local_cluster_with_a_model_on_files(tmp_path, fg_model_factory):
    """The real path: files on disk, a model from the store, the embedded LocalCluster."""
    import imageio.v3 as iio

    from napari_glandseg.inference import SegmentParams

    name = fg_model_factory("fg")
    files = []
    for i in range(2):
        img = np.full((300, 260, 3), 240, np.uint8)
        img[50:200, 40:180] = (150, 60, 130)
        files.append(tmp_path / f"slide{i}.png")
        iio.imwrite(files[-1], img)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    res = segment_cohort([str(f) for f in [*files, tmp_path / "broken.png"]], tmp_path / "out",
                         name, params=SlideParams(block_size=128, overlap=32),
                         seg=SegmentParams(tile_size=64, device="cpu"),
                         post={"split": "none", "min_size": 1}, cohort=LOCAL)
    assert sorted(r.name for r in res.done) == ["slide0", "slide1"]
    assert [f for f, _ in res.failed] == [str(tmp_path / "broken.png")]
    assert all(r.n_objects >= 1 for r in res.done)
    assert (tmp_path / "out" / "slide0_objects.csv").exists()


def test_bad_settings_are_one_clear_error(tmp_path):
    with pytest.raises(GlandsegError, match="workers"):
        CohortParams(workers=0)
    with pytest.raises(GlandsegError, match="same outputs"):
        segment_cohort(["a/x.svs", "b/x.svs"], tmp_path, predictor=ClassMapPredictor())


def test_cli_ome_zarr_run_resumes_and_bad_workers_exit_2(tmp_path, fg_model_factory, capsys):
    import imageio.v3 as iio

    from napari_glandseg.cli import main

    name = fg_model_factory("fg")
    img = np.full((200, 300, 3), 240, np.uint8)
    img[30:170, 20:150] = (150, 60, 130)
    iio.imwrite(tmp_path / "s.png", img)
    argv = ["segment", str(tmp_path / "s.png"), "--model", name, "--out", str(tmp_path / "o"),
            "--ome-zarr", "--block-size", "128", "--block-overlap", "32", "--tile", "64",
            "--device", "cpu", "--split", "none", "--quiet"]
    assert main(argv) == 0
    assert "1 segmented" in capsys.readouterr().out
    levels, _ = read_labels(tmp_path / "o" / "s.ome.zarr")
    lab = np.asarray(levels[0])
    assert lab.shape == (200, 300) and lab.max() == 1
    assert lab[100, 80] == 1 and lab[100, 280] == 0  # tissue only; blocks of glass skipped
    assert main(argv) == 0 and "1 skipped" in capsys.readouterr().out
    assert main([*argv, "--workers", "0"]) == 2
    assert "workers" in capsys.readouterr().err


def test_cli_ome_zarr_takes_the_pixel_size_of_a_png(tmp_path, fg_model_factory):
    """--pixel-size reaches block-wise runs: a PNG said to be at 0.5 um/px gets labels in
    um at that scale (and the network sees it rescaled to the model's 1 um/px), as the
    per-file run does; it was ignored (no scale, no rescale)."""
    import imageio.v3 as iio

    from napari_glandseg.cli import main

    name = fg_model_factory("um1", pixel_size_um=1.0)
    iio.imwrite(tmp_path / "s.png", np.full((256, 192, 3), 200, np.uint8))
    argv = ["segment", str(tmp_path / "s.png"), "--model", name, "--tile", "64",
            "--device", "cpu", "--split", "none", "--pixel-size", "0.5", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "o"), "--ome-zarr", "--block-size", "128",
                 "--block-overlap", "32", "--no-tissue"]) == 0
    levels, px = read_labels(tmp_path / "o" / "s.ome.zarr")
    assert px == 0.5 and levels[0].shape == (256, 192)  # the image's grid, at its um/px
