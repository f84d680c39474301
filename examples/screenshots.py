"""Screenshots for the README: the whole window and each dock widget, under Xvfb if needed.

    xvfb-run -a python examples/screenshots.py --out docs/images [--model NAME]

Opens napari with the plugin on the GlaS sample, segments it with ``--model`` (default: the
first model in the store, if any) and saves PNGs.
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
    name = args.model or next((m.name for m in list_models()), None)
    if name and widgets["Model"].select(name):
        seg = widgets["Segment"]
        seg.image_box.setCurrentText("glas_testA_5_crop")
        seg.tile.setValue(256)
        loop = QEventLoop()
        worker = seg.run()
        worker.finished.connect(loop.quit)
        loop.exec()
        post = widgets["Post-process"]
        post.labels_box.setCurrentText(seg.last_layers[0].name)
        objects = post.apply()
        compare = widgets["Compare"]
        compare.pred_box.setCurrentText(objects.name)
        compare.truth_box.setCurrentText("glas_testA_5_crop [truth]")
        compare.compute()
        for layer in viewer.layers:
            layer.visible = layer.name in ("glas_testA_5_crop", objects.name)
    viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    for _ in range(5):
        QApplication.processEvents()
    viewer.window.screenshot(str(args.out / "napari-glandseg.png"), canvas_only=False)
    for n, w in widgets.items():
        viewer.window.add_plugin_dock_widget(PLUGIN, n)
        QApplication.processEvents()
        w.grab().save(str(args.out / f"widget-{n.lower()}.png"))
    print("wrote", sorted(p.name for p in args.out.glob("*.png")))
    viewer.close()


if __name__ == "__main__":
    main()
