"""``artseg export``: masks, artifact-free images, QC tables and the model, for downstream tools."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ArtSegError
from .progress import run_with_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``export`` sub-command."""
    parser = sub.add_parser(
        "export", help="export masks, artifact-free images, QC tables and the model",
        description="Write curated masks (predicted ones for the other images), the images "
                    "with artifact pixels set to NaN (or a fill value) and the 'keep' masks, a "
                    "per-image QC table (and per well and plate), the model folder as a zip and "
                    "its networks as TorchScript. See docs/export.md.")
    parser.add_argument("--project", required=True, help="an artseg project folder")
    parser.add_argument("--out", help="export folder (default <project>/export)")
    parser.add_argument("--fill", default="nan", metavar="nan|VALUE",
                        help="value of artifact pixels in clean_images/: nan (default, float32) "
                             "or a number")
    parser.add_argument("--max-artifact-fraction", type=float, default=0.2, metavar="F",
                        help="exclude an image (well, plate) whose artifact fraction exceeds F "
                             "(default 0.2)")
    parser.add_argument("--well-pattern", action="append", default=None, metavar="REGEX",
                        help="regular expression with named groups plate, well (or row and col) "
                             "and field, tried on each file name (repeatable; default "
                             "r02c05f01-style and A01_s1-style)")
    parser.add_argument("--threshold", type=float, help="mask threshold for predicted masks "
                                                        "(default the model's)")
    parser.add_argument("--min-size", type=int, help="minimum object size in px for predicted "
                                                     "masks (default the model's)")
    parser.add_argument("--no-predict", action="store_true",
                        help="use only cached predictions (predictions/<model_id>/); do not run "
                             "the model")
    parser.add_argument("--no-masks", action="store_true", help="do not write masks/")
    parser.add_argument("--no-images", action="store_true",
                        help="do not write clean_images/ and keep_masks/")
    parser.add_argument("--no-model", action="store_true",
                        help="do not write the model archive and TorchScript files")
    parser.add_argument("--no-torchscript", action="store_true",
                        help="write the model archive but no TorchScript files")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(run=run)


def _fill(text: str) -> tuple[str, float]:
    if text.lower() == "nan":
        return "nan", 0.0
    try:
        return "value", float(text)
    except ValueError:
        raise ArtSegError(f"--fill {text!r}: give nan or a number") from None


def run(args: argparse.Namespace) -> int:
    """Export and print what was written; exit 3 when some images failed."""
    from ..export import ExportOptions, export_project
    from ..project import Project

    project = Project.open(args.project)
    fill, value = _fill(args.fill)
    options = ExportOptions(
        masks=not args.no_masks, clean_images=not args.no_images, fill=fill, fill_value=value,
        max_artifact_fraction=args.max_artifact_fraction, well_patterns=args.well_pattern,
        model_archive=not args.no_model, torchscript=not (args.no_model or args.no_torchscript),
        predict_missing=not args.no_predict, threshold=args.threshold,
        min_size_px=args.min_size)
    out = Path(args.out) if args.out else None
    report = run_with_progress(export_project(project, out, options, args.device),
                               quiet=args.quiet)
    counts = ", ".join(f"{n} {source}" for source, n in report.counts.items() if n)
    print(f"exported {len(report.rows)} image(s) to {report.out} (masks: {counts or 'none'})")
    for kind, files in report.files.items():
        print(f"  {kind}: {len(files)} file(s)")
    excluded = sum(r.get("decision") == "exclude" for r in report.rows)
    print(f"QC: {excluded} image(s) over the artifact fraction {args.max_artifact_fraction:g} "
          f"(decision 'exclude' in qc_images.csv)")
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    for image, error in report.errors.items():
        print(f"error: {image}: {error}", file=sys.stderr)
    return 3 if report.errors else 0
