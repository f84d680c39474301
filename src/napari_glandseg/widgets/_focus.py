"""The image on show: one per viewer, followed by every dock widget.

Load's Next / Previous, opening an image (Load or File > Open) and selecting an image layer
set it. Each widget then points its boxes at that image's layers: the image itself, its
newest result (objects or class map) and its truth. Results, validation and compare layers
of other images are hidden (never removed: nothing is lost), so nothing on screen belongs
to an image that is not on show.

Every layer made from an image records it: ``metadata["source_image"]`` is the image
layer's name. :func:`layers_of` and :func:`newest_of` read that record; they are the one
place that decides which layers belong to an image.
"""

from __future__ import annotations

import weakref

from psygnal import Signal

#: roles of layers made from an image: hidden when another image is shown
DERIVED_ROLES = (
    "prediction",
    "objects",
    "probability",
    "uncertainty",
    "validation",
    "compare",
    "before",
    "after",
)
#: roles of a result a user compares, corrects or post-processes
RESULT_ROLES = ("objects", "prediction")
#: image layers that are maps of a result, not images to segment
MAP_ROLES = ("probability", "uncertainty")


def is_source_image(layer) -> bool:
    """An Image layer a user segments (not a probability or uncertainty map)."""
    from napari.layers import Image

    return isinstance(layer, Image) and layer.metadata.get("glandseg_role") not in MAP_ROLES


def layers_of(viewer, image_name: str | None, roles=None) -> list:
    """The layers made from image ``image_name`` (its truth, results, maps, overlays), in
    layer-list order (newest last), optionally only those with one of ``roles``."""
    if not image_name:
        return []
    return [
        la
        for la in viewer.layers
        if la.metadata.get("source_image") == image_name
        and (roles is None or la.metadata.get("glandseg_role") in roles)
    ]


def newest_of(viewer, image_name: str | None, roles) -> object | None:
    """The newest layer of ``image_name`` with one of ``roles`` (the last added: a new run
    is added on top), or None."""
    found = layers_of(viewer, image_name, roles)
    return found[-1] if found else None


class ImageFocus:
    """The image on show in one viewer; ``changed`` is emitted with its layer name."""

    changed = Signal(str)
    #: a layer made from the image on show was added (a new result, its truth)
    layers_changed = Signal(str)

    def __init__(self, viewer):
        self._viewer = weakref.ref(viewer)
        images = [la for la in viewer.layers if is_source_image(la) and la.visible]
        self.name: str | None = images[-1].name if images else None
        viewer.layers.events.inserted.connect(self._inserted)
        viewer.layers.events.removed.connect(self._removed)
        viewer.layers.selection.events.active.connect(self._activated)

    @property
    def viewer(self):
        return self._viewer()

    def set(self, image) -> None:
        """Show ``image`` (a layer or its name): hide what other images derived, tell the
        widgets. Setting the image already on show only re-tells them."""
        name = getattr(image, "name", image)
        viewer = self.viewer
        if viewer is None or not name or name not in viewer.layers:
            return
        self.name = name
        for layer in viewer.layers:
            meta = layer.metadata
            src = meta.get("source_image")
            if src and src != name and meta.get("glandseg_role") in DERIVED_ROLES:
                layer.visible = False
        self.changed.emit(name)

    def _inserted(self, event) -> None:
        layer = event.value
        if is_source_image(layer) and layer.metadata.get("glandseg_role") in (None, "image"):
            self.set(layer)
        elif self.name and layer.metadata.get("source_image") == self.name:
            self.layers_changed.emit(self.name)

    def _removed(self, event) -> None:
        if getattr(event.value, "name", None) == self.name:
            self.name = None

    def _activated(self, event) -> None:
        layer = event.value
        if (
            layer is not None
            and is_source_image(layer)
            and layer.name != self.name
            and layer.visible
        ):
            self.set(layer)


_focus: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def focus_for(viewer) -> ImageFocus:
    """The viewer's :class:`ImageFocus` (made on first use)."""
    if viewer not in _focus:
        _focus[viewer] = ImageFocus(viewer)
    return _focus[viewer]


def is_news(widget, key: tuple) -> bool:
    """Whether ``key`` (the image on show and the newest layers a widget's boxes follow)
    differs from the last one ``widget`` followed; remembers it. A box moves on news only,
    never away from a user's choice because some other layer of the image came in (an
    overlay, a widget's own output)."""
    if getattr(widget, "_followed", None) == key:
        return False
    widget._followed = key
    return True


def follow(widget, viewer, callback) -> ImageFocus:
    """Call ``callback(image_name)`` whenever the image on show changes or gains a layer,
    for as long as ``widget`` (a QWidget) lives; returns the focus."""
    focus = focus_for(viewer)
    focus.changed.connect(callback)
    focus.layers_changed.connect(callback)

    def _disconnect(*_):
        for sig in (focus.changed, focus.layers_changed):
            try:
                sig.disconnect(callback)
            except (ValueError, RuntimeError):
                pass

    widget.destroyed.connect(_disconnect)
    return focus
