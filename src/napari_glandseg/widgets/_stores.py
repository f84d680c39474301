"""Temporary zarr stores behind large result layers (Segment, Post-process).

A store lives as long as a layer shows it (``layer.metadata["store_path"]``): it is removed
with the last such layer, with the widget that made it, at exit, and at once when its job
fails, is cancelled, or its result is never shown.
"""

from __future__ import annotations

import atexit
from functools import partial

from .. import inference

#: Stores of results shown as layers; removed with their layer or at exit.
STORES: set[str] = set()


def remove_store(path: str) -> None:
    inference.remove_store(path)
    STORES.discard(path)


atexit.register(lambda: [remove_store(p) for p in list(STORES)])


def _remove_all(paths: set, *_) -> None:
    for path in list(paths):
        remove_store(path)
    paths.clear()


def in_use(viewer, path) -> bool:
    return any(la.metadata.get("store_path") == path for la in list(viewer.layers))


class StoreKeeper:
    """The stores one widget made: registered when shown, removed with their last layer or
    with the widget (its window closing deletes it)."""

    def __init__(self, widget, viewer):
        self.viewer = viewer
        self.paths: set[str] = set()
        widget.destroyed.connect(partial(_remove_all, self.paths))
        viewer.layers.events.removed.connect(self._layer_removed)

    def keep(self, path) -> None:
        """``path`` is about to be shown in a layer."""
        if path:
            STORES.add(path)
            self.paths.add(path)

    def discard(self, path) -> None:
        """Remove ``path`` unless a layer shows it (a result that is never shown)."""
        if path and not in_use(self.viewer, path):
            remove_store(path)
            self.paths.discard(path)

    def _layer_removed(self, event) -> None:
        path = getattr(event.value, "metadata", {}).get("store_path")
        if path and path in STORES and not in_use(self.viewer, path):
            remove_store(path)
            self.paths.discard(path)
