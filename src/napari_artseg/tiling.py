"""Tiled inference with overlapping, blended tiles (science brief, "Inference").

Images larger than the network input are cut into overlapping square tiles; each tile's output
is weighted by a window (1 in the tile's core, ramping down across the halo) and the weighted
outputs are averaged. The tile grid is anchored at (0, 0) and fully described by
:class:`TileGrid`, so other code paths (e.g. a Dask ``map_overlap`` path) can reproduce it.

This module uses numpy and torch only (no GUI).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["TileGrid", "blend_window", "divide_by_weight_sum", "pad_bottom_right", "predict_tiled",
           "tile_batch_size"]

#: Smallest window weight, at the outer edge of a tile (never 0, so every pixel has weight).
WINDOW_FLOOR = 1e-3
#: On the CPU a forward pass gets at most this many tile pixels (one 1024 px tile): batching
#: tiles gained no speed on a 2-core CPU (benchmarks/bench_predict.py) and each 1024 px tile
#: of the paper U-Net costs about 1.5 GB.
CPU_BATCH_PIXELS = 2**20

ProgressCallback = Callable[[int, int], None]
TileFunction = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TileGrid:
    """A grid of overlapping square tiles anchored at (0, 0).

    Parameters
    ----------
    shape : tuple of int
        Image height and width.
    tile : int
        Tile side T (the network input size).
    halo : int
        Overlap margin h on each side of a tile; the stride is ``T - 2 * h``.

    Raises
    ------
    ValueError
        If the stride is not positive, the halo is negative or a size is not positive.

    Notes
    -----
    Along each axis the starts are ``0, s, 2s, ...`` while ``start + T < size``, then a last
    start clamped to ``size - T``, so every tile lies inside the image. An axis no longer than
    T has the single start 0; when it is shorter than T the tile (``slice(0, T)``) extends past
    the image, which must then be padded to T.
    """

    shape: tuple[int, int]
    tile: int
    halo: int

    def __post_init__(self) -> None:
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(f"shape must be two positive sizes, got {self.shape}")
        if self.tile < 1:
            raise ValueError(f"tile must be positive, got {self.tile}")
        if self.halo < 0:
            raise ValueError(f"halo must be >= 0, got {self.halo}")
        if self.stride <= 0:
            raise ValueError(
                f"stride = tile - 2 * halo = {self.tile} - 2 * {self.halo} must be positive"
            )

    @property
    def stride(self) -> int:
        """Distance between consecutive tile starts, ``tile - 2 * halo``."""
        return self.tile - 2 * self.halo

    def starts(self, axis: int) -> list[int]:
        """Return the tile start offsets along ``axis`` (0 = rows, 1 = columns).

        Parameters
        ----------
        axis : int
            0 for rows, 1 for columns.

        Returns
        -------
        list of int
            Increasing starts; the first is 0 and the last ``max(size - T, 0)``.
        """
        size = self.shape[axis]
        if size <= self.tile:
            return [0]
        return [*range(0, size - self.tile, self.stride), size - self.tile]

    def tiles(self) -> list[tuple[slice, slice]]:
        """Return all tiles as ``(row slice, column slice)``, in row-major order."""
        cols = self.starts(1)
        return [
            (slice(r, r + self.tile), slice(c, c + self.tile))
            for r in self.starts(0)
            for c in cols
        ]

    def __len__(self) -> int:
        return len(self.starts(0)) * len(self.starts(1))


def _ramp_1d(tile: int, halo: int, floor: float) -> np.ndarray:
    """1-D window: linear from ``floor`` at the edge to 1 at the core, symmetric."""
    w = np.ones(tile, dtype=np.float64)
    if halo > 0:
        ramp = floor + (1.0 - floor) * np.arange(halo) / halo
        w[:halo] = ramp
        w[tile - halo :] = ramp[::-1]
    return w


def blend_window(tile: int, halo: int, floor: float = WINDOW_FLOOR) -> np.ndarray:
    """Return the (T, T) blending weights of a tile.

    The weight is 1 in the core (``halo`` pixels in from every edge) and ramps linearly across
    the halo from ``floor`` at the tile edge towards 1; the 2-D window is the outer product of
    the 1-D ramp with itself, so it is symmetric and positive everywhere.

    Parameters
    ----------
    tile : int
        Tile side T.
    halo : int
        Halo width h, with ``2 * h < T``.
    floor : float, optional
        Weight at the tile edge, in (0, 1]; 1e-3 by default.

    Returns
    -------
    numpy.ndarray
        float32 array of shape (T, T).

    Raises
    ------
    ValueError
        If ``2 * halo >= tile``, ``halo < 0`` or ``floor`` is not in (0, 1].
    """
    if halo < 0 or 2 * halo >= tile:
        raise ValueError(f"need 0 <= 2 * halo < tile, got tile={tile}, halo={halo}")
    if not 0.0 < floor <= 1.0:
        raise ValueError(f"floor must be in (0, 1], got {floor}")
    w = _ramp_1d(tile, halo, floor)
    return np.outer(w, w).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _window_on(tile: int, halo: int, device: str) -> torch.Tensor:
    return torch.from_numpy(blend_window(tile, halo)).to(device)


def _window(tile: int, halo: int, device: torch.device) -> torch.Tensor:
    """The blend window as a tensor on ``device``, built once per (tile, halo, device)."""
    return _window_on(tile, halo, str(device))


def pad_bottom_right(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad a (C, H, W) tensor on the bottom and right up to ``(height, width)``.

    Reflect padding is used when each pad is smaller than the side it mirrors, replicate padding
    otherwise.

    Parameters
    ----------
    image : torch.Tensor
        (C, H, W) tensor.
    height, width : int
        Target size, at least the image size.

    Returns
    -------
    torch.Tensor
        The padded tensor (the input itself when no padding is needed).
    """
    _, h, w = image.shape
    pad_h, pad_w = height - h, width - w
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"cannot pad {(h, w)} down to {(height, width)}")
    if pad_h == 0 and pad_w == 0:
        return image
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(image, (0, pad_w, 0, pad_h), mode=mode)


