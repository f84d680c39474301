"""Screenshots for the README: the whole window and each dock widget, under Xvfb if needed.

    xvfb-run -a python examples/screenshots.py --out docs/images [--model NAME]

Opens napari with the plugin on the GlaS sample, segments it into objects with ``--model``
(default: the first model in the store, if any), compares them with the truth and saves
PNGs.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/images"))
    ap.add_argument("--model", default=None)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    from qtpy.QtCore import QEventLoop
    from qtpy.QtWidgets import QApplication

    from napari_glandseg.gui import PLUGIN, WIDGETS, open_viewer
    from napari_glandseg.models import list_models

    viewer = open_viewer(sample="glas", show=True)
    viewer.window._qt_window.resize(1400, 900)
    widgets = {n: viewer.window.add_plugin_dock_widget(PLUGIN, n)[1] for n in WIDGETS}
    docks = {n: viewer.window.add_plugin_dock_widget(PLUGIN, n)[0] for n in WIDGETS}

    def wait(worker):
        if worker is not None:
            loop = QEventLoop()
            worker.finished.connect(loop.quit)
            loop.exec()

    name = args.model or next((m.name for m in list_models()), None)
    objects = None
    if name and widgets["Model"].select(name):
        seg = widgets["Segment"]
        seg.image_box.setCurrentText("glas_testA_5")
        seg.tile.setValue(256)
        seg.show_probs.setChecked(True)
        wait(seg.run())  # objects straight away (the card's post-processing)
        objects = seg.last_layers[0]
        compare = widgets["Compare"]  # defaults: the new objects against the truth
        wait(compare.compute())
        compare.go_to_object(0)
        viewer.reset_view()
        for layer in viewer.layers:
            layer.visible = layer.name in ("glas_testA_5", objects.name)
        viewer.layers.selection.active = objects
    docks["Segment"].raise_()
    for _ in range(5):
        QApplication.processEvents()
    viewer.window.screenshot(str(args.out / "napari-glandseg.png"), canvas_only=False)
    for n, w in widgets.items():
        docks[n].raise_()
        for _ in range(3):
            QApplication.processEvents()
        w.grab().save(str(args.out / f"widget-{n.lower()}.png"))
    print("wrote", sorted(p.name for p in args.out.glob("*.png")))
    viewer.close()


if __name__ == "__main__":
    main()
