import numpy as np
import pytest
import torch

import napari_glandseg.training as tr
from napari_glandseg.errors import GlandsegError
from napari_glandseg.inference import segment
from napari_glandseg.io import read_image
from napari_glandseg.models import load_model
from napari_glandseg.training import (
    TrainingPair,
    TrainParams,
    freeze_encoder,
    iter_train,
    make_target,
    pairs_from_folder,
    state_path_for,
    train,
)

SMALL = {"architecture": "unet", "arch_kwargs": {"features": [8, 8, 16, 16, 32, 8]},
         "patch_size": 96, "batch_size": 4, "val_patches": 4}


@pytest.fixture(scope="module")
def glas(request):
    from pathlib import Path

    return pairs_from_folder(Path(request.config.rootpath) / "tests/data/glas")


def test_a_few_steps_lower_the_loss(glas):
    params = TrainParams(name="lower", epochs=4, steps_per_epoch=10, lr=3e-3,
                         schedule="constant", augment=False, **SMALL)
    steps = [p for p in iter_train(glas, glas, params)]
    per_step = [p for p in steps if "loss" in (p.metrics or {})]
    epochs = [p.metrics for p in steps if "train_loss" in (p.metrics or {})]
    assert len(per_step) == 40 and [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    # the mean loss of an epoch on random patches falls as the model learns
    assert epochs[-1]["train_loss"] < 0.9 * epochs[0]["train_loss"]


def test_checkpoint_is_saved_with_its_card_and_segments(glas, data_dir):
    res = train(glas, glas, TrainParams(name="glands-test", epochs=2, steps_per_epoch=5,
                                        training_data="GlaS fixture crops",
                                        data_licence="research only", **SMALL))
    assert res.checkpoint.name == "glands-test.safetensors" and len(res.history) == 2
    model = load_model("glands-test")
    card = model.card
    assert card.training_data == "GlaS fixture crops" and card.data_licence == "research only"
    assert card.metrics["val_dice"] == pytest.approx(res.best_dice)
    assert card.training["patch_size"] == 96 and card.training["loss"] == "dice_ce"
    image = read_image(data_dir / "glas/testA_5_crop.png").data
    out = segment(image, model, tile_size=128)
    assert out.labels.shape == (256, 256) and set(np.unique(out.labels)) <= {0, 1}


def test_resume_continues_from_its_step(glas):
    first = train(glas, glas, TrainParams(name="resume", epochs=1, steps_per_epoch=4, **SMALL))
    assert len(first.history) == 1
    gen = iter_train(glas, glas, TrainParams(name="resume", epochs=2, steps_per_epoch=4,
                                             **SMALL), resume=state_path_for("resume"))
    first_step = next(gen)
    assert first_step.done == 5 and first_step.message == "epoch 2/2"
    result = None
    while result is None:
        try:
            next(gen)
        except StopIteration as stop:
            result = stop.value
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert result.history[0] == first.history[0]
    with pytest.raises(GlandsegError, match="no such training state"):
        train(glas, glas, TrainParams(name="x", **SMALL), resume="/nonexistent.state.pt")


def test_stop_keeps_the_best_checkpoint(glas):
    gen = iter_train(glas, glas, TrainParams(name="stopped", epochs=5, steps_per_epoch=3,
                                             **SMALL))
    for p in gen:
        if p.metrics and "checkpoint" in p.metrics:
            saved = p.metrics["checkpoint"]
            break
    next(gen)  # one more step of epoch 2
    gen.close()  # what Stop does
    assert load_model(saved).card.metrics["epoch"] == 1


def test_nan_loss_stops_with_a_clear_message_and_keeps_checkpoint(glas, monkeypatch):
    real = tr.make_loss

    def poisoned(loss, k):
        fn, calls = real(loss, k), []

        def compute(logits, y):
            calls.append(1)
            return fn(logits, y) * (float("nan") if len(calls) > 4 else 1.0)
        return compute

    monkeypatch.setattr(tr, "make_loss", poisoned)
    with pytest.raises(GlandsegError, match=r"loss became nan at epoch 2, step 4; the best "
                                            r"checkpoint .*nanny.safetensors is kept"):
        train(glas, glas, TrainParams(name="nanny", epochs=3, steps_per_epoch=3, **SMALL))
    assert load_model("nanny").card.metrics["epoch"] == 1


def test_fine_tune_with_frozen_encoder_changes_only_the_decoder(glas):
    base = train(glas, glas, TrainParams(name="base", epochs=1, steps_per_epoch=2, **SMALL))
    before = {k: v.clone() for k, v in base.model.net.state_dict().items()}
    tuned = train(glas, glas, TrainParams(name="tuned", base_model="base", freeze_encoder=True,
                                          epochs=1, steps_per_epoch=3, lr=1e-2, patch_size=96,
                                          batch_size=4, val_patches=4))
    after = tuned.model.net.state_dict()
    enc = [k for k in before if k.startswith("net.conv_0.") and k.endswith("weight")]
    dec = [k for k in before if k.startswith("net.final_conv") and k.endswith("weight")]
    assert enc and dec
    assert all(torch.equal(before[k], after[k]) for k in enc)
    assert not all(torch.equal(before[k], after[k]) for k in dec)
    assert tuned.model.card.name == "tuned" and tuned.model.card.architecture == "unet"
    with pytest.raises(GlandsegError, match="not available for 'resunet'"):
        freeze_encoder(torch.nn.Linear(1, 1), "resunet")


def test_boundary_target_and_multiclass(data_dir):
    inst = np.zeros((20, 30), np.uint16)
    inst[5:15, 3:14] = 1
    inst[5:15, 14:26] = 2  # touching at column 13/14
    t = make_target(inst, tr.Target.BOUNDARY, 3)
    assert set(np.unique(t)) == {0, 1, 2}
    assert (t[5:15, 13:15] == 2).all()  # the contact line is boundary
    assert t[10, 8] == 1 and t[0, 0] == 0
    image = read_image(data_dir / "wbc/dataset1_001.png").data
    mask = read_image(data_dir / "wbc/dataset1_001_mask.png").data  # 0/1/2 classes
    pairs = [TrainingPair(image, mask, "wbc")]
    res = train(pairs, pairs, TrainParams(name="wbc-test", num_classes=3, epochs=1,
                                          steps_per_epoch=2, class_names=["background",
                                                                          "cytoplasm",
                                                                          "nucleus"],
                                          architecture="base_cnn",
                                          arch_kwargs={"widths": [8, 16]}, patch_size=64,
                                          batch_size=2, val_patches=2))
    assert res.model.card.num_classes == 3 and res.model.card.class_names[2] == "nucleus"


def test_bad_settings_are_named(glas):
    with pytest.raises(GlandsegError, match="unknown loss 'l2'"):
        TrainParams(loss="l2")
    with pytest.raises(GlandsegError, match="patch_size must be a positive integer, got 0"):
        TrainParams(patch_size=0)
    grey = [TrainingPair(np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8), "g")]
    with pytest.raises(GlandsegError, match="has 1 channel"):
        train(glas + grey, glas, TrainParams(name="x", epochs=1, steps_per_epoch=1, **SMALL))
    with pytest.raises(GlandsegError, match="does not match image shape"):
        TrainingPair(np.zeros((4, 4, 3)), np.zeros((5, 5), np.uint8))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("mode", ["imagenet", "percentile", "zscore"])
