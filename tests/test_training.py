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
    # no post-processing: the checkpoint is selected on whole-image pixel Dice
    assert card.metrics["selected_on"] == "val_image_dice"
    assert card.metrics["val_image_dice"] == pytest.approx(res.best_score, abs=1e-4)
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

    def poisoned(loss, k, **kw):
        fn, calls = real(loss, k, **kw), []

        def compute(logits, y):
            calls.append(1)
            return fn(logits, y) * (float("nan") if len(calls) > 4 else 1.0)
        return compute

    monkeypatch.setattr(tr.loop, "make_loss", poisoned)  # where the loop calls it
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
    # two foreground classes: the checkpoint is chosen on their Dice, class by class
    metrics = res.model.card.metrics
    assert metrics["selected_on"] == "val_class_dice"
    assert metrics["val_class_dice"] == pytest.approx(
        (metrics["val_dice[cytoplasm]"] + metrics["val_dice[nucleus]"]) / 2, abs=2e-4)


def test_bad_settings_are_named(glas):
    with pytest.raises(GlandsegError, match="unknown loss 'l2'"):
        TrainParams(loss="l2")
    with pytest.raises(GlandsegError, match="patch_size must be a positive integer, got 0"):
        TrainParams(patch_size=0)
    grey = [TrainingPair(np.zeros((64, 64), np.uint8), np.eye(64, dtype=np.uint8), "g")]
    with pytest.raises(GlandsegError, match="has 1 channel"):
        train(glas + grey, glas, TrainParams(name="x", epochs=1, steps_per_epoch=1, **SMALL))
    with pytest.raises(GlandsegError, match="class_dice.*1 class"):  # a binary model
        train(glas, glas, TrainParams(name="x", epochs=1, steps_per_epoch=1,
                                      select="class_dice", **SMALL))
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


@pytest.mark.parametrize("dtype, top", [(np.uint16, 4000), (np.float32, 3000.0)])
def test_augmenting_a_12_bit_or_float_image_keeps_its_picture(glas, dtype, top):
    """Augmentation draws brightness, contrast and gamma in the standard form the sampler
    makes first (0..1 for such data): a 12-bit image in uint16 is not blacked out by shifts
    of 8 % of 65535, a float slice in the thousands is not clipped at 1 to one grey."""
    pairs = [TrainingPair((p.image.astype(np.float64) / 255 * top).astype(dtype), p.mask,
                          p.name) for p in glas]
    targets = [make_target(p.mask, tr.Target.MASK, 1) for p in pairs]
    sampler = tr.PatchSampler(pairs, targets, TrainParams(patch_size=64), "unit",
                              np.random.default_rng(0))
    for _ in range(10):
        x = sampler.sample(augment=True)[0]
        assert (x <= 0).mean() < 0.05 and x.std() > 0.03 and x.max() > 0.3


def test_elastic_deformation_bends_image_and_target_alike():
    from napari_glandseg.training.augment import _augment

    tgt = np.zeros((144, 144), np.uint8)
    tgt[:, 72:] = 1  # a half plane: after a rotation alone its edge is straight
    img = np.repeat(tgt[..., None] * 255, 3, -1).astype(np.uint8)
    plain = dict(zoom=1.0, stain_jitter=0.0, blur=0.0)

    def edge_bend(t):
        """How far the edge strays from the straight line that fits it best (px)."""
        ys, xs = np.nonzero(t != np.roll(t, 1, axis=1))
        ys, xs = ys[xs > 0], xs[xs > 0]
        if np.ptp(xs) > np.ptp(ys):  # fit the line along its longer extent
            ys, xs = xs, ys
        fit = np.polyval(np.polyfit(ys, xs, 1), ys)
        return np.abs(xs - fit).max()

    for seed in range(3):
        x, y = _augment(img, tgt, 96, TrainParams(elastic=0.0, **plain),
                        np.random.default_rng(seed))
        assert edge_bend(y) <= 1.0
        x, y = _augment(img, tgt, 96, TrainParams(elastic=1.0, **plain),
                        np.random.default_rng(seed))
        # the same warp for both: the image's bright half is the target's object
        assert ((x[..., 0] > 127) == (y > 0)).mean() > 0.97
    bends = [edge_bend(_augment(img, tgt, 96, TrainParams(elastic=1.0, **plain),
                                np.random.default_rng(s))[1]) for s in range(10)]
    assert max(bends) > 1.5  # bent, not only turned
    again = _augment(img, tgt, 96, TrainParams(elastic=1.0, **plain),
                     np.random.default_rng(5))
    assert np.array_equal(again[1], _augment(img, tgt, 96, TrainParams(elastic=1.0, **plain),
                                             np.random.default_rng(5))[1])  # seeded


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


