"""UI responsiveness while the Segment widget runs: longest gap between 10 ms QTimer ticks.

    python benchmarks/bench_ui.py [--size 1536]        (needs a display; xvfb-run works)

Measures the timer's gaps for 2 s idle (the baseline, same run), then while a default U-Net
segments a ``--size`` x ``--size`` RGB image through the widget. Aim: longest gap < 100 ms.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1536)
    args = ap.parse_args(argv)

    import os
    import tempfile

    os.environ.setdefault("GLANDSEG_MODELS_DIR", tempfile.mkdtemp())
    import napari
    from qtpy.QtCore import QEventLoop, QTimer

    from napari_glandseg.models import ModelCard, build_model, import_model, save_checkpoint

    card = ModelCard(name="bench-unet", architecture="unet", in_channels=3, num_classes=1)
    path = save_checkpoint(Path(tempfile.mkdtemp()) / "b.safetensors",
                           build_model("unet", 3, 1), card)
    import_model(path, overwrite=True)

    viewer = napari.Viewer(show=True)
    rng = np.random.default_rng(0)
    viewer.add_image(rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8),
                     name="img")
    viewer.window.add_plugin_dock_widget("napari-glandseg", "Model")[1].select("bench-unet")
    seg = viewer.window.add_plugin_dock_widget("napari-glandseg", "Segment")[1]
    seg.image_box.setCurrentText("img")

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))

    def gaps():
        return np.diff(ticks) * 1000 if len(ticks) > 1 else np.array([0.0])

    loop = QEventLoop()
    timer.start()
    QTimer.singleShot(2000, loop.quit)
    loop.exec()
    idle = gaps()
    ticks.clear()
    t0 = time.perf_counter()
    worker = seg.run()
    worker.finished.connect(loop.quit)
    loop.exec()
    busy = gaps()
    timer.stop()
    seconds = time.perf_counter() - t0
    print(f"{args.size}x{args.size} RGB, default U-Net, tile 512, CPU; run took {seconds:.1f} s")
    print("| phase | ticks | median gap ms | 99th pct ms | longest gap ms |")
    print("|---|---:|---:|---:|---:|")
    for name, g in (("idle (baseline)", idle), ("segmenting", busy)):
        print(f"| {name} | {len(g)} | {np.median(g):.1f} | {np.percentile(g, 99):.1f} | "
              f"{g.max():.1f} |")
    print(f"longest gap while segmenting / idle: {busy.max() / idle.max():.2f}x")
    viewer.close()


if __name__ == "__main__":
    main()
