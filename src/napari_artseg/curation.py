"""Curated masks of a project: ``masks/<key>.tif`` plus their provenance (GUI-free).

A curated mask supervises its image directly in the next training run
(``train_pipeline(masks_dir=project.masks_dir)``). :class:`MaskEdit` remembers
where the mask being edited started from, so that accepting it records
``predicted``, ``corrected`` or ``drawn`` in ``masks/provenance.csv``
(see :mod:`napari_artseg.provenance`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .image_files import read_mask, write_tiff
from .provenance import PROVENANCE_FILE, ProvenanceRow, ProvenanceTable
from .training.data import mask_path_for

#: Where the mask being edited came from.
SOURCES = ("prediction", "curated", "empty")


@dataclass
class MaskEdit:
    """The mask of one image while it is shown for correction.

    Attributes
    ----------
    image : str
        Image path relative to the image folder.
    source : str
        ``prediction``, ``curated`` (a saved curated mask) or ``empty``.
    baseline : numpy.ndarray
        (H, W) bool mask as it was when shown or last saved.
    model_id : str
        The model of the prediction it started from ('' when none).
    previous : str
        The recorded provenance of a curated mask ('' otherwise).
    """

    image: str
    source: str
    baseline: np.ndarray
    model_id: str = ""
    previous: str = ""

    def changed(self, current: np.ndarray) -> bool:
        """True when ``current`` (label image or bool mask) differs from the baseline."""
        current = np.asarray(current) != 0
        return current.shape != self.baseline.shape or not np.array_equal(current, self.baseline)

    def provenance(self, current: np.ndarray) -> str:
        """``predicted``, ``corrected`` or ``drawn`` for saving ``current`` now."""
        changed = self.changed(current)
        if self.source == "prediction":
            return "corrected" if changed else "predicted"
        if self.source == "curated" and self.previous:
            if not changed or self.previous == "drawn":
                return self.previous
            return "corrected"
        return "drawn"


class CuratedMasks:
    """Read and save a project's curated masks and their provenance.

    Parameters
    ----------
    masks_dir : path-like
        The project's ``masks/`` folder.
    """

    def __init__(self, masks_dir: str | Path) -> None:
        self.folder = Path(masks_dir)
        self._table: ProvenanceTable | None = None

    @property
    def table(self) -> ProvenanceTable:
        """The provenance table (read on first use)."""
        if self._table is None:
            self._table = ProvenanceTable(self.folder / PROVENANCE_FILE)
        return self._table

    def path_for(self, image: str) -> Path:
        """``masks/<key>.tif`` of an image (the path training reads)."""
        return mask_path_for(self.folder, image)

    def load(self, image: str, shape: tuple[int, int] | None = None) -> np.ndarray | None:
        """The curated mask (bool) of ``image``, or None when it has none."""
        path = self.path_for(image)
        return read_mask(path, shape) if path.is_file() else None

    def save(self, edit: MaskEdit, mask: Any, pixel_size_um: float | None = None) -> ProvenanceRow:
        """Write ``mask`` as the image's curated mask and record its provenance.

        After saving, ``edit`` has the saved mask as baseline and ``curated`` as source.
        """
        current = np.asarray(mask) != 0
        provenance = edit.provenance(current)
        write_tiff(self.path_for(edit.image), current.astype(np.uint8), pixel_size_um)
        row = self.table.record(edit.image, provenance,
                                edit.model_id if provenance != "drawn" else "")
        edit.baseline = current.copy()
        edit.source, edit.previous = "curated", provenance
        return row

    def edit_for(
        self, image: str, shape: tuple[int, int] | None = None
    ) -> tuple[MaskEdit, np.ndarray] | None:
        """A :class:`MaskEdit` over the saved curated mask of ``image`` (None without one)."""
        mask = self.load(image, shape)
        if mask is None:
            return None
        row = self.table.get(image)
        edit = MaskEdit(image, "curated", mask.copy(), row.model_id if row else "",
                        row.provenance if row else "")
        return edit, mask
