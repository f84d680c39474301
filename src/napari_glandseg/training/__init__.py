"""Training and fine-tuning (Qt-free): :func:`iter_train` yields progress, :func:`train` blocks.

Data are pairs of an image ``(Y, X[, C])`` and a mask ``(Y, X)`` (binary, instance or class
labels), from arrays (napari layers) or folders (:func:`pairs_from_folder`, with a split CSV).
Patches are sampled at random, favouring foreground, and augmented (flips, 90-degree and free
rotations, zoom, brightness/contrast/gamma, H&E stain jitter). Inputs are normalised by the
same code as inference, so a trained model segments exactly as it was validated.

The best checkpoint by validation Dice is written atomically into the model store after each
epoch that improves it, with a card recording data, settings and metrics; a training state
beside it (optimiser, epoch, history) lets a run resume. Stopping the generator (napari's
``worker.quit()``) ends training at the next step; the best checkpoint stays.

Examples
--------
>>> import numpy as np, os, tempfile
>>> store = tempfile.TemporaryDirectory()  # a model store of its own for this example
>>> os.environ["GLANDSEG_MODELS_DIR"] = store.name
>>> rng = np.random.default_rng(0)
>>> image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
>>> mask = np.zeros((64, 64), np.uint8); mask[16:48, 16:48] = 1
>>> pairs = [TrainingPair(image, mask, "a")]
>>> result = train(pairs, pairs, TrainParams(name="doc-demo", architecture="base_cnn",
...                arch_kwargs={"widths": [4, 8]}, patch_size=32, batch_size=2, epochs=1,
...                steps_per_epoch=2, val_patches=2))
>>> result.checkpoint.name, len(result.history)
('doc-demo.safetensors', 1)
>>> del os.environ["GLANDSEG_MODELS_DIR"]; store.cleanup()
"""

from .augment import PatchSampler
from .data import (
    TrainingPair,
    holdout_split,
    pairs_from_folder,
    read_groups,
    read_split,
    resample_pairs,
    split_names,
    split_pairs,
    stain_normalised,
    stain_reference,
    with_pixel_size,
)
from .loop import (
    TrainResult,
    freeze_encoder,
    iter_train,
    state_path_for,
    train,
)
from .losses import (
    Loss,
    make_loss,
    partial_boundary_loss,
)
from .params import TrainParams
from .targets import (
    GAP,
    UNKNOWN_FG,
    Target,
    is_instance_mask,
    make_target,
)
from .validation import (
    Selection,
    iter_validation_rows,
    selection_score,
    validate_images,
    validation_report,
)

__all__ = [
    "GAP",
    "Loss",
    "PatchSampler",
    "Selection",
    "Target",
    "TrainParams",
    "TrainResult",
    "TrainingPair",
    "UNKNOWN_FG",
    "freeze_encoder",
    "holdout_split",
    "is_instance_mask",
    "iter_train",
    "iter_validation_rows",
    "make_loss",
    "make_target",
    "pairs_from_folder",
    "partial_boundary_loss",
    "read_groups",
    "read_split",
    "resample_pairs",
    "selection_score",
    "split_names",
    "split_pairs",
    "stain_normalised",
    "stain_reference",
    "state_path_for",
    "train",
    "validate_images",
    "validation_report",
    "with_pixel_size",
]