# --------------------------------------------------------------------------------------------
# object selection, working scale, mixed masks, whole-state resume (issue: bundled models)


def test_checkpoint_is_kept_by_the_object_score_not_pixel_dice(glas):
    post = {"split": "distance", "h": 2.0, "min_size": 20}
    res = train(glas, glas, TrainParams(name="by-objects", target="boundary", epochs=3,
                                        steps_per_epoch=3, postprocess=post, lr=3e-3,
                                        **SMALL))
    hist = res.history
    assert all(0 <= h["val_object_f1"] <= 1 and 0 <= h["val_aji"] <= 1 for h in hist)
    for h in hist:  # the score is the mean of object F1 and object Dice
        assert h["score"] == pytest.approx((h["val_object_f1"] + h["val_object_dice"]) / 2)
    scores = [h["score"] for h in hist]
    assert res.best_epoch == int(np.argmax(scores)) + 1
    assert [h["best"] for h in hist] == [s > max(scores[:i], default=-1)
                                         for i, s in enumerate(scores)]
    card = load_model("by-objects").card
    assert card.metrics["selected_on"] == "val_objects" and card.training["select"] == "objects"
    assert card.metrics["epoch"] == res.best_epoch


def test_resume_restores_network_optimiser_random_state_and_patience(glas):
    params = TrainParams(name="whole", epochs=3, steps_per_epoch=3, patience=5, **SMALL)
    straight = train(glas, glas, params)
    gen = iter_train(glas, glas, TrainParams(name="split-run", epochs=3, steps_per_epoch=3,
                                             patience=5, **SMALL))
    ends = 0
    for p in gen:  # interrupted (Stop) just after epoch 2 ended
        ends += "train_loss" in (p.metrics or {})
        if ends == 2:
            gen.close()
            break
    import torch as _t

    st = _t.load(state_path_for("split-run"), weights_only=True)
    assert st["epoch"] == 2 and "bad_epochs" in st and "rng" in st
    resumed = train(glas, glas, TrainParams(name="split-run", epochs=3, steps_per_epoch=3,
                                            patience=5, **SMALL),
                    resume=state_path_for("split-run"))
    # one run, interrupted and resumed, ends exactly where the uninterrupted run ends
    a = _t.load(state_path_for("whole"), weights_only=True)["net"]
    b = _t.load(state_path_for("split-run"), weights_only=True)["net"]
    assert all(_t.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert [h["train_loss"] for h in resumed.history] == pytest.approx(
        [h["train_loss"] for h in straight.history], rel=1e-4)


def test_resume_with_another_network_is_one_clear_error(glas):
    train(glas, glas, TrainParams(name="arch-a", epochs=1, steps_per_epoch=1, **SMALL))
    other = {**SMALL, "arch_kwargs": {"features": [8, 8, 16, 16, 16, 8]}}
    with pytest.raises(GlandsegError, match="cannot resume: the state is for unet"):
        train(glas, glas, TrainParams(name="arch-a", epochs=2, steps_per_epoch=1, **other),
              resume=state_path_for("arch-a"))


def test_patience_counts_across_a_resume(glas, monkeypatch):
    # every epoch scores the same: with patience 2 the run stops after epoch 3 (1 best +
    # 2 without improvement), whether or not it was interrupted after epoch 2
    monkeypatch.setattr(tr.loop, "validate_images", lambda *a, **k: {"val_image_dice": 0.5})
    train(glas, glas, TrainParams(name="pat", epochs=2, steps_per_epoch=1, patience=2,
                                  **SMALL))
    res = train(glas, glas, TrainParams(name="pat", epochs=6, steps_per_epoch=1, patience=2,
                                        **SMALL), resume=state_path_for("pat"))
    assert [h["epoch"] for h in res.history] == [1, 2, 3] and res.stopped_early


def test_name_outside_the_store_and_empty_labels_are_refused(glas):
    with pytest.raises(GlandsegError, match="model name '../../escaped' is not allowed"):
        TrainParams(name="../../escaped")
    empty = [TrainingPair(glas[0].image, np.zeros_like(glas[0].mask), "blank")]
    with pytest.raises(GlandsegError, match="'blank' has no labelled pixels"):
        train(empty, glas, TrainParams(name="e", epochs=1, steps_per_epoch=1, **SMALL))


def test_pairs_are_resampled_to_the_working_scale():
    img = np.zeros((100, 60, 3), np.uint8)
    img[:, 30:] = 200
    mask = np.zeros((100, 60), np.uint16)
    mask[10:50, 10:30], mask[60:90, 20:50] = 7, 9
    out = tr.resample_pairs([TrainingPair(img, mask, "a", 0.5)], 1.0)[0]
    assert out.image.shape == (50, 30, 3) and out.mask.shape == (50, 30)
    assert out.pixel_size_um == 1.0 and out.image.dtype == np.uint8
    assert set(np.unique(out.mask)) == {0, 7, 9}  # ids kept, none invented by interpolation
    assert (out.mask == 7).sum() == pytest.approx(20 * 10, rel=0.1)
    # a pair of unknown scale takes the default; one at the working scale is kept as is
    unknown = tr.resample_pairs([TrainingPair(img, mask, "b")], 1.0, 0.25)[0]
    assert unknown.image.shape == (25, 15, 3)
    same = TrainingPair(img, mask, "c", 1.02)
    assert tr.resample_pairs([same], 1.0)[0] is same


def test_a_model_at_another_scale_rescales_images_of_unknown_size(glas):
    res = train(glas, glas, TrainParams(name="half", pixel_size_um=1.24,
                                        data_pixel_size_um=0.62, epochs=1, steps_per_epoch=1,
                                        **SMALL))
    card = res.model.card
    assert (card.pixel_size_um, card.data_pixel_size_um) == (1.24, 0.62)
    out = segment(glas[0].image, res.model, tile_size=64)
    assert out.info["scale"] == pytest.approx(0.5) and out.labels.shape == glas[0].mask.shape
    own = segment(glas[0].image, res.model, pixel_size_um=1.24, tile_size=64)
    assert own.info["scale"] == 1.0


def test_binary_masks_among_instances_teach_foreground_only():
    binary = np.zeros((12, 12), np.uint8)
    binary[2:10, 2:10] = 1
    t = make_target(binary, tr.Target.BOUNDARY, 3, partial=True)
    assert (t[4:8, 4:8] == tr.UNKNOWN_FG).all() and t[2, 5] == 2 and t[0, 0] == 0
    # unknown foreground: any split between interior and boundary costs nothing ...
    target = torch.full((1, 1, 1), tr.UNKNOWN_FG)
    inside = torch.tensor([-9.0, 4.0, 4.0]).view(1, 3, 1, 1)
    outside = torch.tensor([9.0, -4.0, -4.0]).view(1, 3, 1, 1)
    loss = tr.partial_boundary_loss
    assert float(loss(inside, target, dice=False)) < 1e-3
    # ... calling it background costs as much as a wrong label
    assert float(loss(outside, target, dice=False)) > 10
    known = torch.ones((1, 1, 1), dtype=torch.long)  # interior
    ce = torch.nn.functional.cross_entropy(outside, known)
    assert float(loss(outside, known, dice=False)) == pytest.approx(float(ce))


def test_mixed_instance_and_binary_masks_train_together(glas):
    inst = [TrainingPair(p.image, p.mask, p.name) for p in glas]
    assert tr.is_instance_mask(inst[0].mask)
    binary = [TrainingPair(inst[1].image, (inst[1].mask > 0).astype(np.uint8), "binary")]
    res = train(inst[:1] + binary, inst[:1], TrainParams(
        name="mixed", target="boundary", epochs=1, steps_per_epoch=2, **SMALL))
    assert "1 of 2 training masks binary" in res.model.card.training_data
    # only instance labels: the ordinary loss, no mention
    res = train(inst[:1], inst[:1], TrainParams(name="inst", target="boundary", epochs=1,
                                                steps_per_epoch=1, **SMALL))
    assert "binary" not in res.model.card.training_data


def test_mask_folders_in_order_of_preference(tmp_path):
    from skimage.io import imsave

    for sub in ("images", "instances", "masks"):
        (tmp_path / sub).mkdir()
    img = np.full((32, 32, 3), 120, np.uint8)
    inst = np.zeros((32, 32), np.uint8)
    inst[4:12, 4:12], inst[20:28, 20:28] = 1, 2
    for n in ("a", "b"):
        imsave(tmp_path / "images" / f"{n}.png", img, check_contrast=False)
        imsave(tmp_path / "masks" / f"{n}.png", (inst > 0).astype(np.uint8) * 255,
               check_contrast=False)
    imsave(tmp_path / "instances" / "a.png", inst, check_contrast=False)
    pairs = pairs_from_folder(tmp_path, mask_folder=["instances", "masks"])
    assert [(p.name, int(p.mask.max())) for p in pairs] == [("a", 2), ("b", 1)]


def test_gaps_between_close_objects_weigh_more(glas):
    inst = np.zeros((20, 40), np.uint16)
    inst[5:15, 3:16], inst[5:15, 20:35] = 1, 2  # 4 px of background between them
    t = make_target(inst, tr.Target.BOUNDARY, 3, gap_width=3)
    assert (t[5:15, 17:19] == tr.GAP).all()  # within 3 px of both: the gap between them
    assert (t[5:15, 16] == 0).all() and (t[5:15, 19] == 0).all()  # 4 px from the other one
    assert t[2, 8] == 0 and t[10, 38] == 0  # next to one object only: plain background
    assert t[10, 8] == 1 and t[10, 15] == 2  # objects unchanged
    # a gap pixel predicted as interior costs more with the weight on
    logits = torch.tensor([0.0, 3.0, 0.0]).view(1, 3, 1, 1).repeat(1, 1, 1, 2)
    target = torch.tensor([[[tr.GAP, 0]]])
    plain = float(tr.partial_boundary_loss(logits, target, dice=False))
    weighted = float(tr.partial_boundary_loss(logits, target, dice=False, gap_weight=10))
    assert plain == pytest.approx(float(torch.nn.functional.cross_entropy(
        logits, torch.zeros((1, 1, 2), dtype=torch.long))))
    assert weighted == pytest.approx(plain)  # both pixels equally wrong: same mean ...
    target = torch.tensor([[[tr.GAP, 1]]])  # ... one right, one wrong: the gap dominates
    assert float(tr.partial_boundary_loss(logits, target, dice=False, gap_weight=10)) > \
        1.5 * float(tr.partial_boundary_loss(logits, target, dice=False))
    res = train(glas, glas, TrainParams(name="gaps", target="boundary", gap_weight=10,
                                        epochs=1, steps_per_epoch=2, **SMALL))
    assert res.model.card.training["gap_weight"] == 10
    with pytest.raises(GlandsegError, match="gap_weight needs target='boundary'"):
        TrainParams(gap_weight=5)


def test_validation_report_scores_what_training_selected_on(glas):
    post = {"split": "distance", "h": 2.0, "min_size": 20}
    res = train(glas, glas, TrainParams(name="rep", target="boundary", epochs=1,
                                        steps_per_epoch=2, postprocess=post, **SMALL))
    rows = tr.validation_report(res.model, glas)
    assert {"object_f1", "object_dice", "aji", "pq", "score"} <= set(rows[0])
    for r in rows:
        assert r["score"] == pytest.approx((r["object_f1"] + r["object_dice"]) / 2)
    res.model.card.metrics["selected_on"] = "val_aji"
    assert tr.selection_score(rows[0], res.model.card) == rows[0]["aji"]


def test_settings_of_the_wrong_type_are_named(tmp_path, glas):
    with pytest.raises(GlandsegError, match="lr must be float, got 'fast'"):
        TrainParams(lr="fast")
    with pytest.raises(GlandsegError, match="epochs must be int, got 2.5"):
        TrainParams(epochs=2.5)
    from napari_glandseg.cli import main

    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"lr": "fast"}')
    assert main(["train", "--config", str(cfg), "--data", str(tmp_path)]) == 2


