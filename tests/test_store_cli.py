import re

import numpy as np
import pytest
import torch

from napari_glandseg import cli
from napari_glandseg.errors import GlandsegError
from napari_glandseg.models import (
    ModelCard,
    build_model,
    delete_model,
    export_model,
    import_model,
    list_models,
    load_model,
    save_checkpoint,
    user_dir,
)


@pytest.fixture
def tiny_file(tmp_path):
    card = ModelCard(name="tiny", architecture="base_cnn", in_channels=3, num_classes=1,
                     arch_kwargs={"widths": [4, 8]}, description="a test model",
                     class_names=["background", "gland"])
    torch.manual_seed(0)
    net = build_model("base_cnn", 3, 1, widths=[4, 8]).eval()
    return save_checkpoint(tmp_path / "tiny.safetensors", net, card), net


def test_import_list_load_cached_export_delete(tmp_path, tiny_file):
    path, net = tiny_file
    entry = import_model(path, name="my-tiny")
    assert entry.path.parent == user_dir() and entry.card.name == "my-tiny"
    assert [(m.name, m.source) for m in list_models() if m.source == "user"] == [
        ("my-tiny", "user")]
    a, b = load_model("my-tiny"), load_model("my-tiny")
    assert a is b  # cached
    x = torch.randn(1, 3, 20, 20)
    with torch.no_grad():
        assert torch.equal(a.net(x), net(x))
    with pytest.raises(GlandsegError, match="already in the store"):
        import_model(path, name="my-tiny")
    out = export_model("my-tiny", tmp_path)
    assert out.read_bytes() == entry.path.read_bytes()
    delete_model("my-tiny")
    with pytest.raises(GlandsegError, match="no model named 'my-tiny'"):
        load_model("my-tiny")


def test_import_refuses_bad_names_and_broken_files(tmp_path, tiny_file):
    path, _ = tiny_file
    with pytest.raises(GlandsegError, match="not allowed"):
        import_model(path, name="../escape")
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    with pytest.raises(GlandsegError, match="bad.safetensors"):
        import_model(tmp_path / "bad.safetensors")
    assert [m for m in list_models() if m.source == "user"] == []


def test_a_broken_file_in_the_store_does_not_hide_the_others(tiny_file):
    import_model(tiny_file[0])
    (user_dir() / "broken.safetensors").write_bytes(b"\x00" * 10)
    assert [m.name for m in list_models() if m.source == "user"] == ["tiny"]


def test_cli_models_list_show_import(tmp_path, tiny_file, capsys):
    path, _ = tiny_file
    assert cli.main(["models", "import", str(path), "--as", "cli-tiny"]) == 0
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "cli-tiny" in out and "Base CNN" in out and "background/gland" in out
    assert cli.main(["models", "show", "cli-tiny"]) == 0
    assert "a test model" in capsys.readouterr().out
    assert cli.main(["models", "delete", "cli-tiny"]) == 2  # needs --yes
    assert "--yes" in capsys.readouterr().err
    assert cli.main(["models", "delete", "cli-tiny", "--yes"]) == 0


