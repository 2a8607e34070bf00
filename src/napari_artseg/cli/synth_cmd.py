"""``artseg synth``: write a synthetic brightfield data set with true masks."""

from __future__ import annotations

import argparse

from ..errors import ArtSegError
from .progress import run_with_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``synth`` sub-command."""
    parser = sub.add_parser("synth", help="write a synthetic data set (images, labels, masks)",
                            description="Write OUT/images/*.tif, OUT/labels.csv, OUT/masks/*.tif "
                                        "(uint8, 1 = artifact) and OUT/kinds/*.tif.")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--n", type=int, default=100, help="number of images (default 100)")
    parser.add_argument("--size", type=int, default=512, help="image side in px (default 512)")
    parser.add_argument("--artifact-fraction", type=float, default=0.5,
                        help="share of images with artifacts (default 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Generate the data set."""
    from ..synth import write_dataset
    from ..training.events import ProgressEvent, as_events

    try:
        generator = write_dataset(args.out, n=args.n, size=args.size,
                                  artifact_fraction=args.artifact_fraction, seed=args.seed)
        events = as_events(generator, lambda done, of: ProgressEvent("synth", done, of))
        summary = run_with_progress(events, quiet=args.quiet)
    except ValueError as exc:
        raise ArtSegError(str(exc)) from None
    print(f"wrote {summary['n']} images ({summary['n_artifact']} with artifacts) to {args.out}")
    return 0

