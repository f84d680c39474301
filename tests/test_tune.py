"""Post-processing chosen on validation images by object scores (napari_glandseg.tune)."""

import numpy as np
import pytest
import torch

from napari_glandseg.errors import GlandsegError
from napari_glandseg.models import Model, ModelCard, list_models, load_model
from napari_glandseg.training import TrainingPair
from napari_glandseg.tune import TuneMetric, candidate_grid, save_tuned, tune


class _Scores(torch.nn.Module):
    """A 'network' whose logits are the image's channels: what it predicts is drawn by hand."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * 20 * self.w


def _two_touching_disks():
    yy, xx = np.mgrid[:80, :120]
    a = (yy - 40) ** 2 + (xx - 40) ** 2 < 22 ** 2
    b = ((yy - 40) ** 2 + (xx - 78) ** 2 < 22 ** 2) & ~a
    truth = a * 1 + b * 2
    image = np.zeros((80, 120, 3), np.uint8)
    image[..., 0] = 255 * (truth == 0)
    image[..., 1] = 255 * (truth > 0)  # predicted interior everywhere: the disks touch
    return image, truth.astype(np.uint16)


@pytest.fixture
def merged_model():
    card = ModelCard(name="scores", architecture="base_cnn", in_channels=3, num_classes=3,
                     boundary_class=True, normalization="unit",
                     class_names=["background", "interior", "boundary"],
                     postprocess={"split": "none", "min_size": 50})
    return Model(_Scores(), card)


def test_tuning_finds_the_split_that_separates_touching_objects(merged_model):
    image, truth = _two_touching_disks()
    pairs = [TrainingPair(image, truth, "two")]
    res = tune(merged_model, pairs, TuneMetric.OBJECT_F1)
    # the card's setting (no split) merges the two disks: one match of two (F1 2/3); a
    # watershed splits them
    assert res.current_score == pytest.approx(2 / 3)
    assert res.score == 1.0 and res.best["split"] in ("distance", "peaks")
    assert res.table[0]["object_f1"] == 1.0 and res.table[-1]["object_f1"] < 1.0
    assert [r["object_f1"] for r in res.table] == sorted((r["object_f1"] for r in res.table),
                                                          reverse=True)


def test_auto_metric_follows_the_checkpoint_selection(merged_model):
    image, truth = _two_touching_disks()
    merged_model.card.metrics = {"selected_on": "val_aji"}
    grid = candidate_grid({"split": "none", "min_size": 50}, boundary=True)[:3]
    res = tune(merged_model, [TrainingPair(image, truth, "two")], grid=grid)
    assert res.metric == "aji" and len(res.table) == 3


def test_tuned_copy_goes_into_the_store_and_never_replaces(merged_model, tmp_path):
    image, truth = _two_touching_disks()
    res = tune(merged_model, [TrainingPair(image, truth, "two")], "object_f1")
    from napari_glandseg.models import build_from_card

    card = ModelCard(name="tiny", architecture="base_cnn", in_channels=3, num_classes=3,
                     arch_kwargs={"widths": [4, 8]}, boundary_class=True,
                     class_names=["background", "interior", "boundary"],
                     postprocess={"split": "none"})
    tiny = Model(build_from_card(card), card)
    save_tuned(tiny, res, "tiny-tuned", "one hand-made image")
    stored = load_model("tiny-tuned").card
    assert stored.postprocess == res.best and stored.metrics["tuned_object_f1"] == 1.0
    assert "tiny-tuned" in {m.name for m in list_models()}
    with pytest.raises(GlandsegError, match="a model named 'tiny-tuned' exists"):
        save_tuned(tiny, res, "tiny-tuned")


def test_class_map_models_have_nothing_to_tune():
    card = ModelCard(name="wbcish", architecture="base_cnn", in_channels=3, num_classes=3)
    with pytest.raises(GlandsegError, match="class-map model has no object split"):
        tune(Model(_Scores(), card), [TrainingPair(np.zeros((8, 8, 3), np.uint8),
                                                   np.ones((8, 8), np.uint8))])


def test_cli_tune_prints_the_table_and_saves_a_copy(tmp_path, fg_model_factory, capsys):
    from skimage.io import imsave

    from napari_glandseg.cli import main

    image, truth = _two_touching_disks()
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for n in ("a", "b"):
        imsave(tmp_path / "images" / f"{n}.png", image, check_contrast=False)
        imsave(tmp_path / "masks" / f"{n}.png", truth, check_contrast=False)
    name = fg_model_factory("allfg", postprocess={"split": "none"})
    rc = main(["tune", "--model", name, "--data", str(tmp_path), "--quiet", "--top", "3"])
    out = capsys.readouterr().out
    assert rc == 0 and "| setting |" in out and "allfg-tuned" in out
    tuned = load_model("allfg-tuned").card
    assert "tuned_objects" in tuned.metrics and "1 validation image(s)" in tuned.metrics["tuned_on"]
    assert load_model(name).card.postprocess == {"split": "none"}  # the original is untouched
    assert main(["tune", "--model", name, "--data", str(tmp_path / "nope")]) == 2


def test_worker_processes_give_the_same_table_and_cancel_stops_them(merged_model,
                                                                   monkeypatch):
    """Settings scored in spawned processes (forced here: the grid is small) give the table
    scored in this process, row for row; closing the generator (Cancel) shuts the pool and
    drops the settings not started."""
    import concurrent.futures

    import napari_glandseg.tune as T

    pools = []

    class Pool(concurrent.futures.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pools.append(self)
            self.closed_with = None

        def shutdown(self, wait=True, *, cancel_futures=False):
            self.closed_with = cancel_futures
            super().shutdown(wait=wait, cancel_futures=cancel_futures)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", Pool)
    image, truth = _two_touching_disks()
    pairs = [TrainingPair(image, truth, "a"),
             TrainingPair(image[:, ::-1].copy(), truth[:, ::-1].copy(), "b")]
    grid = candidate_grid({"split": "distance", "h": 2.0, "min_size": 50}, boundary=True)[:12]
    here = tune(merged_model, pairs, "object_f1", grid=grid, workers=2)
    assert pools == []  # a small grid is scored here: starting workers would cost more
    monkeypatch.setattr(T, "SPAWN_AFTER_S", 0.0)
    pooled = tune(merged_model, pairs, "object_f1", grid=grid, workers=2)
    assert len(pools) == 1 and pools[0]._max_workers == 2
    assert pooled.table == here.table and pooled.best == here.best
    predictions = [((truth > 0).astype(np.uint8), truth)]
    gen = T._scored(grid, predictions, 2)
    assert next(gen)[0] == 0 and next(gen)[0] > 0  # the second comes from the pool
    gen.close()
    assert len(pools) == 2 and pools[1].closed_with is True
    with pytest.raises(GlandsegError, match="at least one setting"):
        tune(merged_model, pairs, "object_f1", grid=[])


def test_workers_do_not_run_the_callers_script_again(tmp_path):
    """Spawn runs the main script again in each worker unless it has a __main__ guard; a
    napari script without one would open a window per worker. The workers need nothing
    from it, and must not run it."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(
        "print('SCRIPT RAN', flush=True)\n"
        "import numpy as np\n"
        "import napari_glandseg.tune as T\n"
        "from napari_glandseg.postprocessing import PostprocessParams\n"
        "truth = np.zeros((40, 40), np.uint16)\n"
        "truth[5:15, 5:15], truth[20:30, 20:30] = 1, 2\n"
        "T.SPAWN_AFTER_S = 0.0\n"
        "grid = [PostprocessParams(min_size=m) for m in (0, 1, 2, 3)]\n"
        "done = dict(T._scored(grid, [((truth > 0).astype(np.uint8), truth)], 2))\n"
        "print('SCORED', len(done), flush=True)\n")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("SCRIPT RAN") == 1 and "SCORED 4" in run.stdout


def test_cli_tune_refuses_zero_workers_in_one_line(tmp_path, capsys):
    from napari_glandseg.cli import main

    assert main(["tune", "--model", "glands-he", "--data", str(tmp_path),
                 "--workers", "0"]) == 2
    assert "--workers must be 1 or more" in capsys.readouterr().err


def test_near_ties_go_to_the_setting_with_the_better_objects():
    from napari_glandseg.tune import choose

    # AJI cannot tell these apart on a few images; the minimum size that removes specks
    # has far better object F1 and PQ, so it is chosen
    specks = {"min_size": 0, "object_f1": 0.63, "object_dice": 0.74, "aji": 0.569, "pq": 0.45}
    clean = {"min_size": 80, "object_f1": 0.73, "object_dice": 0.74, "aji": 0.568, "pq": 0.51}
    worse = {"min_size": 9, "object_f1": 0.90, "object_dice": 0.90, "aji": 0.50, "pq": 0.90}
    assert choose([specks, worse, clean], "aji")[0] is clean
    assert choose([specks, worse, clean], "aji", tie=0.0)[0] is specks  # no tie: the best AJI
    assert [r["min_size"] for r in choose([specks, worse, clean], "aji")] == [80, 0, 9]
