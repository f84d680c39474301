import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from napari_glandseg import cli
from napari_glandseg.io import read_image, write_labels


@pytest.fixture
def fg_model(fg_model_factory):
    return fg_model_factory("cli-fg")


def test_segment_writes_labels_skips_existing_and_reports_failures(tmp_path, data_dir,
                                                                   fg_model, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(data_dir / "glas/train_1_crop.png", inputs / "a.png")
    (inputs / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    code = cli.main(["segment", str(inputs), "--model", fg_model, "--out", str(out),
                     "--tile", "128", "--objects-csv", "--quiet"])
    assert code == 1
    captured = capsys.readouterr()
    assert "1 segmented, 0 skipped, 1 failed" in captured.out and "broken.png" in captured.out
    labels = read_image(out / "a_labels.tif", as_labels=True).data
    assert labels.shape == (256, 256) and labels.max() == 1  # one object covering everything
    assert pd.read_csv(out / "a_objects.csv")["area"].tolist() == [256 * 256]
    # a second run leaves the existing output alone
    (inputs / "broken.png").unlink()
    assert cli.main(["segment", str(inputs / "a.png"), "--model", fg_model, "--out", str(out),
                     "--quiet"]) == 0
    assert "0 segmented, 1 skipped" in capsys.readouterr().out
    assert cli.main(["segment", str(inputs / "a.png"), "--model", fg_model, "--out", str(out),
                     "--quiet", "--overwrite"]) == 0


def test_a_threshold_given_to_a_model_of_classes_is_said_to_do_nothing(
        tmp_path, data_dir, fg_model, capsys):
    image = tmp_path / "a.png"
    shutil.copy(data_dir / "glas/train_1_crop.png", image)
    from napari_glandseg.models import ModelCard, build_model, import_model, save_checkpoint

    classes = "cli-3"
    card = ModelCard(name=classes, architecture="base_cnn", in_channels=3, num_classes=3,
                     arch_kwargs={"widths": [4, 8]}, boundary_class=True,
                     class_names=["background", "interior", "boundary"])
    import_model(save_checkpoint(tmp_path / "cli-3.safetensors",
                                 build_model("base_cnn", 3, 3, widths=[4, 8]), card))
    for model, said in ((classes, True), (fg_model, False)):
        assert cli.main(["segment", str(image), "--model", model, "--out",
                         str(tmp_path / model), "--tile", "128", "--threshold", "0.3",
                         "--quiet"]) == 0
        err = capsys.readouterr().err
        assert ("--threshold is not used by cli-3: its 3 classes" in err) is said
    # not given: nothing said
    assert cli.main(["segment", str(image), "--model", classes, "--out",
                     str(tmp_path / "again"), "--tile", "128", "--quiet"]) == 0
    assert "--threshold" not in capsys.readouterr().err


def test_segment_bad_arguments_exit_2(tmp_path, fg_model, capsys):
    assert cli.main(["segment", str(tmp_path / "none*.png"), "--model", fg_model, "--out",
                     str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["segment", str(tmp_path), "--model", "nope", "--out", str(tmp_path)]) == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["segment", "x.png", "--out", "o"])  # --model missing
    assert exc.value.code == 2


def test_evaluate_folders(tmp_path, data_dir, capsys):
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir()
    truth.mkdir()
    for stem in ("testA_5_crop", "train_1_crop"):
        t = read_image(data_dir / f"glas/{stem}_instances.png").data
        shutil.copy(data_dir / f"glas/{stem}_instances.png", truth / f"{stem}.png")
        p = t.copy()
        if stem == "train_1_crop":
            p[p == p.max()] = 0  # drop one gland
        write_labels(pred / f"{stem}_labels.tif", p)
    code = cli.main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--csv",
                     str(tmp_path / "rows.csv"), "--json", str(tmp_path / "summary.json")])
    assert code == 0
    rows = pd.read_csv(tmp_path / "rows.csv")
    assert rows["name"].tolist() == ["testA_5_crop", "train_1_crop"]
    assert rows["dice"].iloc[0] == 1.0 and rows["dice"].iloc[1] < 1.0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_images"] == 2 and summary["worst"][0] == "train_1_crop"
    assert summary["object_f1"] == pytest.approx(2 * 9 / (2 * 9 + 1))  # 8 + 1 TP of 10
    assert "pooled" in summary["aggregation"]["dice"]
    assert "object_f1" in capsys.readouterr().out
    assert cli.main(["evaluate", "--pred", str(tmp_path / "nothing"), "--truth",
                     str(truth)]) == 2


def _strict_json(text):
    """json.loads that refuses NaN, Infinity and -Infinity (not JSON; Python writes them)."""
    def refuse(name):
        raise ValueError(f"{name} is not valid JSON")

    return json.loads(text, parse_constant=refuse)


