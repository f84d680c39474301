"""One cached model, many callers on several devices: no caller moves the instance another
holds (issue 23, item 7). Only a CPU here: the "meta" device stands in for a second one."""

import numpy as np
import pytest
import torch

from napari_glandseg.models import ModelCard, build_model, import_model, load_model, save_checkpoint


def _device_of(model):
    return next(model.net.parameters()).device


@pytest.fixture
def tiny(tmp_path):
    net = build_model("base_cnn", 3, 1, widths=[4, 8])
    card = ModelCard(name="tiny", architecture="base_cnn", in_channels=3, num_classes=1,
                     arch_kwargs={"widths": [4, 8]})
    import_model(save_checkpoint(tmp_path / "tiny.safetensors", net, card))
    return "tiny"


def test_the_cache_gives_one_instance_per_device_and_never_moves_one(tiny):
    first = load_model(tiny)
    assert _device_of(first).type == "cpu"
    other = load_model(tiny, device="cpu")
    assert other is first  # the same device: the same instance
    meta = first.on("meta")  # a second caller on another device
    assert meta is not first and _device_of(meta).type == "meta" and meta.device.type == "meta"
    assert _device_of(first).type == "cpu" and first.device.type == "cpu"  # untouched
    assert first.on("meta") is meta and meta.on("cpu") is first  # made once, then shared
    assert load_model(tiny) is first
    assert first.to("meta") is meta and _device_of(first).type == "cpu"  # the old name too
    # the instances share the weights' values, not the tensors
    a, b = next(first.net.parameters()), next(meta.net.parameters())
    assert a.shape == b.shape and a.data_ptr() != 0


def test_segmenting_on_another_device_leaves_the_callers_instance_where_it_is(tiny,
                                                                          monkeypatch):
    """inference used to call ``model.to(device)`` on the model it was given: a worker
    segmenting on the GPU moved the instance the GUI thread (or another worker) was running
    on the CPU."""
    import napari_glandseg.inference as inf

    shared = load_model(tiny)
    monkeypatch.setattr(inf, "resolve_device", lambda *_: torch.device("meta"))
    with pytest.raises(Exception):  # noqa: B017 - meta tensors hold no numbers to return
        inf.segment(np.zeros((64, 64, 3), np.uint8), shared, tile_size=64)
    assert _device_of(shared).type == "cpu" and shared.device.type == "cpu"
    monkeypatch.undo()
    res = inf.segment(np.zeros((64, 64, 3), np.uint8), shared, tile_size=64)
    assert res.labels.shape == (64, 64)


def test_choosing_a_device_in_the_gui_moves_no_model(tiny):
    from napari_glandseg.widgets._state import ModelSelection

    model = load_model(tiny)
    sel = ModelSelection()
    sel.set(model=model, device=torch.device("meta"))
    assert sel.model is model and _device_of(model).type == "cpu"


def test_the_cpu_is_described_with_its_thread_count_in_words():
    from napari_glandseg.models.device import describe_device

    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert describe_device("cpu") == "CPU, 1 thread"
        torch.set_num_threads(2)
        assert describe_device("cpu") == "CPU, 2 threads"
    finally:
        torch.set_num_threads(n)
