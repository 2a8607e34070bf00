"""QC numbers from masks, well parsing and per-well aggregation."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_artseg.qc_table import aggregate, mask_statistics, parse_well, write_qc_tables


def test_mask_statistics_counts_objects_and_areas():
    mask = np.zeros((10, 10), bool)
    mask[0:2, 0:2] = True  # 4 px
    mask[5:8, 5:9] = True  # 12 px
    stats = mask_statistics(mask, pixel_size_um=0.5)
    assert stats["artifact_fraction"] == pytest.approx(0.16)
    assert stats["n_objects"] == 2 and stats["max_object_px"] == 12
    assert stats["mean_object_px"] == 8
    assert stats["artifact_area_um2"] == pytest.approx(16 * 0.25)
    assert mask_statistics(mask)["artifact_area_um2"] == ""
    assert mask_statistics(np.zeros((3, 3)))["n_objects"] == 0


@pytest.mark.parametrize("name, expected", [
    ("plate1/r02c05f01p01-ch1.tiff", {"plate": "plate1", "well": "B05", "field": "01"}),
    ("A01_s1.tif", {"plate": "", "well": "A01", "field": "1"}),
    ("P7/H12_s3_w1.tif", {"plate": "P7", "well": "H12", "field": "3"}),
    ("image_12.tif", {"plate": "", "well": "", "field": ""}),
])
def test_parse_well_default_patterns(name, expected):
    assert parse_well(name) == expected


def test_parse_well_custom_pattern():
    found = parse_well("scr_X1_well-C3_f2.tif", [r"(?P<plate>X\d)_well-(?P<well>[A-P]\d+)"])
    assert found == {"plate": "X1", "well": "C03", "field": ""}


def test_aggregate_per_well_and_tables(tmp_path):
    rows = [
        {"image": "r01c01f01.tif", "plate": "", "well": "A01", "artifact_fraction": 0.1,
         "artifact_area_px": 10, "height": 10, "width": 10, "n_objects": 1, "decision": "keep"},
        {"image": "r01c01f02.tif", "plate": "", "well": "A01", "artifact_fraction": 0.5,
         "artifact_area_px": 50, "height": 10, "width": 10, "n_objects": 2,
         "decision": "exclude"},
        {"image": "r01c02f01.tif", "plate": "", "well": "A02", "artifact_fraction": "",
         "decision": "unknown"},
    ]
    wells = aggregate(rows, ("plate", "well"), max_fraction=0.2)
    a01 = wells[0]
    assert a01["well"] == "A01" and a01["n_images"] == 2 and a01["n_excluded"] == 1
    assert a01["pooled_artifact_fraction"] == pytest.approx(0.3)
    assert a01["decision"] == "exclude"
    assert wells[1]["n_without_mask"] == 1 and wells[1]["decision"] == "unknown"
    written = write_qc_tables(tmp_path, rows, 0.2)
    assert set(written) == {"images", "wells"}
    with open(written["wells"], newline="") as handle:
        assert [r["well"] for r in csv.DictReader(handle)] == ["A01", "A02"]
