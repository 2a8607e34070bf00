"""Reading and writing the image files the package works on.

Images are read as 2-D float32 arrays (one plane per file). TIFF goes through
tifffile, PNG and JPEG through Pillow. RGB(A) is converted to grey with a note.
Masks and probability maps are written as TIFF, atomically.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .errors import ImageReadError, first_line

TIFF_EXTENSIONS = (".tif", ".tiff")
IMAGE_EXTENSIONS = (*TIFF_EXTENSIONS, ".png", ".jpg", ".jpeg")
#: Folder names never searched for input images (project and output folders).
SKIPPED_FOLDERS = frozenset({"artseg", "masks", "predictions", "models", "export", "kinds"})
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_UM_PER_UNIT = {2: 25400.0, 3: 10000.0}  # TIFF ResolutionUnit: inch, centimetre


@dataclass
class LoadedImage:
    """A 2-D image read from disk.

    Attributes
    ----------
    data : numpy.ndarray
        (H, W) float32 pixel values in the file's own intensity units.
    path : pathlib.Path
        The file it came from.
    dtype : str
        The dtype stored in the file (e.g. ``uint16``).
    pixel_size_um : float or None
        Pixel size in micrometres when the file records it.
    notes : list of str
        Conversions applied (RGB to grey, non-finite values replaced).
    """

    data: np.ndarray
    path: Path
    dtype: str
    pixel_size_um: float | None = None
    notes: list[str] = field(default_factory=list)


def _tiff_pixel_size(page) -> float | None:
    """Pixel size in micrometres from a tifffile page's resolution tags, if any."""
    tags = page.tags
    if "XResolution" not in tags:
        return None
    num, den = tags["XResolution"].value
    if not num or not den:
        return None
    pixels_per_unit = num / den
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    if unit in _UM_PER_UNIT:
        # A resolution of 1 pixel per inch is the TIFF default: it means "unknown".
        if unit == 2 and (abs(pixels_per_unit - 1.0) < 1e-9 or pixels_per_unit in (72.0, 96.0)):
            return None
        return _UM_PER_UNIT[unit] / pixels_per_unit
    description = page.description or ""
    if "unit=micron" in description or "unit=um" in description or "unit=\\u00B5m" in description:
        return 1.0 / pixels_per_unit
    return None


def _read_tiff(path: Path) -> tuple[np.ndarray, float | None]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            n_pages = len(tif.pages)
            shape = tuple(series.shape)
            pixel_size = _tiff_pixel_size(tif.pages[0])
            is_rgb = series.axes.endswith("S") and shape[-1] in (3, 4)
            planar_rgb = series.axes == "SYX" and shape[0] in (3, 4)
            if planar_rgb:
                shape, is_rgb = (*shape[1:], shape[0]), True
            planes = int(np.prod(shape[:-3 if is_rgb else -2])) if len(shape) > 2 else 1
            if n_pages > 1 or planes > 1:
                raise ImageReadError(
                    f"{path}: holds {max(n_pages, planes)} planes (shape {shape}); "
                    "artseg reads one 2-D image per file: save each plane as its own file"
                )
            data = series.asarray()
            if planar_rgb:
                data = np.moveaxis(data, 0, -1)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(f"{path}: too large to read into memory") from None
    except Exception as exc:  # any decoder error (zlib.error, ...)
        raise ImageReadError(f"{path}: not a readable TIFF ({first_line(exc)})") from None
    return data, pixel_size


def _read_pillow(path: Path, notes: list[str]) -> np.ndarray:
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                n_frames = getattr(img, "n_frames", 1)
                if n_frames > 1:
                    raise ImageReadError(
                        f"{path}: holds {n_frames} frames; artseg reads one 2-D image per file"
                    )
                if img.mode in ("P", "PA", "LA", "CMYK", "YCbCr", "1"):
                    img = img.convert("RGBA" if "A" in img.mode else "RGB")
                data = np.asarray(img)
        if any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught):
            notes.append(f"{path.name}: very large image ({data.shape[1]} x {data.shape[0]} px)")
        return data
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(
            f"{path}: image too large for Pillow's decompression-bomb guard "
            f"({first_line(exc)}); convert it to a tiled TIFF to read it"
        ) from None
    except MemoryError:
        raise ImageReadError(f"{path}: too large to read into memory") from None
    except Exception as exc:  # any decoder error
        raise ImageReadError(f"{path}: not a readable image ({first_line(exc)})") from None


