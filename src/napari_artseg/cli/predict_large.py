"""``artseg predict``: images too large for memory (large TIFFs in strips, Zarr by blocks)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from ..errors import ArtSegError
from .predict_inputs import InputImage
from .predict_summary import result_row


def predict_large(model, item: InputImage, out: Path, args, header,
                  start: float) -> dict[str, Any]:
    """Predict one image through the bounded-memory path and return its summary row.

    The image is read downscaled and its maps are written in strips
    (:func:`napari_artseg.large_images.predict_large_file`).
    """
    from ..large_images import predict_large_file

    prob_path, mask_path = out / f"{item.key}_prob.tif", out / f"{item.key}_mask.tif"
    try:
        result = predict_large_file(model, item.path, prob_path, mask_path,
                                    threshold=args.threshold, min_size_px=args.min_size,
                                    gate=not args.no_gate, header=header)
    except OSError as exc:
        raise ArtSegError(f"{prob_path.parent}: cannot write ({exc.strerror or exc})") from None
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    return result_row(model, args, result, start)


def predict_blocked(model, item: InputImage, out: Path, args,
                    start: float | None = None, client=None,
                    device: str | None = None) -> dict[str, Any]:
    """Predict a Zarr store (or a large TIFF) block by block and return its summary row.

    The maps equal the in-memory path's (see :mod:`napari_artseg.distributed.zarr_predict`);
    blocks run on ``client``'s cluster (on ``device``), or in this process when it is None.
    """
    from ..distributed.zarr_predict import predict_store

    start = time.perf_counter() if start is None else start
    result = predict_store(model, item.path, out, item.key, threshold=args.threshold,
                           min_size_px=args.min_size, gate=not args.no_gate, client=client,
                           device=device or str(model.device))
    return result_row(model, args, result, start)