def test_augmented_and_plain_patches_are_normalised_alike(glas, dtype, mode):
    top = np.iinfo(dtype).max
    pairs = [TrainingPair((p.image.astype(np.float64) / 255 * top).astype(dtype), p.mask,
                          p.name) for p in glas]
    targets = [make_target(p.mask, tr.Target.MASK, 1) for p in pairs]
    sampler = tr.PatchSampler(pairs, targets, TrainParams(patch_size=64), mode,
                              np.random.default_rng(0))
    plain = np.stack([sampler.sample(augment=False)[0] for _ in range(20)])
    aug = np.stack([sampler.sample(augment=True)[0] for _ in range(20)])
    # float32, as the network's weights (a float64 batch fails in the first convolution)
    assert plain.dtype == aug.dtype == np.float32
    assert np.abs(plain).max() < 6 and np.abs(aug).max() < 6  # a normalised range
    assert abs(plain.mean() - aug.mean()) < 0.5


def test_bundled_names_are_refused(glas):
    with pytest.raises(GlandsegError, match="'glands-he' is a bundled model"):
        train(glas, glas, TrainParams(name="glands-he", epochs=1, steps_per_epoch=1, **SMALL))


def test_patches_use_whole_image_statistics_as_inference_does():
    # left half dark, right half bright: a z-scored patch from the dark half must stay dark
    # (per-patch statistics would centre it on 0 and teach the model a different input)
    image = np.zeros((128, 256), np.uint8)
    image[:, 128:] = 200
    image[:, :128] = np.arange(128, dtype=np.uint8)[None, :] % 7
    mask = np.zeros((128, 256), np.uint8)
    mask[:, :128] = 1
    params = TrainParams(patch_size=32, foreground_fraction=1.0, augment=False)
    sampler = tr.PatchSampler([TrainingPair(image, mask)], [mask], params, "zscore",
                              np.random.default_rng(0))
    x, _ = sampler.sample(augment=False)
    expected = (image[:, :128].astype(np.float32).mean() - image.mean()) / image.std()
    assert x.mean() == pytest.approx(expected, abs=0.05) and expected < -0.9


