"""Tests of napari_artseg.tiling: the tile grid, the blend window and tiled prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_artseg.tiling import TileGrid, blend_window, pad_bottom_right, predict_tiled


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
