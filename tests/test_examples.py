"""The examples run as written (under the test display)."""

import runpy
from pathlib import Path

import torch

from napari_glandseg.models import ModelCard, build_model, import_model, save_checkpoint

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_scripted_session(tmp_path, capsys):
    net = build_model("base_cnn", 3, 1, widths=[4, 8])
    torch.nn.init.zeros_(net.head.weight)
    torch.nn.init.constant_(net.head.bias, 10.0)  # everything is gland
    card = ModelCard(name="all-glands", architecture="base_cnn", in_channels=3, num_classes=1,
                     arch_kwargs={"widths": [4, 8]}, postprocess={"split": "none"})
    import_model(save_checkpoint(tmp_path / "m.safetensors", net, card))
    ns = runpy.run_path(str(EXAMPLES / "scripted_session.py"), run_name="not_main")
    metrics = ns["main"](["--model", "all-glands"])
    out = capsys.readouterr().out
    assert "1 objects from all-glands" in out and "object_f1" in out
    # one object covering the whole crop: every pixel of truth is found, precision suffers
    assert metrics["recall"] == 1.0 and metrics["precision"] < 1.0
