"""``artseg predict``: the resume check (is an image's result in OUT already?)."""

from __future__ import annotations

from pathlib import Path

from .predict_inputs import InputImage


def _output_shape(path: Path) -> tuple[int, int] | None:
    """(H, W) of an output TIFF's first page or Zarr array; None when missing or unreadable."""
    if path.suffix == ".zarr":
        from ..distributed.sources import stored_shape

        return stored_shape(path)
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return int(page.imagelength), int(page.imagewidth)
    except Exception:  # a missing, empty or foreign file is simply "not done"
        return None


def output_files(item: InputImage, out: Path, shape: tuple[int, int]) -> list[Path]:
    """The files an image's prediction leaves in ``out``.

    Image files give ``<key>_prob.tif`` and ``<key>_mask.tif``; a Zarr store gives
    ``<key>_prob.zarr`` and ``<key>_mask.zarr``, plus the two TIFFs when the image
    is small enough for them (:data:`~napari_artseg.distributed.zarr_predict.TIFF_MAX_PIXELS`).
    """
    tiffs = [out / f"{item.key}_prob.tif", out / f"{item.key}_mask.tif"]
    if not item.is_zarr:
        return tiffs
    from ..distributed.zarr_predict import writes_tiff

    zarrs = [out / f"{item.key}_prob.zarr", out / f"{item.key}_mask.zarr"]
    return zarrs + (tiffs if writes_tiff(shape) else [])


def _input_header(item: InputImage):
    """The input's header (shape, pixel size) without reading pixels; None when unreadable."""
    if item.is_zarr:
        from ..distributed.sources import zarr_header

        return zarr_header(item.path)
    from ..large_images import read_header

    return read_header(item.path)


def _modified(path: Path) -> float:
    """Modification time of an input file, or of a Zarr store's metadata files."""
    if not path.is_dir():
        return path.stat().st_mtime
    names = ("zarr.json", ".zarray", ".zattrs", ".zgroup")
    return max([path.stat().st_mtime] + [(path / n).stat().st_mtime for n in names
                                        if (path / n).is_file()])


def _same_fallback(recorded: str | None, cuts: tuple[float, ...]) -> bool:
    """Whether a summary row's ``fallback`` cell is the one of ``cuts`` (empty: none)."""
    if len(cuts) == 1:
        return not recorded
    try:
        return abs(float(recorded) - cuts[1]) <= 1e-9
    except (TypeError, ValueError):
        return False


def is_done(row: dict[str, str] | None, item: InputImage, out: Path, model, args) -> bool:
    """True when ``row`` and the files in ``out`` are this run's result for ``item`` already.

    ``args`` is a :class:`~.predict_inputs.PredictOptions` or the parsed arguments.
    """
    if not row or row.get("status") != "ok" or row.get("model_id") != model.model_id:
        return False
    try:
        threshold = float(row["threshold"])
        min_size = int(float(row["min_size_px"]))
        score = float(row["artifact_score"])
        gate_passed = row["gate_passed"] == "True"
        shape = (int(row["height"]), int(row["width"]))
    except (KeyError, TypeError, ValueError):
        return False
    wanted = model.mask_cuts(args.threshold)
    if abs(threshold - wanted[0]) > 1e-9 or not _same_fallback(row.get("fallback"), wanted):
        return False
    if args.min_size is not None:
        if min_size != args.min_size:
            return False
    elif model.config.min_size_um2:
        header = _input_header(item)
        if header is None or min_size != model.min_size_for(header.pixel_size_um):
            return False
    elif min_size != model.min_size_for(None):
        return False
    if args.no_gate:
        if not gate_passed:
            return False
    else:
        gate = float(model.thresholds.get("gate", 0.5))
        if abs(score - gate) <= 1e-6 or gate_passed != (score >= gate):  # rounding: recompute
            return False
    files = output_files(item, out, shape)
    try:
        if _modified(item.path) > min(f.stat().st_mtime for f in files):
            return False
    except OSError:
        return False
    return all(_output_shape(f) == shape for f in files)
