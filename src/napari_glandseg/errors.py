"""Errors the core raises for bad input.

Every message names the offending value (a file, a shape, a parameter) so the GUI can show it
as a notification and the command line can print it as one line and exit with code 2.
"""

from __future__ import annotations

import os
from enum import Enum
from types import ModuleType
from typing import Any, TypeVar

E = TypeVar("E", bound=Enum)


class GlandsegError(ValueError):
    """Bad input to a napari-glandseg function: the message says what and how to fix it."""


class ImageReadError(GlandsegError):
    """A file could not be read as an image or mask."""


class OutputExistsError(GlandsegError):
    """An output file or folder exists and the caller did not ask to replace it."""

    def __init__(self, path: str | os.PathLike[str],
                 how: str = "pass overwrite to replace it") -> None:
        self.path = path
        super().__init__(f"{path}: exists; {how}")


class CheckpointError(GlandsegError):
    """A model file is missing, corrupt, unsafe or does not match its card."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import an optional dependency, or raise a GlandsegError saying which extra of
    napari-glandseg installs it (the core installs without napari, Qt, matplotlib and
    dask.distributed)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise GlandsegError(f"{what} needs {module.split('.')[0]}: "
                            f"pip install 'napari-glandseg[{extra}]'") from None


def as_enum(cls: type[E], value: Any, name: str) -> E:
    """``cls(value)`` for a string Enum, or a GlandsegError naming the bad value and the
    choices (MONAI's habit: validate early, say what would have been right)."""
    try:
        return cls(getattr(value, "value", value))
    except ValueError:
        raise GlandsegError(f"unknown {name} {value!r}; expected one of "
                            + ", ".join(m.value for m in cls)) from None
