"""``artseg predict``: probability maps, masks and a summary table for many images.

Re-running the same command resumes: an image is skipped when ``summary.csv``
already has an ``ok`` row for it from the same model with the same threshold,
minimum size and gate setting, both its TIFFs are present with the right size,
and the input file is not newer than them. ``--overwrite`` recomputes every
image. Rows of ``summary.csv`` for images not in this run are kept, so several
runs into one folder add up. The summary is rewritten (atomically) every 20
images or 10 seconds and at the end, so a run killed at any moment leaves every
TIFF and the summary complete and readable and loses at most the rows of the
last few images, which the next run recomputes.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtSegError
from ..image_files import discover_images, image_key, is_image_file, read_image, write_tiff
from ..model_files import rows_to_csv
from .progress import counted

#: The summary is rewritten after this many images or seconds, whichever comes first.
FLUSH_EVERY_IMAGES = 20
FLUSH_EVERY_SECONDS = 10.0

SUMMARY_COLUMNS = ("image", "status", "error", "artifact_score", "predicted_label",
                   "artifact_fraction", "n_objects", "gate_passed", "threshold", "min_size_px",
                   "height", "width", "seconds", "model_id")


@dataclass(frozen=True)
class InputImage:
    """An image to predict: its file and its output key."""

    path: Path
    key: str

    @property
    def is_zarr(self) -> bool:
        """True for a Zarr / OME-Zarr store (a folder), predicted block by block."""
        return self.path.is_dir()


@dataclass(frozen=True)
class PredictOptions:
    """The per-image settings of a run (the attributes of the parsed arguments they mirror)."""

    threshold: float | None = None
    min_size: int | None = None
    no_gate: bool = False
    overwrite: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PredictOptions:
        """The options of parsed ``artseg predict`` arguments."""
        return cls(args.threshold, args.min_size, bool(args.no_gate),
                   bool(getattr(args, "overwrite", False)))


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``predict`` sub-command."""
    parser = sub.add_parser(
        "predict", help="predict artifact maps and masks",
        description="Writes OUT/<key>_prob.tif (float32 0-1), OUT/<key>_mask.tif (uint8 0/1) and "
                    "OUT/summary.csv. Exit 0: all done; 3: some images failed (see summary.csv); "
                    "2: usage error or no image could be processed.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    parser.add_argument("--model", required=True, help="model folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--threshold", type=float, help="mask threshold (default: the model's)")
    parser.add_argument("--min-size", type=int, help="minimum object size in px")
    parser.add_argument("--no-gate", action="store_true",
                        help="do not let the classifier blank images it calls clean")
    parser.add_argument("--overwrite", action="store_true",
                        help="recompute every image (default: skip images whose outputs in OUT "
                             "are complete and were made with the same model and settings)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--dask", action="store_true",
                        help="predict on a dask.distributed cluster: a local one (see --workers) "
                             "or the scheduler given by --scheduler; one task per image, the "
                             "model loaded once per worker, same outputs as without --dask")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="with --dask: address of a running Dask scheduler "
                             "(e.g. tcp://10.0.0.5:8786); default: start a local cluster")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="with --dask and no --scheduler: local worker processes "
                             "(1 thread each; default: the number of CPU cores, at most 8)")
    parser.set_defaults(run=run)


def _is_zarr_store(path: Path) -> bool:
    """True for a folder holding a Zarr array or group (v2 or v3 metadata)."""
    from ..distributed.sources import is_zarr_store

    return is_zarr_store(path)


def _zarr_stores_below(folder: Path, exclude: list[Path]) -> list[Path]:
    """Zarr stores (``*.zarr`` folders) below ``folder``, not looking inside them."""
    excluded = {p.resolve() for p in exclude}
    found = []
    for current, dirs, _files in os.walk(folder):
        here = Path(current)
        stores = [d for d in dirs if d.lower().endswith(".zarr") and not d.startswith(".")]
        found.extend(here / d for d in sorted(stores) if (here / d).resolve() not in excluded)
        dirs[:] = sorted(d for d in dirs if d not in stores and not d.startswith("."))
    return found


