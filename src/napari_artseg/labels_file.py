"""The image-level labels file ``labels.csv``.

Format: UTF-8 CSV with the header ``image,label``; one row per labelled image;
``image`` is the POSIX path relative to the image folder, extension included;
``label`` is ``clean``, ``artifact`` or ``unsure``. An unlabelled image has no row.
In a hand-edited file the last duplicate row wins (reported).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .atomic import atomic_write_text
from .errors import LabelsFileError

LABEL_WORDS = ("clean", "artifact", "unsure")
HEADER = ("image", "label")


@dataclass
class LabelsTable:
    """Labels read from a CSV file.

    Attributes
    ----------
    labels : dict of str to str
        Image path (relative, POSIX) to label word, in file order.
    duplicates : list of str
        Images that had more than one row (the last row won).
    """

    labels: dict[str, str] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)


def check_relative_image_path(name: str) -> str:
    """Return ``name`` normalised to a relative POSIX path, refusing escapes.

    Raises
    ------
    ValueError
        For absolute paths and paths that climb out with ``..``.
    """
    text = name.strip().replace("\\", "/")
    path = PurePosixPath(text)
    if not text or path.is_absolute() or (len(text) > 1 and text[1] == ":"):
        raise ValueError(f"absolute or empty image path {name!r}")
    if "\x00" in text:  # no file name can hold a NUL byte
        raise ValueError(f"image path {name!r} contains a NUL byte")
    if ".." in path.parts:
        raise ValueError(f"image path {name!r} points outside the image folder")
    return path.as_posix()


def parse_labels_csv(text: str, source: str = "labels.csv") -> LabelsTable:
    """Parse the text of a labels file.

    Parameters
    ----------
    text : str
        File content.
    source : str
        Name used in error messages.

    Raises
    ------
    LabelsFileError
        Missing or wrong header, a row without two fields, an unknown label word,
        or an image path outside the image folder; the message names the line.
    """
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    try:
        rows = list(reader)
    except csv.Error as exc:  # a NUL byte, an over-long field, ...
        raise LabelsFileError(f"{source}: line {reader.line_num}: not valid CSV ({exc})") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    table = LabelsTable()
    if not rows:
        return table
    header = tuple(cell.strip().lower() for cell in rows[0])
    if header[:2] != HEADER:
        raise LabelsFileError(
            f"{source}: line 1 must be the header 'image,label', found {','.join(rows[0])!r}"
        )
    seen: set[str] = set()
    for number, row in enumerate(rows[1:], start=2):
        if len(row) < 2:
            raise LabelsFileError(f"{source}: line {number} needs two fields image,label: {row!r}")
        word = row[1].strip().lower()
        if word not in LABEL_WORDS:
            raise LabelsFileError(
                f"{source}: line {number}: label {row[1]!r} is not one of {', '.join(LABEL_WORDS)}"
            )
        try:
            image = check_relative_image_path(row[0])
        except ValueError as exc:
            raise LabelsFileError(f"{source}: line {number}: {exc}") from None
        if image in seen:
            table.duplicates.append(image)
            table.labels.pop(image)  # re-insert so file order follows the winning row
        seen.add(image)
        table.labels[image] = word
    return table


def read_labels_csv(path: str | os.PathLike) -> LabelsTable:
    """Read a labels file; see :func:`parse_labels_csv` for the rules.

    Raises
    ------
    LabelsFileError
        When the file is missing, not UTF-8 or malformed.
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8", newline="") as handle:  # csv handles line ends
            text = handle.read()
    except FileNotFoundError:
        raise LabelsFileError(f"{path}: no such labels file") from None
    except UnicodeDecodeError:
        raise LabelsFileError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise LabelsFileError(f"{path}: cannot be read ({exc.strerror})") from None
    return parse_labels_csv(text, source=str(path))


def format_labels_row(image: str, word: str) -> str:
    """One CSV line for ``image,word``, newline included.

    Quoted when needed; a name holding a carriage return is always quoted
    (``csv`` quotes only the characters of its line terminator, and a bare
    ``\r`` in an unquoted field makes the file unreadable).
    """
    buffer = io.StringIO()
    quoting = csv.QUOTE_ALL if "\r" in image else csv.QUOTE_MINIMAL
    csv.writer(buffer, lineterminator="\n", quoting=quoting).writerow((image, word))
    return buffer.getvalue()


def format_labels_csv(labels: dict[str, str]) -> str:
    """Render labels as CSV text with the ``image,label`` header."""
    return ",".join(HEADER) + "\n" + "".join(
        format_labels_row(image, word) for image, word in labels.items())


def write_labels_csv(path: str | os.PathLike, labels: dict[str, str]) -> Path:
    """Write labels atomically (temporary file, fsync, rename)."""
    for word in labels.values():
        if word not in LABEL_WORDS:
            raise ValueError(f"label {word!r} is not one of {', '.join(LABEL_WORDS)}")
    return atomic_write_text(path, format_labels_csv(labels))