def _round_up(size: int, divisor: int) -> int:
    """Smallest multiple of ``divisor`` that is >= ``size``."""
    return -(-size // divisor) * divisor


def _check_arguments(image: torch.Tensor, tile: int, halo: int, divisor: int,
                     batch_size: int) -> None:
    """Validate :func:`predict_tiled` arguments."""
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {tuple(image.shape)}")
    if divisor < 1 or batch_size < 1:
        raise ValueError(f"divisor and batch_size must be >= 1, got {divisor}, {batch_size}")
    if tile % divisor:
        raise ValueError(f"tile {tile} must be a multiple of divisor {divisor}")
    if halo < 0 or 2 * halo >= tile:
        raise ValueError(f"need 0 <= 2 * halo < tile, got tile={tile}, halo={halo}")


def _run(fn: TileFunction, batch: torch.Tensor) -> torch.Tensor:
    """Apply ``fn`` to a (B, C, t, t) batch without autograd and check the output."""
    with torch.inference_mode():
        y = fn(batch)
    if y.ndim != 4 or y.shape[0] != batch.shape[0] or y.shape[2:] != batch.shape[2:]:
        raise ValueError(
            f"fn must map (B, C, t, t) to (B, C_out, t, t); got {tuple(batch.shape)} -> "
            f"{tuple(y.shape)}"
        )
    return y


def _deliver(result: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """Return ``result`` as float32, copied into ``out`` when one is given."""
    if out is None:
        result = result.to(torch.float32)
        return result.clone() if result.is_inference() else result
    if out.shape != result.shape or out.dtype != torch.float32:
        raise ValueError(
            f"out must be float32 of shape {tuple(result.shape)}, got {out.dtype} "
            f"{tuple(out.shape)}"
        )
    with torch.no_grad():
        out.copy_(result)
    return out


def _predict_single(fn: TileFunction, image: torch.Tensor, divisor: int) -> torch.Tensor:
    """One pass over the image padded to a multiple of ``divisor``, cropped back."""
    _, h, w = image.shape
    padded = pad_bottom_right(image, _round_up(h, divisor), _round_up(w, divisor))
    return _run(fn, padded[None])[0, :, :h, :w]


def _axis_weight(grid: TileGrid, axis: int) -> torch.Tensor:
    """Sum over the tiles of the 1-D window along ``axis`` (float64, length of that axis)."""
    ramp = _ramp_1d(grid.tile, grid.halo, WINDOW_FLOOR)
    total = np.zeros(grid.shape[axis], dtype=np.float64)
    for start in grid.starts(axis):
        total[start : start + grid.tile] += ramp
    return torch.from_numpy(total)


def divide_by_weight_sum(weighted: torch.Tensor, grid: TileGrid, band: int = 512) -> None:
    """Divide blended tile outputs (C, H, W) in place by the sum of the windows over the grid.

    The window is the outer product of a 1-D ramp, so its sum over a grid of
    tiles is the outer product of two 1-D sums: no full-size weight image is
    kept; the division runs in bands of ``band`` rows.
    """
    rows = _axis_weight(grid, 0)
    cols = _axis_weight(grid, 1)
    for top in range(0, grid.shape[0], band):
        part = slice(top, top + band)
        weighted[:, part] /= torch.outer(rows[part], cols).to(weighted.device, torch.float32)


def tile_batch_size(batch_size: int, tile: int, device: torch.device,
                    max_batch_pixels: int | None = None) -> int:
    """Tiles per forward pass: ``batch_size``, capped on the CPU to ``max_batch_pixels`` pixels.

    The cap (default :data:`CPU_BATCH_PIXELS`) applies on the CPU only; at least
    one tile always runs.
    """
    if max_batch_pixels is None:
        max_batch_pixels = CPU_BATCH_PIXELS if device.type == "cpu" else 0
    if max_batch_pixels <= 0:
        return batch_size
    return max(1, min(batch_size, max_batch_pixels // (tile * tile)))


def _predict_grid(fn: TileFunction, image: torch.Tensor, grid: TileGrid, batch_size: int,
                  progress: ProgressCallback | None,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """Blend ``fn`` over all tiles of ``grid``; ``image`` already covers the grid.

    Accumulates into ``out`` when it is given (float32, on ``image.device``, the
    grid's shape), else into a new tensor.
    """
    window = _window(grid.tile, grid.halo, image.device)
    tiles = grid.tiles()
    weighted = out
    with torch.no_grad():
        for first in range(0, len(tiles), batch_size):
            chunk = tiles[first : first + batch_size]
            y = _run(fn, torch.stack([image[:, rs, cs] for rs, cs in chunk]))
            if first == 0:
                shape = (y.shape[1], *grid.shape)
                if weighted is None:
                    weighted = torch.zeros(shape, dtype=torch.float32, device=image.device)
                elif tuple(weighted.shape) != shape:
                    raise ValueError(f"out must be float32 of shape {shape}, got "
                                     f"{weighted.dtype} {tuple(weighted.shape)}")
                else:
                    weighted.zero_()
            y = y.to(torch.float32) * window
            for k, (rs, cs) in enumerate(chunk):
                weighted[:, rs, cs] += y[k]
            if progress is not None:
                progress(first + len(chunk), len(tiles))
        divide_by_weight_sum(weighted, grid)
    return weighted


def predict_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile: int,
    halo: int,
    divisor: int = 1,
    batch_size: int = 4,
    out: torch.Tensor | None = None,
    progress: ProgressCallback | None = None,
    max_batch_pixels: int | None = None,
) -> torch.Tensor:
    """Apply a dense network to an image of any size by blending overlapping tiles.

    If the image fits in one tile (``H <= T`` and ``W <= T``) it is run in one pass, padded on
    the bottom/right to the next multiple of ``divisor`` and cropped back, so the result equals
    ``fn(padded[None])[0, :, :H, :W]``. Otherwise a side shorter than T is padded up to T, the
    image is cut into the tiles of :class:`TileGrid` (anchored at (0, 0), stride ``T - 2h``),
    the tiles are run in batches and their outputs averaged with :func:`blend_window` weights,
    and the result is cropped to (H, W). Padding is reflect where possible, else replicate.

    Parameters
    ----------
    fn : callable
        Maps a (B, C, t, t) batch to a (B, C_out, t, t) output, e.g. ``sigmoid(unet(x))``.
        Put modules in eval mode first; it is called under ``torch.inference_mode()``.
    image : torch.Tensor
        (C, H, W) normalised image; all work stays on ``image.device``.
    tile : int
        Tile side T, a multiple of ``divisor``.
    halo : int
        Overlap margin h, ``0 <= 2 * h < T``.
    divisor : int, optional
        Size the network input must be divisible by (e.g. 2 ** levels), by default 1.
    batch_size : int, optional
        Tiles per call of ``fn`` at most, by default 4 (see ``max_batch_pixels``).
    out : torch.Tensor, optional
        float32 (C_out, H, W) tensor to write the result into (and return). When the image
        covers whole tiles and ``out`` is on its device, tiles are accumulated in it directly.
    progress : callable, optional
        Called as ``progress(tiles_done, tiles_total)`` after each batch.
    max_batch_pixels : int, optional
        At most this many tile pixels per call of ``fn`` (at least one tile); default
        :data:`CPU_BATCH_PIXELS` on the CPU and no limit elsewhere (:func:`tile_batch_size`).

    Returns
    -------
    torch.Tensor
        float32 (C_out, H, W) result (``out`` when given). It is an ordinary tensor, not an
        inference tensor, so it can be modified in place.

    Raises
    ------
    ValueError
        On a non-(C, H, W) image, ``tile`` not a multiple of ``divisor``, a halo too large for
        the tile, a wrong ``fn`` output shape or a wrong ``out``.
    """
    _check_arguments(image, tile, halo, divisor, batch_size)
    _, h, w = image.shape
    if h <= tile and w <= tile:
        result = _predict_single(fn, image, divisor)
        if progress is not None:
            progress(1, 1)
        return _deliver(result, out)
    padded = pad_bottom_right(image, max(h, tile), max(w, tile))
    grid = TileGrid((padded.shape[1], padded.shape[2]), tile, halo)
    batch = tile_batch_size(batch_size, tile, image.device, max_batch_pixels)
    direct = (out is not None and (h, w) == grid.shape and out.dtype == torch.float32
              and out.device == image.device and not out.is_inference())
    result = _predict_grid(fn, padded, grid, batch, progress, out if direct else None)
    if direct:
        return result
    if (h, w) != grid.shape:
        result = result[:, :h, :w].clone()
    return _deliver(result, out)
