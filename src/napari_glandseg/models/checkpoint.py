"""Safe, self-describing checkpoints: safetensors weights with the model card in the metadata.

Loading never executes code from a file. ``.safetensors`` holds only tensors and a JSON card.
A pickle-based ``.pt``/``.pth`` is accepted only when ``torch.load(weights_only=True)`` can read
it as a plain state dict, and then only with a card given separately (an argument, or a JSON
file ``<name>.card.json`` beside it); anything else is refused.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .._files import atomic_path
from .._types import PathType
from ..errors import CheckpointError, GlandsegError, OutputExistsError
from .card import ModelCard
from .registry import build_from_card

CARD_KEY = "glandseg_card"
SUFFIXES = (".safetensors", ".pt", ".pth")


@dataclass(eq=False)
class Model:
    """A network with its card. ``net`` is in eval mode on ``device``.

    An instance never changes device: :meth:`on` gives the model on another device as a
    second instance (made once, then shared), so a worker thread running one instance is
    never disturbed by another thread asking for another device (a cached model is shared
    by the widgets, the command line and slide workers).
    """

    net: nn.Module
    card: ModelCard
    path: Path | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _family: dict = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _inference: nn.Module | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        self._family = {self.device: self}  # this model's instances by device

    def on(self, device: str | torch.device) -> Model:
        """This model on ``device``: itself when it is there, else its instance there (a
        copy of the network, made on first use and reused). ``self`` is never moved."""
        device = torch.device(device)
        if device == self.device:
            return self
        with self._lock:
            other = self._family.get(device)
            if other is None:
                import copy

                other = Model(copy.deepcopy(self.net).to(device), self.card, self.path, device)
                other._family, other._lock = self._family, self._lock
                self._family[device] = other
        return other

    @property
    def inference_net(self) -> nn.Module:
        """The network as inference runs it: a copy with its batch norms folded into the
        convolutions (:func:`~napari_glandseg.models.fold.fold_batch_norms`; the same
        outputs, faster), made on first use. ``net`` stays as trained: it is what is saved,
        exported and fine-tuned; change it in place and this copy is stale (make a new
        ``Model`` instead, as training does)."""
        if self._inference is None:
            from .fold import fold_batch_norms

            # plain tensors even when first asked inside inference_mode (as segment does)
            with self._lock, torch.inference_mode(False):
                if self._inference is None:
                    self._inference = fold_batch_norms(self.net, self.card.in_channels,
                                                       self.device)[0]
        return self._inference

    def to(self, device: str | torch.device) -> Model:
        """The model on ``device`` (:meth:`on`); use the instance returned, ``self`` stays
        where it is."""
        return self.on(device)

    @property
    def name(self) -> str:
        return self.card.name


def save_checkpoint(path: PathType, net: nn.Module, card: ModelCard, half: bool = False,
                    overwrite: bool = False) -> Path:
    """Write ``net``'s weights and ``card`` to a ``.safetensors`` file, atomically.

    ``half`` stores floating-point weights as float16 (half the size; loads back as float32).
    """
    from safetensors.torch import save_file

    p = Path(path)
    if p.suffix != ".safetensors":
        raise GlandsegError(f"{p}: checkpoints are written as .safetensors")
    if p.exists() and not overwrite:
        raise OutputExistsError(p, "pass overwrite=True to replace it")
    state = {}
    for k, v in net.state_dict().items():
        v = v.detach().cpu()
        if half and v.is_floating_point():
            v = v.half()
        state[k] = v.contiguous()
    with atomic_path(p, ".tmp") as tmp:
        save_file(state, tmp, metadata={CARD_KEY: card.to_json()})
    return p


def read_card(path: PathType) -> ModelCard:
    """The card stored in a ``.safetensors`` checkpoint, without reading the weights."""
    from safetensors import safe_open

    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except FileNotFoundError:
        raise CheckpointError(f"{p}: no such file") from None
    except Exception as exc:
        raise CheckpointError(f"{p}: not a valid safetensors file (truncated or corrupt: {exc})") \
            from None
    if CARD_KEY not in meta:
        raise CheckpointError(f"{p}: safetensors file has no model card ({CARD_KEY!r} metadata)")
    try:
        return ModelCard.from_json(meta[CARD_KEY])
    except GlandsegError as exc:
        raise CheckpointError(f"{p}: bad model card: {exc}") from None
    except (TypeError, ValueError) as exc:  # a value of a type no check foresaw
        raise CheckpointError(f"{p}: bad model card: {type(exc).__name__}: {exc}") from None


def load_checkpoint(path: PathType, card: ModelCard | dict | None = None) -> Model:
    """Build the network a checkpoint describes and load its weights (CPU, eval mode).

    Parameters
    ----------
    path : str or Path
        ``.safetensors`` (card inside) or a plain state dict ``.pt``/``.pth``.
    card : ModelCard or dict, optional
        Required for ``.pt``/``.pth`` unless ``<stem>.card.json`` lies beside the file;
        overrides the card inside a ``.safetensors``.

    Raises
    ------
    CheckpointError
        Missing, truncated, corrupt, unsafe, or not matching its card; names the file.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file")
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise CheckpointError(f"{p}: unknown checkpoint type {suffix!r}; expected "
                              + ", ".join(SUFFIXES))
    if isinstance(card, dict):
        card = ModelCard.from_dict(card)
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        stored = read_card(p)
        card = card or stored
        try:
            state = load_file(str(p))
        except Exception as exc:
            raise CheckpointError(f"{p}: cannot read weights (truncated or corrupt: {exc})") \
                from None
    else:
        state = _load_pickle_state(p)
        if card is None:
            sidecar = p.with_suffix(".card.json")
            if not sidecar.is_file():
                raise CheckpointError(
                    f"{p}: a .pt/.pth state dict carries no model card; give one (card=...) or "
                    f"put it in {sidecar.name}"
                )
            try:
                card = ModelCard.from_json(sidecar.read_text())
            except GlandsegError as exc:
                raise CheckpointError(f"{sidecar}: {exc}") from None
    net = build_from_card(card)
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(filter(None, [
            f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
            f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
            f"{len(wrong)} of wrong shape (e.g. {wrong[0]})" if wrong else "",
        ]))
        raise CheckpointError(
            f"{p}: weights do not match architecture {card.architecture!r} "
            f"(in={card.in_channels}, classes={card.num_classes}): {detail}"
        )
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    net.eval()
    return Model(net=net, card=card, path=p)


def _load_pickle_state(p: Path) -> dict:
    import pickle

    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{p}: refused: this pickle holds objects other than plain tensors and would run "
            f"code to load ({str(exc).splitlines()[0][:200]}). Save a state dict "
            "(torch.save(model.state_dict(), ...)) or convert it to .safetensors"
        ) from None
    except Exception as exc:
        raise CheckpointError(f"{p}: cannot read (truncated or corrupt: {exc})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{p}: not a state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}
