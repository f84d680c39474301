"""Open napari with the plugin's widgets docked (used by ``glandseg gui`` and the examples)."""

from __future__ import annotations

from .samples import SAMPLES

PLUGIN = "napari-glandseg"
WIDGETS = ("Load", "Model", "Segment", "Post-process", "Correct", "Compare", "Fine-tune")


def open_viewer(sample: str | None = "glas", files=(), show: bool = True, viewer=None):
    """A napari viewer with sample data (a key of :data:`SAMPLES`, or None) and every widget
    docked, the sample's bundled model selected.

    Returns the viewer (``viewer``, when given one, else a new one);
    ``viewer.window.add_plugin_dock_widget`` returns the same widgets again.
    """
    if viewer is None:
        import napari

        viewer = napari.Viewer(title="napari-glandseg", show=show)
    if sample and sample != "none":
        viewer.open_sample(PLUGIN, sample)
    for f in files:
        viewer.open(f, plugin=PLUGIN)
    docks = {name: viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=True)[0]
             for name in WIDGETS}
    for name, dock in docks.items():  # tabs say "Segment", not "Segment (napari-glandseg)"
        dock.setWindowTitle(name)
    model_widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Model")[1]
    if sample in SAMPLES:
        model_widget.select(SAMPLES[sample])
    model = model_widget.selection.model
    if model is not None and sample and sample != "none":
        segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")[1]
        segment.image_box.setCurrentIndex(0)  # the tile size stays SegmentParams', as the
        # cards' figures were measured (256 gave organs-mri's sample less context)
    from qtpy.QtCore import QTimer

    _full_tab_titles(viewer)
    # raise the tab once the window is shown (raising a hidden tab does nothing)
    QTimer.singleShot(0, docks["Segment" if model is not None else "Load"].raise_)
    return viewer


def _full_tab_titles(viewer) -> None:
    """Tabified docks show whole titles ("Post-process", not "Pos..."): the tab bars Qt
    makes for them elide by default; scroll buttons appear instead when space runs out."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QTabBar

    window = viewer.window._qt_window
    for bar in window.findChildren(QTabBar):
        bar.setElideMode(Qt.TextElideMode.ElideNone)
        bar.setUsesScrollButtons(True)
        bar.setExpanding(False)
