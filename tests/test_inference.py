import os

import dask.array as da
import numpy as np
import pytest
import torch
from skimage.filters import gaussian

from napari_glandseg.errors import GlandsegError
from napari_glandseg.inference import Progress, blend_window, iter_segment, segment
from napari_glandseg.io import read_image
from napari_glandseg.models import Model, ModelCard, build_model
from napari_glandseg.progress import run_to_end

UNET = {"features": [8, 8, 16, 16, 32, 8]}


def _model(classes=1, cin=3, **card):
    torch.manual_seed(0)
    c = ModelCard(name="t", architecture="unet", in_channels=cin, num_classes=classes,
                  arch_kwargs=UNET, **card)
    return Model(build_model("unet", cin, classes, **UNET).eval(), c)


class _Constant(torch.nn.Module):
    """Outputs the same logit everywhere, whatever the input."""

    def __init__(self, classes=1, value=0.7):
        super().__init__()
        self.classes, self.value = classes, value

    def forward(self, x):
        out = torch.full((x.shape[0], self.classes, *x.shape[-2:]), self.value)
        if self.classes > 1:
            out[:, 1] += 1.0
        return out


@pytest.fixture(scope="module")
def smooth_image():
    rng = np.random.default_rng(0)
    img = rng.random((200, 300, 3))
    return (gaussian(img, 3, channel_axis=-1) * 255).astype(np.uint8)


@pytest.mark.parametrize("blend", ["gaussian", "cosine"])
def test_tiles_leave_no_seams(smooth_image, blend):
    model = _model()
    whole = segment(smooth_image, model, tile_size=512)  # one tile covers the image
    assert whole.info["tiles"] == 1
    tiled = segment(smooth_image, model, tile_size=96, overlap=0.5, blend=blend)
    assert tiled.info["tiles"] == 24  # 4 rows x 6 columns
    diff = np.abs(whole.probabilities - tiled.probabilities)[:, 16:-16, 16:-16]
    assert diff.max() < 2e-3 and diff.mean() < 1e-4


@pytest.mark.parametrize("n,size,overlap", [(1000, 512, 0.25), (600, 512, 0.25),
                                            (2048, 512, 0.25), (300, 96, 0.5),
                                            (513, 512, 0.0), (4000, 256, 0.75)])
def test_tiles_cover_the_image_evenly_with_no_more_pixels_than_needed(n, size, overlap):
    """As many tiles as a grid of ``size`` needs, each only as large as that count needs
    (a 1000 px side: three of 448, not three of 512), neighbours sharing at least the
    overlap, every pixel covered."""
    from napari_glandseg.inference import TILE_MULTIPLE, _grid, _tile_grid

    old, new = _grid(n, n, size, overlap), _tile_grid(n, n, size, overlap)
    assert len(new) == len(old)
    t = new[0][2]
    assert all(tile[2:] == (t, t) for tile in new) and t <= size
    assert t == size or t % TILE_MULTIPLE == 0
    ys = sorted({tile[0] for tile in new})
    assert ys[0] == 0 and ys[-1] + t == n  # flush with both edges
    shared = size - max(1, int(size * (1 - overlap)))
    assert all(a + t - b >= shared for a, b in zip(ys, ys[1:], strict=False))
    covered = np.zeros(n, bool)
    for y in ys:
        covered[y:y + t] = True
    assert covered.all()
    if (n, size) == (1000, 512):
        assert t == 448 and len(ys) == 3
    # no smaller multiple of 32 would still cover the image with as many tiles
    assert t == size or len(ys) * (t - TILE_MULTIPLE) - (len(ys) - 1) * shared < n


@pytest.mark.parametrize("blend", ["gaussian", "cosine", "constant"])
def test_constant_network_gives_constant_map(blend):
    card = ModelCard(name="c", architecture="unet", in_channels=3, num_classes=1)
    model = Model(_Constant(), card)
    res = segment(np.zeros((150, 170, 3), np.uint8), model, tile_size=64, overlap=0.3,
                  blend=blend, tta=True)
    expected = 1 / (1 + np.exp(-0.7))
    np.testing.assert_allclose(res.probabilities, expected, rtol=1e-5)
    assert res.labels.min() == res.labels.max() == 1
    assert res.uncertainty.max() < 1e-6  # all 8 augmentations agree