def test_evaluate_json_is_valid_json_with_null_for_undefined_values(tmp_path, data_dir):
    """An empty prediction has no Hausdorff distance (inf): the summary said Infinity, which
    strict parsers (JavaScript, jq, R's jsonlite) refuse. Now null, as --help says."""
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir()
    truth.mkdir()
    t = read_image(data_dir / "glas/testA_5_crop_instances.png").data
    shutil.copy(data_dir / "glas/testA_5_crop_instances.png", truth / "a.png")
    write_labels(pred / "a_labels.tif", t * 0)  # nothing found
    out = tmp_path / "summary.json"
    assert cli.main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--json",
                     str(out), "--quiet"]) == 0
    summary = _strict_json(out.read_text())
    assert summary["n_images"] == 1 and summary["dice"] == 0.0
    assert summary["object_hausdorff"] is None and summary["object_hausdorff_std"] is None
    assert summary["image_mean"]["object_hausdorff"] is None
    assert "null" in cli.build_parser()._subparsers._group_actions[0].choices[
        "evaluate"].format_help()


def test_help_on_every_command(capsys):
    for cmd in ("segment", "evaluate", "models", "gui"):
        with pytest.raises(SystemExit) as exc:
            cli.main([cmd, "--help"])
        assert exc.value.code == 0
        assert "example" in capsys.readouterr().out


def test_train_from_config_then_resume(tmp_path, data_dir, capsys):
    data = tmp_path / "ds"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for stem in ("testA_5_crop", "train_1_crop"):
        shutil.copy(data_dir / f"glas/{stem}.png", data / "images" / f"{stem}.png")
        shutil.copy(data_dir / f"glas/{stem}_mask.png", data / "masks" / f"{stem}.png")
    (data / "split.csv").write_text("name,suggested_split\ntestA_5_crop,val\n"
                                    "train_1_crop,train\n")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"name": "cli-train", "architecture": "base_cnn",
                               "arch_kwargs": {"widths": [4, 8]}, "patch_size": 64,
                               "batch_size": 2, "epochs": 1, "steps_per_epoch": 2,
                               "val_patches": 2, "split_csv": "split.csv"}))
    assert cli.main(["train", "--config", str(cfg), "--data", str(data), "--quiet"]) == 0
    out = capsys.readouterr()
    assert "1 training and 1 validation images" in out.err and "cli-train" in out.out
    assert cli.main(["train", "--config", str(cfg), "--data", str(data), "--epochs", "2",
                     "--resume", "--quiet"]) == 0
    assert "epoch 2:" in capsys.readouterr().err
    # a run folder: the import line it prints runs as printed
    assert cli.main(["train", "--config", str(cfg), "--data", str(data), "--name", "cli-run",
                     "--run-dir", str(tmp_path / "run"), "--quiet"]) == 0
    printed = capsys.readouterr().out.split("make it a model with: glandseg ")[1].split()
    assert printed[:2] == ["models", "import"] and printed[-2:] == ["--as", "cli-run"]
    assert cli.main(printed) == 0
    cfg.write_text(json.dumps({"name": "x", "learning_rate": 1}))
    assert cli.main(["train", "--config", str(cfg), "--data", str(data)]) == 2
    assert "unknown training settings: learning_rate" in capsys.readouterr().err
    # --gap-weight reaches the settings (and is checked there)
    assert cli.main(["train", "--data", str(data), "--name", "gw", "--target", "mask",
                     "--gap-weight", "5"]) == 2
    assert "gap_weight needs target='boundary'" in capsys.readouterr().err


def test_segment_a_slide_leaves_no_temporary_store(tmp_path, data_dir, fg_model, monkeypatch):
    import napari_glandseg.inference as inf

    made = []
    real = inf.tempfile.mkdtemp
    monkeypatch.setattr(inf.tempfile, "mkdtemp", lambda **kw: made.append(real(**kw)) or made[-1])
    code = cli.main(["segment", str(data_dir / "wsi/cmu_small_region.svs"), "--model", fg_model,
                     "--out", str(tmp_path), "--quiet", "--tile", "512", "--split", "none"])
    assert code == 0
    labels = read_image(tmp_path / "cmu_small_region_labels.tif", as_labels=True)
    assert labels.data.shape == (2967, 2220) and labels.pixel_size_um == pytest.approx(0.499)
    assert len(made) == 1 and not Path(made[0]).exists()


def test_progress_bar_in_a_log_writes_a_line_per_tenth(capsys):
    from napari_glandseg.progress import Progress

    bar = cli._Bar("training", quiet=False)  # pytest's stderr is not a terminal
    for i in range(1, 301):
        bar(Progress(i, 300, elapsed=i * 0.1))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 11 and "\r" not in "".join(lines)  # the start, then each tenth
    assert lines[0].startswith("training [....") and " 1/300 " in lines[0]
    assert lines[3].startswith("training [#########....") and lines[-1].endswith("300/300")
