"""The six 2D segmentation architectures.

Every network maps ``(N, in_channels, H, W)`` to logits ``(N, num_classes, H, W)`` for any
``H, W`` (odd sizes included): :class:`SegNet` reflect-pads the input to a multiple of the
network's total stride and crops the logits back. Widths and depth are arguments, so each can be
built small and fast.

What comes from MONAI and what is ours:

============  ==============================================================================
Base CNN      ours: conv blocks, max-pool down, transposed-conv up, no skips (nothing in MONAI)
U-Net         ``monai.networks.nets.BasicUNet`` with batch norm and dropout
ResNet U-Net  ``monai.networks.nets.UNet`` with residual units in encoder and decoder
LinkNet-34    encoder: MONAI's ``ResNet`` (basic blocks, 3-4-6-3 layers); LinkNet decoder ours
UNet++        ``monai.networks.nets.BasicUNetPlusPlus`` (nested dense skips)
DeepLabV3+    encoder: MONAI's ``ResNet`` with a dilated last stage (output stride 16);
              ASPP: ``monai.networks.blocks.SimpleASPP`` plus an image-pooling branch; decoder ours
============  ==============================================================================

Examples
--------
>>> import torch
>>> net = LinkNet34(in_channels=3, num_classes=2, widths=(8, 16, 32, 64)).eval()
>>> net(torch.zeros(1, 3, 97, 131)).shape
torch.Size([1, 2, 97, 131])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class SegNet(nn.Module):
    """Base class: pads to a multiple of ``self.multiple``, runs ``_forward``, crops back."""

    multiple: int = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected input of shape (N, C, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        return self._forward(x)[..., :h, :w]

    def _forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def _conv_bn_relu(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(_conv_bn_relu(cin, cout), _conv_bn_relu(cout, cout))


class BaseCNN(SegNet):
    """Plain encoder-decoder: max-pool down-sampling, transposed-conv up-sampling, no skips.

    Parameters
    ----------
    widths : sequence of int
        Channels per level; ``len(widths) - 1`` down-samplings.
    """

    def __init__(
        self, in_channels: int, num_classes: int, widths: Sequence[int] = (32, 64, 128, 256)
    ):
        super().__init__()
        widths = list(widths)
        self.multiple = 2 ** (len(widths) - 1)
        enc, cin = [], in_channels
        for w in widths:
            enc.append(_double_conv(cin, w))
            cin = w
        self.encoder = nn.ModuleList(enc)
        self.pool = nn.MaxPool2d(2)
        dec = []
        for w in reversed(widths[:-1]):
            dec.append(nn.Sequential(nn.ConvTranspose2d(cin, w, 2, stride=2), _double_conv(w, w)))
            cin = w
        self.decoder = nn.Sequential(*dec)
        self.head = nn.Conv2d(cin, num_classes, 1)

    def _forward(self, x):
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
        return self.head(self.decoder(x))


class _MonaiBasicUNet(SegNet):
    """MONAI's BasicUNet family with batch norm and ReLU; ``features`` are the five encoder
    widths and the last decoder width (MONAI's convention)."""

    multiple = 16
    _monai_class = "BasicUNet"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        dropout: float = 0.0,
    ):
        super().__init__()
        from monai.networks import nets as monai_nets

        self.net = getattr(monai_nets, self._monai_class)(
            spatial_dims=2, in_channels=in_channels, out_channels=num_classes,
            features=tuple(features), norm="batch", act="relu", dropout=dropout,
        )

    def _forward(self, x):
        out = self.net(x)
        return out[0] if isinstance(out, list) else out  # UNet++ returns a list


class UNet(_MonaiBasicUNet):
    """U-Net (Ronneberger et al. 2015): MONAI ``BasicUNet`` with batch norm, optional dropout."""