def test_cli_models_show_reads_a_checkpoint_file_outside_the_store(tmp_path, tiny_file, capsys):
    path, _ = tiny_file  # e.g. a training run's best.safetensors, before importing it
    assert cli.main(["models", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "a test model" in out and f"file: {path} (not in the store" in out
    assert [m for m in list_models() if m.source == "user"] == []  # shown, not imported
    assert cli.main(["models", "show", str(tmp_path / "gone.safetensors")]) == 2
    assert "gone.safetensors: no such file" in capsys.readouterr().err


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    assert cli.main(["models", "show", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("glandseg: error: no model named 'no-such-model'")
    assert err.count("\n") == 1 and "Traceback" not in err
    (tmp_path / "x.pt").write_bytes(b"junk")
    assert cli.main(["models", "import", str(tmp_path / "x.pt")]) == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["models", "frobnicate"])
    assert exc.value.code == 2


def test_cli_import_pt_with_card(tmp_path, capsys):
    net = build_model("base_cnn", 3, 1, widths=[4, 8])
    torch.save(net.state_dict(), tmp_path / "w.pt")
    card = ModelCard(name="from-pt", architecture="base_cnn", in_channels=3, num_classes=1,
                     arch_kwargs={"widths": [4, 8]})
    (tmp_path / "card.json").write_text(card.to_json())
    assert cli.main(["models", "import", str(tmp_path / "w.pt"), "--card",
                     str(tmp_path / "card.json")]) == 0
    stored = load_model("from-pt")
    assert np.allclose(stored.net.head.weight.detach().numpy(), net.head.weight.detach().numpy())


def _tampered(tiny_file, name, **changes):
    """A copy of the tiny model in the store whose card says ``changes`` (written straight
    into the safetensors metadata, as a hand-edited file would)."""
    import json

    from safetensors.torch import load_file, save_file

    path, _ = tiny_file
    card = json.loads(load_model(path).card.to_json())
    card.update(changes, name=name)
    save_file(load_file(str(path)), str(user_dir() / f"{name}.safetensors"),
              metadata={"glandseg_card": json.dumps(card)})


@pytest.mark.parametrize("changes, reason", [
    ({"pixel_size_um": "abc"}, "pixel_size_um must be a number"),
    ({"arch_kwargs": {"widths": [100000, 8]}}, r"'widths' holds 100000"),
    ({"in_channels": 3.5}, "in_channels must be an integer"),
    ({"postprocess": {"min_size": "big"}}, "min_size must be a non-negative integer"),
    ({"postprocess": {"colour": 1}}, "unexpected keyword argument 'colour'"),
    ({"class_names": "glands"}, "class_names must be a list"),
])
def test_a_tampered_card_is_listed_as_broken_and_hides_nothing(tiny_file, capsys, changes,
                                                               reason):
    # defect 5: one tampered card broke `glandseg models` and `segment --model glands-he`
    import_model(tiny_file[0])
    _tampered(tiny_file, "tampered", **changes)
    assert [m.name for m in list_models() if m.source == "user"] == ["tiny"]
    broken = [m for m in list_models(include_broken=True) if m.broken]
    assert [m.name for m in broken] == ["tampered"]
    assert re.search(reason, broken[0].error)
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "glands-he" in out and "tiny" in out and re.search(rf"tampered .*BROKEN.*{reason}",
                                                              out)
    assert load_model("glands-he").card.name == "glands-he"
    assert cli.main(["models", "show", "tampered"]) == 2
    err = capsys.readouterr().err
    assert "is broken" in err and err.count("\n") == 1


def test_a_card_asking_for_a_huge_network_is_refused_before_building(monkeypatch):
    # defect 5: arch_kwargs within the per-number bound can still multiply into GBs
    import napari_glandseg.models.registry as registry

    devices = []
    real = registry.build_model

    def recording(*args, **kwargs):
        devices.append(torch.empty(0).device.type)  # where new tensors would live
        return real(*args, **kwargs)

    monkeypatch.setattr(registry, "build_model", recording)
    card = ModelCard(name="huge", architecture="unet", in_channels=3, num_classes=1,
                     arch_kwargs={"features": [4096] * 6})
    with pytest.raises(GlandsegError, match="asks for 3,1[0-9,]+ parameters"):
        registry.build_from_card(card)
    assert devices == ["meta"]  # only the probe, which allocates nothing


def test_model_names_must_stay_inside_the_store():
    # item 4: the one name check, exported for training and the Fine-tune widget
    from napari_glandseg.models import check_model_name

    for bad in ("../../escaped-model", "a/b", "", ".hidden", "x" * 65, "..", "name.", 3):
        with pytest.raises(GlandsegError, match="is not allowed"):
            check_model_name(bad)
    assert check_model_name("glands-he_v2.1") == "glands-he_v2.1"


def test_exported_and_imported_models_respect_the_umask(tmp_path, tiny_file):
    # defect 10: exported models (like every output) were 0600 whatever the umask
    import os
    import stat

    old = os.umask(0o022)
    try:
        entry = import_model(tiny_file[0], name="perm")
        out = export_model("perm", tmp_path / "perm-copy.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert stat.S_IMODE(entry.path.stat().st_mode) == 0o644
