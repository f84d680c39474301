"""The CUDA path (run on a lent GPU by benchmarks/gpu_run.sh; skipped without CUDA)."""

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def glas(data_dir):
    from napari_glandseg.training import pairs_from_folder

    return pairs_from_folder(data_dir / "glas")


def test_a_bundled_model_segments_on_the_gpu_as_on_the_cpu(data_dir):
    from skimage.io import imread

    from napari_glandseg.models import load_model
    from napari_glandseg.pipeline import objects_from_image

    img = imread(data_dir / "glas/train_1_crop.png")[..., :3]
    model = load_model("glands-he")
    cpu = objects_from_image(img, model, pixel_size_um=0.62)
    gpu_model = model.on(torch.device("cuda"))
    assert next(model.net.parameters()).device.type == "cpu"  # the shared one never moves
    assert next(gpu_model.net.parameters()).device.type == "cuda"
    from napari_glandseg.inference import SegmentParams
    from napari_glandseg.pipeline import FileParams

    gpu = objects_from_image(img, model, FileParams(segment=SegmentParams(device="cuda")),
                             pixel_size_um=0.62)
    assert "cuda" in gpu.segment.device.lower() or "gpu" in gpu.segment.device.lower()
    agree = np.mean((np.asarray(cpu.labels) > 0) == (np.asarray(gpu.labels) > 0))
    assert agree > 0.99  # bf16 on the GPU vs fp32/bf16 on the CPU


def test_training_steps_on_the_gpu_with_mixed_precision(glas):
    from napari_glandseg.training import TrainParams, train

    res = train(glas, glas, TrainParams(
        name="cuda-eff", encoder="efficientnet-lite0", pretrained=True, device="cuda",
        epochs=1, steps_per_epoch=4, patch_size=128, batch_size=4, val_patches=2))
    assert res.model.card.metrics["epoch"] == 1
    assert next(res.model.net.parameters()).device.type in ("cpu", "cuda")


def test_out_of_memory_is_survived_on_a_real_gpu():
    """A batch too large for the GPU is retried smaller (inference halves the batch)."""
    from napari_glandseg.inference import segment
    from napari_glandseg.models import load_model

    model = load_model("glands-he")
    img = np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), np.uint8)
    res = segment(img, model, device="cuda", tile_size=512, batch_size=64,
                  pixel_size_um=1.24)
    assert res.labels.shape == (1024, 1024)
