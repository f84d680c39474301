"""A pathologist's afternoon in a real napari window, with a screenshot of every step.

    DATA=/path/to/data xvfb-run -a -s "-screen 0 1600x1000x24" \
        python examples/walkthrough.py --out walkthrough/

Opens two GlaS validation images as a dataset, segments the first with glands-he, deletes an
object, Next, segments and compares the second, saves the corrections, fine-tunes on them,
segments again; then a white-blood-cell smear with its class model (Compare per class), a
grey MRI slice segmented with nuclei-he (the out-of-domain warning) and the skin SVS slide
with glands-he. Writes ``NN-step.png`` and ``steps.txt`` (each step's status lines) into
``--out``, for a person to look at.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("DATA", "DATA")))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    from qtpy.QtCore import QEventLoop
    from qtpy.QtWidgets import QApplication

    from napari_glandseg.gui import PLUGIN, WIDGETS, open_viewer

    work = Path(tempfile.mkdtemp(prefix="walkthrough-"))
    ds = work / "glas"
    for sub in ("images", "masks"):
        (ds / sub).mkdir(parents=True)
    for stem in ("train_4", "train_17"):  # a benign and a malignant validation image
        shutil.copy(args.data / "glas/train/images" / f"{stem}.jpg", ds / "images")
        shutil.copy(args.data / "glas/train/instances_cc" / f"{stem}.png", ds / "masks")

    viewer = open_viewer(sample="none", show=True)
    viewer.window._qt_window.resize(1600, 1000)
    w = {n: viewer.window.add_plugin_dock_widget(PLUGIN, n)[1] for n in WIDGETS}
    docks = {n: viewer.window.add_plugin_dock_widget(PLUGIN, n)[0] for n in WIDGETS}
    log = []
    step = [0]

    def wait(worker):
        if worker is not None:
            loop = QEventLoop()
            worker.finished.connect(loop.quit)
            loop.exec()

    def shot(name, dock=None):
        if dock:
            docks[dock].raise_()
        for _ in range(10):
            QApplication.processEvents()
        step[0] += 1
        path = args.out / f"{step[0]:02d}-{name}.png"
        viewer.window.screenshot(str(path), canvas_only=False)
        status = {n: getattr(x, "status", None) for n, x in w.items()}
        lines = [f"## {step[0]:02d} {name}",
                 "layers: " + "; ".join(f"{la.name}{'' if la.visible else ' (hidden)'}"
                                        for la in viewer.layers)]
        lines += [f"{n}: {s.text()}" for n, s in status.items() if s is not None and s.text()]
        log.append("\n".join(lines))
        print(lines[0], flush=True)

    w["Load"].open_dataset(ds)
    w["Model"].select("glands-he")
    shot("open-dataset", "Load")
    shot("model-card", "Model")
    wait(w["Segment"].run())
    shot("segment-first", "Segment")
    objects = w["Segment"].last_layers[0]
    corr = w["Correct"]
    corr.confirm = lambda q: True
    corr.labels_box.setCurrentText(objects.name)
    corr.set_tool("delete")
    import numpy as np

    ids = np.unique(np.asarray(objects.data))
    ys, xs = np.nonzero(np.asarray(objects.data) == ids[-1])
    corr.click((ys[len(ys) // 2], xs[len(xs) // 2]))
    shot("correct-delete", "Correct")
    w["Load"].next()
    shot("next-image", "Segment")
    wait(w["Segment"].run())
    shot("segment-second", "Segment")
    wait(w["Compare"].compute())
    shot("compare-second", "Compare")
    w["Compare"].go_to_object(0)
    shot("compare-zoom-row", "Compare")
    w["Compare"].go_to_object(len(w["Compare"].objects) - 1)
    viewer.reset_view()
    written = w["Load"].save_corrections()
    log.append(f"saved: {written}")
    shot("save-corrections", "Load")
    ft = w["Fine-tune"]
    ft.epochs.setValue(1)
    ft.steps.setValue(10)
    ft.patch.setValue(128)
    ft.batch.setValue(2)
    wait(ft.start())
    shot("fine-tune", "Fine-tune")
    wait(w["Segment"].run())
    shot("segment-again", "Segment")
    w["Load"].previous()
    shot("previous-image", "Compare")

    # a class model on its smear, compared per class
    viewer.layers.clear()
    samples = Path(__file__).resolve().parents[1] / "src/napari_glandseg/sample_data"
    w["Load"].open_files([samples / "wbc_005.png", samples / "wbc_005_classes.png"])
    w["Model"].select("wbc")
    wait(w["Segment"].run())
    w["Compare"].classes.setValue(0)
    wait(w["Compare"].compute())
    shot("wbc-compare-per-class", "Compare")

    # images a model was not made for
    viewer.layers.clear()
    mri = sorted((args.data / "uwm_gi_mri/images").glob("*.png"))[0]
    w["Load"].open_files([mri])
    w["Model"].select("nuclei-he")
    wait(w["Segment"].run())
    shot("mri-with-nuclei-model", "Segment")
    viewer.layers.clear()
    w["Load"].open_files([args.data / "wsi/cmu_small_region.svs"])
    w["Model"].select("glands-he")
    wait(w["Segment"].run())
    shot("svs-with-glands-model", "Segment")

    (args.out / "steps.txt").write_text("\n\n".join(log) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
