"""Where models live: the bundled folder and the user's store folder (torch-free).

Its own module so that the architectures (the EfficientNet-Lite encoder caches its ImageNet
weights in the store folder) need not import the store, which imports the checkpoints,
which import the architectures.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "bundled_models"
ENV_VAR = "GLANDSEG_MODELS_DIR"


def user_dir() -> Path:
    """The user's model folder (created on first use)."""
    if os.environ.get(ENV_VAR):
        base = Path(os.environ[ENV_VAR]).expanduser()
    elif sys.platform == "win32":
        base = Path(os.environ.get("APPDATA", Path.home())) / "napari-glandseg" / "models"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support" / "napari-glandseg" / "models"
    else:
        xdg = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
        base = Path(xdg) / "napari-glandseg" / "models"
    base.mkdir(parents=True, exist_ok=True)
    return base


__all__ = ["BUNDLED_DIR", "ENV_VAR", "user_dir"]
