"""Blocked versions of the in-memory prediction steps, on dask arrays.

Each step computes one output block from the input block plus a margin
(``dask.array.map_overlap`` with ``boundary="none"``), and reproduces the
in-memory operation it replaces on every pixel, not just away from block edges:

- :func:`resize_blocked`: ``F.interpolate`` as :func:`napari_artseg.normalize.resize`
  uses it (``area`` when shrinking, ``bilinear`` with ``align_corners=False``
  otherwise). Each output pixel is a fixed linear combination of input pixels
  (its area window, or its two bilinear taps per axis), so a block is
  ``R @ block @ C.T`` with the block's rows of those weights (float64).
- :func:`unet_blocked`: :func:`napari_artseg.tiling.predict_tiled` over the whole
  image. The tile grid (:class:`~napari_artseg.tiling.TileGrid`) depends on the
  whole image size, so each block runs exactly the tiles of that global grid
  that intersect it (with a margin of one tile, every such tile lies inside the
  overlapped block) and blends them with the same window in the same order.
  Blocks are whole multiples of the tile stride, so a tile is shared by at most
  two blocks per axis.
- :func:`pooled_sums`: the classifier's ``input_size`` view of the whole image
  and the sums for its z-score, accumulated block by block.

Differences from the in-memory path are float rounding only (float64 weights
instead of float32, and tile batches of a different composition).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..tiling import TileGrid, blend_window

#: Blocks of the U-Net step are this many tile strides on a side (memory: about 16 bytes
#: per pixel of the block plus its one-tile margin).
BLOCK_TILES = 8


def _first_and_end(kind: str, n_in: int, n_out: int, lo: int, hi: int):
    """For outputs ``lo:hi``: the first input each needs and one past the last."""
    index = np.arange(lo, hi, dtype=np.int64)
    if kind == "area":
        return (index * n_in) // n_out, -((-(index + 1) * n_in) // n_out)
    i0, i1, _ = _taps(n_in, n_out, lo, hi)
    return i0, i1 + 1


def _taps(n_in: int, n_out: int, lo: int, hi: int):
    """Bilinear taps (``align_corners=False``) of outputs ``lo:hi``: two inputs and a weight.

    Computed as PyTorch's CPU kernel does (a float32 scale, the source position
    rounded to float32 once), so the weights are PyTorch's to the last bit.
    """
    scale = np.float64(np.float32(n_in) / np.float32(n_out))
    position = (np.arange(lo, hi, dtype=np.float64) + 0.5) * scale - 0.5
    source = np.maximum(position.astype(np.float32), np.float32(0))
    i0 = np.minimum(source.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    weight = np.clip(source - i0.astype(np.float32), 0, 1).astype(np.float32)
    return i0, i1, weight.astype(np.float64)


def resample_matrix(kind: str, n_in: int, n_out: int, lo: int, hi: int, first: int,
                    stop: int, strict: bool = True):
    """Sparse weights (hi - lo, stop - first) of outputs ``lo:hi`` on inputs ``first:stop``.

    Parameters
    ----------
    kind : str
        ``area`` (window averages) or ``bilinear``.
    n_in, n_out : int
        Axis lengths before and after resizing.
    lo, hi : int
        Output range.
    first, stop : int
        Input range the weights refer to.
    strict : bool
        Raise when an output needs an input outside the range (else those weights are dropped,
        for partial sums).

    Returns
    -------
    scipy.sparse.csr_matrix
        float64 weights; each row has the few non-zeros of one output.
    """
    from scipy.sparse import csr_matrix

    if kind == "area":
        start, end = _first_and_end(kind, n_in, n_out, lo, hi)
        lengths = end - start
        rows = np.repeat(np.arange(hi - lo), lengths)
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        columns = np.repeat(start, lengths) + within
        weights = np.repeat(1.0 / lengths, lengths)
    else:
        i0, i1, weight = _taps(n_in, n_out, lo, hi)
        keep = (1 - weight.astype(np.float32)).astype(np.float64)  # 1 - lambda in float32
        rows = np.tile(np.arange(hi - lo), 2)
        columns = np.concatenate([i0, i1])
        weights = np.concatenate([keep, weight])
    inside = (columns >= first) & (columns < stop)
    if strict and not inside.all():
        raise ValueError("resize block lacks part of its input")
    return csr_matrix((weights[inside], (rows[inside], columns[inside] - first)),
                      shape=(hi - lo, stop - first))


def _apply(rows, data: np.ndarray, cols) -> np.ndarray:
    """``rows @ data @ cols.T`` with sparse weight matrices, in float64."""
    return np.asarray((cols @ np.asarray(rows @ data.astype(np.float64)).T).T)


def resize_kind(in_shape: tuple[int, int], out_shape: tuple[int, int]) -> str:
    """``area`` when no axis grows, else ``bilinear`` (as ``normalize.resize`` chooses)."""
    shrinking = out_shape[0] <= in_shape[0] and out_shape[1] <= in_shape[1]
    return "area" if shrinking else "bilinear"


def _bounds(chunks: tuple[int, ...]) -> list[int]:
    return [0, *np.cumsum(chunks).tolist()]


def _margin(kind: str, n_in: int, n_out: int) -> int:
    """The largest span of inputs one output needs, plus one."""
    first, end = _first_and_end(kind, n_in, n_out, 0, n_out)
    return int((end - first).max()) + 1


def _check_depth(chunks: tuple[tuple[int, ...], ...], depth: tuple[int, int]) -> dict[int, int]:
    """``map_overlap`` depth per axis (0 on single-chunk axes); chunks must hold the margin."""
    out = {}
    for axis, (sizes, margin) in enumerate(zip(chunks, depth, strict=True)):
        out[axis] = margin if len(sizes) > 1 else 0
        if out[axis] and min(sizes) < margin:
            raise ValueError(f"chunks {sizes} on axis {axis} are smaller than the margin {margin}")
    return out


def _plan(in_shape, out_shape, source_chunks=None, out_bounds=None):
    """Matching block boundaries of a resize's input and output, per axis.

    From the output boundaries when given (the input is then rechunked to
    them), else from the input's chunks. Boundaries that would give an empty
    block on either side are dropped.
    """
    kind = resize_kind(in_shape, out_shape)
    src_bounds, dst_bounds = [], []
    for axis in (0, 1):
        n_in, n_out = in_shape[axis], out_shape[axis]
        first = _first_and_end(kind, n_in, n_out, 0, n_out)[0]
        if out_bounds is not None:
            dst = list(out_bounds[axis])
            src = [0, *[int(first[b]) for b in dst[1:-1]], n_in]
        else:
            src = _bounds(source_chunks[axis])
            dst = [0, *[int(np.searchsorted(first, v, side="left")) for v in src[1:-1]], n_out]
        keep_src, keep_dst = [0], [0]
        for a, b in zip(src[1:-1], dst[1:-1], strict=True):
            if keep_src[-1] < a < n_in and keep_dst[-1] < b < n_out:
                keep_src.append(a)
                keep_dst.append(b)
        src_bounds.append([*keep_src, n_in])
        dst_bounds.append([*keep_dst, n_out])
    return kind, src_bounds, dst_bounds


def _chunks(bounds: list[list[int]]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(np.diff(b).tolist()) for b in bounds)


def input_chunks(in_shape: tuple[int, int], out_shape: tuple[int, int],
                 out_bounds: tuple[list[int], list[int]]) -> tuple[tuple[int, ...], ...]:
    """The chunks to read an input in so that :func:`resize_blocked` needs no rechunking."""
    if tuple(in_shape) == tuple(out_shape):
        return _chunks(list(out_bounds))
    return _chunks(_plan(in_shape, out_shape, out_bounds=out_bounds)[1])


def resize_blocked(source, out_shape: tuple[int, int],
                   out_bounds: tuple[list[int], list[int]] | None = None):
    """Resize a 2-D dask array as :func:`napari_artseg.normalize.resize` does, block by block.

    Parameters
    ----------
    source : dask.array.Array
        (H, W) input.
    out_shape : tuple of int
        (h, w) wanted.
    out_bounds : tuple of list, optional
        Block boundaries of the output per axis (``[0, ..., n]``); the input is
        rechunked to match (read it in :func:`input_chunks` to avoid that).
        Default: output blocks follow the input's chunks.

    Returns
    -------
    dask.array.Array
        float32 (h, w).
    """
    import dask.array as da

    in_shape = tuple(source.shape)
    if in_shape == tuple(out_shape):
        return source if out_bounds is None else source.rechunk(_chunks(list(out_bounds)))
    kind, src_bounds, dst_bounds = _plan(in_shape, tuple(out_shape), source.chunks, out_bounds)
    source = source.rechunk(_chunks(src_bounds))
    margins = (_margin(kind, in_shape[0], out_shape[0]), _margin(kind, in_shape[1], out_shape[1]))
    depth = _check_depth(source.chunks, margins)

    def block(data: np.ndarray, block_info=None) -> np.ndarray:
        i, j = block_info[0]["chunk-location"]
        top = max(0, src_bounds[0][i] - depth[0])
        left = max(0, src_bounds[1][j] - depth[1])
        rows = resample_matrix(kind, in_shape[0], out_shape[0], dst_bounds[0][i],
                               dst_bounds[0][i + 1], top, top + data.shape[0])
        cols = resample_matrix(kind, in_shape[1], out_shape[1], dst_bounds[1][j],
                               dst_bounds[1][j + 1], left, left + data.shape[1])
        return _apply(rows, data, cols).astype(np.float32)

    return da.map_overlap(block, source, depth=depth, boundary="none", trim=False,
                          chunks=_chunks(dst_bounds), dtype=np.float32,
                          meta=np.empty((0, 0), np.float32))


def tile_bounds(size: int, tile: int, halo: int, block_tiles: int = BLOCK_TILES) -> list[int]:
    """Block boundaries along an axis: multiples of ``block_tiles`` strides, none below a tile.

    A last block shorter than one tile is merged into the one before it.
    """
    step = max(block_tiles, 1) * (tile - 2 * halo)
    step = max(step, tile)
    bounds = [*range(0, size, step), size]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < tile:
        del bounds[-2]
    return bounds


def unet_blocked(image, tile: int, halo: int,
                 run_tiles: Callable[[np.ndarray], np.ndarray]):
    """Blend a tile network over a 2-D dask array exactly as ``predict_tiled`` over the whole.

    Parameters
    ----------
    image : dask.array.Array
        (h, w) float32 network input with ``h, w >= tile``, in chunks of at least
        ``tile`` (e.g. :func:`tile_bounds`).
    tile, halo : int
        The tile side and halo of the model (``unet_input_size``, ``tile_halo``).
    run_tiles : callable
        Maps (N, tile, tile) float32 tiles to (N, tile, tile) float32 outputs;
        it must be picklable to run on Dask workers.

    Returns
    -------
    dask.array.Array
        float32 (h, w): equal to ``predict_tiled(fn, image)`` up to float rounding.
    """
    import dask.array as da

    shape = tuple(image.shape)
    if min(shape) < tile:
        raise ValueError(f"image {shape} is smaller than one {tile} px tile; pad it first")
    grid = TileGrid(shape, tile, halo)
    depth = _check_depth(image.chunks, (tile, tile))
    bounds = [_bounds(image.chunks[0]), _bounds(image.chunks[1])]

    def block(data: np.ndarray, block_info=None) -> np.ndarray:
        i, j = block_info[0]["chunk-location"]
        (a, b), (c, d) = bounds[0][i:i + 2], bounds[1][j:j + 2]
        top, left = max(0, a - depth[0]), max(0, c - depth[1])
        rows = [r for r in grid.starts(0) if r < b and r + tile > a]
        cols = [s for s in grid.starts(1) if s < d and s + tile > c]
        r0, c0 = rows[0], cols[0]
        height, width = rows[-1] + tile - r0, cols[-1] + tile - c0
        if r0 < top or c0 < left or r0 + height > top + data.shape[0] or \
                c0 + width > left + data.shape[1]:
            raise ValueError("U-Net block lacks part of a tile")
        places = [(r, s) for r in rows for s in cols]  # row-major, as TileGrid.tiles()
        tiles = np.stack([data[r - top:r - top + tile, s - left:s - left + tile]
                          for r, s in places])
        outputs = run_tiles(np.ascontiguousarray(tiles, dtype=np.float32))
        window = blend_window(tile, halo)
        weighted = np.zeros((height, width), np.float32)
        weights = np.zeros((height, width), np.float32)
        for (r, s), out in zip(places, outputs, strict=True):
            region = (slice(r - r0, r - r0 + tile), slice(s - c0, s - c0 + tile))
            weighted[region] += out.astype(np.float32) * window
            weights[region] += window
        weighted /= weights
        return weighted[a - r0:b - r0, c - c0:d - c0]

    return da.map_overlap(block, image, depth=depth, boundary="none", trim=False,
                          chunks=image.chunks, dtype=np.float32,
                          meta=np.empty((0, 0), np.float32))


def pooled_sums(image, size: int):
    """Lazy sums of an (h, w) dask array: its ``size`` x ``size`` resized view, sum, sum of squares.

    The view is ``resize(image, (size, size))`` as in the classifier's global view
    (area or bilinear, see :func:`resize_kind`), accumulated from per-block
    partial products in float64; z-scoring commutes with it because every row of
    the resize weights sums to one.

    Returns
    -------
    tuple of dask.array.Array
        The (size, size) view, the sum and the sum of squares (float64).
    """
    import dask.array as da

    shape = tuple(image.shape)
    kind = resize_kind(shape, (size, size))
    bounds = [_bounds(image.chunks[0]), _bounds(image.chunks[1])]

    def part(data: np.ndarray, block_info=None) -> np.ndarray:
        i, j = block_info[0]["chunk-location"]
        (a, b), (c, d) = bounds[0][i:i + 2], bounds[1][j:j + 2]
        rows = resample_matrix(kind, shape[0], size, 0, size, a, b, strict=False)
        cols = resample_matrix(kind, shape[1], size, 0, size, c, d, strict=False)
        return _apply(rows, data, cols)[None, None]

    n_rows, n_cols = len(image.chunks[0]), len(image.chunks[1])
    parts = da.map_blocks(part, image, dtype=np.float64, new_axis=[2, 3],
                          chunks=((1,) * n_rows, (1,) * n_cols, (size,), (size,)),
                          meta=np.empty((0, 0, 0, 0), np.float64))
    wide = image.astype(np.float64)
    return parts.sum(axis=(0, 1)), wide.sum(), (wide * wide).sum()
