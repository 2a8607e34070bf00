"""Prediction of one image larger than memory, block by block on a Dask scheduler.

The steps of :meth:`napari_artseg.predictor.ArtSegModel.predict`, each as a
blocked computation on a dask array read from a Zarr store or a TIFF
(:mod:`.sources`):

1. **Resize** to the processing scale (:func:`.blocked.resize_blocked`), in
   blocks aligned to the model's tile grid (whole multiples of the tile stride).
2. **Gate and z-score.** One pass accumulates the classifier's ``input_size``
   view of the whole image and the sums for the per-image mean and standard
   deviation (:func:`.blocked.pooled_sums`); the classifier scores the view.
3. **U-Net** over the global tile grid (:func:`.blocked.unet_blocked`,
   ``map_overlap`` with a one-tile margin), then **resize** back to full
   resolution and clamp; written as a Zarr array.
4. **Mask**: threshold and minimum object size with connected components joined
   across blocks (:mod:`.components`); written as a Zarr array.

The maps equal the in-memory path's to float rounding (measured in
``tests/distributed``: within 1e-5), the score likewise, so the masks are
equal except at pixels within that distance of the threshold. Only blocks are
in memory: a U-Net block is at most ``(BLOCK_TILES * stride + 2 * tile)**2``
processing-scale pixels, and a resize block a few Zarr chunks.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from ..atomic import atomic_folder
from ..errors import ArtSegError, ImageReadError
from .blocked import (
    BLOCK_TILES,
    input_chunks,
    pooled_sums,
    resize_blocked,
    tile_bounds,
    unet_blocked,
)
from .worker_models import ModelRef, cached_model, remember_model

#: Zarr inputs up to this many pixels also get ``_prob.tif`` / ``_mask.tif`` outputs.
TIFF_MAX_PIXELS = 2**28


def writes_tiff(shape: tuple[int, int]) -> bool:
    """True when a Zarr input of ``shape`` also gets TIFF outputs."""
    return int(shape[0]) * int(shape[1]) <= TIFF_MAX_PIXELS


@dataclass
class StorePrediction:
    """Summary of a blocked prediction (the maps went to disk).

    Attributes
    ----------
    score : float
        The classifier's P(artifact).
    gate_passed : bool
        Whether the U-Net map was used.
    artifact_fraction : float
        Share of pixels in the final mask.
    n_objects : int
        Objects in the final mask (4-connected).
    shape : tuple of int
        (H, W).
    pixel_size_um : float or None
        From the source's metadata.
    """

    score: float
    gate_passed: bool
    artifact_fraction: float
    n_objects: int
    shape: tuple[int, int]
    pixel_size_um: float | None


def run_unet_tiles(ref: ModelRef, tiles: np.ndarray, batch_size: int = 4) -> np.ndarray:
    """U-Net probabilities of (N, T, T) normalised tiles with this process's copy of the model.

    The same forward pass as :meth:`~napari_artseg.predictor.ArtSegModel.unet_map`.
    """
    import torch

    from ..device import autocast

    model = cached_model(ref)
    outputs = []
    with torch.inference_mode():
        for first in range(0, len(tiles), batch_size):
            batch = torch.from_numpy(tiles[first:first + batch_size])[:, None].to(model.device)
            with autocast(model.device, model.config.amp):
                prob = torch.sigmoid(model.unet(batch).float())
            outputs.append(prob[:, 0].float().cpu().numpy())
    return np.concatenate(outputs)


def score_view(ref: ModelRef, view: np.ndarray) -> float:
    """The classifier's P(artifact) of a normalised (S, S) view, on this process's model."""
    import torch

    return cached_model(ref).artifact_score(torch.from_numpy(view.astype(np.float32))[None])


def _runner(client):
    """``(compute, scheduler)`` for a distributed client, or in-process when None."""
    import dask

    scheduler = client if client is not None else "sync"
    return partial(dask.compute, scheduler=scheduler), scheduler


def _pad_to_tile(image, tile: int):
    """Pad an axis shorter than ``tile`` as :func:`napari_artseg.tiling.pad_bottom_right` does."""
    import dask.array as da

    height, width = image.shape
    pad_h, pad_w = max(0, tile - height), max(0, tile - width)
    if not pad_h and not pad_w:
        return image
    mode = "reflect" if pad_h < height and pad_w < width else "edge"
    padded = da.pad(image, ((0, pad_h), (0, pad_w)), mode=mode)
    return padded.rechunk(((tile,) if pad_h else padded.chunks[0],
                           (tile,) if pad_w else padded.chunks[1]))


def small_unet(ref: ModelRef, image: np.ndarray) -> np.ndarray:
    """The U-Net map of a processing-scale image of at most one tile, as in memory."""
    import torch

    return cached_model(ref).unet_map(torch.from_numpy(image)[None], image.shape)


def tiles_its_unet(model) -> bool:
    """True when the model's map is its ``unet`` tiled over the image (what blocks reproduce)."""
    from ..predictor import ArtSegModel

    return model.unet is not None and type(model)._compute_map is ArtSegModel._compute_map


