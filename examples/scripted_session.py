"""A scripted napari session: open, segment, split, compare, print the metrics.

    python examples/scripted_session.py [--model glands-he] [--show]

Drives the plugin's own widgets from a script, exactly as a user would click them, and
waits on each background job. Without ``--show`` the window stays hidden (still needs a
display, or ``xvfb-run``).
"""

from __future__ import annotations

import argparse


def wait(worker) -> None:
    """Block until a napari worker finishes, keeping the GUI responsive."""
    from qtpy.QtCore import QEventLoop

    loop = QEventLoop()
    worker.finished.connect(loop.quit)
    loop.exec()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="glands-he")
    ap.add_argument("--show", action="store_true")
    args = ap.parse_args(argv)

    import napari

    viewer = napari.Viewer(show=args.show)
    dock = viewer.window.add_plugin_dock_widget
    viewer.open_sample("napari-glandseg", "glas")
    image, truth = "glas_testA_5", "glas_testA_5 [truth]"

    model_w = dock("napari-glandseg", "Model")[1]
    if not model_w.select(args.model):
        raise SystemExit(f"model {args.model!r} not found; see: glandseg models")
    model_w.set_device("auto")

    seg = dock("napari-glandseg", "Segment")[1]
    seg.image_box.setCurrentText(image)
    seg.tile.setValue(256)
    seg.keep_classes.setChecked(True)  # objects come with the card's post-processing;
    wait(seg.run())                    # keep the class map too, to redo it below
    prediction = next(la.name for la in seg.last_layers
                      if la.metadata["glandseg_role"] == "prediction")

    post = dock("napari-glandseg", "Post-process")[1]
    post.labels_box.setCurrentText(prediction)
    post.image_box.setCurrentText(image)
    split = model_w.selection.model.card.postprocess.get("split", "distance")
    post.split_box.setCurrentText(split)
    wait(post.apply())  # runs in the background, like Segment
    objects = post.last_layer

    compare = dock("napari-glandseg", "Compare")[1]
    compare.pred_box.setCurrentText(objects.name)
    compare.truth_box.setCurrentText(truth)
    wait(compare.compute())  # in the background too
    metrics = compare.metrics
    print(f"{len(objects.features)} objects from {args.model} on {image}")
    for key in ("dice", "iou", "object_f1", "object_dice", "object_hausdorff", "aji", "pq",
                "map"):
        print(f"  {key:<17} {metrics[key]:.4f}")
    if args.show:
        napari.run()
    viewer.close()
    return metrics


if __name__ == "__main__":
    main()
