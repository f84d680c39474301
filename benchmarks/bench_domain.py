"""Out-of-domain warnings: how often they fire on each bundled model's own validation images,
and on images it was not made for.

    DATA=/path/to/data python benchmarks/bench_domain.py [--write]

For each bundled model the appearance reference (``napari_glandseg.domain.reference``) is
made from its training images (the split its config names), then the distance of every
validation image and of foreign images (the other sets, the SVS slide region of skin, grey
MRI) is measured. ``--write`` stores the reference in the bundled model's card (the weights
are copied unchanged). Only training images make the reference and only validation images
are reported for the model's own data.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import data_default  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "napari_glandseg" / "configs"
#: bundled model -> (config, data folder under DATA)
MODELS = {"glands-he": ("glands-he.json", "glas"), "nuclei-he": ("nuclei-he.json", "monuseg"),
          "wbc": ("wbc.json", "wbc/dataset1"), "membranes-em": ("membranes-em.json",
                                                             "isbi2012_em/train"),
          "organs-mri": ("organs-mri.json", "uwm_gi_mri")}


def _split(data: Path, config: dict):
    from napari_glandseg.training import split_pairs

    csv = data / config["split_csv"] if config.get("split_csv") else None
    return split_pairs(data, csv, config.get("mask_folder"), config.get("val_fraction", 0.2),
                       config.get("val_every"))


def _foreign(data: Path) -> dict:
    """A few images of every set, and the slide region, read once."""
    import numpy as np
    import tifffile

    from napari_glandseg.io import read_image

    out = {"skin H&E slide (SVS)": [tifffile.imread(data / "wsi/cmu_small_region.svs")]}
    for name, folder, pattern in (("GlaS colon H&E", "glas/testA/images", "*.jpg"),
                                  ("MoNuSeg H&E 40x", "monuseg/train/images", "*.jpg"),
                                  ("WBC smear", "wbc/dataset1/images", "*.png"),
                                  ("ISBI EM", "isbi2012_em/train/images", "*.png"),
                                  ("grey MRI", "uwm_gi_mri/images", "*.png")):
        files = sorted((data / folder).glob(pattern))[:: max(1, len(list(
            (data / folder).glob(pattern))) // 6)][:6]
        out[name] = [np.asarray(read_image(f).data) for f in files]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=data_default(),
                    required=data_default() is None)
    ap.add_argument("--write", action="store_true",
                    help="store each reference in the bundled model's card")
    args = ap.parse_args(argv)
    from napari_glandseg.domain import distance, reference

    foreign = _foreign(args.data)
    own_set = {"glands-he": "GlaS colon H&E", "nuclei-he": "MoNuSeg H&E 40x",
               "wbc": "WBC smear", "membranes-em": "ISBI EM", "organs-mri": "grey MRI"}
    print("| model | threshold | val images flagged | " + " | ".join(foreign) + " |")
    print("|---|---:|---:|" + "---:|" * len(foreign))
    for model, (cfg, folder) in MODELS.items():
        config = json.loads((CONFIGS / cfg).read_text())
        train, val = _split(args.data / folder, config)
        entry = reference([p.image for p in train[:: max(1, len(train) // 200)]])
        t = entry["threshold"]
        dv = [distance(p.image, entry) for p in val]
        cells = []
        for name, images in foreign.items():
            d = [distance(im, entry) for im in images]
            flag = sum(x > t for x in d)
            cells.append(f"{flag}/{len(d)}" + (" (own data)" if own_set[model] == name else ""))
        print(f"| {model} | {t:.1f} | {sum(x > t for x in dv)}/{len(dv)} (max {max(dv):.1f}) "
              f"| " + " | ".join(cells) + " |", flush=True)
        if args.write:
            _write(model, entry)
    return 0


def _write(name: str, entry: dict) -> None:
    """The bundled model's file with ``entry`` in its card; its weights as they were."""
    from napari_glandseg.models import load_model, save_checkpoint
    from napari_glandseg.models.store import BUNDLED_DIR

    model = load_model(name)
    model.card.appearance = entry
    save_checkpoint(BUNDLED_DIR / f"{name}.safetensors", model.net, model.card, half=True,
                    overwrite=True)


if __name__ == "__main__":
    sys.exit(main())
