"""Tests of napari_artseg.tiling: the tile grid, the blend window and tiled prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_artseg.device import inference_copy
from napari_artseg.models import UNet
from napari_artseg.tiling import (
    CPU_BATCH_PIXELS,
    TileGrid,
    blend_window,
    divide_by_weight_sum,
    pad_bottom_right,
    predict_tiled,
    tile_batch_size,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def affine(x: torch.Tensor) -> torch.Tensor:
    return x * 2 + 1


def small_net(in_ch: int = 2, out_ch: int = 3) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(in_ch, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, out_ch, 3, padding=1),
    )
    return net.eval()


class ProgressLog:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))


def random_image(c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((c, h, w), generator=generator)


# ----------------------------------------------------------------------------- TileGrid


def test_starts_hand_cases():
    # stride 64 - 16 = 48; 0 + 64 < 100, 48 + 64 >= 100 -> last start clamped to 36
    assert TileGrid((100, 100), 64, 8).starts(0) == [0, 36]
    assert TileGrid((200, 64), 64, 8).starts(0) == [0, 48, 96, 136]
    assert TileGrid((200, 64), 64, 8).starts(1) == [0]
    assert TileGrid((112, 50), 64, 8).starts(0) == [0, 48]
    assert TileGrid((112, 50), 64, 8).starts(1) == [0]


@pytest.mark.parametrize("tile,halo", [(64, 8), (32, 0), (16, 7), (256, 32)])
def test_starts_rule(tile, halo):
    stride = tile - 2 * halo
    for size in range(tile, 4 * tile + 3):
        grid = TileGrid((size, 1), tile, halo)
        starts = grid.starts(0)
        assert starts[0] == 0
        assert starts[-1] == size - tile
        gaps = np.diff(starts)
        assert np.all(gaps > 0) and np.all(gaps <= stride)
        # the cores of consecutive tiles leave no gap, so every pixel has full weight somewhere
        covered = np.zeros(size, dtype=bool)
        for s in starts:
            covered[s : s + tile] = True
        assert covered.all()


def test_tiles_row_major_and_inside():
    grid = TileGrid((150, 230), 64, 8)
    tiles = grid.tiles()
    rows, cols = grid.starts(0), grid.starts(1)
    assert len(tiles) == len(grid) == len(rows) * len(cols)
    assert tiles[0] == (slice(0, 64), slice(0, 64))
    assert tiles[1] == (slice(0, 64), slice(cols[1], cols[1] + 64))
    assert tiles[-1] == (slice(150 - 64, 150), slice(230 - 64, 230))
    assert all(rs.stop <= 150 and cs.stop <= 230 for rs, cs in tiles)


@pytest.mark.parametrize("tile,halo", [(16, 8), (16, 9), (0, 0), (16, -1)])
def test_grid_rejects_bad_stride(tile, halo):
    with pytest.raises(ValueError):
        TileGrid((100, 100), tile, halo)


# ----------------------------------------------------------------------------- blend window


def test_blend_window_properties():
    w = blend_window(64, 8)
    assert w.shape == (64, 64) and w.dtype == np.float32
    assert np.all(w > 0) and w.max() == 1.0
    assert np.all(w[8:56, 8:56] == 1.0)
    assert np.all(w[7, 8:56] < 1.0)
    np.testing.assert_array_equal(w, w.T)
    np.testing.assert_array_equal(w, w[::-1, ::-1])
    np.testing.assert_array_equal(w, w[::-1, :])
    assert w[0, 0] == pytest.approx(1e-6, rel=1e-3)  # floor squared in the corner
    # the ramp increases from the edge to the core
    assert np.all(np.diff(w[32, :9]) > 0)


def test_blend_window_without_halo_is_ones():
    np.testing.assert_array_equal(blend_window(8, 0), np.ones((8, 8), np.float32))


def test_blend_window_rejects_bad_halo():
    with pytest.raises(ValueError):
        blend_window(16, 8)


# ----------------------------------------------------------------------------- predict_tiled


@pytest.mark.parametrize("fn", [identity, affine])
def test_pointwise_fn_is_reproduced_on_multi_tile_image(fn):
    image = random_image(2, 150, 230)
    log = ProgressLog()
    result = predict_tiled(fn, image, tile=64, halo=8, progress=log)
    assert result.dtype == torch.float32 and result.shape == (2, 150, 230)
    assert log.calls[-1][1] == len(TileGrid((150, 230), 64, 8)) > 1
    torch.testing.assert_close(result, fn(image), atol=1e-6, rtol=0)


def test_image_that_fits_equals_fn_on_padded_image():
    net = small_net()
    image = random_image(2, 50, 60)
    result = predict_tiled(net, image, tile=64, halo=8, divisor=32)
    padded = F.pad(image[None], (0, 64 - 60, 0, 64 - 50), mode="reflect")
    with torch.no_grad():
        expected = net(padded)[0, :, :50, :60]
    assert torch.equal(result, expected)


def test_image_that_fits_without_divisor_equals_direct_pass():
    net = small_net()
    image = random_image(2, 40, 56)
    result = predict_tiled(net, image, tile=64, halo=8)
    with torch.no_grad():
        expected = net(image[None])[0]
    torch.testing.assert_close(result, expected, atol=1e-6, rtol=0)


def test_single_pass_uses_replicate_when_reflect_impossible():
    image = random_image(1, 3, 40)
    seen = []

    def record(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape)
        return x

    result = predict_tiled(record, image, tile=64, halo=8, divisor=32)
    assert seen == [(1, 1, 32, 64)]
    torch.testing.assert_close(result, image)
    padded = pad_bottom_right(image, 32, 64)
    assert torch.equal(padded[:, 3:, :40], image[:, 2:3, :].expand(1, 29, 40))


def test_odd_size_with_one_side_smaller_than_tile():
    image = random_image(1, 65, 33)
    seen = []

    def record(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape[1:]))
        return x

    result = predict_tiled(record, image, tile=64, halo=8, divisor=32)
    assert result.shape == (1, 65, 33)
    assert set(seen) == {(1, 64, 64)}
    torch.testing.assert_close(result, image, atol=1e-6, rtol=0)


def test_large_image_shape_and_channels():
    image = torch.zeros((1, 1000, 1333))

    def three_ones(x: torch.Tensor) -> torch.Tensor:
        return torch.ones((x.shape[0], 3, *x.shape[2:]))

    result = predict_tiled(three_ones, image, tile=256, halo=32, divisor=32, batch_size=8)
    assert result.shape == (3, 1000, 1333)
    torch.testing.assert_close(result, torch.ones_like(result), atol=1e-6, rtol=0)


def test_batch_size_does_not_change_result():
    net = small_net()
    image = random_image(2, 150, 230, seed=1)
    one = predict_tiled(net, image, tile=64, halo=8, batch_size=1)
    five = predict_tiled(net, image, tile=64, halo=8, batch_size=5)
    torch.testing.assert_close(one, five, atol=1e-6, rtol=0)


def test_conv_net_tiled_close_to_direct_pass_in_interior():
    net = small_net()
    image = random_image(2, 150, 230, seed=2)
    result = predict_tiled(net, image, tile=64, halo=8)
    with torch.no_grad():
        expected = net(image[None])[0]
    # tile borders differ from the full pass only within the receptive field (3 px), where the
    # blend weight is small; the mismatch must stay small
    assert (result - expected).abs().max() < 0.05
    assert result.shape == expected.shape


def test_progress_reports_each_batch_and_ends_with_total():
    image = random_image(1, 150, 230)
    total = len(TileGrid((150, 230), 64, 8))
    log = ProgressLog()
    predict_tiled(identity, image, tile=64, halo=8, batch_size=4, progress=log)
    assert log.calls[-1] == (total, total)
    assert len(log.calls) == -(-total // 4)
    assert [done for done, _ in log.calls] == sorted(done for done, _ in log.calls)
    log = ProgressLog()
    predict_tiled(identity, random_image(1, 20, 20), tile=64, halo=8, progress=log)
    assert log.calls == [(1, 1)]


def test_out_buffer_receives_result():
    image = random_image(1, 100, 70)
    out = torch.full((1, 100, 70), -1.0)
    result = predict_tiled(affine, image, tile=64, halo=8, out=out)
    assert result is out
    torch.testing.assert_close(out, affine(image), atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        predict_tiled(affine, image, tile=64, halo=8, out=torch.zeros((2, 100, 70)))


def test_no_gradient_and_result_is_an_ordinary_tensor():
    net = small_net(1, 1)
    for size in [(30, 30), (100, 90)]:
        result = predict_tiled(net, random_image(1, *size), tile=64, halo=8)
        assert not result.requires_grad
        assert not result.is_inference()
        result += 1  # in-place use by callers must work


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tile": 64, "halo": 8, "divisor": 48},
        {"tile": 64, "halo": 32},
        {"tile": 64, "halo": 8, "batch_size": 0},
    ],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        predict_tiled(identity, random_image(1, 100, 100), **kwargs)


def test_rejects_2d_image_and_bad_fn_output():
    with pytest.raises(ValueError, match="C, H, W"):
        predict_tiled(identity, torch.zeros((100, 100)), tile=64, halo=8)
    with pytest.raises(ValueError, match="fn must map"):
        predict_tiled(lambda x: x[:, :, :10], torch.zeros((1, 100, 100)), tile=64, halo=8)


# ----------------------------------------------------------------------------- equal to one pass


def _exact_region(shape: tuple[int, int], grid: TileGrid, radius: int) -> np.ndarray:
    """Pixels that every covering tile sees at least ``radius`` px from its inner edges.

    A network with that receptive-field radius gives such a pixel the same value in each of
    those tiles as in one pass over the whole image, so the blend there is exact.
    """
    exact = np.ones(shape, dtype=bool)
    for axis in (0, 1):
        size = shape[axis]
        bad = np.zeros(size, dtype=bool)
        for start in grid.starts(axis):
            stop = start + grid.tile
            if start > 0:
                bad[start : start + radius] = True
            if stop < size:
                bad[stop - radius : stop] = True
        exact &= ~bad[:, None] if axis == 0 else ~bad[None, :]
    return exact


def test_tiled_equals_single_pass_where_both_fit():
    net = small_net()  # three 3x3 convolutions: receptive-field radius 3
    image = random_image(2, 150, 230, seed=3)
    with torch.no_grad():
        whole = net(image[None])[0]
    grid = TileGrid((150, 230), 64, 8)
    exact = torch.from_numpy(_exact_region((150, 230), grid, radius=3))
    assert exact.float().mean() > 0.7 and not exact.all()
    for batch_size in (1, 3):
        tiled = predict_tiled(net, image, tile=64, halo=8, batch_size=batch_size)
        torch.testing.assert_close(tiled[:, exact], whole[:, exact], atol=1e-5, rtol=0)
        # near tile edges the mixture differs by at most the edge tile's share of the weight
        assert (tiled - whole).abs().max() < 0.5 * (whole.max() - whole.min())
    # an image that fits one tile gives exactly the single pass
    small = random_image(2, 64, 64, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(predict_tiled(net, small, tile=64, halo=8), net(small[None])[0],
                                   atol=1e-6, rtol=0)


def test_inference_copy_of_unet_matches_and_leaves_the_original():
    torch.manual_seed(0)
    unet = UNet(width=4, levels=2, convs_per_level=2)
    with torch.no_grad():
        for module in unet.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
    unet.eval()
    fast = inference_copy(unet)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in unet.modules())
    assert unet.out.weight.is_contiguous() and unet.out.weight.requires_grad
    image = random_image(1, 100, 90, seed=5)
    expected = predict_tiled(unet, image, tile=32, halo=4, divisor=4)
    result = predict_tiled(fast, image, tile=32, halo=4, divisor=4)
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=1e-5)
    plain = predict_tiled(inference_copy(unet, channels_last=False), image, tile=32, halo=4,
                          divisor=4)
    torch.testing.assert_close(plain, expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- batching, memory


def test_tile_batch_size_caps_cpu_passes():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert CPU_BATCH_PIXELS == 1024 * 1024
    assert tile_batch_size(4, 1024, cpu) == 1
    assert tile_batch_size(4, 512, cpu) == 4
    assert tile_batch_size(8, 256, cpu) == 8
    assert tile_batch_size(4, 2048, cpu) == 1  # never below one tile
    assert tile_batch_size(4, 1024, cuda) == 4  # no default cap off the CPU
    assert tile_batch_size(4, 1024, cuda, max_batch_pixels=2 * 1024 * 1024) == 2
    assert tile_batch_size(6, 64, cpu, max_batch_pixels=0) == 6


def test_max_batch_pixels_bounds_each_call_without_changing_the_result():
    seen = []

    def record(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return affine(x)

    image = random_image(1, 150, 230)
    result = predict_tiled(record, image, tile=64, halo=8, batch_size=5,
                           max_batch_pixels=2 * 64 * 64)
    assert max(seen) == 2 and sum(seen) == len(TileGrid((150, 230), 64, 8))
    torch.testing.assert_close(result, affine(image), atol=1e-6, rtol=0)


def test_weight_sum_division_equals_summed_windows():
    grid = TileGrid((150, 230), 64, 8)
    window = torch.from_numpy(blend_window(64, 8))
    summed = torch.zeros(1, 150, 230)
    for rs, cs in grid.tiles():
        summed[0, rs, cs] += window
    weighted = torch.rand(2, 150, 230)
    expected = weighted / summed
    divide_by_weight_sum(weighted, grid, band=37)
    torch.testing.assert_close(weighted, expected, atol=1e-6, rtol=1e-6)


def test_out_is_accumulated_in_place_when_it_covers_the_grid():
    net = small_net(2, 3)
    image = random_image(2, 150, 230, seed=6)
    expected = predict_tiled(net, image, tile=64, halo=8)
    out = torch.full((3, 150, 230), 7.0)
    assert predict_tiled(net, image, tile=64, halo=8, out=out) is out
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    # a side shorter than the tile is padded: the result is copied into out
    thin = random_image(2, 40, 230, seed=7)
    out = torch.full((3, 40, 230), 7.0)
    assert predict_tiled(net, thin, tile=64, halo=8, out=out) is out
    torch.testing.assert_close(out, predict_tiled(net, thin, tile=64, halo=8), atol=0, rtol=0)
