"""Open napari with the plugin's widgets docked (used by ``glandseg gui`` and the examples)."""

from __future__ import annotations

PLUGIN = "napari-glandseg"
WIDGETS = ("Load", "Model", "Segment", "Post-process", "Compare", "Fine-tune")


def open_viewer(sample: str | None = "glas", files=(), show: bool = True):
    """A napari viewer with sample data (``glas``, ``monuseg`` or None) and every widget docked.

    Returns the viewer; ``viewer.window.add_plugin_dock_widget`` returns the same widgets again.
    """
    import napari

    viewer = napari.Viewer(title="napari-glandseg", show=show)
    if sample and sample != "none":
        viewer.open_sample(PLUGIN, sample)
    for f in files:
        viewer.open(f, plugin=PLUGIN)
    for name in WIDGETS:
        viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=name != WIDGETS[0])
    viewer.window.add_plugin_dock_widget(PLUGIN, WIDGETS[0])  # bring the first tab forward
    return viewer
