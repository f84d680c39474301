"""Macenko stain normalisation: fitted once per image, applied per tile, kept in the card."""

import copy

import numpy as np
import pytest
import torch

from napari_glandseg.errors import GlandsegError
from napari_glandseg.inference import segment
from napari_glandseg.io import read_image
from napari_glandseg.models import Model, ModelCard
from napari_glandseg.stain import MacenkoStains, apply_macenko, fit_macenko


@pytest.fixture(scope="module")
def glas_rgb():
    from pathlib import Path

    return read_image(Path(__file__).parent / "data/glas/testA_5_crop.png").data


@pytest.fixture(scope="module")
def nuclei_rgb():
    from pathlib import Path

    path = Path(__file__).parent / "data/monuseg/TCGA-21-5784-01Z-00-DX1_crop.png"
    return read_image(path).data


def test_matches_torchstain_on_real_images(glas_rgb, nuclei_rgb):
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

    reference = NumpyMacenkoNormalizer()
    reference.fit(nuclei_rgb)
    expected, _, _ = reference.normalize(glas_rgb, stains=False)

    ref = fit_macenko(nuclei_rgb)
    np.testing.assert_allclose(ref.matrix, reference.HERef)
    np.testing.assert_allclose(ref.max_concentrations, reference.maxCRef)
    out = apply_macenko(glas_rgb, fit_macenko(glas_rgb), ref)
    assert out.dtype == np.uint8 and out.shape == glas_rgb.shape
    np.testing.assert_array_equal(out, expected)
    # and it really recolours: GlaS pink towards MoNuSeg's staining
    assert np.abs(out.astype(int) - glas_rgb).mean() > 5


def test_other_dtypes_keep_their_range(glas_rgb, nuclei_rgb):
    ref, src = fit_macenko(nuclei_rgb), fit_macenko(glas_rgb)
    as8 = apply_macenko(glas_rgb, src, ref)
    as16 = apply_macenko(glas_rgb.astype(np.uint16) * 257, src, ref)
    asf = apply_macenko(glas_rgb / 255.0, src, ref)
    assert as16.dtype == np.uint16 and asf.dtype == np.float64
    assert np.abs(as16 / 257.0 - as8).max() <= 1.0
    assert np.abs(asf * 255 - as8).max() <= 1.0


def test_blank_image_names_the_problem():
    with pytest.raises(GlandsegError, match="too little stained tissue .* need 500"):
        fit_macenko(np.full((64, 64, 3), 245, np.uint8))
    with pytest.raises(GlandsegError, match=r"needs an RGB image \(..., 3\), got shape"):
        fit_macenko(np.zeros((64, 64), np.uint8))


def test_card_keeps_and_checks_the_reference(nuclei_rgb):
    entry = fit_macenko(nuclei_rgb).to_card("nuclei crop")
    card = ModelCard(name="s", architecture="unet", in_channels=3, num_classes=1,
                     stain_normalization=entry)
    again = ModelCard.from_json(card.to_json())
    assert again == card and "Macenko, onto the stains of nuclei crop" in again.summary()
    np.testing.assert_allclose(MacenkoStains.from_card(again.stain_normalization).matrix,
                               np.round(fit_macenko(nuclei_rgb).matrix, 6))
    with pytest.raises(GlandsegError, match="needs an RGB model, this one has 1 input"):
        ModelCard(name="s", architecture="unet", in_channels=1, num_classes=1,
                  stain_normalization=entry)
    with pytest.raises(GlandsegError, match="must be empty or a Macenko reference"):
        ModelCard(name="s", architecture="unet", in_channels=3, num_classes=1,
                  stain_normalization={"method": "reinhard"})
    with pytest.raises(GlandsegError, match="3x2 matrix"):
        ModelCard(name="s", architecture="unet", in_channels=3, num_classes=1,
                  stain_normalization={**entry, "stain_matrix": [[1, 2, 3]]})


def _pair_of_models(entry):
    # a network that passes colour straight through (a 1x1 convolution), so its output
    # shows exactly which pixels it was given
    net = torch.nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        net.weight[:] = torch.tensor([1.0, -1.0, 0.5]).view(1, 3, 1, 1)
        net.bias.zero_()
    plain = ModelCard(name="plain", architecture="base_cnn", in_channels=3, num_classes=1,
                      arch_kwargs={"widths": [4, 8]})
    stained = copy.deepcopy(plain)
    stained.name, stained.stain_normalization = "stained", entry
    return Model(net.eval(), plain), Model(net.eval(), stained)


def test_inference_maps_each_image_once_so_tiles_have_no_seams(glas_rgb, nuclei_rgb):
    ref = fit_macenko(nuclei_rgb)
    plain, stained = _pair_of_models(ref.to_card())
    opts = {"tile_size": 64, "overlap": 0.25, "precision": "fp32"}
    got = segment(glas_rgb, stained, **opts)
    # the same as normalising the whole image first and running the plain model
    whole = apply_macenko(glas_rgb, fit_macenko(glas_rgb), ref)
    expected = segment(whole, plain, **opts)
    diff = np.abs(got.probabilities - expected.probabilities)
    # equal up to a pixel whose value sits on a rounding edge (one grey level)
    assert np.mean(diff > 1e-5) < 1e-3 and diff.max() < 0.01
    assert got.info["stain"] == "macenko"
    # which differs from the unnormalised result, and can be switched off
    raw = segment(glas_rgb, plain, **opts)
    assert np.abs(raw.probabilities - got.probabilities).mean() > 0.05
    off = segment(glas_rgb, stained, stain_normalization=False, **opts)
    np.testing.assert_allclose(off.probabilities, raw.probabilities, atol=1e-6)


def test_blank_image_is_segmented_without_stains_and_says_so(nuclei_rgb):
    _, stained = _pair_of_models(fit_macenko(nuclei_rgb).to_card())
    with pytest.warns(UserWarning, match="stain normalisation skipped: too little"):
        res = segment(np.full((64, 64, 3), 250, np.uint8), stained, tile_size=64)
    assert res.info["stain"].startswith("skipped") and res.labels.shape == (64, 64)
