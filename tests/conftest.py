import os
from pathlib import Path

import pytest

# napari's settings (e.g. the reader preferences the plugin's writer records) stay in
# memory: an empty NAPARI_CONFIG means no settings file is read or written (set before
# anything imports napari.settings)
os.environ["NAPARI_CONFIG"] = ""

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def _user_model_store(tmp_path_factory, monkeypatch):
    """Every test gets its own empty user model folder, never the real one."""
    monkeypatch.setenv("GLANDSEG_MODELS_DIR", str(tmp_path_factory.mktemp("models")))


@pytest.fixture(autouse=True)
def _private_tempdir(tmp_path_factory, monkeypatch):
    """Temporary files (large results' zarr stores, ...) go under pytest's own folder, which
    pytest prunes, never straight into the system's /tmp."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("tmp")))


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture
def notes(monkeypatch):
    """Record the widgets' notifications as (level, message) instead of showing them."""
    import napari_glandseg.widgets._common as common

    seen = []
    monkeypatch.setattr(common, "_SHOW", {k: (lambda m, k=k: seen.append((k, m)))
                                          for k in ("info", "warning", "error")})
    return seen


@pytest.fixture
def fg_model_factory(tmp_path):
    """Import into the store a tiny Base CNN whose head says 'foreground' (logit 10)
    everywhere; returns its name. Keyword arguments go to its ModelCard."""
    import torch

    from napari_glandseg.models import ModelCard, build_model, import_model, save_checkpoint

    def make(name: str, **card) -> str:
        net = build_model("base_cnn", 3, 1, widths=[4, 8])
        torch.nn.init.zeros_(net.head.weight)
        torch.nn.init.constant_(net.head.bias, 10.0)
        card = ModelCard(name=name, architecture="base_cnn", in_channels=3, num_classes=1,
                         arch_kwargs={"widths": [4, 8]}, **card)
        import_model(save_checkpoint(tmp_path / f"{name}.safetensors", net, card))
        return name

    return make