def test_validation_scores_are_the_evaluation_of_the_post_processed_objects(glas,
                                                                           monkeypatch):
    # selection (validate_images) and the Fine-tune table (validation_report) read the same
    # rows, and their object scores are what `glandseg evaluate` gives the same objects.
    # The network's output is replaced by known predictions: each image's glands with its
    # largest one missed (and, on one image, a false speck), so the scores are neither 0
    # nor 1 and pooling the object F1 differs from averaging it per image.
    import napari_glandseg.pipeline as pipeline
    from napari_glandseg.inference import SegmentResult
    from napari_glandseg.labels import as_instances
    from napari_glandseg.metrics import evaluate_dataset
    from napari_glandseg.postprocessing import PostprocessParams, postprocess

    assert len(glas) >= 2
    fake = {}
    for i, p in enumerate(glas):
        inst = as_instances(p.mask)
        sizes = np.bincount(inst.ravel())
        sizes[0] = 0
        pred = ((inst > 0) & (inst != sizes.argmax())).astype(np.uint8)
        if i == 0:
            pred[:4, :4] = 0
            pred[:4, :4][~(p.mask[:4, :4] > 0)] = 1  # a false speck where there is no gland
        fake[id(p.image)] = pred
    def fake_segment(image, model, **kw):  # the route's segment step (pipeline.iter_objects)
        return SegmentResult(fake[id(image)])
        yield

    monkeypatch.setattr(pipeline, "iter_segment", fake_segment)
    post = {"split": "none", "min_size": 0}
    res = train(glas, glas, TrainParams(name="val-rows", target="boundary", epochs=1,
                                        steps_per_epoch=1, postprocess=post, **SMALL))
    rows = tr.validation_report(res.model, glas)
    assert all(r["labels"] is fake[id(p.image)] for r, p in zip(rows, glas, strict=True))
    items = [(r["name"], postprocess(r["labels"], PostprocessParams(**post)), p.mask)
             for r, p in zip(rows, glas, strict=True)]
    per_image, ev = evaluate_dataset(items, hausdorff=False)
    val = tr.validate_images(res.model, glas)
    for k in ("object_f1", "object_dice", "aji", "pq"):
        assert val[f"val_{k}"] == pytest.approx(ev[k])
    assert 0 < val["val_object_f1"] < 1
    assert val["val_object_f1"] != pytest.approx(np.mean([r["object_f1"] for r in per_image]))
    fg = [(r["name"], (r["labels"] > 0).astype(np.uint8), (p.mask > 0).astype(np.uint8))
          for r, p in zip(rows, glas, strict=True)]
    assert val["val_image_dice"] == pytest.approx(evaluate_dataset(fg, hausdorff=False)[1]["dice"])
    assert 0 < val["val_image_dice"] < 1


