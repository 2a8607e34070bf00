"""``artseg predict``: gathering per-image results into the summary, and the serial loop.

The summary is rewritten (atomically) every :data:`FLUSH_EVERY_IMAGES` images
or :data:`FLUSH_EVERY_SECONDS` seconds and at the end, so a run killed at any
moment loses at most the rows of the last few images.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .predict_image import preload, process_item
from .predict_inputs import InputImage, PredictOptions
from .predict_resume import is_done
from .predict_summary import write_summary
from .progress import counted

#: The summary is rewritten after this many images or seconds, whichever comes first.
FLUSH_EVERY_IMAGES = 20
FLUSH_EVERY_SECONDS = 10.0


def collect_rows(results: Iterable[tuple[str, dict[str, Any], bool]],
                 table: dict[str, dict[str, Any]], images: list[InputImage], out: Path,
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


def run_serial(model, images: list[InputImage], out: Path, options: PredictOptions,
               table: dict[str, dict[str, Any]], quiet: bool) -> tuple[int, int, int]:
    """Predict ``images`` one after the other in this process; see :func:`collect_rows`.

    The next image is read (and decoded) in a background thread while the
    current one is predicted: at most one image ahead is held in memory, and
    images whose outputs are complete already are not read.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="artseg-read") as pool:
        results = _read_ahead_results(model, images, out, options, table, pool)
        return collect_rows(results, table, images, out, quiet)


def _read_ahead_results(model, images: list[InputImage], out: Path, options: PredictOptions,
                        table: dict[str, dict[str, Any]], pool: ThreadPoolExecutor):
    """``process_item`` of every image, each image read one step ahead in ``pool``."""

    def read(index: int) -> Future | None:
        if index >= len(images):
            return None
        item = images[index]
        if not options.overwrite and is_done(table.get(item.key), item, out, model, options):
            return None  # process_item skips it
        return pool.submit(preload, item)

    ahead = read(0)
    for index, item in enumerate(images):
        current, ahead = ahead, read(index + 1)
        yield process_item(model, item, out, options, table.get(item.key), preloaded=current)