def _to_grey(data: np.ndarray, path: Path, notes: list[str]) -> np.ndarray:
    """Reduce an (H, W, 3|4) array to grey; refuse other non-2-D shapes."""
    if data.ndim == 3 and data.shape[-1] in (3, 4):
        notes.append(f"{path.name}: RGB{'A' if data.shape[-1] == 4 else ''} converted to grey")
        return data[..., :3].astype(np.float32) @ _LUMA
    if data.ndim == 3 and data.shape[-1] == 2:  # grey + alpha
        notes.append(f"{path.name}: alpha channel dropped")
        return data[..., 0]
    squeezed = data
    while squeezed.ndim > 2 and squeezed.shape[0] == 1:  # keep 1 x N and 1 x 1 images 2-D
        squeezed = squeezed[0]
    if squeezed.ndim == 3 and squeezed.shape[-1] == 1:
        squeezed = squeezed[..., 0]
    if squeezed.ndim != 2:
        raise ImageReadError(
            f"{path}: has shape {data.shape}; artseg reads one 2-D image per file "
            "(save each plane as its own file)"
        )
    return squeezed


def read_image(path: str | os.PathLike) -> LoadedImage:
    """Read one 2-D image file as float32.

    Parameters
    ----------
    path : path-like
        A TIFF, PNG or JPEG file.

    Returns
    -------
    LoadedImage
        The pixels (float32, H x W), the stored dtype, pixel size and notes.

    Raises
    ------
    ImageReadError
        With a one-line message naming the file: missing, empty, unreadable,
        or not a single 2-D image.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    notes: list[str] = []
    pixel_size = None
    if path.suffix.lower() in TIFF_EXTENSIONS:
        raw, pixel_size = _read_tiff(path)
    else:
        raw = _read_pillow(path, notes)
    if raw.dtype == bool:
        raw = raw.astype(np.uint8)
    if not (np.issubdtype(raw.dtype, np.number)) or np.iscomplexobj(raw):
        raise ImageReadError(f"{path}: unsupported pixel type {raw.dtype}")
    grey = _to_grey(raw, path, notes)
    try:
        data = np.ascontiguousarray(grey, dtype=np.float32)
    except MemoryError:
        raise ImageReadError(f"{path}: too large to read into memory ({grey.shape})") from None
    if data.size == 0:
        raise ImageReadError(f"{path}: image has no pixels (shape {data.shape})")
    finite = np.isfinite(data)
    if not finite.all():
        fill = float(data[finite].mean()) if finite.any() else 0.0
        data[~finite] = fill
        notes.append(f"{path.name}: {int((~finite).sum())} NaN/Inf pixels set to the mean {fill:g}")
    return LoadedImage(data, path, str(raw.dtype), pixel_size, notes)


def read_mask(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask file as a boolean (H, W) array (non-zero = artifact).

    Parameters
    ----------
    path : path-like
        Mask image (TIFF, PNG).
    shape : tuple of int, optional
        Expected (H, W); a different shape raises ImageReadError.
    """
    loaded = read_image(path)
    mask = loaded.data != 0
    if shape is not None and mask.shape != tuple(shape):
        raise ImageReadError(f"{path}: mask shape {mask.shape} does not match its image {shape}")
    return mask


def tiff_bytes(array: np.ndarray, pixel_size_um: float | None = None) -> bytes:
    """Encode a 2-D array as TIFF bytes (zlib-compressed), with pixel size when given."""
    import tifffile

    kwargs = {}
    if pixel_size_um:
        per_cm = 1e4 / float(pixel_size_um)
        kwargs = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.ascontiguousarray(array), compression="zlib", **kwargs)
    return buffer.getvalue()


def write_tiff(
    path: str | os.PathLike, array: np.ndarray, pixel_size_um: float | None = None
) -> Path:
    """Write a 2-D array as a TIFF file atomically.

    Parameters
    ----------
    path : path-like
        Destination file; parent folders are created.
    array : numpy.ndarray
        Pixels, written with their dtype (uint8 masks, float32 maps, uint16 images).
    pixel_size_um : float, optional
        Pixel size recorded in the resolution tags.

    Returns
    -------
    pathlib.Path
        The written path.
    """
    data = tiff_bytes(array, pixel_size_um)
    return atomic_write(path, lambda handle: handle.write(data))


def is_image_file(path: Path) -> bool:
    """True for a visible file with an image extension."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def discover_images(folder: str | os.PathLike, exclude: Iterable[os.PathLike] = ()) -> list[Path]:
    """List the image files below ``folder`` (recursively, sorted).

    Hidden files and folders, the folders in :data:`SKIPPED_FOLDERS` and any path
    in ``exclude`` (e.g. a project folder inside the image folder) are skipped.
    """
    root = Path(folder)
    excluded = {Path(p).resolve() for p in exclude}
    found: list[Path] = []
    for current, dirs, files in os.walk(root):
        here = Path(current)
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".")
            and d not in SKIPPED_FOLDERS
            and (here / d).resolve() not in excluded
        )
        found.extend(here / f for f in sorted(files) if is_image_file(here / f))
    return found


def image_key(path: Path, root: Path | None = None) -> str:
    """The key naming an image in outputs: its POSIX path relative to ``root``, no extension.

    For a file given on its own (``root`` None) the key is its stem.
    """
    path = Path(path)
    rel = path.relative_to(root) if root is not None else Path(path.name)
    return rel.with_suffix("").as_posix()
