"""Blocked steps on dask arrays equal the in-memory operations they replace."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_artseg.distributed.blocked import (
    input_chunks,
    pooled_sums,
    resize_blocked,
    tile_bounds,
    unet_blocked,
)
from napari_artseg.distributed.components import mask_blocked
from napari_artseg.normalize import resize
from napari_artseg.postprocess import clean_mask
from napari_artseg.tiling import predict_tiled


def sync(*things):
    return dask.compute(*things, scheduler="sync")


def torch_resize(array, shape):
    return resize(torch.from_numpy(array)[None, None], shape)[0, 0].numpy()


@pytest.mark.parametrize(("source", "target"), [
    ((301, 257), (150, 128)),   # area, windows of uneven size
    ((101, 97), (230, 200)),    # bilinear up
    ((97, 300), (137, 290)),    # one axis grows: bilinear on both, as in memory
    ((40, 50), (600, 700)),     # large upsampling (full resolution from a small map)
])
def test_resize_blocks_equal_torch_interpolate(source, target):
    image = np.random.default_rng(0).normal(size=source).astype(np.float32)
    expected = torch_resize(image, target)
    following = resize_blocked(da.from_array(image, chunks=(45, 61)), target)
    assert following.numblocks[0] > 1 or source[0] <= 45  # blocks follow the input chunks
    assert np.abs(following.compute(scheduler="sync") - expected).max() < 1e-6
    bounds = ([0, target[0] // 3, 2 * target[0] // 3, target[0]], [0, target[1] // 2, target[1]])
    aligned = da.from_array(image, chunks=input_chunks(source, target, bounds))
    result = resize_blocked(aligned, target, bounds)
    assert result.chunks[0] == tuple(np.diff(bounds[0]))
    assert np.abs(result.compute(scheduler="sync") - expected).max() < 1e-6


def test_pooled_view_and_sums_equal_the_whole_image_ones():
    image = np.random.default_rng(1).normal(3, 2, (211, 190)).astype(np.float32)
    for size in (64, 256):  # area down, bilinear up
        view, total, squares = sync(*pooled_sums(da.from_array(image, chunks=(50, 64)), size))
        assert np.abs(view - torch_resize(image, (size, size))).max() < 1e-5
        assert total == pytest.approx(image.astype(np.float64).sum(), rel=1e-12)
        assert squares == pytest.approx((image.astype(np.float64) ** 2).sum(), rel=1e-12)


@pytest.mark.parametrize("shape", [(250, 210), (64, 300), (500, 333)])
def test_tiled_network_blocks_equal_predict_tiled(shape):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 5, padding=2), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 1, 5, padding=2)).eval()

    def forward(batch):
        return torch.sigmoid(net(batch))

    def run_tiles(tiles):
        with torch.inference_mode():
            return forward(torch.from_numpy(tiles)[:, None])[:, 0].numpy()

    image = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    expected = predict_tiled(forward, torch.from_numpy(image)[None], tile=64, halo=8,
                             divisor=8)[0].numpy()
    bounds = [tile_bounds(n, 64, 8, block_tiles=2) for n in shape]
    blocks = da.from_array(image, chunks=tuple(tuple(np.diff(b)) for b in bounds))
    result = unet_blocked(blocks, 64, 8, run_tiles).compute(scheduler="sync")
    assert max(blocks.numblocks) > 1
    assert np.abs(result - expected).max() <= 1e-6


def test_tile_bounds_are_stride_multiples_without_short_blocks():
    bounds = tile_bounds(1000, 64, 8, block_tiles=4)
    assert bounds[0] == 0 and bounds[-1] == 1000
    assert all(b % (4 * 48) == 0 for b in bounds[1:-1])
    assert min(np.diff(bounds)) >= 64
    assert tile_bounds(50, 64, 8) == [0, 50]


@pytest.mark.parametrize("min_size", [0, 30, 200])
def test_components_across_blocks_equal_whole_image_minimum_size(min_size):
    rng = np.random.default_rng(min_size)
    prob = ndimage.gaussian_filter(rng.random((300, 257)), 3).astype(np.float32)
    prob = (prob - prob.min()) / (prob.max() - prob.min())
    expected = clean_mask(prob, 0.55, min_size)
    mask, pixels, count = mask_blocked(da.from_array(prob, chunks=(37, 64)), 0.55, min_size,
                                       sync)
    assert (mask.compute(scheduler="sync").astype(bool) == expected).all()
    assert pixels == expected.sum() and count == ndimage.label(expected)[1]
    assert count > 1