def collect_inputs(inputs: list[str], exclude: list[Path]) -> list[InputImage]:
    """Expand files and folders into images with unique keys.

    A folder that is a Zarr store is one image; other folders are searched for
    image files and ``*.zarr`` stores.

    Raises
    ------
    ArtSegError
        A path does not exist, a file is not an image, or two inputs share a key.
    """
    found: list[InputImage] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir() and (path.suffix.lower() == ".zarr" or _is_zarr_store(path)):
            found.append(InputImage(path, image_key(path)))
        elif path.is_dir():
            found.extend(InputImage(p, image_key(p, path)) for p in discover_images(path, exclude))
            found.extend(InputImage(p, image_key(p, path))
                         for p in _zarr_stores_below(path, exclude))
        elif path.is_file():
            if not is_image_file(path):
                raise ArtSegError(f"{path}: not an image file (.tif, .tiff, .png, .jpg, .zarr)")
            found.append(InputImage(path, image_key(path)))
        else:
            raise ArtSegError(f"{path}: no such file or folder")
    seen: dict[str, Path] = {}
    for item in found:
        if item.key in seen:
            raise ArtSegError(f"{item.path} and {seen[item.key]} both give the output name "
                              f"{item.key!r}; predict them into different output folders")
        seen[item.key] = item.path
    return found


def _write_output(path: Path, array: np.ndarray, pixel_size_um: float | None) -> None:
    """Write one output TIFF; a write error names the output file."""
    try:
        write_tiff(path, array, pixel_size_um)
    except OSError as exc:
        raise ArtSegError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _settings(model, args: argparse.Namespace, pixel_size_um: float | None) -> dict[str, Any]:
    """The threshold and minimum size this run applies to an image."""
    return {
        "threshold": args.threshold if args.threshold is not None else model.thresholds["mask"],
        "min_size_px": args.min_size if args.min_size is not None
        else model.min_size_for(pixel_size_um),
    }


