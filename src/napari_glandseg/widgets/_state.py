"""The model and device chosen in the Model widget, shared with the other widgets of a viewer."""

from __future__ import annotations

import weakref

from psygnal import Signal


class ModelSelection:
    """Per-viewer selection. ``changed`` is emitted with the selection when either changes."""

    changed = Signal(object)

    def __init__(self):
        self.model = None  # napari_glandseg.models.Model
        self.device = None  # torch.device

    def set(self, model=None, device=None) -> None:
        """Choose a model and/or a device. The model is not moved: a job asks for its
        instance on the device when it starts (``Model.on``), so a job still running on
        the previous device is never disturbed."""
        if model is not None:
            self.model = model
        if device is not None:
            self.device = device
        self.changed.emit(self)


_selections: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def selection_for(viewer) -> ModelSelection:
    if viewer not in _selections:
        _selections[viewer] = ModelSelection()
    return _selections[viewer]


_datasets: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def set_dataset(viewer, pairs) -> None:
    """The dataset Load has open in ``viewer`` (its image/mask pairs on disk): Fine-tune
    validates on the truth files of images it does not train on."""
    _datasets[viewer] = list(pairs)


def dataset_of(viewer) -> list:
    """The pairs of the dataset open in ``viewer`` (empty when none)."""
    return list(_datasets.get(viewer, ()))
