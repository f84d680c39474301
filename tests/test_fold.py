"""Inference runs a copy of the network with its batch norms folded into the convolutions:
the same outputs, the trained network untouched."""

import numpy as np
import pytest
import torch
from torch import nn

from napari_glandseg.inference import segment
from napari_glandseg.models import Model, ModelCard, build_model
from napari_glandseg.models.fold import fold_batch_norms

NETS = {
    "unet": {"features": [8, 8, 16, 16, 32, 8]},  # MONAI BasicUNet: conv -> ADN(norm, ...)
    "effnet_unet": {"variant": 0, "decoder": [16, 16, 8, 8, 8]},  # ours
}


def _trained_looking(net: nn.Module) -> nn.Module:
    """Batch norms far from the identity (as after training), so a wrong fold shows."""
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.2)
            m.weight.data.copy_(torch.randn(c, generator=g))
            m.bias.data.copy_(torch.randn(c, generator=g))
    return net.eval()


def _bns(net):
    return sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())


@pytest.mark.parametrize("arch", NETS)
def test_every_batch_norm_folds_and_the_output_stays(arch):
    torch.manual_seed(0)
    net = _trained_looking(build_model(arch, 3, 3, **NETS[arch]))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded, n = fold_batch_norms(net, 3)
    assert n == _bns(net) > 0 and _bns(folded) == 0
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        ref, out = net(x), folded(x)
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()
    # the trained network is not touched: it is what is saved and fine-tuned
    after = net.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


class _Skip(nn.Module):
    """The convolution's output feeds its batch norm and, outside any module, a sum: folding
    the norm into the convolution would change the sum."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class _Shared(nn.Module):
    """The convolution's output feeds two modules: its batch norm and another convolution."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.other = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) * self.other(y)


@pytest.mark.parametrize("cls", [_Skip, _Shared])
def test_a_convolution_output_used_elsewhere_is_not_folded(cls):
    torch.manual_seed(0)
    net = _trained_looking(cls())
    folded, n = fold_batch_norms(net, 3)
    assert n == 0 and folded is net


def test_segment_runs_the_folded_copy_with_the_same_result():
    torch.manual_seed(0)
    arch = "unet"
    net = _trained_looking(build_model(arch, 3, 3, **NETS[arch]))
    card = ModelCard(name="t", architecture=arch, in_channels=3, num_classes=3,
                     arch_kwargs=NETS[arch])
    model, plain = Model(net, card), Model(net, card)
    plain._inference = net  # as before folding: the trained network itself
    image = (np.random.default_rng(0).random((200, 240, 3)) * 255).astype(np.uint8)
    rng = torch.random.get_rng_state()
    assert _bns(model.inference_net) == 0
    assert torch.equal(rng, torch.random.get_rng_state())  # the probe draws from its own
    res = segment(image, model, tile_size=128, return_probabilities=True)
    assert _bns(model.inference_net) == 0 and _bns(model.net) == _bns(net) > 0
    ref = segment(image, plain, tile_size=128, return_probabilities=True)
    p, q = np.asarray(res.probabilities), np.asarray(ref.probabilities)
    assert np.abs(p - q).max() < 4e-3  # stored as float16: a few of its steps at most
    assert (np.asarray(res.labels) == np.asarray(ref.labels)).mean() > 0.999