def test_a_model_without_post_processing_is_scored_on_pixels_only(glas):
    res = train(glas, glas, TrainParams(name="nopost", epochs=1, steps_per_epoch=1, **SMALL))
    res.model.card.postprocess = {}
    val = tr.validate_images(res.model, glas)
    assert set(val) == {"val_image_dice"}
    row = tr.validation_report(res.model, glas[:1])[0]
    assert "object_f1" not in row and row["score"] == row["dice"]


# run folders: exact resume, the readable curve, and refusals (issue: models that learn fast)


def _interrupt_after(gen, epochs: int) -> None:
    ends = 0
    for p in gen:
        ends += "train_loss" in (p.metrics or {})
        if ends == epochs:
            gen.close()
            return


def test_a_run_folder_resumes_to_the_same_weights_as_a_straight_run(glas, tmp_path):
    params = TrainParams(name="folder-run", epochs=4, steps_per_epoch=2, validate_every=2,
                         **SMALL)
    straight = train(glas, glas, params, run_dir=tmp_path / "straight")
    _interrupt_after(iter_train(glas, glas, params, run_dir=tmp_path / "split"), 2)
    assert (tmp_path / "split/state.pt").exists() and (tmp_path / "split/best.safetensors") \
        .exists()
    resumed = train(glas, glas, params, run_dir=tmp_path / "split", resume=True)
    a = torch.load(tmp_path / "straight/state.pt", weights_only=True)
    b = torch.load(tmp_path / "split/state.pt", weights_only=True)
    assert a["step"] == b["step"] == 8
    assert all(torch.equal(a["net"][k], b["net"][k]) for k in a["net"])  # bit for bit
    assert all(torch.equal(x, y) for x, y in zip(a["opt"]["state"][0].values(),
                                                 b["opt"]["state"][0].values(), strict=True))
    assert [h["train_loss"] for h in resumed.history] == \
        [h["train_loss"] for h in straight.history]
    # validate_every=2: whole images scored at epochs 2 and 4 only; the curve says so
    lines = (tmp_path / "split/history.jsonl").read_text().splitlines()
    import json

    curve = [json.loads(x) for x in lines]
    assert [c["epoch"] for c in curve] == [1, 2, 3, 4]
    assert [c["score"] is not None for c in curve] == [False, True, False, True]
    assert "val_image_dice" not in curve[0] and "val_image_dice" in curve[1]
    log = (tmp_path / "split/log.txt").read_text()
    assert "epoch 4" in log and "step 8" in log
    # the best checkpoint is a model at any time
    assert load_model(tmp_path / "split/best.safetensors").card.metrics["epoch"] in (2, 4)


