"""A bioimage.io export run elsewhere: bioimageio.core vs napari-glandseg on the same image.

    python benchmarks/bench_bioimageio.py [--model glands-he] \
        [--image DATA/glas/train/images/train_1.jpg]

Exports the stored model as a bioimage.io package, then segments one image twice in the same
process: ``ours`` (:func:`napari_glandseg.segment`, 512 px tiles, overlap 0.25, Gaussian
blending, fp32) and ``core`` (``bioimageio.core.predict`` on the package, blockwise with the
package's halo, as another consumer would run it). A model that works at another scale
than its data (glands-he: 1.24 um/px, GlaS 0.62) gets the image resampled to the package's
axis scale first, as a consumer must do, and both run on that. Prints the export time and
size, both run times with their ratio, and how far the probabilities and pixel classes
agree. The
default image is the bundled sample made for the model (a training-split image when
``--image`` is given from DATA).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="glands-he")
    ap.add_argument("--image", help="an RGB or grey image (default: the bundled sample)")
    ap.add_argument("--blocksize", type=int, default=10,
                    help="bioimageio.core blocksize parameter n (size = min + n * step)")
    args = ap.parse_args()
    os.environ.setdefault("GLANDSEG_MODELS_DIR", tempfile.mkdtemp())

    from bioimageio.core import Tensor, load_model_description, predict

    from napari_glandseg import export_bioimageio, load_model, segment
    from napari_glandseg.bioimageio import _test_image

    model = load_model(args.model, device="cpu")
    if args.image:
        from napari_glandseg.io import read_image

        image = np.asarray(read_image(args.image, as_labels=False).data)
    else:
        image = _test_image(None, model.card, args.model)
        image = image[..., 0] if image.shape[-1] == 1 else image

    card, px = model.card, None
    if card.pixel_size_um and card.data_pixel_size_um and \
            abs(card.pixel_size_um / card.data_pixel_size_um - 1) > 0.1:
        from skimage.transform import rescale

        factor = card.data_pixel_size_um / card.pixel_size_um
        image = rescale(image, factor, channel_axis=-1 if image.ndim == 3 else None,
                        preserve_range=True, anti_aliasing=True).round().astype(np.uint8)
        px = card.pixel_size_um
        print(f"image resampled by {factor:g} to the package's {px:g} um/px")

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        pkg = export_bioimageio(args.model, Path(tmp) / "pkg.zip")
        export_s = time.perf_counter() - t
        size_mb = pkg.stat().st_size / 1e6
        descr = load_model_description(pkg)

        t = time.perf_counter()
        ours = np.asarray(segment(image, model, pixel_size_um=px, device="cpu",
                                  precision="fp32", stain_normalization=False).probabilities)
        ours_s = time.perf_counter() - t

        x = (image[None] if image.ndim == 2 else image.transpose(2, 0, 1))[None]
        size = descr.inputs[0].axes[2].size  # min + n * step; blocks no larger than the image
        n = min(args.blocksize, max(0, (min(image.shape[:2]) - size.min) // size.step))
        t = time.perf_counter()
        out = predict(model=descr, inputs={"input": Tensor.from_numpy(
            x.astype(np.float32), dims=("batch", "channel", "y", "x"))},
            blocksize_parameter=n)
        core_s = time.perf_counter() - t
    core = out.members["output"].data.values[0]

    la = ours[0] > 0.5 if ours.shape[0] == 1 else ours.argmax(0)
    lb = core[0] > 0.5 if core.shape[0] == 1 else core.argmax(0)
    diff = np.abs(ours - core)
    print(f"model {args.model}, image {image.shape}")
    print(f"export: {export_s:.1f} s, package {size_mb:.2f} MB")
    print(f"ours {ours_s:.2f} s, bioimageio.core {core_s:.2f} s "
          f"(core/ours = {core_s / ours_s:.2f}x)")
    print(f"probabilities: mean |diff| {diff.mean():.4f}, max {diff.max():.4f}; "
          f"pixel classes agree on {100 * (la == lb).mean():.2f} %")


if __name__ == "__main__":
    main()