def _prepared(model, path: Path, compute, block_tiles: int):
    """The lazy normalised processing-scale image, the classifier's view and image facts."""
    from ..normalize import scaled_shape
    from .sources import open_grey, zarr_header

    config = model.config
    header = zarr_header(path)
    if header is None:
        open_grey(path)  # raises the precise message
        raise ImageReadError(f"{path}: not a readable image")
    full = header.shape
    small = scaled_shape(full, config.scale)
    tile, halo = config.unet_size, config.tile_halo
    bounds = (tile_bounds(small[0], tile, halo, block_tiles),
              tile_bounds(small[1], tile, halo, block_tiles))
    source, reader = open_grey(path, chunks=input_chunks(full, small, bounds), compute=compute)
    prepared = resize_blocked(source, small, bounds)
    view, total, squares = compute(*pooled_sums(prepared, config.input_size))
    if config.normalization == "zscore":
        count = small[0] * small[1]
        mean = total / count
        std = max(math.sqrt(max(squares / count - mean * mean, 0.0)), 1e-6)
        view = (view - mean) / std
        prepared = (prepared - np.float32(mean)) / np.float32(std)
    return prepared, view, full, reader.pixel_size_um


def _processing_map(model, ref: ModelRef, prepared):
    """The lazy U-Net map at the processing scale (tiled as in memory)."""
    import dask
    import dask.array as da

    tile, halo = model.config.unet_size, model.config.tile_halo
    small = tuple(prepared.shape)
    if small[0] <= tile and small[1] <= tile:  # one pass, padded to the divisor only
        task = dask.delayed(small_unet, pure=True)(ref, prepared.rechunk(-1))
        return da.from_delayed(task, small, dtype=np.float32)
    run = partial(run_unet_tiles, ref)
    return unet_blocked(_pad_to_tile(prepared, tile), tile, halo, run)[:small[0], :small[1]]


def probability_map(model, ref: ModelRef, path: Path, compute, gate: bool, scratch: Path,
                    block_tiles: int = BLOCK_TILES):
    """The lazy full-resolution probability map of a stored image, its score and the gate.

    The gate score is the classifier's on the whole-image view, or, for a model
    without a classifier, the maximum of the map (which is then computed first,
    into ``scratch``).

    Returns
    -------
    tuple
        ``(prob, score, passed, pixel_size_um)``; ``prob`` is a float32 dask
        array (zeros when the gate called the image clean).

    Raises
    ------
    ArtSegError
        The model's map is not a tiled network (those methods need the whole image).
    """
    import dask
    import dask.array as da

    from .zarr_io import open_lazy, store

    if not tiles_its_unet(model):
        raise ArtSegError(f"{path}: method {model.method} maps whole images; block-by-block "
                          "prediction needs a U-Net method (e.g. scorecam_unet)")
    prepared, view, full, pixel_size = _prepared(model, path, compute, block_tiles)
    cut = float(model.thresholds.get("gate", 0.5))
    if model.has_classifier:
        score = float(compute(dask.delayed(score_view, pure=True)(ref, view))[0])
        unet = None
    else:
        store(_processing_map(model, ref, prepared), scratch, None, compute.keywords["scheduler"])
        unet = open_lazy(scratch)
        score = float(compute(unet.max())[0])
    if score < cut and gate:
        return da.zeros(full, dtype=np.float32, chunks=2048), score, False, pixel_size
    unet = _processing_map(model, ref, prepared) if unet is None else unet
    return da.clip(resize_blocked(unet, full), 0, 1), score, True, pixel_size