@pytest.mark.parametrize("every, n_val", [(5, 2), (3, 3)])
def test_val_every_takes_ids_divisible_by_n(tmp_path, every, n_val):
    from skimage.io import imsave

    for k in range(1, 11):
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "masks").mkdir(exist_ok=True)
        imsave(tmp_path / f"images/{k:03d}.png", np.full((8, 8), k, np.uint8),
               check_contrast=False)
        imsave(tmp_path / f"masks/{k:03d}.png", np.eye(8, dtype=np.uint8) * 255,
               check_contrast=False)
    train_p, val_p = tr.split_pairs(tmp_path, val_every=every)
    assert [p.name for p in val_p] == [f"{k:03d}" for k in range(every, 11, every)]
    assert len(val_p) == n_val and len(train_p) == 10 - n_val
    with pytest.raises(GlandsegError, match="val_every must be an integer >= 2, got 1"):
        tr.split_pairs(tmp_path, val_every=1)


def test_macenko_reference_goes_into_the_card_and_fine_tuning_keeps_it(glas):
    from napari_glandseg.stain import MacenkoStains, apply_macenko, fit_macenko

    res = train(glas, glas, TrainParams(name="stained", epochs=1, steps_per_epoch=2,
                                        stain_normalization="macenko", **SMALL))
    entry = load_model("stained").card.stain_normalization
    assert entry["method"] == "macenko" and entry["reference"] == "the 2 training images"
    assert res.model.card.training["stain_normalization"] == "macenko"
    # the patches the network saw were mapped onto that reference
    seen = []
    real = tr.PatchSampler.__init__

    def spy(self, pairs, *a, **k):
        seen.append([p.image for p in pairs])
        real(self, pairs, *a, **k)

    ref = MacenkoStains.from_card(entry)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tr.PatchSampler, "__init__", spy)
        tuned = train(glas, glas, TrainParams(name="stained-2", base_model="stained",
                                              epochs=1, steps_per_epoch=1, **SMALL))
    expected = apply_macenko(glas[0].image, fit_macenko(glas[0].image), ref)
    np.testing.assert_array_equal(seen[0][0], expected)
    assert tuned.model.card.stain_normalization == entry

    standard = train(glas, glas, TrainParams(name="standard", epochs=1, steps_per_epoch=1,
                                             stain_normalization="macenko",
                                             stain_reference="standard", **SMALL))
    np.testing.assert_allclose(standard.model.card.stain_normalization["stain_matrix"],
                               MacenkoStains.standard().matrix)


def test_macenko_on_grey_images_is_refused():
    image = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    pair = TrainingPair(image, (image > 128).astype(np.uint8), "grey")
    with pytest.raises(GlandsegError, match="stain normalisation needs RGB training images"):
        train([pair], [pair], TrainParams(name="grey", stain_normalization="macenko",
                                          epochs=1, steps_per_epoch=1, **SMALL))