class ResUNet(SegNet):
    """ResNet U-Net: MONAI ``UNet`` with ``num_res_units`` residual units per level.

    Parameters
    ----------
    channels : sequence of int
        Widths per level; ``len(channels) - 1`` stride-2 down-samplings.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        num_res_units: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__()
        from monai.networks.nets import UNet as MonaiUNet

        self.multiple = 2 ** (len(channels) - 1)
        self.net = MonaiUNet(
            spatial_dims=2, in_channels=in_channels, out_channels=num_classes,
            channels=tuple(channels), strides=(2,) * (len(channels) - 1),
            num_res_units=num_res_units, norm="batch", dropout=dropout,
        )

    def _forward(self, x):
        return self.net(x)


class ResNetEncoder(nn.Module):
    """MONAI's 2D ResNet (basic blocks) returning features at strides 2, 4, 8, 16, 32.

    ``layers=(3, 4, 6, 3)`` with ``widths=(64, 128, 256, 512)`` is ResNet-34. With
    ``dilate_last`` the last stage keeps stride 16 and uses dilation 2 (as in DeepLab).
    """

    def __init__(
        self,
        in_channels: int,
        widths: Sequence[int] = (64, 128, 256, 512),
        layers: Sequence[int] = (3, 4, 6, 3),
        dilate_last: bool = False,
    ):
        super().__init__()
        from monai.networks.nets import ResNet

        net = ResNet(
            block="basic", layers=list(layers), block_inplanes=list(widths), spatial_dims=2,
            n_input_channels=in_channels, conv1_t_size=7, conv1_t_stride=2,
            feed_forward=False,
        )
        self.stem = nn.Sequential(net.conv1, net.bn1, net.act)
        self.pool = net.maxpool
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        self.channels = [int(widths[0])] + [int(w) for w in widths]
        if dilate_last:
            for m in net.layer4.modules():
                if isinstance(m, nn.Conv2d):
                    m.stride = (1, 1)
                    if m.kernel_size == (3, 3):
                        m.dilation, m.padding = (2, 2), (2, 2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(x)]
        x = self.pool(feats[0])
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class _LinkDecoderBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        mid = max(cin // 4, 1)
        super().__init__(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(mid, mid, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )


class LinkNet34(SegNet):
    """LinkNet (Chaurasia & Culurciello 2017) on a ResNet-34 encoder: additive skips."""

    multiple = 32

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: Sequence[int] = (64, 128, 256, 512),
        layers: Sequence[int] = (3, 4, 6, 3),
    ):
        super().__init__()
        self.encoder = ResNetEncoder(in_channels, widths, layers)
        w = list(widths)
        self.decoders = nn.ModuleList(
            [_LinkDecoderBlock(w[i], w[i - 1]) for i in range(3, 0, -1)]
            + [_LinkDecoderBlock(w[0], w[0])]
        )
        half = max(w[0] // 2, 1)
        self.final = nn.Sequential(
            nn.ConvTranspose2d(w[0], half, 3, stride=2, padding=1, output_padding=1),
            nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, padding=1), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, num_classes, 1),
        )

    def _forward(self, x):
        _, e1, e2, e3, e4 = self.encoder(x)
        d = self.decoders[0](e4) + e3
        d = self.decoders[1](d) + e2
        d = self.decoders[2](d) + e1
        d = self.decoders[3](d)  # stride 4 -> 2
        return self.final(d)  # stride 2 -> 1


class UNetPlusPlus(_MonaiBasicUNet):
    """UNet++ (Zhou et al. 2018): MONAI ``BasicUNetPlusPlus`` (nested dense skips)."""

    _monai_class = "BasicUNetPlusPlus"


class _ASPP(nn.Module):
    """Atrous spatial pyramid pooling: MONAI's SimpleASPP branches + image pooling + 1x1."""

    def __init__(self, cin: int, cout: int, dilations: Sequence[int]):
        super().__init__()
        from monai.networks.blocks import SimpleASPP

        branch = max(cout // 4, 1)
        ks = (1,) + (3,) * len(dilations)
        self.aspp = SimpleASPP(2, cin, branch, kernel_sizes=ks, dilations=(1, *dilations),
                               norm_type="BATCH", acti_type="RELU")
        # No batch norm on the 1x1 pooled branch: it would fail on batch 1 in training.
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, branch, 1),
                                  nn.ReLU(inplace=True))
        n = branch * (len(dilations) + 2)
        self.project = nn.Sequential(nn.Conv2d(n, cout, 1, bias=False), nn.BatchNorm2d(cout),
                                     nn.ReLU(inplace=True))

    def forward(self, x):
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([self.aspp(x), pooled], dim=1))


class DeepLabV3Plus(SegNet):
    """DeepLabV3+ (Chen et al. 2018): dilated ResNet, ASPP, decoder with a stride-4 skip."""

    multiple = 16

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: Sequence[int] = (64, 128, 256, 512),
        layers: Sequence[int] = (3, 4, 6, 3),
        aspp_channels: int = 256,
        dilations: Sequence[int] = (6, 12, 18),
    ):
        super().__init__()
        self.encoder = ResNetEncoder(in_channels, widths, layers, dilate_last=True)
        self.aspp = _ASPP(widths[-1], aspp_channels, dilations)
        low = max(aspp_channels // 5, 8)
        self.low = nn.Sequential(nn.Conv2d(widths[0], low, 1, bias=False), nn.BatchNorm2d(low),
                                 nn.ReLU(inplace=True))
        self.decoder = nn.Sequential(
            _conv_bn_relu(aspp_channels + low, aspp_channels),
            _conv_bn_relu(aspp_channels, aspp_channels),
            nn.Conv2d(aspp_channels, num_classes, 1),
        )

    def _forward(self, x):
        feats = self.encoder(x)
        low = self.low(feats[1])
        high = F.interpolate(self.aspp(feats[-1]), size=low.shape[-2:], mode="bilinear",
                             align_corners=False)
        out = self.decoder(torch.cat([high, low], dim=1))
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