def predict_store(model, path: str | os.PathLike, out: str | os.PathLike, key: str,
                  threshold: float | None = None, min_size_px: int | None = None,
                  gate: bool = True, client=None, device: str = "auto",
                  block_tiles: int = BLOCK_TILES) -> StorePrediction:
    """Predict a Zarr store or a large TIFF block by block and write its maps.

    A Zarr input gets ``OUT/<key>_prob.zarr`` (float32) and ``OUT/<key>_mask.zarr``
    (uint8 0/1), plus the two TIFFs when :func:`writes_tiff`; a TIFF input gets the
    two TIFFs (the Zarr arrays are temporary).

    Parameters
    ----------
    model : ArtSegModel
        The loaded model (on the client: its settings; in-process: also its networks).
    path : path-like
        The image: a Zarr store (array or OME-Zarr) or a TIFF file.
    out : path-like
        The output folder (shared storage when ``client`` is given).
    key : str
        The output name.
    threshold, min_size_px, gate
        As for :meth:`~napari_artseg.predictor.ArtSegModel.predict`.
    client : distributed.Client, optional
        Run the blocks on its cluster (each worker loads the model once); default in-process.
    device : str
        The device the workers use (``auto``: their GPU when they have one).
    block_tiles : int
        U-Net block side in tile strides.
    """
    from .components import mask_blocked
    from .zarr_io import open_lazy, store, zarr_to_tiff

    path, out = Path(path), Path(out)
    if client is None:
        ref = remember_model(model, device)
    else:
        ref = ModelRef(str(Path(model.folder).resolve()), model.model_id, device)
    compute, scheduler = _runner(client)
    keep_zarr = path.is_dir()
    names = {kind: out / f"{key}_{kind}.zarr" for kind in ("prob", "mask")}
    with ExitStack() as stack:
        folders = {}
        for kind, final in [*names.items(), ("scratch", out / f"{key}_map.zarr")]:
            if keep_zarr and kind != "scratch":
                folders[kind] = stack.enter_context(atomic_folder(final, overwrite=True))
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                temp = tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial",
                                        dir=final.parent)
                stack.callback(shutil.rmtree, temp, True)
                folders[kind] = Path(temp)
        prob, score, passed, pixel_size = probability_map(model, ref, path, compute, gate,
                                                          folders["scratch"], block_tiles)
        full = tuple(prob.shape)
        cuts = model.mask_cuts(threshold)
        size = model.min_size_for(pixel_size) if min_size_px is None else int(min_size_px)
        store(prob, folders["prob"], pixel_size, scheduler)
        pixels, count = 0, 0
        if passed:
            for cut in cuts:  # the first cut that leaves an object (the fallback after it)
                mask, pixels, count = mask_blocked(open_lazy(folders["prob"]), cut, size,
                                                   compute)
                if count:
                    break
        else:
            import dask.array as da

            mask = da.zeros(full, dtype=np.uint8, chunks=2048)
        store(mask, folders["mask"], pixel_size, scheduler)
        if not keep_zarr or writes_tiff(full):
            zarr_to_tiff(folders["prob"], out / f"{key}_prob.tif", pixel_size, compress=False)
            zarr_to_tiff(folders["mask"], out / f"{key}_mask.tif", pixel_size)
    return StorePrediction(score, passed, pixels / (full[0] * full[1]), count, full, pixel_size)