def test_a_run_folder_refuses_other_data_other_settings_and_a_fresh_start(glas, tmp_path):
    params = TrainParams(name="guarded", epochs=2, steps_per_epoch=1, **SMALL)
    train(glas, glas, params, run_dir=tmp_path)
    with pytest.raises(GlandsegError, match="holds a training run; continue it"):
        train(glas, glas, params, run_dir=tmp_path)
    with pytest.raises(GlandsegError, match="cannot resume on other data: the run's train "
                                            "images were 2, now 1; missing"):
        train(glas[:1], glas, params, run_dir=tmp_path, resume=True)
    with pytest.raises(GlandsegError, match="other settings: lr was 0.001, now 0.01"):
        train(glas, glas, TrainParams(name="guarded", epochs=3, steps_per_epoch=1, lr=1e-2,
                                      **SMALL), run_dir=tmp_path, resume=True)
    # a longer schedule is allowed
    more = train(glas, glas, TrainParams(name="guarded", epochs=3, steps_per_epoch=1,
                                         **SMALL), run_dir=tmp_path, resume=True)
    assert [h["epoch"] for h in more.history] == [1, 2, 3]


def test_a_damaged_state_is_refused_and_the_one_before_is_named(glas, tmp_path):
    params = TrainParams(name="damaged", epochs=2, steps_per_epoch=1, **SMALL)
    train(glas, glas, params, run_dir=tmp_path)
    assert (tmp_path / "state.prev.pt").exists()
    (tmp_path / "state.pt").write_bytes(b"half a file")
    with pytest.raises(GlandsegError, match="cannot resume from it .*state.prev.pt"):
        train(glas, glas, params, run_dir=tmp_path, resume=True)


