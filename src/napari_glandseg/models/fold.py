"""The inference form of a network: batch norms folded into the convolutions before them.

In eval mode a ``BatchNorm2d`` after a ``Conv2d`` is an affine map per channel, so it can be
merged into the convolution's weights and bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``):
the same outputs (to float rounding) without a pass over every feature map. On 2 CPU cores
a 4 x 512^2 batch runs 1.10x (U-Net, Lite0 U-Net) to 1.34x (Lite1 U-Net) faster, a whole
segmentation 1.08x-1.17x (``benchmarks/bench_inference.py``, docs/performance.md).

Why by hand: ``torch.fx``'s ``fuse`` cannot trace our networks (their padding depends on the
input's size), ``torch.ao.quantization.fuse_modules`` needs the pairs named, and
``torch.jit.freeze`` folds the same layers but needs a trace per input shape (a forward pass
of warm-up, and a graph whose size-dependent branches are fixed at the traced shape). Here
one small hooked forward pass finds the pairs: a convolution whose output goes into a batch
norm and into no other module. A use outside any module (a sum in ``forward``) is invisible
to hooks, so a folded network that does not give the original's output on a random input
is discarded (the original is used).
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

log = logging.getLogger(__name__)

#: The side of the random probe image (a multiple of 32, as every network here needs).
PROBE_SIZE = 64


def fold_batch_norms(net: nn.Module, in_channels: int,
                     device: torch.device | str = "cpu") -> tuple[nn.Module, int]:
    """A copy of ``net`` (which is in eval mode) with each ``Conv2d -> BatchNorm2d`` pair
    folded into one convolution, and the number of pairs folded. ``net`` itself is not
    changed. When no pair is found, or the folded copy's output differs from ``net``'s,
    returns ``(net, 0)``."""
    if not any(isinstance(m, nn.BatchNorm2d) for m in net.modules()):
        return net, 0
    folded = copy.deepcopy(net).eval()
    parent = {id(child): (mod, name) for mod in folded.modules()
              for name, child in mod.named_children()}
    made: dict[int, tuple[nn.Conv2d, torch.Tensor]] = {}  # output id -> (conv, output)
    takers: dict[int, list[nn.Module]] = {}  # output id -> modules that took it as input

    def conv_out(mod, args, out):
        made[id(out)] = (mod, out)  # the tensor is kept, so its id is not reused

    def took(mod, args):
        for a in args:
            if isinstance(a, torch.Tensor) and id(a) in made:
                takers.setdefault(id(a), []).append(mod)

    # the leaves that take it (a container passes its input on to its first child)
    hooks = [m.register_forward_pre_hook(took) for m in folded.modules()
             if not any(True for _ in m.children())]
    hooks += [m.register_forward_hook(conv_out) for m in folded.modules()
              if isinstance(m, nn.Conv2d)]
    # a generator of its own: segmenting never moves the caller's random stream
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, in_channels, PROBE_SIZE, PROBE_SIZE, generator=g).to(device)
    try:
        with torch.no_grad():
            reference = net(x)
            folded(x)
    except Exception as exc:  # a network that cannot run the probe keeps its form
        log.debug("no batch-norm folding: the probe failed (%s)", exc)
        return net, 0
    finally:
        for h in hooks:
            h.remove()
    pairs = []
    for key, (conv, _) in made.items():
        users = takers.get(key, [])
        if len(users) == 1 and isinstance(users[0], nn.BatchNorm2d) \
                and users[0].track_running_stats and users[0].running_mean is not None:
            pairs.append((conv, users[0]))
    for conv, bn in pairs:
        mod, name = parent[id(conv)]
        setattr(mod, name, fuse_conv_bn_eval(conv, bn))
        mod, name = parent[id(bn)]
        setattr(mod, name, nn.Identity())
    if not pairs:
        return net, 0
    with torch.no_grad():
        out = folded(x)
    scale = float(reference.abs().max()) or 1.0
    if out.shape != reference.shape or float((out - reference).abs().max()) > 1e-3 * scale:
        log.warning("batch-norm folding changed the network's output: not used")
        return net, 0
    return folded, len(pairs)
