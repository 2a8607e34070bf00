"""labels.csv parsing and writing."""

import pytest

from napari_artseg.errors import LabelsFileError
from napari_artseg.labels_file import parse_labels_csv, read_labels_csv, write_labels_csv


def test_round_trip_and_last_duplicate_wins(tmp_path):
    path = write_labels_csv(tmp_path / "labels.csv", {"a.tif": "clean", "sub/b b.tif": "artifact"})
    assert read_labels_csv(path).labels == {"a.tif": "clean", "sub/b b.tif": "artifact"}
    table = parse_labels_csv("image,label\na.tif,clean\nb.tif,unsure\na.tif,artifact\n")
    assert table.labels == {"b.tif": "unsure", "a.tif": "artifact"}
    assert table.duplicates == ["a.tif"]


@pytest.mark.parametrize(
    ("text", "message"),
    [("a.tif,clean\n", "header"), ("image,label\na.tif,dirty\n", "line 2"),
     ("image,label\n../x.tif,clean\n", "outside"), ("image,label\n/abs.tif,clean\n", "absolute"),
     ("image,label\nonlyone\n", "two fields")],
)
def test_malformed_files_are_refused(text, message):
    with pytest.raises(LabelsFileError, match=message):
        parse_labels_csv(text)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(LabelsFileError, match="no such labels file"):
        read_labels_csv(tmp_path / "none.csv")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(LabelsFileError, match="UTF-8"):
        read_labels_csv(tmp_path / "bin.csv")


def test_names_with_carriage_returns_and_nul_bytes(tmp_path):
    path = write_labels_csv(tmp_path / "labels.csv", {"a\rb.tif": "clean", "c, d.tif": "unsure"})
    assert read_labels_csv(path).labels == {"a\rb.tif": "clean", "c, d.tif": "unsure"}
    with pytest.raises(LabelsFileError, match="NUL"):
        parse_labels_csv("image,label\na\x00.tif,clean\n")
