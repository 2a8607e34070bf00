"""Writing large prediction maps: Zarr arrays block by block, TIFFs streamed from them.

Zarr outputs are built in a temporary folder next to their final name and
renamed into place when complete (:func:`napari_artseg.atomic.atomic_folder`),
so a killed run never leaves a Zarr store that looks finished. Blocks are
written by the workers that computed them; every Zarr chunk belongs to exactly
one block, so no two tasks write the same chunk.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path

#: Chunk side of the Zarr arrays written here.
ZARR_CHUNK = 1024
#: Tile side of the TIFFs written here.
TIFF_TILE = 256


def create_array(folder: str | os.PathLike, shape: tuple[int, int], dtype: Any,
                 pixel_size_um: float | None = None):
    """Create an empty 2-D Zarr array (format 2, Blosc-zstd) in an existing empty folder.

    The pixel size, when known, is recorded in the attributes as ``pixel_size_um``.
    """
    import zarr

    chunks = (min(ZARR_CHUNK, shape[0]), min(ZARR_CHUNK, shape[1]))
    array = zarr.create_array(store=str(folder), shape=shape, chunks=chunks, dtype=dtype,
                              zarr_format=2, overwrite=True, fill_value=0)
    if pixel_size_um:
        array.attrs["pixel_size_um"] = float(pixel_size_um)
    return array


def store(data, folder: str | os.PathLike, pixel_size_um: float | None, scheduler: Any) -> None:
    """Compute a 2-D dask array into a new Zarr array in ``folder`` (chunks of :data:`ZARR_CHUNK`).

    Blocks are rechunked to the Zarr chunks first, so each chunk has one writer.
    """
    import dask.array as da

    array = create_array(folder, tuple(data.shape), data.dtype, pixel_size_um)
    da.store(data.rechunk(array.chunks), array, lock=False, scheduler=scheduler)


def open_lazy(folder: str | os.PathLike, block: int = 2 * ZARR_CHUNK):
    """A stored 2-D Zarr array as a dask array in blocks of whole Zarr chunks."""
    import dask.array as da
    import zarr

    array = zarr.open_array(str(folder), mode="r")
    return da.from_zarr(array, chunks=(block, block))


def _tiles(array, tile: int) -> Iterator[np.ndarray]:
    """Row-major ``tile`` x ``tile`` tiles of a 2-D array-like, zero-padded, one band at a time."""
    height, width = array.shape
    for top in range(0, height, tile):
        band = np.asarray(array[top:top + tile, :])
        padded = np.zeros((tile, -(-width // tile) * tile), band.dtype)
        padded[:band.shape[0], :width] = band
        for left in range(0, width, tile):
            yield padded[:, left:left + tile]


def zarr_to_tiff(folder: str | os.PathLike, path: str | os.PathLike,
                 pixel_size_um: float | None = None, compress: bool = True) -> Path:
    """Write a stored 2-D Zarr array as a tiled TIFF, one band of rows in memory, atomically.

    BigTIFF is used when the data exceed 2 GiB.
    """
    import tifffile
    import zarr

    array = zarr.open_array(str(folder), mode="r")
    kwargs: dict[str, Any] = {}
    if pixel_size_um:
        per_cm = 1e4 / float(pixel_size_um)
        kwargs = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
    if compress:
        kwargs.update(compression="zlib", compressionargs={"level": 1})
    big = array.size * array.dtype.itemsize > 2**31
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, _tiles(array, TIFF_TILE), shape=array.shape, dtype=array.dtype,
                         tile=(TIFF_TILE, TIFF_TILE), bigtiff=big, **kwargs)
    return Path(path)
