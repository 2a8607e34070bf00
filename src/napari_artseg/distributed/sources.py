"""Larger-than-memory image sources: Zarr, OME-Zarr and TIFF files read as dask arrays.

A source is opened lazily in whichever process reads it: :class:`StoreReader`
pickles as its path, so a Dask worker opens the Zarr store (or the TIFF through
tifffile's Zarr interface, ``tifffile.imread(path, aszarr=True)``) itself and
reads only the chunks its task needs. Nothing here decodes a whole image.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ImageReadError, typed_first_line

_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_OPEN: dict[str, Any] = {}
_OPEN_LOCK = threading.Lock()
_MAX_OPEN = 8


def is_zarr_store(path: str | os.PathLike) -> bool:
    """True for a folder holding Zarr metadata (an array or a group, format 2 or 3)."""
    path = Path(path)
    return path.is_dir() and any((path / name).is_file() for name in _ZARR_MARKERS)


def _level_zero(group, path: Path) -> tuple[Any, float | None]:
    """The full-resolution array of an OME-Zarr group and its pixel size (um) when given."""
    attrs = dict(group.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        names = [name for name, _ in group.arrays()]
        if len(names) == 1:
            return group[names[0]], None
        raise ImageReadError(f"{path}: a Zarr group without OME multiscales metadata; "
                             "give the path of one array inside it")
    first = multiscales[0]
    dataset = first["datasets"][0]
    pixel = None
    axes = first.get("axes") or []
    for transform in dataset.get("coordinateTransformations") or []:
        if transform.get("type") == "scale" and axes:
            unit = axes[-1].get("unit") if isinstance(axes[-1], dict) else None
            if unit in ("micrometer", "micron"):
                pixel = float(transform["scale"][-1])
    return group[dataset["path"]], pixel


def _open(path: Path) -> tuple[Any, float | None]:
    """Open a Zarr store or a TIFF as a zarr array (read only) and its pixel size."""
    import zarr

    if path.is_dir():
        node = zarr.open(str(path), mode="r")
        if isinstance(node, zarr.Group):
            return _level_zero(node, path)
        return node, None
    import tifffile

    from ..large_images import read_header

    header = read_header(path)
    node = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
    if isinstance(node, zarr.Group):  # a pyramid: level 0
        node = node[sorted(name for name, _ in node.arrays())[0]]
    return node, header.pixel_size_um if header else None


def opened(path: str | os.PathLike) -> tuple[Any, float | None]:
    """The zarr array of ``path`` in this process (opened once, a few kept open)."""
    key = str(Path(path).resolve())
    with _OPEN_LOCK:
        if key not in _OPEN:
            if len(_OPEN) >= _MAX_OPEN:
                _OPEN.pop(next(iter(_OPEN)))
            try:
                _OPEN[key] = _open(Path(path))
            except ImageReadError:
                raise
            except Exception as exc:  # any parser error names the file
                raise ImageReadError(f"{path}: not a readable Zarr store or TIFF "
                                     f"({typed_first_line(exc)})") from None
        return _OPEN[key]


class StoreReader:
    """A numpy-like, picklable view of a stored image: ``shape``, ``dtype`` and slicing.

    Pickles as the path; each process opens the store on first read.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        array, self.pixel_size_um = opened(self.path)
        self.shape = tuple(int(n) for n in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)
        self.chunks = tuple(int(n) for n in array.chunks)

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.asarray(opened(self.path)[0][index])

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


@dataclass
class StoreHeader:
    """Size and pixel size of a stored image, read from metadata only.

    Attributes
    ----------
    shape : tuple of int
        (H, W) of the 2-D image.
    pixel_size_um : float or None
        From OME-Zarr ``scale`` metadata or TIFF resolution tags.
    """

    shape: tuple[int, int]
    pixel_size_um: float | None = None


def _plane_shape(path: str, shape: tuple[int, ...]) -> tuple[tuple[int, int], bool]:
    """(H, W) of the single plane in ``shape`` and whether the last axis holds RGB(A)."""
    rgb = len(shape) == 3 and shape[-1] in (3, 4) and shape[0] > 4
    planes = shape[:-1] if rgb else shape
    leading = planes[:-2]
    if len(planes) < 2 or any(n != 1 for n in leading):
        raise ImageReadError(f"{path}: has shape {shape}; artseg reads one 2-D image per store "
                             "(one plane; colour as a last axis of 3 or 4)")
    return (int(planes[-2]), int(planes[-1])), rgb


def zarr_header(path: str | os.PathLike) -> StoreHeader | None:
    """The (H, W) and pixel size of a Zarr store or TIFF; None when it cannot be read."""
    try:
        reader = StoreReader(path)
        return StoreHeader(_plane_shape(reader.path, reader.shape)[0], reader.pixel_size_um)
    except ImageReadError:
        return None


def stored_shape(path: str | os.PathLike) -> tuple[int, int] | None:
    """(H, W) of a 2-D Zarr array written by artseg, or None when missing or unreadable."""
    try:
        import zarr

        array = zarr.open_array(str(path), mode="r")
        return (int(array.shape[0]), int(array.shape[1])) if array.ndim == 2 else None
    except Exception:  # missing or foreign: simply "not done"
        return None


def open_grey(path: str | os.PathLike, chunks: tuple[Any, Any] | None = None,
              compute=None):
    """A stored image as a lazy float32 (H, W) dask array, and its reader.

    Colour (a last axis of 3 or 4) becomes grey with the same weights as
    :func:`~napari_artseg.image_files.read_image`; leading axes of length 1
    (OME-Zarr t, c, z) are dropped. Non-finite values are replaced by the mean
    of the finite ones (one extra pass, float data only).

    Parameters
    ----------
    path : path-like
        A Zarr store (array, or OME-Zarr group: level 0 is read) or a TIFF file.
    chunks : tuple, optional
        Dask chunks of the (H, W) result; default the stored chunks.
    compute : callable, optional
        ``compute(*arrays)`` for the non-finite check (default ``dask.compute``).

    Raises
    ------
    ImageReadError
        Unreadable, several planes, or not numeric.
    """
    import dask
    import dask.array as da

    reader = StoreReader(path)
    rgb = _plane_shape(reader.path, reader.shape)[1]
    if reader.dtype.kind not in "biuf":
        raise ImageReadError(f"{path}: unsupported pixel type {reader.dtype}")
    plane_chunks = chunks or (reader.chunks[-3:-1] if rgb else reader.chunks[-2:])
    full_chunks = (1,) * (reader.ndim - 2 - rgb) + tuple(plane_chunks) + ((-1,) if rgb else ())
    array = da.from_array(reader, chunks=full_chunks, asarray=True, lock=False,
                          name=f"artseg-read-{dask.base.tokenize(reader.path, reader.shape)}")
    array = array[(0,) * (reader.ndim - 2 - rgb)]
    if rgb:
        array = da.tensordot(array[..., :3].astype(np.float32), _LUMA, axes=([2], [0]))
    array = array.astype(np.float32)
    if reader.dtype.kind == "f":
        finite = da.isfinite(array)
        count, total = (compute or dask.compute)(finite.sum(),
                                                 da.where(finite, array, 0).sum(dtype=np.float64))
        if count < array.size:
            fill = np.float32(total / count) if count else np.float32(0)
            array = da.where(finite, array, fill)
    return array, reader
