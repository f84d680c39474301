"""Architecture name -> network class, and building a network from a card."""

from __future__ import annotations

import inspect

from torch import nn

from ..errors import GlandsegError, as_enum
from . import nets
from .card import Architecture, ModelCard

NETWORKS: dict[Architecture, type[nets.SegNet]] = {
    Architecture.BASE_CNN: nets.BaseCNN,
    Architecture.UNET: nets.UNet,
    Architecture.RESUNET: nets.ResUNet,
    Architecture.LINKNET34: nets.LinkNet34,
    Architecture.UNETPP: nets.UNetPlusPlus,
    Architecture.DEEPLABV3PLUS: nets.DeepLabV3Plus,
}


def build_model(
    architecture: str | Architecture, in_channels: int, num_classes: int, **arch_kwargs
) -> nn.Module:
    """Build an untrained network.

    Parameters
    ----------
    architecture : str
        ``base_cnn``, ``unet``, ``resunet``, ``linknet34``, ``unetpp`` or ``deeplabv3plus``.
    in_channels, num_classes : int
    **arch_kwargs
        The architecture's own arguments (e.g. ``widths``, ``features``, ``dropout``).

    Examples
    --------
    >>> import torch
    >>> net = build_model("base_cnn", 1, 3, widths=(8, 16)).eval()
    >>> net(torch.zeros(2, 1, 33, 20)).shape
    torch.Size([2, 3, 33, 20])
    """
    cls = NETWORKS[as_enum(Architecture, architecture, "architecture")]
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "in_channels",
                                                                  "num_classes"}
    bad = sorted(set(arch_kwargs) - allowed)
    if bad:
        raise GlandsegError(
            f"{cls.__name__} takes no argument {', '.join(map(repr, bad))}; "
            f"it takes {', '.join(sorted(allowed))}"
        )
    return cls(in_channels, num_classes, **arch_kwargs)


def build_from_card(card: ModelCard) -> nn.Module:
    return build_model(card.architecture, card.in_channels, card.num_classes, **card.arch_kwargs)
