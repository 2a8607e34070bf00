"""``artseg predict``: probability maps, masks and a summary table for many images."""

from __future__ import annotations

import argparse
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

SUMMARY_COLUMNS = ("image", "status", "error", "artifact_score", "predicted_label",
                   "artifact_fraction", "n_objects", "gate_passed", "threshold", "min_size_px",
                   "height", "width", "seconds", "model_id")


@dataclass(frozen=True)
class InputImage:
    """An image to predict: its file and its output key."""

    path: Path
    key: str


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
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def collect_inputs(inputs: list[str], exclude: list[Path]) -> list[InputImage]:
    """Expand files and folders into images with unique keys.

    Raises
    ------
    ArtSegError
        A path does not exist, a file is not an image, or two inputs share a key.
    """
    found: list[InputImage] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found.extend(InputImage(p, image_key(p, path)) for p in discover_images(path, exclude))
        elif path.is_file():
            if not is_image_file(path):
                raise ArtSegError(f"{path}: not an image file (.tif, .tiff, .png, .jpg)")
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


def predict_one(model, item: InputImage, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Predict one image, write its two TIFFs and return its summary row."""
    start = time.perf_counter()
    loaded = read_image(item.path)
    for note in loaded.notes:
        print(f"note: {note}", file=sys.stderr)
    result = model.predict(loaded.data, threshold=args.threshold, min_size_px=args.min_size,
                           gate=not args.no_gate, pixel_size_um=loaded.pixel_size_um)
    write_tiff(out / f"{item.key}_prob.tif", result.probability.astype(np.float32),
               loaded.pixel_size_um)
    write_tiff(out / f"{item.key}_mask.tif", result.mask.astype(np.uint8), loaded.pixel_size_um)
    return {
        "status": "ok", "error": "", "artifact_score": round(result.score, 6),
        "predicted_label": "artifact" if result.mask.any() else "clean",
        "artifact_fraction": round(result.artifact_fraction, 6), "n_objects": result.n_objects,
        "gate_passed": result.gate_passed,
        "threshold": args.threshold if args.threshold is not None else model.thresholds["mask"],
        "min_size_px": args.min_size if args.min_size is not None
        else model.min_size_for(loaded.pixel_size_um),
        "height": loaded.data.shape[0], "width": loaded.data.shape[1],
        "seconds": round(time.perf_counter() - start, 3),
    }


def write_summary(out: Path, rows: list[dict[str, Any]]) -> Path:
    """Write summary.csv atomically with the fixed column order."""
    from ..atomic import atomic_write_text

    ordered = [{c: row.get(c, "") for c in SUMMARY_COLUMNS} for row in rows]
    return atomic_write_text(out / "summary.csv", rows_to_csv(ordered) if ordered else
                             ",".join(SUMMARY_COLUMNS) + "\n")


def run(args: argparse.Namespace) -> int:
    """Predict every input; one failing image does not stop the others."""
    from ..predictor import ArtSegModel

    out = Path(args.out)
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise ArtSegError(f"--threshold {args.threshold}: must be between 0 and 1")
    if not Path(args.model).exists():
        raise ArtSegError(f"{args.model}: model folder not found")
    images = collect_inputs(args.inputs, exclude=[out])
    if not images:
        raise ArtSegError(f"no image files found in {', '.join(args.inputs)}")
    model = ArtSegModel.load(args.model, device=args.device)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for index, item in enumerate(counted(iter(images), len(images), "predict", args.quiet)):
        row: dict[str, Any] = {"image": item.key, "model_id": model.model_id}
        try:
            row.update(predict_one(model, item, out, args))
        except (ArtSegError, ValueError, OSError, RuntimeError, MemoryError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            row.update(status="failed", error=message)
            print(f"failed: {message}", file=sys.stderr)
        rows.append(row)
        if index % 20 == 19:
            write_summary(out, rows)
    write_summary(out, rows)
    failed = sum(row["status"] == "failed" for row in rows)
    done = len(rows) - failed
    print(f"{done} image(s) predicted, {failed} failed; summary in {out / 'summary.csv'}")
    if done == 0:
        return 2
    return 3 if failed else 0


