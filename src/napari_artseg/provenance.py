"""Where each curated mask came from: ``masks/provenance.csv``.

One row per image with a curated mask: ``image,provenance,model_id,saved_at``.

- ``image``: the image's path relative to the image folder (as in ``labels.csv``);
- ``provenance``: ``predicted`` (a prediction accepted as it was), ``corrected``
  (a prediction edited by hand) or ``drawn`` (drawn from scratch);
- ``model_id``: the model whose prediction it started from (empty for ``drawn``);
- ``saved_at``: UTC time of the save, ISO 8601.

Saving a mask again replaces its row. The file is rewritten atomically on every
change; rows for images that no longer exist are kept. GUI-free.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .atomic import atomic_write_text
from .errors import ArtSegError

PROVENANCE_FILE = "provenance.csv"
PROVENANCE_COLUMNS = ("image", "provenance", "model_id", "saved_at")
PROVENANCES = ("predicted", "corrected", "drawn")


@dataclass(frozen=True)
class ProvenanceRow:
    """The origin of one curated mask."""

    image: str
    provenance: str
    model_id: str = ""
    saved_at: str = ""


def utc_now() -> str:
    """The current UTC time as ISO 8601 with seconds, e.g. ``2024-05-01T12:00:00Z``."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ProvenanceTable:
    """The provenance table of a project's curated masks.

    Parameters
    ----------
    path : path-like
        The CSV file (usually ``<project>/masks/provenance.csv``); it need not exist.

    Raises
    ------
    ArtSegError
        When an existing file is malformed (it is left untouched).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.rows: dict[str, ProvenanceRow] = {}
        if self.path.is_file():
            self._read()

    def _read(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise ArtSegError(f"{self.path}: cannot be read ({exc})") from None
        reader = csv.DictReader(io.StringIO(text))
        if tuple(reader.fieldnames or ()) != PROVENANCE_COLUMNS:
            raise ArtSegError(f"{self.path}: header must be {','.join(PROVENANCE_COLUMNS)}")
        for line, raw in enumerate(reader, start=2):
            if raw.get("provenance") not in PROVENANCES or not raw.get("image"):
                raise ArtSegError(f"{self.path}, line {line}: bad row {raw}")
            self.rows[raw["image"]] = ProvenanceRow(**{c: raw[c] or "" for c in PROVENANCE_COLUMNS})

    def get(self, image: str) -> ProvenanceRow | None:
        """The row of ``image``, or None."""
        return self.rows.get(image)

    def record(self, image: str, provenance: str, model_id: str | None = None) -> ProvenanceRow:
        """Set the provenance of ``image`` (replacing any row) and save the file.

        Parameters
        ----------
        image : str
            Image path relative to the image folder.
        provenance : str
            ``predicted``, ``corrected`` or ``drawn``.
        model_id : str, optional
            The model the mask started from.
        """
        if provenance not in PROVENANCES:
            raise ValueError(f"provenance must be one of {', '.join(PROVENANCES)}")
        row = ProvenanceRow(image, provenance, model_id or "", utc_now())
        self.rows[image] = row
        self.save()
        return row

    def save(self) -> None:
        """Rewrite the file atomically (rows sorted by image)."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=PROVENANCE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for image in sorted(self.rows):
            writer.writerow(asdict(self.rows[image]))
        atomic_write_text(self.path, buffer.getvalue())
