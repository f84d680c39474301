"""Architecture name -> network class, and building a network from a card."""

from __future__ import annotations

import inspect

from torch import nn

from ..errors import GlandsegError, as_enum
from . import efficientnet, nets
from .card import Architecture, ModelCard

NETWORKS: dict[Architecture, type[nets.SegNet]] = {
    Architecture.BASE_CNN: nets.BaseCNN,
    Architecture.UNET: nets.UNet,
    Architecture.RESUNET: nets.ResUNet,
    Architecture.LINKNET34: nets.LinkNet34,
    Architecture.UNETPP: nets.UNetPlusPlus,
    Architecture.DEEPLABV3PLUS: nets.DeepLabV3Plus,
    Architecture.EFFNET_UNET: efficientnet.EfficientUNet,
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


#: Most parameters a card may ask for (the largest bundled architecture at default size has
#: about 26 million).
MAX_PARAMETERS = 200_000_000


def build_from_card(card: ModelCard) -> nn.Module:
    """Build the card's network, after counting its parameters on PyTorch's "meta" device
    (no memory): a card asking for an absurd size is refused before anything is allocated."""
    import torch

    try:
        with torch.device("meta"):
            probe = build_model(card.architecture, card.in_channels, card.num_classes,
                                **card.arch_kwargs)
    except GlandsegError:
        raise
    except Exception as exc:  # an architecture rejecting its arguments (e.g. too few widths)
        raise GlandsegError(f"card of {card.name!r}: cannot build {card.architecture} with "
                            f"{card.arch_kwargs}: {type(exc).__name__}: {exc}") from None
    n = sum(p.numel() for p in probe.parameters())
    if n > MAX_PARAMETERS:
        raise GlandsegError(f"card of {card.name!r} asks for {n:,} parameters "
                            f"({n * 4 / 2**30:.0f} GiB); at most {MAX_PARAMETERS:,} are allowed")
    return build_model(card.architecture, card.in_channels, card.num_classes, **card.arch_kwargs)
