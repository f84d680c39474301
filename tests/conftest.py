from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def _user_model_store(tmp_path_factory, monkeypatch):
    """Every test gets its own empty user model folder, never the real one."""
    monkeypatch.setenv("GLANDSEG_MODELS_DIR", str(tmp_path_factory.mktemp("models")))


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
