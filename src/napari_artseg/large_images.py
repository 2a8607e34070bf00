"""Prediction on images too large to hold at full resolution, in bounded memory.

A 20000 x 20000 image is 1.6 GB as float32, and the in-memory path
(:meth:`ArtSegModel.predict`) keeps several full-resolution copies. Above
:data:`LARGE_IMAGE_PIXELS` the ``artseg predict`` command uses this module instead:

1. **Read downscaled.** A TIFF is read tile by tile (or strip by strip) through
   tifffile's segment decoder and area-averaged straight to the model's
   processing scale with the same windows as ``F.interpolate(mode="area")``
   (adaptive average pooling), so the full-resolution image never exists in
   memory. Other formats are read whole (Pillow's decompression-bomb guard caps
   them) and shrunk at once.
2. **Predict at the processing scale.** z-score, the classifier gate, and the
   U-Net over the same tile grid and blending window as
   :func:`~napari_artseg.tiling.predict_tiled`, accumulated in place (the weight
   sum is separable, so it costs two 1-D arrays). A CUDA out-of-memory error
   halves the tile batch and retries, down to one tile; then a clear message.
3. **Write full resolution in strips.** The probability map is upsampled
   bilinearly (``align_corners=False``, as in the in-memory path) one band of
   rows at a time and written as a tiled, compressed TIFF, atomically. The mask
   is the upsampled map thresholded; objects smaller than the minimum size are
   found at the processing scale (the size scaled by the pixel-area ratio) and
   removed from the full-resolution mask.

Peak memory is about 8 bytes per processing-scale pixel (image and accumulator,
float32) plus a few bands of full-resolution rows; images whose processing-scale
size exceeds :data:`MAX_PROCESSING_PIXELS` are refused with a message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path
from .errors import ArtSegError, ImageReadError, first_line

#: Images with more pixels than this are predicted by :func:`predict_large_file`. At 32 Mpx
#: the in-memory path's five or six full-resolution float copies (~0.7 GB) start to matter
#: next to one paper U-Net tile (~1.6 GB): an 8192 x 8192 image (64 Mpx) is streamed.
LARGE_IMAGE_PIXELS = 32 * 2**20
#: Largest processing-scale image (pixels) the streamed path accepts (about 1 GB of float32).
MAX_PROCESSING_PIXELS = 2**27
#: Side of the tiles of the TIFFs written here.
OUTPUT_TILE = 256
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass
class ImageHeader:
    """What a file says about its image, read without decoding pixels.

    Attributes
    ----------
    path : pathlib.Path
        The file.
    shape : tuple of int
        (H, W).
    dtype : str
        Stored sample type.
    pixel_size_um : float or None
        From the TIFF resolution tags.
    is_tiff : bool
        True for TIFF files (read segment by segment).
    """

    path: Path
    shape: tuple[int, int]
    dtype: str
    pixel_size_um: float | None = None
    is_tiff: bool = False

    @property
    def pixels(self) -> int:
        """H x W."""
        return int(self.shape[0]) * int(self.shape[1])


@dataclass
class DownscaledImage:
    """An image read straight to a smaller size.

    Attributes
    ----------
    data : numpy.ndarray
        (h, w) float32 area averages.
    full_shape : tuple of int
        (H, W) of the file.
    dtype : str
        Stored sample type.
    pixel_size_um : float or None
        Full-resolution pixel size.
    notes : list of str
        Conversions applied.
    """

    data: np.ndarray
    full_shape: tuple[int, int]
    dtype: str
    pixel_size_um: float | None = None
    notes: list[str] = field(default_factory=list)


def read_header(path: str | os.PathLike) -> ImageHeader | None:
    """Read an image file's size and type without decoding it.

    Returns None when the header cannot be read; :func:`~napari_artseg.image_files.read_image`
    then gives the precise message.
    """
    from .image_files import TIFF_EXTENSIONS, _tiff_pixel_size

    path = Path(path)
    try:
        if path.suffix.lower() in TIFF_EXTENSIONS:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return ImageHeader(path, (int(page.imagelength), int(page.imagewidth)),
                                   str(page.dtype), _tiff_pixel_size(page), True)
        import warnings

        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Image.MAX_IMAGE_PIXELS, limit = None, Image.MAX_IMAGE_PIXELS  # header only
            try:
                with Image.open(path) as img:
                    return ImageHeader(path, (int(img.height), int(img.width)), str(img.mode))
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    except Exception:  # any parser error: read_image reports it
        return None


def _windows(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive-average-pooling windows ``[start, end)`` of each output index."""
    index = np.arange(size_out, dtype=np.int64)
    start = (index * size_in) // size_out
    end = -((-(index + 1) * size_in) // size_out)
    return start, end


class _AreaAccumulator:
    """Area-average bands of full-resolution rows into a (h, w) float32 image."""

    def __init__(self, full_shape: tuple[int, int], out_shape: tuple[int, int]) -> None:
        self.full_shape = full_shape
        self.out_shape = out_shape
        self.row_start, self.row_end = _windows(full_shape[0], out_shape[0])
        self.col_start, self.col_end = _windows(full_shape[1], out_shape[1])
        self.sum = np.zeros(out_shape, dtype=np.float32)

    def add_band(self, top: int, band: np.ndarray) -> None:
        """Add full-resolution rows ``top .. top + len(band)`` (all W columns)."""
        n = band.shape[0]
        cumulative = np.zeros((n, band.shape[1] + 1), dtype=np.float64)
        np.cumsum(band, axis=1, dtype=np.float64, out=cumulative[:, 1:])
        columns = cumulative[:, self.col_end] - cumulative[:, self.col_start]  # (n, w)
        rows = np.zeros((n + 1, columns.shape[1]), dtype=np.float64)
        np.cumsum(columns, axis=0, out=rows[1:])
        first = np.searchsorted(self.row_end, top, side="right")
        last = np.searchsorted(self.row_start, top + n, side="left")
        index = np.arange(first, last)
        lo = np.clip(self.row_start[index] - top, 0, n)
        hi = np.clip(self.row_end[index] - top, 0, n)
        self.sum[index] += (rows[hi] - rows[lo]).astype(np.float32)

    def result(self) -> np.ndarray:
        """The averages (divides in place)."""
        heights = (self.row_end - self.row_start).astype(np.float32)
        widths = (self.col_end - self.col_start).astype(np.float32)
        self.sum /= heights[:, None]
        self.sum /= widths[None, :]
        return self.sum


def _grey_segment(segment: np.ndarray, notes: list[str], name: str) -> np.ndarray:
    """(rows, cols[, samples]) segment to float32 grey, non-finite values replaced."""
    if segment.ndim == 3:
        if segment.shape[-1] in (3, 4):
            if not any("grey" in n for n in notes):
                notes.append(f"{name}: RGB converted to grey")
            segment = segment[..., :3].astype(np.float32) @ _LUMA
        else:
            segment = segment[..., 0]
    data = segment.astype(np.float32, copy=False)
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        finite = np.isfinite(data)
        data = np.array(data, copy=True)
        data[~finite] = float(data[finite].mean()) if finite.any() else 0.0
        if not any("NaN/Inf" in n for n in notes):
            notes.append(f"{name}: NaN/Inf pixels set to the mean of their tile")
    return data


def read_tiff_downscaled(path: str | os.PathLike, out_shape: tuple[int, int]) -> DownscaledImage:
    """Read a single-plane TIFF area-averaged to ``out_shape``, one segment at a time.

    Memory: the (h, w) result plus one band of full-resolution rows (one tile
    row or strip).

    Raises
    ------
    ImageReadError
        Unreadable, several planes, or planar (separate) colour samples.
    """
    import tifffile

    from .image_files import _tiff_pixel_size

    path = Path(path)
    notes: list[str] = []
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if len(tif.pages) > 1:
                raise ImageReadError(f"{path}: holds {len(tif.pages)} planes; artseg reads one "
                                     "2-D image per file: save each plane as its own file")
            if page.samplesperpixel > 1 and page.planarconfig != 1:
                raise ImageReadError(f"{path}: large colour TIFF with separate colour planes; "
                                     "save it as grey or interleaved RGB")
            if page.imagedepth > 1:
                raise ImageReadError(f"{path}: holds a 3-D volume; artseg reads 2-D images")
            full = (int(page.imagelength), int(page.imagewidth))
            accumulator = _AreaAccumulator(full, out_shape)
            band: np.ndarray | None = None
            band_top = -1
            for segment, index, shape in page.segments():
                top, left = int(index[2]), int(index[3])
                rows = min(int(shape[1]), full[0] - top)
                cols = min(int(shape[2]), full[1] - left)
                if segment is None:  # an empty (all-zero) segment
                    piece = np.zeros((rows, cols), np.float32)
                else:
                    piece = _grey_segment(np.asarray(segment)[0, :rows, :cols], notes, path.name)
                if top != band_top:
                    if band is not None:
                        accumulator.add_band(band_top, band)
                    band = np.zeros((rows, full[1]), np.float32)
                    band_top = top
                band[:, left:left + cols] = piece
            if band is not None:
                accumulator.add_band(band_top, band)
            return DownscaledImage(accumulator.result(), full, str(page.dtype),
                                   _tiff_pixel_size(page), notes)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(f"{path}: too large to read into memory") from None
    except Exception as exc:  # any decoder error (truncated, corrupt)
        raise ImageReadError(f"{path}: not a readable TIFF ({first_line(exc)})") from None


def _bilinear_axis(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights of PyTorch's bilinear resize (``align_corners=False``) on one axis."""
    scale = size_in / size_out
    src = (np.arange(size_out, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(src.astype(np.int64), size_in - 1)
    i1 = np.minimum(i0 + 1, size_in - 1)
    weight = (src - i0).astype(np.float32)
    return i0, i1, weight


class Upsampler:
    """Bilinear upsampling of a small map to full resolution, one band of rows at a time.

    Matches ``F.interpolate(mode="bilinear", align_corners=False)`` (the in-memory
    path's resize) to float32 rounding. Requires the full size to be at least the
    small size on both axes.
    """

    def __init__(self, small: np.ndarray, full_shape: tuple[int, int]) -> None:
        if full_shape[0] < small.shape[0] or full_shape[1] < small.shape[1]:
            raise ValueError(f"cannot upsample {small.shape} to the smaller {full_shape}")
        self.small = small
        self.full_shape = full_shape
        self.rows = _bilinear_axis(small.shape[0], full_shape[0])

    def band(self, top: int, bottom: int) -> np.ndarray:
        """Full-resolution rows ``top:bottom`` as float32 (bottom - top, W)."""
        import torch

        r0, r1, rw = (a[top:bottom] for a in self.rows)
        rowwise = self.small[r0] * (1 - rw)[:, None] + self.small[r1] * rw[:, None]
        if self.small.shape[1] == self.full_shape[1]:
            return rowwise
        columns = torch.nn.functional.interpolate(
            torch.from_numpy(np.ascontiguousarray(rowwise, dtype=np.float32))[None],
            size=self.full_shape[1], mode="linear", align_corners=False)
        return columns[0].numpy()


def _is_out_of_memory(exc: BaseException) -> bool:
    """True for an accelerator out-of-memory error."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, oom) or "out of memory" in str(exc).lower()


def tiled_probability(model, image: np.ndarray, batch_size: int = 4,
                      max_batch_pixels: int | None = None) -> np.ndarray:
    """The U-Net probability of a normalised processing-scale image, accumulated in place.

    Same tile grid and blending as :func:`~napari_artseg.tiling.predict_tiled`;
    memory is one (h, w) float32 accumulator plus one batch of tiles. The U-Net
    runs as an inference copy (batch norms folded, ``channels_last``; see
    :func:`~napari_artseg.device.inference_copy`), a batch holds at most
    ``max_batch_pixels`` tile pixels (default: one 1024 px tile on the CPU; see
    :func:`~napari_artseg.tiling.tile_batch_size`), and an out-of-memory error
    halves the batch and retries.

    Parameters
    ----------
    model : ArtSegModel
        A loaded model.
    image : numpy.ndarray
        (h, w) float32 normalised image at the processing scale.
    batch_size : int
        Tiles per forward pass to start with.
    max_batch_pixels : int, optional
        Cap on tile pixels per pass.

    Raises
    ------
    ArtSegError
        Still out of memory with one tile per pass.
    """
    import torch

    from .device import autocast, release_memory
    from .tiling import predict_tiled, tile_batch_size

    tile, halo, divisor = model.config.unet_size, model.config.tile_halo, model.unet.divisor
    unet = model.inference_unet  # made once per model, not once per image
    batch_size = tile_batch_size(batch_size, tile, model.device, max_batch_pixels)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with autocast(model.device, model.config.amp):
            return torch.sigmoid(unet(batch.to(model.device)).float()).cpu()

    while True:
        try:
            # the image stays on the host; each batch goes to the device and back once
            result = predict_tiled(forward, torch.from_numpy(image)[None], tile=tile, halo=halo,
                                   divisor=divisor, batch_size=batch_size, max_batch_pixels=0)
            return result[0].numpy()
        except (RuntimeError, MemoryError) as exc:
            if not _is_out_of_memory(exc) or isinstance(exc, MemoryError):
                raise
            release_memory(model.device)
            if batch_size == 1:
                raise ArtSegError(
                    f"out of {model.device} memory even with one {tile} px tile at a time; "
                    "predict with --device cpu or a model with a smaller unet_input_size"
                ) from None
            batch_size = max(1, batch_size // 2)


def _zscore_in_place(image: np.ndarray, eps: float = 1e-6) -> None:
    """Zero-centre and unit-scale a float32 image in place (as :func:`normalize.zscore`)."""
    total = 0.0
    squares = 0.0
    for top in range(0, image.shape[0], 1024):
        band = image[top:top + 1024].astype(np.float64)
        total += float(band.sum())
        squares += float(np.square(band).sum())
    n = image.size
    mean = total / n
    std = max(np.sqrt(max(squares / n - mean * mean, 0.0)), eps)
    image -= np.float32(mean)
    image /= np.float32(std)


def _tiles_of(bands: Iterator[tuple[int, np.ndarray]], width: int,
              tile: int) -> Iterator[np.ndarray]:
    """Cut bands of ``tile`` full rows into row-major (tile, tile) tiles, zero-padded."""
    for _top, band in bands:
        padded = np.zeros((tile, -(-width // tile) * tile), band.dtype)
        padded[:band.shape[0], :width] = band
        for left in range(0, width, tile):
            yield padded[:, left:left + tile]


def _write_tiled_tiff(path: Path, shape: tuple[int, int], dtype: Any,
                      bands: Iterator[tuple[int, np.ndarray]],
                      pixel_size_um: float | None, compress: bool = True) -> None:
    """Write bands of rows as a tiled TIFF (zlib level 1 when ``compress``), atomically."""
    import tifffile

    kwargs: dict[str, Any] = {}
    if pixel_size_um:
        per_cm = 1e4 / float(pixel_size_um)
        kwargs = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}

    with atomic_path(path) as tmp:
        if compress:
            kwargs.update(compression="zlib", compressionargs={"level": 1})
        tifffile.imwrite(tmp, _tiles_of(bands, shape[1], OUTPUT_TILE), shape=shape,
                         dtype=dtype, tile=(OUTPUT_TILE, OUTPUT_TILE), **kwargs)


@dataclass
class LargePrediction:
    """Summary of a streamed prediction (the maps themselves went to disk).

    Attributes
    ----------
    score : float
        The classifier's P(artifact).
    gate_passed : bool
        Whether the U-Net map was used.
    artifact_fraction : float
        Share of full-resolution pixels in the mask.
    n_objects : int
        Objects in the mask, counted at the processing scale.
    shape : tuple of int
        (H, W) at full resolution.
    pixel_size_um : float or None
        From the file.
    notes : list of str
        Conversions applied while reading.
    """

    score: float
    gate_passed: bool
    artifact_fraction: float
    n_objects: int
    shape: tuple[int, int]
    pixel_size_um: float | None
    notes: list[str]


def _objects_at(prob: np.ndarray, cut: float, min_size: float,
                sized: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """The map's mask at ``cut``, its objects below ``min_size`` px (when ``sized``), and the
    number of objects kept."""
    small_mask = prob >= cut
    removed = np.zeros_like(small_mask)
    if not small_mask.any():
        return small_mask, removed, 0
    from scipy import ndimage

    labels, count = ndimage.label(small_mask)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    too_small = sizes < min_size if sized else np.zeros(count + 1, bool)
    too_small[0] = False
    return small_mask, too_small[labels], int(count - too_small.sum())


def predict_large_file(model, path: str | os.PathLike, prob_path: str | os.PathLike,
                       mask_path: str | os.PathLike, threshold: float | None = None,
                       min_size_px: int | None = None, gate: bool = True,
                       header: ImageHeader | None = None) -> LargePrediction:
    """Predict a large image file in bounded memory and write its two maps.

    Parameters
    ----------
    model : ArtSegModel
        A loaded model.
    path : path-like
        The image file.
    prob_path, mask_path : path-like
        Where the float32 probability map and the uint8 mask go (tiled TIFFs).
    threshold, min_size_px, gate
        As for :meth:`ArtSegModel.predict`.
    header : ImageHeader, optional
        The file's header, when already read.

    Raises
    ------
    ImageReadError, ArtSegError
        Unreadable file, or too large for the model's processing scale.
    """
    import torch

    from .image_files import read_image
    from .normalize import scaled_shape

    path = Path(path)
    header = header or read_header(path)
    if header is None:
        read_image(path)  # raises the precise message
        raise ImageReadError(f"{path}: not a readable image")
    loaded = None if header.is_tiff else read_image(path)  # Pillow's bomb guard speaks first
    scale = model.config.scale
    if scale > 1:
        raise ArtSegError(f"{path}: {header.shape[1]} x {header.shape[0]} px is too large for a "
                          f"model that upsamples (scale {scale})")
    small_shape = scaled_shape(header.shape, scale)
    if small_shape[0] * small_shape[1] > MAX_PROCESSING_PIXELS:
        raise ArtSegError(
            f"{path}: {header.shape[1]} x {header.shape[0]} px is {small_shape[1]} x "
            f"{small_shape[0]} px at this model's scale {scale}, above the limit of "
            f"{MAX_PROCESSING_PIXELS} px; split the image into tiles")
    if header.is_tiff:
        small = read_tiff_downscaled(path, small_shape)
    else:
        tensor = torch.from_numpy(loaded.data)[None, None]
        data = torch.nn.functional.interpolate(tensor, size=small_shape, mode="area")[0, 0]
        small = DownscaledImage(data.numpy().copy(), loaded.data.shape, loaded.dtype,
                                loaded.pixel_size_um, loaded.notes)
        del loaded, tensor, data
    full_shape = small.full_shape
    image = small.data
    if model.config.normalization == "zscore":
        _zscore_in_place(image)
    score = model.artifact_score(torch.from_numpy(image)[None])
    passed = (score >= float(model.thresholds.get("gate", 0.5))) or not gate
    cuts = model.mask_cuts(threshold)
    size = model.min_size_for(small.pixel_size_um) if min_size_px is None else int(min_size_px)
    tile = OUTPUT_TILE

    if not passed:
        del image

        def zeros(dtype) -> Iterator[tuple[int, np.ndarray]]:
            for top in range(0, full_shape[0], tile):
                yield top, np.zeros((min(tile, full_shape[0] - top), full_shape[1]), dtype)

        _write_tiled_tiff(Path(prob_path), full_shape, np.float32, zeros(np.float32),
                          small.pixel_size_um)
        _write_tiled_tiff(Path(mask_path), full_shape, np.uint8, zeros(np.uint8),
                          small.pixel_size_um)
        return LargePrediction(score, False, 0.0, 0, full_shape, small.pixel_size_um, small.notes)

    prob = tiled_probability(model, image)
    del image
    np.clip(prob, 0, 1, out=prob)
    upsampler = Upsampler(prob, full_shape)
    # minimum size at the processing scale: objects below it are removed at full resolution;
    # the first cut that leaves an object is the mask's (the empty-mask fallback after it)
    area_ratio = (prob.shape[0] * prob.shape[1]) / (full_shape[0] * full_shape[1])
    for cut in cuts:
        small_mask, removed, n_objects = _objects_at(prob, cut, size * area_ratio, size > 1)
        if n_objects:
            break
    nearest_rows = np.minimum((np.arange(full_shape[0]) * small_mask.shape[0]) // full_shape[0],
                              small_mask.shape[0] - 1)
    nearest_cols = np.minimum((np.arange(full_shape[1]) * small_mask.shape[1]) // full_shape[1],
                              small_mask.shape[1] - 1)
    counted = [0]

    def prob_bands() -> Iterator[tuple[int, np.ndarray]]:
        for top in range(0, full_shape[0], tile):
            yield top, upsampler.band(top, min(top + tile, full_shape[0]))

    def mask_bands() -> Iterator[tuple[int, np.ndarray]]:
        for top, band in prob_bands():
            mask = band >= cut
            rows = nearest_rows[top:top + band.shape[0]]
            mask &= ~removed[rows][:, nearest_cols]
            counted[0] += int(np.count_nonzero(mask))
            yield top, mask.astype(np.uint8)

    # float maps hardly compress (about 0.9) and zlib runs at ~40 MB/s: stored raw
    _write_tiled_tiff(Path(prob_path), full_shape, np.float32, prob_bands(), small.pixel_size_um,
                      compress=False)
    _write_tiled_tiff(Path(mask_path), full_shape, np.uint8, mask_bands(), small.pixel_size_um)
    fraction = counted[0] / (full_shape[0] * full_shape[1])
    return LargePrediction(score, True, fraction, n_objects, full_shape, small.pixel_size_um,
                           small.notes)
