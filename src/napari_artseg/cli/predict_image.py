"""``artseg predict``: the per-image step (predict, write the two TIFFs, give the summary row)."""

from __future__ import annotations

import sys
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtSegError, first_line, typed_first_line
from ..image_files import LoadedImage, read_image, write_tiff
from .predict_inputs import InputImage, PredictOptions
from .predict_large import predict_blocked, predict_large
from .predict_resume import is_done
from .predict_summary import settings


def _write_output(path: Path, array: np.ndarray, pixel_size_um: float | None) -> None:
    """Write one output TIFF; a write error names the output file."""
    try:
        write_tiff(path, array, pixel_size_um)
    except OSError as exc:
        raise ArtSegError(f"{path}: cannot write ({exc.strerror or exc})") from None


def preload(item: InputImage) -> LoadedImage | None:
    """``item``'s image read whole, or None for one read in blocks (Zarr, a large TIFF).

    The serial loop calls it for the next image in a background thread while the
    current one is predicted (:func:`~.predict_loop.run_serial`).
    """
    from ..large_images import LARGE_IMAGE_PIXELS, read_header

    if item.is_zarr:
        return None
    header = read_header(item.path)
    if header is not None and header.pixels > LARGE_IMAGE_PIXELS:
        return None
    return read_image(item.path)


def write_outputs(writes: list[tuple[Path, np.ndarray, float | None]]) -> None:
    """Write output TIFFs deferred by :func:`predict_one` (each atomically)."""
    for path, array, pixel_size_um in writes:
        _write_output(path, array, pixel_size_um)


def predict_one(model, item: InputImage, out: Path, args,
                loaded: LoadedImage | None = None,
                writes: list | None = None) -> dict[str, Any]:
    """Predict one image, write its two TIFFs and return its summary row.

    Images above :data:`~napari_artseg.large_images.LARGE_IMAGE_PIXELS` are read
    downscaled and written in strips (bounded memory); an accelerator
    out-of-memory error retries the image that way with fewer tiles per pass.
    Zarr stores are predicted block by block (:func:`.predict_large.predict_blocked`).
    ``loaded``: the image already read by :func:`preload`. ``writes``: a list
    to append the two output writes to instead of writing them here (the serial
    loop writes them in a background thread with :func:`write_outputs`).
    """
    from ..large_images import LARGE_IMAGE_PIXELS, _is_out_of_memory, read_header

    start = time.perf_counter()
    if item.is_zarr:
        return predict_blocked(model, item, out, args, start)
    prob_path, mask_path = out / f"{item.key}_prob.tif", out / f"{item.key}_mask.tif"
    header = None
    if loaded is None:
        header = read_header(item.path)
        if header is not None and header.pixels > LARGE_IMAGE_PIXELS:
            return predict_large(model, item, out, args, header, start)
        loaded = read_image(item.path)
    for note in loaded.notes:
        print(f"note: {note}", file=sys.stderr)
    try:
        result = model.predict(loaded.data, threshold=args.threshold, min_size_px=args.min_size,
                               gate=not args.no_gate, pixel_size_um=loaded.pixel_size_um)
    except RuntimeError as exc:
        if not _is_out_of_memory(exc):
            raise
        from ..device import release_memory

        release_memory(model.device)
        print(f"note: {item.path}: out of memory; retrying with fewer tiles at a time",
              file=sys.stderr)
        del loaded
        return predict_large(model, item, out, args, header or read_header(item.path), start)
    outputs = [(prob_path, result.probability.astype(np.float32), loaded.pixel_size_um),
               (mask_path, result.mask.astype(np.uint8), loaded.pixel_size_um)]
    if writes is None:
        write_outputs(outputs)
    else:
        writes.extend(outputs)
    return {
        "status": "ok", "error": "", "artifact_score": round(result.score, 6),
        "predicted_label": "artifact" if result.mask.any() else "clean",
        "artifact_fraction": round(result.artifact_fraction, 6), "n_objects": result.n_objects,
        "gate_passed": result.gate_passed, **settings(model, args, loaded.pixel_size_um),
        "height": loaded.data.shape[0], "width": loaded.data.shape[1],
        "seconds": round(time.perf_counter() - start, 3),
    }


def failure_message(item: InputImage, exc: Exception) -> str:
    """One line naming the file for any error raised while predicting it."""
    if isinstance(exc, ArtSegError):
        return first_line(exc)
    if isinstance(exc, MemoryError):
        return f"{item.path}: out of memory"
    return f"{item.path}: {typed_first_line(exc)}"


def process_item(model, item: InputImage, out: Path, options: PredictOptions,
                 previous: dict[str, str] | None, predict=None, preloaded: Future | None = None,
                 writes: list | None = None) -> tuple[str, dict[str, Any], bool]:
    """Predict one image unless its outputs are complete already; never raises for a bad image.

    The one per-image step of both the serial and the ``--dask`` path;
    ``predict`` replaces :func:`predict_one` (the ``--dask`` path passes the
    blocked predictor bound to its cluster); ``preloaded`` is a future of
    :func:`preload` for this item (its read error fails the image like any other);
    ``writes``: see :func:`predict_one` (only with ``preloaded``).

    Returns
    -------
    tuple
        ``(key, row, skipped)``: the summary row (``previous`` when skipped; a
        ``failed`` row with a one-line error when the image could not be predicted).
    """
    if not options.overwrite and is_done(previous, item, out, model, options):
        return item.key, dict(previous or {}), True
    row: dict[str, Any] = {"image": item.key, "model_id": model.model_id}
    try:
        if preloaded is not None:
            row.update(predict_one(model, item, out, options, loaded=preloaded.result(),
                                   writes=writes))
        else:
            row.update((predict or predict_one)(model, item, out, options))
    except Exception as exc:  # one bad image never stops the run
        row.update(status="failed", error=failure_message(item, exc))
    return item.key, row, False