def predict_one(model, item: InputImage, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Predict one image, write its two TIFFs and return its summary row.

    Images above :data:`~napari_artseg.large_images.LARGE_IMAGE_PIXELS` are read
    downscaled and written in strips (bounded memory); an accelerator
    out-of-memory error retries the image that way with fewer tiles per pass.
    Zarr stores are predicted block by block (:func:`predict_blocked`).
    """
    from ..large_images import LARGE_IMAGE_PIXELS, _is_out_of_memory, read_header

    start = time.perf_counter()
    if item.is_zarr:
        return predict_blocked(model, item, out, args, start)
    prob_path, mask_path = out / f"{item.key}_prob.tif", out / f"{item.key}_mask.tif"
    header = read_header(item.path)
    if header is not None and header.pixels > LARGE_IMAGE_PIXELS:
        return _predict_large(model, item, out, args, header, start)
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
        return _predict_large(model, item, out, args, header, start)
    _write_output(prob_path, result.probability.astype(np.float32), loaded.pixel_size_um)
    _write_output(mask_path, result.mask.astype(np.uint8), loaded.pixel_size_um)
    return {
        "status": "ok", "error": "", "artifact_score": round(result.score, 6),
        "predicted_label": "artifact" if result.mask.any() else "clean",
        "artifact_fraction": round(result.artifact_fraction, 6), "n_objects": result.n_objects,
        "gate_passed": result.gate_passed, **_settings(model, args, loaded.pixel_size_um),
        "height": loaded.data.shape[0], "width": loaded.data.shape[1],
        "seconds": round(time.perf_counter() - start, 3),
    }


def _predict_large(model, item: InputImage, out: Path, args: argparse.Namespace, header,
                   start: float) -> dict[str, Any]:
    """Predict one image through the bounded-memory path and return its summary row."""
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
    return {
        "status": "ok", "error": "", "artifact_score": round(result.score, 6),
        "predicted_label": "artifact" if result.artifact_fraction > 0 else "clean",
        "artifact_fraction": round(result.artifact_fraction, 6), "n_objects": result.n_objects,
        "gate_passed": result.gate_passed, **_settings(model, args, result.pixel_size_um),
        "height": result.shape[0], "width": result.shape[1],
        "seconds": round(time.perf_counter() - start, 3),
    }


def predict_blocked(model, item: InputImage, out: Path, args: argparse.Namespace,
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
    return {
        "status": "ok", "error": "", "artifact_score": round(result.score, 6),
        "predicted_label": "artifact" if result.artifact_fraction > 0 else "clean",
        "artifact_fraction": round(result.artifact_fraction, 6), "n_objects": result.n_objects,
        "gate_passed": result.gate_passed, **_settings(model, args, result.pixel_size_um),
        "height": result.shape[0], "width": result.shape[1],
        "seconds": round(time.perf_counter() - start, 3),
    }


def read_previous_summary(out: Path) -> dict[str, dict[str, str]]:
    """The rows of an existing ``OUT/summary.csv`` by image key (empty when there is none).

    A summary that cannot be parsed is moved aside to ``summary.csv.unreadable``
    (never silently overwritten) and a note is printed.
    """
    path = out / "summary.csv"
    if not path.is_file():
        return {}
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows and "image" not in rows[0]:
            raise ValueError("no image column")
        return {row["image"]: row for row in rows if row.get("image")}
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        aside = path.with_name("summary.csv.unreadable")
        try:
            os.replace(path, aside)
        except OSError:
            raise ArtSegError(f"{path}: unreadable ({exc}) and cannot be moved aside") from None
        print(f"note: {path}: unreadable ({exc}); moved to {aside.name}, starting a new summary",
              file=sys.stderr)
        return {}


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


def is_done(row: dict[str, str] | None, item: InputImage, out: Path, model,
            args: argparse.Namespace) -> bool:
    """True when ``row`` and the files in ``out`` are this run's result for ``item`` already."""
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
    wanted = args.threshold if args.threshold is not None else model.thresholds["mask"]
    if abs(threshold - float(wanted)) > 1e-9:
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


def write_summary(out: Path, rows: list[dict[str, Any]]) -> Path:
    """Write summary.csv atomically with the fixed column order.

    Raises
    ------
    ArtSegError
        When the file cannot be written (read-only folder, full disk).
    """
    from ..atomic import atomic_write_text

    ordered = [{c: row.get(c, "") for c in SUMMARY_COLUMNS} for row in rows]
    text = rows_to_csv(ordered) if ordered else ",".join(SUMMARY_COLUMNS) + "\n"
    try:
        return atomic_write_text(out / "summary.csv", text)
    except OSError as exc:
        raise ArtSegError(f"{out / 'summary.csv'}: cannot write ({exc.strerror or exc})") from None


def prepare_output_folder(out: Path) -> None:
    """Create ``out``, check it can be written, and clear temporaries of killed runs.

    Raises
    ------
    ArtSegError
        When the folder cannot be created or written.
    """
    import tempfile

    from ..atomic import remove_stale_temporaries

    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".artseg-write-test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ArtSegError(f"{out}: cannot write predictions here ({exc.strerror or exc})") from None
    for current, dirs, _files in os.walk(out):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        remove_stale_temporaries(current)


def _failure_message(item: InputImage, exc: Exception) -> str:
    """One line naming the file for any error raised while predicting it."""
    if isinstance(exc, ArtSegError):
        text = str(exc).strip()
        return text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, MemoryError):
        return f"{item.path}: out of memory"
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{item.path}: {type(exc).__name__}" + (f": {detail}" if detail else "")


