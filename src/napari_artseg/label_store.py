"""The image-level labels of a project, saved to ``labels.csv`` on every change.

:class:`LabelStore` holds one label word per image and rewrites the labels file
atomically (temporary file, fsync, rename, directory fsync) before each
:meth:`~LabelStore.set`, :meth:`~LabelStore.clear` or :meth:`~LabelStore.undo`
returns. A caller that shows the next image only after the call returned can
therefore promise the user that every acknowledged label is on disk.

Why a full atomic rewrite and not an append-only journal: the file must stay a
plain ``image,label`` table with one row per labelled image (a person opens it
in a spreadsheet), and "clear a label" cannot be expressed by appending a row.
The rows are kept pre-formatted, so a rewrite is one ``join`` plus one write:
about 1 ms for 10,000 images (0.3 MB) on the development machine, far below
the time it takes to draw the next image (see ``docs/labelling.md``).

The store imports no GUI toolkit.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from .atomic import atomic_write
from .labels_file import (
    HEADER,
    LABEL_WORDS,
    check_relative_image_path,
    format_labels_row,
    read_labels_csv,
)

#: Maximum number of changes :meth:`LabelStore.undo` can revert.
UNDO_DEPTH = 1000


@dataclass(frozen=True)
class LabelChange:
    """One change to the labels, as recorded for undo.

    Attributes
    ----------
    image : str
        The image (relative POSIX path).
    before : str or None
        Its label before the change (None: unlabelled).
    after : str or None
        Its label after the change.
    """

    image: str
    before: str | None
    after: str | None


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime_ns) of a file, or None when it does not exist."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


class LabelStore:
    """Image-level labels persisted to a ``labels.csv`` file on every change.

    Parameters
    ----------
    path : path-like
        The labels file. It is read when it exists; it is created on the first
        change otherwise.
    images : iterable of str, optional
        The images of the image folder (relative POSIX paths). Used for the
        unlabelled count and to report rows naming images that are not there.

    Raises
    ------
    LabelsFileError
        When the existing file is malformed. Nothing is written then: the file
        is left exactly as it was for the user to fix.

    Notes
    -----
    Rows for images that are not in ``images`` are kept (and listed in
    :attr:`unknown`), never dropped. If another program rewrites the file
    while the store is open, the next change re-reads it first and applies the
    change on top, so the other program's edits survive.
    """

    def __init__(self, path: str | os.PathLike, images: Iterable[str] | None = None) -> None:
        self.path = Path(path)
        self._lines: dict[str, str] = {}
        self._labels: dict[str, str] = {}
        self._images: set[str] = set()
        self._counts = dict.fromkeys(LABEL_WORDS, 0)
        self._history: list[LabelChange] = []
        self._signature: tuple[int, int, int] | None = None
        #: Images that had more than one row in the file as loaded (last row won).
        self.duplicates: list[str] = []
        self._load()
        self.set_images(images or ())
        self._remove_stale_temporaries()

    # ------------------------------------------------------------------ reading
    def _load(self) -> None:
        """Read the file from disk, replacing the labels in memory."""
        signature = _file_signature(self.path)
        if signature is None:
            table_labels: dict[str, str] = {}
            self.duplicates = []
        else:
            table = read_labels_csv(self.path)
            table_labels = table.labels
            self.duplicates = list(dict.fromkeys(table.duplicates))
        self._labels = dict(table_labels)
        self._lines = {image: format_labels_row(image, word)
                       for image, word in table_labels.items()}
        self._signature = signature
        self._recount()

    def _recount(self) -> None:
        """Recompute the per-word counts over the known images."""
        counts = dict.fromkeys(LABEL_WORDS, 0)
        for image, word in self._labels.items():
            if not self._images or image in self._images:
                counts[word] += 1
        self._counts = counts

    def set_images(self, images: Iterable[str]) -> None:
        """Set the images of the image folder (relative POSIX paths)."""
        self._images = {check_relative_image_path(name) for name in images}
        self._recount()

    def reload(self) -> None:
        """Re-read the file from disk (undo history is dropped).

        Raises
        ------
        LabelsFileError
            When the file is malformed; the labels in memory are kept.
        """
        self._load()
        self._history.clear()

    def _remove_stale_temporaries(self, age_s: float = 60.0) -> None:
        """Delete temporary files left by a writer that was killed mid-write."""
        now = time.time()
        for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > age_s:
                    tmp.unlink()

    # ------------------------------------------------------------------ queries
    @property
    def labels(self) -> Mapping[str, str]:
        """Read-only view of image -> label word, in file order."""
        return MappingProxyType(self._labels)

    def get(self, image: str) -> str | None:
        """The label of ``image`` or None when it is unlabelled."""
        return self._labels.get(image)

    def __len__(self) -> int:
        return len(self._labels)

    def __contains__(self, image: object) -> bool:
        return image in self._labels

    @property
    def unknown(self) -> list[str]:
        """Labelled images that are not among the images (kept in the file)."""
        if not self._images:
            return []
        return [image for image in self._labels if image not in self._images]

    def counts(self) -> dict[str, int]:
        """Counts of ``clean``, ``artifact``, ``unsure`` and ``unlabelled`` images.

        Only images among :meth:`set_images` are counted (all rows when none
        were given); ``unlabelled`` is the number of those images with no row.
        """
        counts = dict(self._counts)
        labelled = sum(counts.values())
        counts["unlabelled"] = max(len(self._images) - labelled, 0)
        return counts

    def problems(self) -> list[str]:
        """One-line messages about duplicate rows and unknown images, for the user."""
        messages = []
        if self.duplicates:
            shown = ", ".join(self.duplicates[:5]) + (" ..." if len(self.duplicates) > 5 else "")
            messages.append(
                f"{self.path.name}: {len(self.duplicates)} image(s) had several rows; "
                f"the last row was used: {shown}"
            )
        unknown = self.unknown
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            messages.append(
                f"{self.path.name}: {len(unknown)} labelled image(s) are not in the image "
                f"folder (rows kept): {shown}"
            )
        return messages

    @property
    def can_undo(self) -> bool:
        """True when there is a change to undo."""
        return bool(self._history)

    # ------------------------------------------------------------------ changes
    def set(self, image: str, label: str) -> None:
        """Label ``image`` and save the file before returning.

        Parameters
        ----------
        image : str
            Relative POSIX path of the image, extension included.
        label : str
            ``clean``, ``artifact`` or ``unsure``.

        Raises
        ------
        ValueError
            For an unknown label word or a path outside the image folder.
        LabelsFileError
            When the file was changed on disk into something malformed; nothing
            is written and the change is not applied.
        OSError
            When the file cannot be written; the change is not applied.
        """
        if label not in LABEL_WORDS:
            raise ValueError(f"label {label!r} is not one of {', '.join(LABEL_WORDS)}")
        self._change(check_relative_image_path(image), label, record=True)

    def clear(self, image: str) -> None:
        """Remove the label of ``image`` (no row) and save the file before returning."""
        self._change(check_relative_image_path(image), None, record=True)

    def undo(self) -> LabelChange | None:
        """Revert the last change and save the file; return it, or None if none is left."""
        if not self._history:
            return None
        change = self._history[-1]
        self._change(change.image, change.before, record=False)
        self._history.pop()
        return change

    def _change(self, image: str, label: str | None, record: bool) -> None:
        """Apply one change, write the file, then commit it in memory."""
        on_disk = _file_signature(self.path)
        if on_disk is not None and on_disk != self._signature:
            self._load()  # edited by someone else: their rows win, ours goes on top
        # (a deleted file is simply written again from memory)
        before = self._labels.get(image)
        if before == label and on_disk is not None:
            return
        old_line = self._lines.get(image)
        if label is None:
            self._lines.pop(image, None)
        else:
            self._lines[image] = format_labels_row(image, label)
        try:
            self._write(self._lines)
        except BaseException:
            if old_line is None:
                self._lines.pop(image, None)
            else:
                self._lines[image] = old_line
            raise
        if before == label:
            return
        counted = not self._images or image in self._images
        if label is None:
            del self._labels[image]
        else:
            self._labels[image] = label  # an existing row keeps its place in the file
        if counted:
            if before is not None:
                self._counts[before] -= 1
            if label is not None:
                self._counts[label] += 1
        if record:
            self._history.append(LabelChange(image, before, label))
            del self._history[:-UNDO_DEPTH]

    def _write(self, lines: dict[str, str]) -> None:
        """Rewrite the file atomically with the given rows."""
        data = (",".join(HEADER) + "\n" + "".join(lines.values())).encode("utf-8")
        atomic_write(self.path, lambda handle: handle.write(data))
        self._signature = _file_signature(self.path)

