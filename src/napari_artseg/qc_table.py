"""Per-image quality-control numbers from artifact masks, and their per-well and per-plate sums.

A screen is judged per well: the image table (one row per image) says how much
of each image is artifact and whether to exclude it; the well and plate tables
aggregate those rows when the file names carry a well (``r02c05f01``-style,
Opera/Operetta; ``A01_s1``-style, MetaXpress; or any pattern with named groups).
GUI-free.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_text

#: Well patterns tried in turn on an image's file name (named groups: row, col, well, field, plate).
DEFAULT_WELL_PATTERNS: tuple[str, ...] = (
    r"r(?P<row>\d+)c(?P<col>\d+)f(?P<field>\d+)",
    r"(?<![A-Za-z])(?P<well>[A-Pa-p]\d{1,2})_s(?P<field>\d+)",
)
#: Columns of the per-image table, in order.
IMAGE_COLUMNS: tuple[str, ...] = (
    "image", "plate", "well", "field", "label", "mask_source", "mask_provenance", "model_id",
    "artifact_score", "artifact_fraction", "artifact_area_px", "artifact_area_um2", "n_objects",
    "mean_object_px", "max_object_px", "mean_object_um2", "max_object_um2", "pixel_size_um",
    "height", "width", "decision", "mask_file", "clean_image_file", "keep_mask_file",
)
#: Columns of the aggregated tables.
GROUP_COLUMNS: tuple[str, ...] = (
    "n_images", "n_excluded", "n_without_mask", "mean_artifact_fraction",
    "max_artifact_fraction", "pooled_artifact_fraction", "artifact_area_px", "artifact_area_um2",
    "n_objects", "mean_artifact_score", "decision",
)


def mask_statistics(mask: np.ndarray, pixel_size_um: float | None = None) -> dict[str, Any]:
    """Area fraction, number and sizes of the artifact objects of one mask.

    Parameters
    ----------
    mask : numpy.ndarray
        (H, W) artifact mask (non-zero = artifact).
    pixel_size_um : float, optional
        Pixel size; areas in um^2 are given only when it is known.

    Returns
    -------
    dict
        ``artifact_fraction``, ``artifact_area_px``, ``n_objects`` (4-connected),
        ``mean_object_px``, ``max_object_px`` and the same areas in um^2 (empty
        text when the pixel size is unknown), ``height``, ``width``.
    """
    from scipy import ndimage

    binary = np.asarray(mask) != 0
    area = int(binary.sum())
    sizes = np.zeros(0, dtype=np.int64)
    if area:
        labelled, n = ndimage.label(binary)
        sizes = np.bincount(labelled.ravel(), minlength=n + 1)[1:]
    um2 = float(pixel_size_um) ** 2 if pixel_size_um else None
    mean_px = float(sizes.mean()) if sizes.size else 0.0
    max_px = int(sizes.max()) if sizes.size else 0

    def in_um2(value: float) -> float | str:
        return round(value * um2, 4) if um2 else ""

    return {
        "artifact_fraction": area / binary.size if binary.size else 0.0,
        "artifact_area_px": area,
        "artifact_area_um2": in_um2(area),
        "n_objects": int(sizes.size),
        "mean_object_px": round(mean_px, 2),
        "max_object_px": max_px,
        "mean_object_um2": in_um2(mean_px),
        "max_object_um2": in_um2(max_px),
        "height": int(binary.shape[0]),
        "width": int(binary.shape[1]),
    }


def decide(artifact_fraction: float | None, max_fraction: float) -> str:
    """``exclude`` when the artifact fraction exceeds ``max_fraction``, ``keep`` otherwise.

    An image without a mask (fraction None) is ``unknown``.
    """
    if artifact_fraction is None or (isinstance(artifact_fraction, float)
                                     and math.isnan(artifact_fraction)):
        return "unknown"
    return "exclude" if artifact_fraction > max_fraction else "keep"


def parse_well(image: str, patterns: Sequence[str] | None = None) -> dict[str, str]:
    """Plate, well and field of an image from its path.

    Parameters
    ----------
    image : str
        The image key (relative path).
    patterns : sequence of str, optional
        Regular expressions tried in turn on the file name, then on the whole path;
        named groups ``plate``, ``well`` (or ``row`` and ``col``) and ``field``
        are used. Default :data:`DEFAULT_WELL_PATTERNS`. A row given as digits
        becomes a letter (``r02c05`` -> ``B05``).

    Returns
    -------
    dict
        ``plate``, ``well``, ``field`` (empty text when not found). Without a
        ``plate`` group the plate is the image's first folder, if any.
    """
    path = Path(image)
    plate_default = path.parts[0] if len(path.parts) > 1 else ""
    for pattern in patterns or DEFAULT_WELL_PATTERNS:
        regex = re.compile(pattern)
        match = regex.search(path.name) or regex.search(image)
        if match is None:
            continue
        groups = {k: v for k, v in match.groupdict().items() if v is not None}
        well = groups.get("well", "")
        if not well and "row" in groups and "col" in groups:
            row = groups["row"]
            letter = chr(ord("A") + int(row) - 1) if row.isdigit() and 1 <= int(row) <= 26 else row
            well = f"{letter.upper()}{int(groups['col']):02d}" if groups["col"].isdigit() \
                else f"{letter}{groups['col']}"
        elif well and well[1:].isdigit():
            well = f"{well[0].upper()}{int(well[1:]):02d}"
        return {"plate": groups.get("plate", plate_default), "well": well,
                "field": groups.get("field", "")}
    return {"plate": plate_default, "well": "", "field": ""}


def _number(value: Any) -> float | None:
    if value in ("", None):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def aggregate(rows: Iterable[dict[str, Any]], by: Sequence[str],
              max_fraction: float) -> list[dict[str, Any]]:
    """Sum image rows per group (e.g. per ``("plate", "well")``).

    Parameters
    ----------
    rows : iterable of dict
        Image rows (:data:`IMAGE_COLUMNS`).
    by : sequence of str
        Grouping columns; rows whose ``by`` values are all empty are left out.
    max_fraction : float
        The group's decision: ``exclude`` when its pooled artifact fraction
        (artifact pixels over all pixels of its images with a mask) exceeds it.

    Returns
    -------
    list of dict
        One row per group, sorted, with the ``by`` columns then :data:`GROUP_COLUMNS`.
    """
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        key = tuple(str(row.get(name, "")) for name in by)
        if any(key):
            groups.setdefault(key, []).append(row)
    out = []
    for key in sorted(groups):
        members = groups[key]
        fractions = [f for f in (_number(r.get("artifact_fraction")) for r in members)
                     if f is not None]
        with_mask = [r for r in members if _number(r.get("artifact_fraction")) is not None]
        area = sum(int(r.get("artifact_area_px") or 0) for r in with_mask)
        pixels = sum(int(r.get("height") or 0) * int(r.get("width") or 0) for r in with_mask)
        um2 = [_number(r.get("artifact_area_um2")) for r in with_mask]
        scores = [s for s in (_number(r.get("artifact_score")) for r in members) if s is not None]
        pooled = area / pixels if pixels else None
        out.append({
            **dict(zip(by, key, strict=True)),
            "n_images": len(members),
            "n_excluded": sum(r.get("decision") == "exclude" for r in members),
            "n_without_mask": len(members) - len(with_mask),
            "mean_artifact_fraction": float(np.mean(fractions)) if fractions else "",
            "max_artifact_fraction": max(fractions) if fractions else "",
            "pooled_artifact_fraction": pooled if pooled is not None else "",
            "artifact_area_px": area,
            "artifact_area_um2": round(sum(um2), 4) if um2 and all(v is not None for v in um2)
            else "",
            "n_objects": sum(int(r.get("n_objects") or 0) for r in with_mask),
            "mean_artifact_score": float(np.mean(scores)) if scores else "",
            "decision": decide(pooled, max_fraction),
        })
    return out


def _format(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def table_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """CSV text with the given columns (floats with 6 significant digits)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _format(row.get(c, "")) for c in columns})
    return buffer.getvalue()


def write_table(path: str | os.PathLike, rows: Sequence[dict[str, Any]],
                columns: Sequence[str]) -> Path:
    """Write rows as CSV atomically (UTF-8, header line)."""
    return atomic_write_text(path, table_text(rows, columns))


def write_qc_tables(out: str | os.PathLike, rows: Sequence[dict[str, Any]],
                    max_fraction: float) -> dict[str, Path]:
    """Write ``qc_images.csv`` and, when wells were found, ``qc_wells.csv`` and ``qc_plates.csv``.

    Returns
    -------
    dict
        Table name (``images``, ``wells``, ``plates``) -> path written.
    """
    out = Path(out)
    written = {"images": write_table(out / "qc_images.csv", rows, IMAGE_COLUMNS)}
    wells = aggregate(rows, ("plate", "well"), max_fraction)
    if any(row["well"] for row in wells):
        written["wells"] = write_table(out / "qc_wells.csv", wells, ("plate", "well",
                                                                     *GROUP_COLUMNS))
    plates = aggregate([r for r in rows if r.get("well")], ("plate",), max_fraction)
    if plates and any(row["plate"] for row in plates):
        written["plates"] = write_table(out / "qc_plates.csv", plates, ("plate", *GROUP_COLUMNS))
    return written