def process_item(model, item: InputImage, out: Path, options: PredictOptions,
                 previous: dict[str, str] | None,
                 predict=None) -> tuple[str, dict[str, Any], bool]:
    """Predict one image unless its outputs are complete already; never raises for a bad image.

    The one per-image step of both the serial and the ``--dask`` path;
    ``predict`` replaces :func:`predict_one` (the ``--dask`` path passes the
    blocked predictor bound to its cluster).

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
        row.update((predict or predict_one)(model, item, out, options))
    except Exception as exc:  # one bad image never stops the run
        row.update(status="failed", error=_failure_message(item, exc))
    return item.key, row, False


def collect_rows(results, table: dict[str, dict[str, Any]], images: list[InputImage], out: Path,
                 quiet: bool) -> tuple[int, int, int]:
    """Gather per-image results into ``table`` with a progress bar; flush summary.csv often.

    ``results`` yields ``(key, row, skipped)`` in any order. At the end the table
    keeps earlier rows in their order and adds new images in input order, so a
    serial run and a ``--dask`` run write the same summary.

    Returns
    -------
    tuple of int
        Images predicted now, skipped as done, failed.
    """
    order = list(table)
    computed = skipped = failed = 0
    since_flush, last_flush = 0, time.monotonic()
    for key, row, was_skipped in counted(iter(results), len(images), "predict", quiet):
        if was_skipped:
            skipped += 1
            continue
        if row.get("status") == "failed":
            failed += 1
            print(f"failed: {row.get('error')}", file=sys.stderr)
        else:
            computed += 1
        table[key] = row
        since_flush += 1
        if since_flush >= FLUSH_EVERY_IMAGES or time.monotonic() - last_flush > FLUSH_EVERY_SECONDS:
            write_summary(out, list(table.values()))
            since_flush, last_flush = 0, time.monotonic()
    known = set(order)
    order += [item.key for item in images if item.key not in known]
    ordered = {key: table[key] for key in order if key in table}
    table.clear()
    table.update(ordered)
    write_summary(out, list(table.values()))
    return computed, skipped, failed


def run(args: argparse.Namespace) -> int:
    """Predict every input; one failing image does not stop the others."""
    from ..predictor import ArtSegModel

    out = Path(args.out)
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise ArtSegError(f"--threshold {args.threshold}: must be between 0 and 1")
    if args.min_size is not None and args.min_size < 0:
        raise ArtSegError(f"--min-size {args.min_size}: must be >= 0")
    if (args.scheduler or args.workers is not None) and not args.dask:
        raise ArtSegError("--scheduler and --workers need --dask")
    if args.workers is not None and args.workers < 1:
        raise ArtSegError(f"--workers {args.workers}: must be >= 1")
    if not Path(args.model).exists():
        raise ArtSegError(f"{args.model}: model folder not found")
    images = collect_inputs(args.inputs, exclude=[out])
    if not images:
        raise ArtSegError(f"no image files found in {', '.join(args.inputs)}")
    options = PredictOptions.from_args(args)
    # with --dask the client loads the model on the CPU only to check it and read its settings
    model = ArtSegModel.load(args.model, device="cpu" if args.dask else args.device)
    prepare_output_folder(out)
    table = {} if options.overwrite else read_previous_summary(out)
    if args.dask:
        from ..distributed.dask_predict import dask_session, predict_on_cluster

        with dask_session(args.scheduler, args.workers) as client:
            results = predict_on_cluster(client, model, images, out, options, table, args.device)
            computed, skipped, failed = collect_rows(results, table, images, out, args.quiet)
    else:
        results = (process_item(model, item, out, options, table.get(item.key))
                   for item in images)
        computed, skipped, failed = collect_rows(results, table, images, out, args.quiet)
    print(f"{computed} image(s) predicted, {skipped} already done (skipped), {failed} failed; "
          f"summary in {out / 'summary.csv'}")
    if computed + skipped == 0:
        return 2
    return 3 if failed else 0
