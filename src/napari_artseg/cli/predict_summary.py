"""``artseg predict``: the summary table (its rows, reading and writing ``summary.csv``)."""

from __future__ import annotations

import csv
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import ArtSegError
from ..model_files import rows_to_csv

SUMMARY_COLUMNS = ("image", "status", "error", "artifact_score", "predicted_label",
                   "artifact_fraction", "n_objects", "gate_passed", "threshold", "fallback",
                   "min_size_px", "height", "width", "seconds", "model_id")


def settings(model, args, pixel_size_um: float | None) -> dict[str, Any]:
    """The threshold, empty-mask fallback ("" for none) and minimum size this run applies."""
    cuts = model.mask_cuts(args.threshold)
    return {
        "threshold": cuts[0], "fallback": cuts[1] if len(cuts) > 1 else "",
        "min_size_px": args.min_size if args.min_size is not None
        else model.min_size_for(pixel_size_um),
    }


def result_row(model, args, result, start: float) -> dict[str, Any]:
    """The ``ok`` summary row of a prediction by the large-image or block-by-block path.

    ``result`` has ``score``, ``artifact_fraction``, ``n_objects``,
    ``gate_passed``, ``pixel_size_um`` and ``shape``; ``start`` is the
    ``time.perf_counter()`` when the image was started.
    """
    return {
        "status": "ok", "error": "", "artifact_score": round(result.score, 6),
        "predicted_label": "artifact" if result.artifact_fraction > 0 else "clean",
        "artifact_fraction": round(result.artifact_fraction, 6), "n_objects": result.n_objects,
        "gate_passed": result.gate_passed, **settings(model, args, result.pixel_size_um),
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
