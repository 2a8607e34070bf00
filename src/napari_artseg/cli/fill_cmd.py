"""``artseg fill``: clean images from artifact images (polynomial background + noise)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ArtSegError
from .progress import run_with_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``fill`` sub-command."""
    parser = sub.add_parser(
        "fill", help="make clean images by filling artifact masks with background",
        description="Fit a 2-D second-order polynomial background to the non-artifact pixels and "
                    "replace the artifact pixels with background plus zero-centred noise drawn "
                    "from the background residuals (for screens where every image has "
                    "artifacts). With --project: every artifact image with a curated mask; the "
                    "results go to <image folder>/filled/ and are labelled clean.")
    parser.add_argument("--project", help="an artseg project folder")
    parser.add_argument("--images", help="image folder (instead of --project)")
    parser.add_argument("--masks", help="mask folder <key>.tif (with --images)")
    parser.add_argument("--out", help="output folder (with --images)")
    parser.add_argument("--labels", help="with --images: labels.csv to add the filled images to "
                                         "as clean (their keys relative to --images)")
    parser.add_argument("--dilate", type=int, default=0, metavar="PX",
                        help="grow the masks by PX pixels before filling (default 0)")
    parser.add_argument("--order", type=int, default=2, help="polynomial order (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--overwrite", action="store_true", help="replace existing filled images")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Fill and report; exit 3 when some images failed."""
    from ..background_fill import fill_folder, fill_project

    if args.order < 0 or args.dilate < 0:
        raise ArtSegError("--order and --dilate must be >= 0")
    if args.project:
        from ..project import Project

        if args.images or args.masks or args.out:
            raise ArtSegError("give either --project or --images/--masks/--out, not both")
        project = Project.open(args.project)
        generator = fill_project(project, args.order, args.dilate, args.seed, args.overwrite)
    elif args.images and args.masks and args.out:
        from ..image_files import discover_images

        images = Path(args.images)
        if not images.is_dir():
            raise ArtSegError(f"{images}: image folder not found")
        if not Path(args.masks).is_dir():
            raise ArtSegError(f"{args.masks}: mask folder not found")
        keys = [p.relative_to(images).as_posix() for p in discover_images(images)]
        generator = fill_folder(images, keys, args.masks, args.out, args.order, args.dilate,
                                args.seed, args.overwrite)
    else:
        raise ArtSegError("give --project, or --images, --masks and --out")
    result = run_with_progress(generator, quiet=args.quiet)
    if args.labels and not args.project:
        _add_clean_labels(Path(args.images), Path(args.out), Path(args.labels), result.written)
    print(f"filled {len(result.written)} image(s); {len(result.skipped)} without an artifact mask "
          f"skipped")
    for image, error in result.errors.items():
        print(f"error: {image}: {error}", file=sys.stderr)
    return 3 if result.errors else 0


def _add_clean_labels(images: Path, out: Path, labels_path: Path, written: dict[str, str]) -> None:
    """Label the filled images clean in ``labels_path`` (keys relative to ``images``)."""
    import os

    from ..labels_file import read_labels_csv, write_labels_csv

    labels = dict(read_labels_csv(labels_path).labels) if labels_path.is_file() else {}
    for filled in written.values():
        key = Path(os.path.relpath(out / filled, images)).as_posix()
        if key.startswith("../"):
            raise ArtSegError(f"{out}: must lie inside {images} for --labels")
        labels[key] = "clean"
    write_labels_csv(labels_path, labels)
