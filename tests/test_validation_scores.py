"""Training's validation scores for class models count a pixel as found only when its class
is right: the whole-image rows that select checkpoints, and the patch scores of each epoch."""

import numpy as np
import pytest
import torch

from napari_glandseg.models import Model, ModelCard


@pytest.fixture
def truth_and_prediction():
    """Two objects, classes 1 and 2; the prediction finds both, but calls the class-2 one
    class 1. Right class: 100 px found; the 150 px of class 2 are a false class 1 and a
    missed class 2, so the pooled Dice is 2*100 / (2*100 + 150 + 150) = 0.4 (1.0 if the
    wrong class counted as a hit)."""
    truth = np.zeros((40, 40), np.uint8)
    truth[5:15, 5:15] = 1
    truth[20:30, 20:35] = 2
    pred = truth.copy()
    pred[truth == 2] = 1
    return truth, pred


class Says(torch.nn.Module):
    """A 'network' that predicts the class written in the image's red channel (100 per
    class; ``unit`` normalisation): the real inference and scoring route, known output."""

    def forward(self, x):
        k = torch.round(x[:, 0].float() * 2.55).long().clamp(0, 2)
        return 10.0 * torch.nn.functional.one_hot(k, 3).permute(0, 3, 1, 2).float()


def test_whole_image_validation_of_a_class_map_counts_only_the_right_class(
        truth_and_prediction):
    from napari_glandseg.training import TrainingPair
    from napari_glandseg.training.validation import iter_validation_rows, validate_images

    truth, pred = truth_and_prediction
    card = ModelCard(name="classes", architecture="base_cnn", in_channels=3, num_classes=3,
                     normalization="unit")
    model = Model(Says(), card)
    image = np.zeros((40, 40, 3), np.uint8)
    image[..., 0] = pred * 100
    pairs = [TrainingPair(image, truth, "a")]
    (row,) = iter_validation_rows(model, pairs, device="cpu")
    np.testing.assert_array_equal(row["labels"], pred)
    assert row["pixels"] == (100, 150, 150)
    val = validate_images(model, pairs)
    assert val["val_image_dice"] == pytest.approx(0.4)
    # class by class: class 1 found with 150 px too many (2*100 / 350), class 2 never
    # found (0); their mean, where the pooled 0.4 hides the missing class
    assert val["val_dice[class 1]"] == pytest.approx(200 / 350)
    assert val["val_dice[class 2]"] == 0
    assert val["val_class_dice"] == pytest.approx(100 / 350)


def test_patch_validation_of_a_class_map_counts_only_the_right_class(truth_and_prediction):
    from napari_glandseg.training.losses import make_loss
    from napari_glandseg.training.validation import _validate

    truth, pred = truth_and_prediction

    x = np.zeros((3, 40, 40), np.float32)
    x[0] = pred * 100 / 255  # what ``unit`` normalisation makes of the red channel
    out = _validate(Says(), [(x, truth)], make_loss("dice_ce", 3), torch.device("cpu"), 3)
    assert out["val_dice"] == pytest.approx(0.4)
    assert out["val_iou"] == pytest.approx(100 / 400)
    assert out["val_accuracy"] == pytest.approx(1 - 150 / 1600)
