import pickle

import pytest
import torch

from napari_glandseg.errors import CheckpointError, GlandsegError
from napari_glandseg.models import (
    Architecture,
    ModelCard,
    build_model,
    load_checkpoint,
    read_card,
    save_checkpoint,
)

# Small widths keep the matrix fast; the benchmark runs the default sizes.
SMALL = {
    "base_cnn": {"widths": [8, 16, 32]},
    "unet": {"features": [8, 8, 16, 32, 64, 8], "dropout": 0.1},
    "resunet": {"channels": [8, 16, 32, 64], "num_res_units": 1},
    "linknet34": {"widths": [8, 16, 32, 64]},
    "unetpp": {"features": [8, 8, 16, 32, 64, 8]},
    "deeplabv3plus": {"widths": [8, 16, 32, 64], "aspp_channels": 32},
    "effnet_unet": {"variant": 0, "decoder": [16, 8, 8, 8, 8]},
}
ARCHS = [a.value for a in Architecture]


def _card(arch, cin=3, classes=1, **kw):
    return ModelCard(name=f"t-{arch}", architecture=arch, in_channels=cin, num_classes=classes,
                     arch_kwargs=SMALL[arch], **kw)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cin", [1, 3])
@pytest.mark.parametrize("classes", [1, 3])
def test_any_size_in_same_size_out_and_gradients_reach_first_layer(arch, cin, classes):
    torch.manual_seed(0)
    net = build_model(arch, cin, classes, **SMALL[arch])
    for h, w in [(64, 64), (97, 131)]:
        net.train()
        x = torch.randn(2, cin, h, w)
        y = net(x)
        assert y.shape == (2, classes, h, w)
    first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    net.zero_grad()
    y.square().mean().backward()
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_default_size_builds_and_runs(arch):
    net = build_model(arch, 3, 2).eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 65, 70)).shape == (1, 2, 65, 70)


def test_build_model_names_bad_values():
    with pytest.raises(GlandsegError, match="unknown architecture 'vgg16'"):
        build_model("vgg16", 3, 1)
    with pytest.raises(GlandsegError, match="BaseCNN takes no argument 'depth'"):
        build_model("base_cnn", 3, 1, depth=4)
    with pytest.raises(GlandsegError, match="num_classes must be an integer in 1..256, got 0"):
        ModelCard(name="x", architecture="unet", in_channels=3, num_classes=0)
    with pytest.raises(GlandsegError, match="class_names has 2 names but .* needs 3"):
        ModelCard(name="x", architecture="unet", in_channels=3, num_classes=3,
                  class_names=["a", "b"])


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip_identical(tmp_path, arch):
    torch.manual_seed(1)
    card = _card(arch, classes=3, class_names=["bg", "interior", "boundary"],
                 boundary_class=True, pixel_size_um=0.62, metrics={"dice": 0.9})
    net = build_model(arch, 3, 3, **SMALL[arch]).eval()
    path = save_checkpoint(tmp_path / "m.safetensors", net, card)
    model = load_checkpoint(path)
    assert model.card == card
    x = torch.randn(1, 3, 40, 50)
    with torch.no_grad():
        assert torch.equal(net(x), model.net(x))
    assert read_card(path).metrics == {"dice": 0.9}


def test_half_precision_checkpoint_is_smaller_and_close(tmp_path):
    net = build_model("unet", 3, 1, **SMALL["unet"]).eval()
    full = save_checkpoint(tmp_path / "f.safetensors", net, _card("unet"))
    half = save_checkpoint(tmp_path / "h.safetensors", net, _card("unet"), half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(half).net(x), net(x), atol=1e-2, rtol=1e-2)
    with pytest.raises(GlandsegError, match="exists"):
        save_checkpoint(full, net, _card("unet"))


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.target),))


def test_malicious_pickle_is_refused_and_runs_no_code(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"weight": _Evil(str(target))}, f)
    with open(path, "rb") as f:  # the payload is real: a plain unpickle runs it
        pickle.load(f)
    assert target.exists()
    target.unlink()
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path, card=_card("base_cnn"))
    assert not target.exists()
    torch.save({"w": _Evil(str(target))}, tmp_path / "evil2.pth")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil2.pth", card=_card("base_cnn"))
    assert not target.exists()


def test_plain_state_dict_pt_needs_a_card(tmp_path):
    net = build_model("base_cnn", 3, 1, **SMALL["base_cnn"]).eval()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="carries no model card"):
        load_checkpoint(tmp_path / "w.pt")
    model = load_checkpoint(tmp_path / "w.pt", card=_card("base_cnn"))
    (tmp_path / "w.card.json").write_text(_card("base_cnn").to_json())
    assert load_checkpoint(tmp_path / "w.pt").card == model.card
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.net(x), net(x))


def test_corrupt_truncated_and_mismatched_files_are_named(tmp_path):
    net = build_model("unet", 3, 1, **SMALL["unet"])
    good = save_checkpoint(tmp_path / "good.safetensors", net, _card("unet"))
    data = good.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"trunc\.safetensors.*(truncated|corrupt)"):
        load_checkpoint(tmp_path / "trunc.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_checkpoint(tmp_path / "junk.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt", card=_card("unet"))
    # wrong architecture for these weights
    with pytest.raises(CheckpointError, match="do not match architecture 'resunet'"):
        load_checkpoint(good, card=_card("resunet"))
    # right architecture, wrong shapes (3 classes in the card, 1 in the weights)
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_checkpoint(good, card=_card("unet", classes=3))
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "none.safetensors")

