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

from ..process_memory import heap_reuse
from .predict_image import failure_message, preload, process_item, write_outputs
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

    The next image is read (and decoded) in one background thread and the
    previous image's two output TIFFs are written in another while the current
    one is predicted: at most one image ahead and one behind are held in memory,
    and images whose outputs are complete already are not read. An image's row
    reaches the summary only after its files are written (a write error fails
    that image), so a resumed run never trusts a file that was not finished.
    Freed memory is kept for the next image (:func:`~napari_artseg.process_memory.heap_reuse`).
    """
    with (heap_reuse(),
          ThreadPoolExecutor(max_workers=1, thread_name_prefix="artseg-read") as pool,
          ThreadPoolExecutor(max_workers=1, thread_name_prefix="artseg-write") as writer):
        results = _read_ahead_results(model, images, out, options, table, pool)
        return collect_rows(_written_behind(results, writer), table, images, out, quiet)


def _written_behind(results, writer: ThreadPoolExecutor):
    """Pass ``(key, row, skipped, item, writes)`` on as ``(key, row, skipped)``.

    Each item's deferred writes run in ``writer`` while the next item is
    predicted; its row is passed on once they are done (failed if they raised).
    """
    pending = None
    for key, row, skipped, item, writes in results:
        job = writer.submit(write_outputs, writes) if writes else None
        if pending is not None:
            yield _finished(*pending)
        pending = (key, row, skipped, item, job)
    if pending is not None:
        yield _finished(*pending)


def _finished(key: str, row: dict[str, Any], skipped: bool, item: InputImage,
              job: Future | None) -> tuple[str, dict[str, Any], bool]:
    """The result once its writes are done; a write error fails the image."""
    if job is not None:
        try:
            job.result()
        except Exception as exc:
            row = {**row, "status": "failed", "error": failure_message(item, exc)}
    return key, row, skipped


def _read_ahead_results(model, images: list[InputImage], out: Path, options: PredictOptions,
                        table: dict[str, dict[str, Any]], pool: ThreadPoolExecutor):
    """``process_item`` of every image, each read one step ahead in ``pool``; writes deferred.

    Yields ``(key, row, skipped, item, writes)``, ``writes`` being the output
    TIFFs still to write (see :func:`_written_behind`).
    """

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
        writes: list = []
        key, row, skipped = process_item(model, item, out, options, table.get(item.key),
                                         preloaded=current, writes=writes)
        yield key, row, skipped, item, writes