def test_groups_of_validation_images_are_scored_apart_and_selected_on_the_worse(glas):
    from dataclasses import replace as _replace

    val = [_replace(glas[0], group="benign"), _replace(glas[1], group="malignant")]
    post = {"split": "distance", "h": 2.0, "min_size": 20}
    res = train(glas, val, TrainParams(name="worst", target="boundary", epochs=2,
                                       steps_per_epoch=2, postprocess=post,
                                       select="objects_worst", **SMALL))
    for h in res.history:
        groups = [h["val_objects[benign]"], h["val_objects[malignant]"]]
        assert h["val_objects_worst"] == min(groups) == h["score"]
        assert min(groups) <= h["val_objects"] <= max(groups) or \
            h["val_objects"] == pytest.approx(min(groups))
    card = res.model.card
    assert card.metrics["selected_on"] == "val_objects_worst"
    assert "val_objects[malignant]" in card.metrics


def test_training_without_validation_images_keeps_the_last_epoch_and_says_so(glas):
    res = train(glas, [], TrainParams(name="blind", epochs=2, steps_per_epoch=1, **SMALL))
    assert res.best_epoch == 2 and all(h["score"] is None for h in res.history)
    assert res.model.card.metrics["selected_on"] == "last epoch (no validation images)"


def test_read_groups_from_the_split_file(tmp_path):
    from napari_glandseg.training import read_groups

    (tmp_path / "s.csv").write_text("name,suggested_split,grade\na,val,benign\nb,val,\n")
    assert read_groups(tmp_path / "s.csv", "grade") == {"a": "benign"}
    with pytest.raises(GlandsegError, match="no column 'stage'"):
        read_groups(tmp_path / "s.csv", "stage")