def test_blend_windows():
    g = blend_window(64, 32, "gaussian")
    assert g.shape == (64, 32) and g.max() == pytest.approx(1.0) and g.min() >= 1e-3
    assert g[32, 16] > g[0, 16] and g[0, 0] == pytest.approx(1e-3)
    np.testing.assert_array_equal(blend_window(8, 8, "constant"), np.ones((8, 8)))


def test_progress_is_yielded_per_batch_and_result_returned(smooth_image):
    gen = iter_segment(smooth_image, _model(), tile_size=64, overlap=0.0, batch_size=5)
    steps = []
    try:
        while True:
            steps.append(next(gen))
    except StopIteration as stop:
        result = stop.value
    assert all(isinstance(s, Progress) for s in steps)
    assert [s.done for s in steps] == [5, 10, 15, 20] and steps[-1].total == 20
    assert steps[1].eta is not None and steps[-1].eta is None
    assert result.labels.shape == (200, 300)


def test_cancel_stops_and_leaves_no_store(smooth_image, monkeypatch):
    import napari_glandseg.inference as inf

    made = []
    real = inf.tempfile.mkdtemp
    monkeypatch.setattr(inf.tempfile, "mkdtemp", lambda **kw: made.append(real(**kw)) or made[-1])
    gen = iter_segment(da.from_array(smooth_image, chunks=64), _model(), tile_size=64,
                       window_size=128, batch_size=1)
    first = next(gen)
    assert first.done == 1 and first.total > 10
    assert len(made) == 1 and os.path.isdir(made[0])
    gen.close()  # what worker.quit() does at the next yield
    assert not os.path.exists(made[0])


def test_dask_input_goes_window_by_window_into_zarr(smooth_image):
    model = _model()
    lazy = segment(da.from_array(smooth_image, chunks=100), model, tile_size=64,
                   window_size=128)
    eager = segment(smooth_image, model, tile_size=64, window_size=128)
    import zarr

    store = lazy.store_path
    with lazy:  # the result owns its store: gone on leaving the block
        assert isinstance(lazy.labels, zarr.Array) and os.path.isdir(store)
        np.testing.assert_array_equal(np.asarray(lazy.labels), eager.labels)
        np.testing.assert_allclose(np.asarray(lazy.probabilities), eager.probabilities,
                                   atol=1e-3)
    assert not os.path.exists(store) and lazy.store_path is None


def test_a_large_result_read_into_memory_leaves_no_store(smooth_image):
    model = _model()
    lazy = segment(da.from_array(smooth_image, chunks=100), model, tile_size=64,
                   window_size=128, tta=True)
    eager = segment(smooth_image, model, tile_size=64, window_size=128, tta=True)
    store = lazy.store_path
    assert os.path.isdir(store)
    assert lazy.to_memory() is lazy and lazy.store_path is None
    assert not os.path.exists(store)
    assert all(isinstance(a, np.ndarray) and a.size
               for a in (lazy.labels, lazy.probabilities, lazy.uncertainty))
    # every window's core went to its place in the store, the TTA spread too
    assert eager.uncertainty.max() > 0
    np.testing.assert_allclose(lazy.uncertainty, eager.uncertainty, atol=1e-3)
    np.testing.assert_array_equal(lazy.labels, eager.labels)
    lazy.discard()  # nothing left to remove: no error


def test_region_and_offset(smooth_image):
    model = _model()
    full = segment(smooth_image, model, tile_size=64)
    part = segment(smooth_image, model, tile_size=64, region=(50, 60, 150, 260))
    assert part.labels.shape == (100, 200) and part.offset == (50, 60)
    core = np.abs(part.probabilities - full.probabilities[:, 50:150, 60:260])[:, 20:-20, 20:-20]
    assert core.max() < 1e-2
    with pytest.raises(GlandsegError, match="does not overlap"):
        segment(smooth_image, model, region=(500, 500, 600, 600))


