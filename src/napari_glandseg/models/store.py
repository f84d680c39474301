"""The model store: bundled models (package data) and the user's own, listed together.

The user's folder is ``$GLANDSEG_MODELS_DIR`` when set, else the platform's per-user data folder
(``~/.local/share/napari-glandseg/models`` on Linux). Each model is one ``.safetensors`` file
named after the model, carrying its card.

Examples
--------
>>> import os, tempfile
>>> store, work = tempfile.TemporaryDirectory(), tempfile.TemporaryDirectory()
>>> os.environ["GLANDSEG_MODELS_DIR"] = store.name  # a store of its own for this example
>>> from napari_glandseg.models import ModelCard, build_model, save_checkpoint
>>> card = ModelCard(name="tiny", architecture="base_cnn", in_channels=3, num_classes=1,
...                  arch_kwargs={"widths": [4, 8]})
>>> path = save_checkpoint(os.path.join(work.name, "tiny.safetensors"),
...                        build_model("base_cnn", 3, 1, widths=[4, 8]), card)
>>> entry = import_model(path)
>>> [m.name for m in list_models() if m.source == "user"]
['tiny']
>>> load_model("tiny").card.architecture
'base_cnn'
>>> del os.environ["GLANDSEG_MODELS_DIR"]; store.cleanup(); work.cleanup()
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .._files import atomic_path
from .._types import PathType
from ..errors import CheckpointError, GlandsegError, OutputExistsError
from .card import ModelCard
from .checkpoint import Model, load_checkpoint, read_card, save_checkpoint
from .paths import BUNDLED_DIR, ENV_VAR, user_dir  # noqa: F401  (the store's public names)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_cache: dict[tuple, Model] = {}


@dataclass
class ModelEntry:
    """One model file of the store. A broken file (unreadable, or a card that does not
    validate) has ``card`` None and says why in ``error``."""

    name: str
    path: Path
    source: str  # "bundled" or "user"
    card: ModelCard | None
    error: str = ""

    @property
    def broken(self) -> bool:
        return self.card is None


def _entries(folder: Path, source: str) -> list[ModelEntry]:
    if not folder.is_dir():
        return []
    out = []
    for f in sorted(folder.glob("*.safetensors")):
        try:
            out.append(ModelEntry(f.stem, f, source, read_card(f)))
        except Exception as exc:  # noqa: BLE001 - any broken file is listed as broken
            out.append(ModelEntry(f.stem, f, source, None, _reason(f, exc)))
    return out


def _reason(path: Path, exc: Exception) -> str:
    text = str(exc) if isinstance(exc, GlandsegError) else f"{type(exc).__name__}: {exc}"
    return text.removeprefix(f"{path}: ")


def list_models(include_broken: bool = False) -> list[ModelEntry]:
    """Bundled models first, then the user's, each with its card.

    A broken file never hides the others: it is left out, or with ``include_broken``
    listed with ``card`` None and the reason in ``error``.
    """
    entries = _entries(BUNDLED_DIR, "bundled") + _entries(user_dir(), "user")
    return entries if include_broken else [e for e in entries if not e.broken]


def find_model(name: str) -> ModelEntry:
    """The store's entry called ``name``; a broken one raises and says why."""
    entries = list_models(include_broken=True)
    for entry in entries:
        if entry.name == name:
            if entry.broken:
                raise CheckpointError(f"model {name!r} ({entry.path}) is broken: {entry.error}")
            return entry
    names = ", ".join(e.name for e in entries if not e.broken) or "none"
    raise GlandsegError(f"no model named {name!r} in the store (available: {names})")


def model_path(name_or_path: PathType) -> Path:
    """The checkpoint file ``name_or_path`` means: a checkpoint suffix or a folder in it makes
    it a path; a bare name is always the store's (a file called "glands-he" in the working
    folder must not hide the model)."""
    p = Path(name_or_path)
    if p.suffix.lower() in (".safetensors", ".pt", ".pth") or len(p.parts) > 1:
        return p
    return find_model(str(name_or_path)).path


def load_model(name_or_path: PathType, device: str | None = None,
               card: ModelCard | dict | None = None) -> Model:
    """Load a model by store name or file path; loaded models are cached.

    Parameters
    ----------
    name_or_path : str or Path
        A name from :func:`list_models` or a checkpoint file.
    device : str, optional
        Return the model's instance on that device (``"auto"``, ``"cuda"``, ``"mps"``,
        ``"cpu"``; :meth:`Model.on`): the cached instance is never moved.
    card : ModelCard or dict, optional
        The card for a ``.pt``/``.pth`` state dict.
    """
    path = model_path(name_or_path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, None if card is None else
           (card.to_json() if isinstance(card, ModelCard) else repr(sorted(card.items()))))
    model = _cache.get(key)
    if model is None:
        model = _cache[key] = load_checkpoint(path, card=card)
    if device is not None:  # the model's instance on that device; the cached one stays
        from .device import resolve_device

        model = model.on(resolve_device(device))
    return model


def check_model_name(name: str) -> str:
    """``name`` if it can name a model in the store (a file name that stays inside it), else
    a GlandsegError that says what is allowed. Training, the Fine-tune widget and import all
    call this before writing anything.

    >>> check_model_name("glands-mine")
    'glands-mine'
    >>> check_model_name("../../escaped-model")
    Traceback (most recent call last):
    ...
    napari_glandseg.errors.GlandsegError: model name '../../escaped-model' is not allowed: ...
    """
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.endswith("."):
        raise GlandsegError(
            f"model name {name!r} is not allowed: use letters, digits, '.', '_' or '-' "
            "(at most 64 characters, starting with a letter or digit)"
        )
    return name


_check_name = check_model_name  # the old private name


def import_model(path: PathType, name: str | None = None, card: ModelCard | dict | None = None,
                 overwrite: bool = False) -> ModelEntry:
    """Copy a checkpoint into the user's store (a .pt/.pth is converted to .safetensors).

    The file is loaded first, so a broken or unsafe file never enters the store.
    """
    model = load_checkpoint(path, card=card)
    name = check_model_name(name or model.card.name or Path(path).stem)
    if any(e.name == name for e in _entries(BUNDLED_DIR, "bundled")):
        raise GlandsegError(f"{name!r} is a bundled model; import under another name")
    model.card.name = name
    dest = user_dir() / f"{name}.safetensors"
    if dest.exists() and not overwrite:
        raise GlandsegError(f"a model named {name!r} is already in the store; "
                            "choose another name or overwrite")
    save_checkpoint(dest, model.net, model.card, overwrite=overwrite)
    return ModelEntry(name, dest, "user", model.card)


def export_model(name: str, dest: PathType, overwrite: bool = False) -> Path:
    """Copy a stored model to ``dest`` (a file or folder), atomically."""
    entry = find_model(name)
    d = Path(dest)
    if d.is_dir():
        d = d / entry.path.name
    if d.exists() and not overwrite:
        raise OutputExistsError(d)
    with atomic_path(d) as tmp:
        shutil.copyfile(entry.path, tmp)
    return d


def delete_model(name: str) -> None:
    """Remove one of the user's models (bundled models cannot be deleted)."""
    entry = find_model(name)
    if entry.source != "user":
        raise GlandsegError(f"{name!r} is a bundled model and cannot be deleted")
    entry.path.unlink()
    for key in [k for k in _cache if k[0] == str(entry.path.resolve())]:
        del _cache[key]
