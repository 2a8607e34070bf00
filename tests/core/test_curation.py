"""Curated masks and their provenance table (GUI-free)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_artseg.curation import CuratedMasks, MaskEdit
from napari_artseg.errors import ArtSegError
from napari_artseg.image_files import read_mask
from napari_artseg.provenance import PROVENANCE_COLUMNS, ProvenanceTable


def test_provenance_round_trip_and_replace(tmp_path):
    table = ProvenanceTable(tmp_path / "provenance.csv")
    table.record("b.tif", "drawn")
    table.record("a/x.tif", "predicted", "m1")
    table.record("b.tif", "corrected", "m2")
    lines = (tmp_path / "provenance.csv").read_text().splitlines()
    assert lines[0] == ",".join(PROVENANCE_COLUMNS)
    assert [line.split(",")[:3] for line in lines[1:]] == [
        ["a/x.tif", "predicted", "m1"], ["b.tif", "corrected", "m2"]]
    again = ProvenanceTable(tmp_path / "provenance.csv")
    assert again.get("b.tif").provenance == "corrected" and again.get("b.tif").saved_at


def test_provenance_refuses_bad_file_and_value(tmp_path):
    path = tmp_path / "provenance.csv"
    path.write_text("image,provenance,model_id,saved_at\nx.tif,guessed,,\n")
    with pytest.raises(ArtSegError, match="line 2"):
        ProvenanceTable(path)
    with pytest.raises(ValueError):
        ProvenanceTable(tmp_path / "new.csv").record("x.tif", "guessed")


@pytest.mark.parametrize(("source", "previous", "edited", "expected"), [
    ("prediction", "", False, "predicted"),
    ("prediction", "", True, "corrected"),
    ("empty", "", True, "drawn"),
    ("curated", "predicted", False, "predicted"),
    ("curated", "predicted", True, "corrected"),
    ("curated", "drawn", True, "drawn"),
])
def test_mask_edit_provenance(source, previous, edited, expected):
    base = np.zeros((4, 4), bool)
    edit = MaskEdit("x.tif", source, base.copy(), "m", previous)
    current = base.copy()
    current[1, 1] = edited
    assert edit.provenance(current) == expected


def test_curated_masks_save_and_reopen(tmp_path):
    masks = CuratedMasks(tmp_path / "masks")
    mask = np.zeros((6, 8), np.uint8)
    mask[2:4, 3:5] = 1
    edit = MaskEdit("plate/a.tif", "prediction", np.zeros((6, 8), bool), "m1")
    row = masks.save(edit, mask)
    assert row.provenance == "corrected" and row.model_id == "m1"
    assert np.array_equal(read_mask(tmp_path / "masks" / "plate" / "a.tif"), mask != 0)
    reopened, data = CuratedMasks(tmp_path / "masks").edit_for("plate/a.tif", (6, 8))
    assert reopened.source == "curated" and reopened.previous == "corrected"
    assert np.array_equal(data, mask != 0) and not reopened.changed(data)
    assert masks.edit_for("plate/none.tif") is None