def test_multiclass_labels_are_the_argmax(smooth_image):
    res = segment(smooth_image, _model(classes=3), tile_size=96)
    assert res.probabilities.shape == (3, 200, 300)
    np.testing.assert_allclose(res.probabilities.sum(0), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(res.labels, res.probabilities.argmax(0))
    model = Model(_Constant(classes=3), ModelCard(name="c", architecture="unet", in_channels=3,
                                                  num_classes=3))
    assert set(np.unique(segment(smooth_image, model, tile_size=64).labels)) == {1}


def test_binary_threshold_is_a_parameter(smooth_image):
    model = _model()
    res = segment(smooth_image, model, tile_size=128)
    t = float(np.median(res.probabilities))
    low = segment(smooth_image, model, tile_size=128, threshold=t)
    np.testing.assert_array_equal(low.labels, res.probabilities[0] > t)


def test_rescales_to_the_model_scale(smooth_image):
    model = _model(pixel_size_um=1.0)
    res = segment(smooth_image, model, pixel_size_um=0.5, tile_size=64)
    assert res.info["scale"] == 0.5 and res.labels.shape == (200, 300)
    assert res.info["tiles"] == 6  # the network saw a 100x150 image


def test_pyramid_level_matching_the_model_scale(smooth_image):
    levels = [smooth_image, smooth_image[::2, ::2]]
    res = segment(levels, _model(pixel_size_um=0.5), pixel_size_um=0.25, tile_size=64)
    assert res.info["level"] == 1 and res.downsample == 2.0
    assert res.labels.shape == (100, 150) and res.pixel_size_um == 0.5


def test_real_svs_region_segments(data_dir):
    slide = read_image(data_dir / "wsi/cmu_small_region.svs")
    res = segment(slide.data, _model(), pixel_size_um=slide.pixel_size_um,
                  region=(1000, 1000, 1300, 1400), tile_size=128)
    assert res.labels.shape == (300, 400) and res.offset == (1000, 1000)


def test_bad_input_is_named(smooth_image):
    model = _model()
    with pytest.raises(GlandsegError, match="expects an RGB image .* but the image is greyscale"):
        segment(smooth_image[..., 0], model)
    with pytest.raises(GlandsegError, match=r"shape \(4, 200, 300, 3\)"):
        segment(np.stack([smooth_image] * 4), model)
    with pytest.raises(GlandsegError, match="tile_size must be an integer >= 16, got 8"):
        segment(smooth_image, model, tile_size=8)
    with pytest.raises(GlandsegError, match="unknown blend 'box'"):
        segment(smooth_image, model, blend="box")
    if not torch.cuda.is_available():
        with pytest.raises(GlandsegError, match="no CUDA GPU"):
            segment(smooth_image, model, device="cuda")


def test_rgba_and_16bit_inputs(smooth_image):
    rgba = np.concatenate([smooth_image, np.full((200, 300, 1), 255, np.uint8)], axis=-1)
    model = _model()
    a = segment(rgba, model, tile_size=128)
    b = segment(smooth_image, model, tile_size=128)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
    c = segment(smooth_image.astype(np.uint16) * 257, model, tile_size=128)
    np.testing.assert_allclose(c.probabilities, b.probabilities, atol=1e-4)


def test_out_of_memory_halves_the_batch_and_says_so(smooth_image, monkeypatch):
    import napari_glandseg.inference as inf

    real = inf._forward
    sizes = []

    def tight_memory(model, batch, *rest):
        sizes.append(batch.shape[0])
        if batch.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, batch, *rest)

    monkeypatch.setattr(inf, "_forward", tight_memory)
    monkeypatch.setattr(inf.torch.cuda, "empty_cache", lambda: None)
    model = _model()
    steps = []
    result = run_to_end(iter_segment(smooth_image, model, tile_size=64, batch_size=8),
                        steps.append)
    messages = [p.message for p in steps if "out of memory" in p.message]
    assert messages == ["GPU out of memory: retrying with batch size 4",
                        "GPU out of memory: retrying with batch size 2"]
    assert sizes[:3] == [8, 4, 2] and set(sizes[3:]) <= {2}
    reference = segment(smooth_image, model, tile_size=64, batch_size=2)
    np.testing.assert_array_equal(result.labels, reference.labels)


class _PixelWise(torch.nn.Module):
    """A 1x1 'network': the logit of each pixel depends on that pixel only, so the right
    de-rotation after each TTA augmentation gives back exactly the plain prediction."""

    def forward(self, x):
        return 4.0 * x[:, :1] - 1.0


class _TopLeft(torch.nn.Module):
    """Predicts the logit 4 * (top-left input pixel) everywhere: each rotation/flip of the
    tile shows it another corner, so TTA's spread is known."""

    def forward(self, x):
        return (4.0 * x[:, :1, :1, :1]).expand(-1, 1, *x.shape[-2:]).clone()


def _grey_card(**kw):
    return ModelCard(name="g", architecture="unet", in_channels=1, num_classes=1,
                     normalization="unit", **kw)


