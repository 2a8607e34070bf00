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

The command is split by what each part holds: :mod:`.predict_inputs` (inputs,
settings, output folder), :mod:`.predict_image` (the per-image step),
:mod:`.predict_large` (large TIFFs and Zarr stores), :mod:`.predict_resume`
(the resume check), :mod:`.predict_summary` (``summary.csv``),
:mod:`.predict_loop` (the serial loop and the summary flushing) and
:mod:`.predict_dask` (the ``--dask`` run).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ArtSegError
from .predict_image import predict_one
from .predict_inputs import InputImage, PredictOptions, collect_inputs, prepare_output_folder
from .predict_summary import SUMMARY_COLUMNS, read_previous_summary

#: ``SUMMARY_COLUMNS``, ``InputImage`` and ``predict_one`` stay importable from here
#: (the benchmarks and tests use them).
__all__ = ["SUMMARY_COLUMNS", "InputImage", "add_parser", "predict_one", "run"]


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
        from .predict_dask import run_dask

        computed, skipped, failed = run_dask(model, images, out, options, table,
                                             scheduler=args.scheduler, workers=args.workers,
                                             device=args.device, quiet=args.quiet)
    else:
        from .predict_loop import run_serial

        computed, skipped, failed = run_serial(model, images, out, options, table, args.quiet)
    print(f"{computed} image(s) predicted, {skipped} already done (skipped), {failed} failed; "
          f"summary in {out / 'summary.csv'}")
    if computed + skipped == 0:
        return 2
    return 3 if failed else 0
