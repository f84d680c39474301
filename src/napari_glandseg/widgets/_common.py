"""Small helpers shared by the dock widgets: notifications and layer bookkeeping."""

from __future__ import annotations

from napari.utils.notifications import show_error, show_info, show_warning

_SHOW = {"info": show_info, "warning": show_warning, "error": show_error}


def spin(lo, hi, value, step=None, decimals=None, tooltip: str = "", special: str = ""):
    """A spin box in one call: integer, or decimal when ``decimals`` is given."""
    from qtpy.QtWidgets import QDoubleSpinBox, QSpinBox

    box = QDoubleSpinBox() if decimals is not None else QSpinBox()
    if decimals is not None:
        box.setDecimals(decimals)
    box.setRange(lo, hi)
    if step is not None:
        box.setSingleStep(step)
    box.setValue(value)
    if tooltip:
        box.setToolTip(tooltip)
    if special:
        box.setSpecialValueText(special)
    return box


def check(text: str, checked: bool = False, tooltip: str = ""):
    """A check box in one call."""
    from qtpy.QtWidgets import QCheckBox

    box = QCheckBox(text)
    box.setChecked(checked)
    if tooltip:
        box.setToolTip(tooltip)
    return box


def choices(values, current=None, tooltip: str = ""):
    """A combo box of ``values`` (an enum's values, names...) in one call."""
    from qtpy.QtWidgets import QComboBox

    box = QComboBox()
    box.addItems([getattr(v, "value", v) for v in values])
    if current is not None:
        box.setCurrentText(getattr(current, "value", current))
    if tooltip:
        box.setToolTip(tooltip)
    return box


def notify(level: str, message: str) -> None:
    """Show a napari notification (``level`` is info, warning or error)."""
    _SHOW[level](message)


def track_edits(layer) -> None:
    """Mark ``layer.metadata['edited']`` (and ``'unsaved'``, until Load's Save corrections
    writes it) once the user paints, fills or erases on it."""
    layer.metadata.setdefault("edited", False)
    layer.metadata.setdefault("unsaved", False)

    def _mark(event=None):
        layer.metadata["edited"] = True
        layer.metadata["unsaved"] = True

    layer.events.paint.connect(_mark)


def label_features(table):
    """An object table as a Labels layer's ``features``: napari shows, on hover, the row
    whose ``index`` is the label under the cursor (without that column it takes row number
    = label, which after a deletion or merge is another object's row). The one place that
    keys a table by label."""
    if table is None or "index" in table or "label" not in table:
        return table
    table = table.copy()
    table.insert(0, "index", table["label"].astype(int).to_numpy())
    return table


def table_for_csv(table):
    """A layer's features as written to CSV: without napari's ``index`` column where the
    ``label`` column says the same."""
    if table is not None and "index" in table and "label" in table:
        return table.drop(columns="index")
    return table


def unique_name(viewer, name: str, run: bool = False) -> str:
    """``name``, or ``name (2)``, ``name (3)``... so that no existing layer is replaced.

    ``run``: a new result of a run, numbered at the front (``run 2: name``), where napari's
    layer list, which cuts long names at the end, still tells it from the earlier ones."""
    taken = {layer.name for layer in viewer.layers}
    if name not in taken:
        return name
    i = 2
    while (f"run {i}: {name}" if run else f"{name} ({i})") in taken:
        i += 1
    return f"run {i}: {name}" if run else f"{name} ({i})"


def fill_layer_box(box, viewer, kind, extra=(), exclude=()) -> None:
    """Refill a QComboBox with the names of ``kind`` layers, keeping the current choice."""
    current = box.currentText()
    names = list(extra) + [la.name for la in viewer.layers
                           if isinstance(la, kind) and la.name not in exclude]
    box.blockSignals(True)
    box.clear()
    box.addItems(names)
    if current in names:
        box.setCurrentText(current)
    box.blockSignals(False)


def map_colormap(colour: str):
    """One saturated ``colour`` whose opacity rises from 0 at low values to 1 at high, so a
    probability or uncertainty map over H&E tints the tissue (which stays visible through
    the layer's opacity) instead of washing it out to white as a bright colormap does."""
    import numpy as np
    from napari.utils.colormaps import Colormap
    from napari.utils.colormaps.standardize_color import transform_color

    x = np.linspace(0.0, 1.0, 17)
    rgba = np.repeat(transform_color(colour), len(x), axis=0).astype(np.float32)
    rgba[:, 3] = x
    return Colormap(colors=rgba, controls=x, name=f"{colour} (clear when low)")


def speak_micrometres(viewer) -> None:
    """Give every layer of ``viewer``, now and when added, micrometre units in its two
    spatial axes where it has none (napari's default, "pixel").

    napari draws a scale bar in a unit only when all layers agree on it; a slide opens in
    micrometres, while predictions, objects, overlays and the user's own Shapes/Labels
    layers are made with pixel units. Units do not move a layer (its scale does), so this
    only lets the scale bar say um. Connected once per viewer.
    """
    import pint

    if getattr(viewer, "_glandseg_um", False):
        return
    viewer._glandseg_um = True
    um = pint.get_application_registry().Unit("micrometer")

    def adopt(layer) -> None:
        units = tuple(getattr(layer, "units", ()) or ())
        if len(units) < 2 or any(str(u) not in ("pixel", "micrometer") for u in units[-2:]):
            return
        # an image opened without a pixel size is not in micrometres (the user's shapes and
        # labels drawn over a slide are: they live in its world coordinates)
        if layer.metadata.get("glandseg_role") == "image" and \
                not layer.metadata.get("pixel_size_um"):
            return
        if any(str(u) == "pixel" for u in units[-2:]):
            layer.units = (*units[:-2], um, um)

    for layer in list(viewer.layers):
        adopt(layer)
    # first: before napari's canvas reads the units of the new layer (it warns on a mix)
    viewer.layers.events.inserted.connect(lambda event: adopt(event.value), position="first")