def test_tta_undoes_each_rotation_and_flip():
    # an image without any symmetry, not square (50 x 70 is one tile of its own shape)
    yy, xx = np.mgrid[:50, :70]
    image = ((yy * 3 + xx**2 / 30) % 256).astype(np.uint8)
    model = Model(_PixelWise(), _grey_card())
    plain = segment(image, model, tile_size=128)
    tta = segment(image, model, tile_size=128, tta=True)
    np.testing.assert_allclose(tta.probabilities, plain.probabilities, atol=1e-6)
    assert tta.uncertainty.shape == (50, 70) and tta.uncertainty.max() < 1e-6


def test_tta_uncertainty_is_the_spread_over_the_eight_passes():
    image = np.zeros((40, 40), np.uint8)
    corners = {(0, 0): 0, (0, -1): 64, (-1, 0): 128, (-1, -1): 255}
    for (y, x), v in corners.items():
        image[y, x] = v
    res = segment(image, Model(_TopLeft(), _grey_card()), tile_size=64, tta=True)
    # each corner comes to the top left in 2 of the 8 augmentations
    p = 1 / (1 + np.exp(-4.0 * np.repeat(np.array(list(corners.values())) / 255, 2)))
    np.testing.assert_allclose(res.probabilities, p.mean(), rtol=1e-5)
    np.testing.assert_allclose(res.uncertainty, np.std(p, ddof=1), rtol=1e-4)


def test_nan_pixels_are_refused_with_a_clear_error():
    image = np.random.default_rng(0).random((40, 50, 3)).astype(np.float32)
    image[20, 30, 1] = np.nan
    for norm in ("imagenet", "zscore"):
        with pytest.raises(GlandsegError, match="1 NaN or infinite pixel"):
            segment(image, _model(normalization=norm), tile_size=64)
    image[20, 30, 1] = np.inf
    with pytest.raises(GlandsegError, match="NaN or infinite"):
        segment(image, _model(normalization="percentile"), tile_size=64)


@pytest.mark.parametrize("norm", ["zscore", "percentile"])
def test_rgba_with_image_statistics(smooth_image, norm):
    rgba = np.concatenate([smooth_image, np.full((200, 300, 1), 255, np.uint8)], axis=-1)
    model = _model(normalization=norm)
    a = segment(rgba, model, tile_size=128)
    b = segment(smooth_image, model, tile_size=128)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)


def test_one_pixel_image_with_rescaling():
    model = _model(pixel_size_um=2.0)
    res = segment(np.full((1, 1, 3), 128, np.uint8), model, pixel_size_um=0.5, tile_size=64)
    assert res.labels.shape == (1, 1) and res.info["scale"] == 0.25


def test_result_records_its_settings_and_pixel_size(smooth_image):
    res = segment(smooth_image, _model(pixel_size_um=0.5), pixel_size_um=0.5, tile_size=96,
                  threshold=0.3)
    meta = res.metadata()
    assert meta["params"]["tile_size"] == 96 and meta["params"]["threshold"] == 0.3
    assert meta["pixel_size_um"] == 0.5 and meta["model"] == "t"


def test_image_stats_come_from_tiles_of_the_level_segment_reads(fg_model_factory):
    from napari_glandseg.inference import image_stats
    from napari_glandseg.models import load_model
    from napari_glandseg.preprocess import norm_stats

    # a model at 2 um/px on a 0.5 um/px pyramid (x2 levels) reads level 2 (2 um/px); the
    # other levels hold other values, so the statistics say which level they came from
    model = load_model(fg_model_factory("pct-levels", normalization="percentile",
                                        pixel_size_um=2.0))
    rng = np.random.default_rng(0)
    level2 = rng.integers(40, 200, (3000, 3000, 3)).astype(np.uint8)
    import dask.array as da

    levels = [da.full((12000, 12000, 3), 100, np.uint8, chunks=2048),
              da.full((6000, 6000, 3), 100, np.uint8, chunks=2048), level2,
              np.full((1500, 1500, 3), 250, np.uint8)]
    lo, scale = image_stats(levels, model, pixel_size_um=0.5, grid=4, tile=64).norm
    wlo, wscale = norm_stats(level2, (0, 0, 3000, 3000), "percentile")
    np.testing.assert_allclose(lo, wlo, atol=2)  # a 16-tile sample agrees with the whole
    np.testing.assert_allclose(scale, wscale, atol=3)
    lo, _ = image_stats(levels[3:], model, grid=4, tile=64).norm
    np.testing.assert_allclose(lo, 250)  # small: the whole (only) level
    assert image_stats(levels[3:], load_model(fg_model_factory("fixed"))).norm is None
