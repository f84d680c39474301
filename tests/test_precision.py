"""The one owner of precision: bf16 on a CPU only where it is measurably faster."""

import pytest
import torch

from napari_glandseg import precision as pr
from napari_glandseg.inference import SegmentParams
from napari_glandseg.training import TrainParams


@pytest.fixture(autouse=True)
def fresh_cache():
    pr.cpu_bf16_is_faster.cache_clear()
    yield
    pr.cpu_bf16_is_faster.cache_clear()


def _timed(monkeypatch, flags, fp32, bf16):
    monkeypatch.setattr(pr, "cpu_flags", lambda: flags)
    calls = []

    def probe(use_bf16, repeats=3):
        calls.append(use_bf16)
        return bf16 if use_bf16 else fp32

    monkeypatch.setattr(pr, "_probe_seconds", probe)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True,
                        raising=False)
    return calls


def test_emulated_bf16_is_never_timed_or_chosen(monkeypatch):
    # AVX-512 without avx512_bf16 / amx: oneDNN says "supported", yet bf16 is emulated
    calls = _timed(monkeypatch, {"avx512f", "avx2"}, fp32=1.0, bf16=0.1)
    assert pr.resolve("auto", "cpu") == "fp32" and calls == []


def test_native_bf16_is_chosen_only_when_the_probe_says_faster(monkeypatch):
    calls = _timed(monkeypatch, {"avx512f", "avx512_bf16"}, fp32=1.0, bf16=0.6)
    assert pr.resolve("auto", "cpu") == "bf16"
    assert pr.resolve(pr.Precision.AUTO, torch.device("cpu")) == "bf16"
    assert calls == [False, True]  # timed once per process, then cached
    pr.cpu_bf16_is_faster.cache_clear()
    _timed(monkeypatch, {"avx512f", "amx_bf16"}, fp32=1.0, bf16=0.9)  # not by MIN_GAIN
    assert pr.resolve("auto", "cpu") == "fp32"


def test_user_overrides_are_kept_and_unknown_platforms_time_it(monkeypatch):
    _timed(monkeypatch, None, fp32=1.0, bf16=0.5)  # no /proc/cpuinfo: the probe decides
    assert pr.resolve("auto", "cpu") == "bf16"
    assert pr.resolve("fp32", "cpu") == "fp32" and pr.resolve("bf16", "cpu") == "bf16"
    assert pr.autocast_dtype("fp32") is None and pr.autocast_dtype("bf16") is torch.bfloat16


def test_inference_and_training_read_the_same_rule(monkeypatch):
    import napari_glandseg.inference as inf
    import napari_glandseg.training.loop as loop

    assert inf.resolve_precision is pr.resolve and loop.resolve_precision is pr.resolve
    assert SegmentParams(precision="bf16").precision is pr.Precision.BF16
    assert TrainParams(precision="fp32").precision is pr.Precision.FP32
    from napari_glandseg.errors import GlandsegError

    with pytest.raises(GlandsegError, match="precision"):
        TrainParams(precision="fp8")


def test_the_probe_runs_for_real():
    # the real timing: two positive durations, whatever this machine is
    assert pr._probe_seconds(False, repeats=1) > 0


def test_the_probe_leaves_the_callers_random_stream():
    # training seeds, builds its net, then resolves precision: the probe (run once per
    # process) must not reseed, or a seed would not decide the run and two runs of one
    # seed in one process would differ
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    pr._probe_seconds(True, repeats=1)
    assert torch.equal(torch.rand(3), expected)
