"""Hand-edited labels files: each problem has a defined outcome (kept, reported or refused)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_artseg.cli import main
from napari_artseg.cli.train_cmd import existing_labels
from napari_artseg.errors import LabelsFileError
from napari_artseg.image_files import write_tiff
from napari_artseg.label_store import LabelStore
from napari_artseg.labels_file import parse_labels_csv, read_labels_csv

REFUSED = {
    "missing header": ("a.tif,clean\n", "header"),
    "wrong header": ("file,class\na.tif,clean\n", "header"),
    "wrong label word": ("image,label\na.tif,dirty\n", "line 2"),
    "empty label": ("image,label\na.tif,\n", "line 2"),
    "one field": ("image,label\na.tif\n", "two fields"),
    "parent path": ("image,label\n../secret.tif,clean\n", "outside"),
    "nested parent path": ("image,label\nsub/../../x.tif,clean\n", "outside"),
    "windows parent path": ("image,label\n..\\x.tif,clean\n", "outside"),
    "absolute path": ("image,label\n/etc/passwd,clean\n", "absolute"),
    "windows drive path": ("image,label\nC:/data/x.tif,clean\n", "absolute"),
    "NUL byte": ("image,label\na\x00.tif,clean\n", "NUL"),
    "over-long field": ("image,label\n" + "x" * 200_000 + ".tif,clean\n", "not valid CSV"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_malformed_labels_are_refused_naming_the_line(tmp_path, case):
    text, message = REFUSED[case]
    path = tmp_path / "labels.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LabelsFileError, match=message) as info:
        read_labels_csv(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(LabelsFileError):
        LabelStore(path, ["a.tif"])
    assert path.read_text(encoding="utf-8") == text  # never overwritten


@pytest.mark.parametrize("case", ["parent path", "absolute path", "missing header"])
def test_train_refuses_malformed_labels_with_one_line(tmp_path, case, capsys):
    write_tiff(tmp_path / "images" / "a.tif", np.ones((8, 8), np.uint8))
    (tmp_path / "labels.csv").write_text(REFUSED[case][0], encoding="utf-8")
    status = main(["train", "--images", str(tmp_path / "images"), "--labels",
                   str(tmp_path / "labels.csv"), "--out", str(tmp_path / "m"), "--preset",
                   "tiny", "--quiet"])
    _, err = capsys.readouterr()
    assert status == 2 and err.count("\n") == 1 and "labels.csv" in err
    assert not (tmp_path / "m").exists()


def test_unknown_images_and_duplicates_are_reported_and_kept(tmp_path, capsys):
    for name in ("a.tif", "b.tif"):
        write_tiff(tmp_path / "images" / name, np.ones((8, 8), np.uint8))
    text = ("\ufeffimage,label\r\na.tif,clean\r\nghost.tif,artifact\r\n"
            "a.tif,ARTIFACT\r\n\r\nb.tif,unsure\r\n")
    (tmp_path / "labels.csv").write_text(text, encoding="utf-8")
    present = existing_labels(tmp_path / "images", tmp_path / "labels.csv")
    _, err = capsys.readouterr()
    assert present == {"a.tif": "artifact", "b.tif": "unsure"}
    assert "labelled more than once" in err and "not found" in err and "ghost.tif" in err
    store = LabelStore(tmp_path / "labels.csv", ["a.tif", "b.tif"])
    store.set("b.tif", "clean")
    assert read_labels_csv(tmp_path / "labels.csv").labels == {
        "ghost.tif": "artifact", "a.tif": "artifact", "b.tif": "clean"}  # unknown row kept


def test_unicode_spaces_commas_and_quotes_round_trip(tmp_path):
    names = ["ünïcødé/图像 1.tif", "with, comma.tif", 'quote "q".tif', "tab\tname.tif",
             "new\nline.tif"]
    store = LabelStore(tmp_path / "labels.csv", names)
    for name in names:
        store.set(name, "artifact")
    assert read_labels_csv(tmp_path / "labels.csv").labels == dict.fromkeys(names, "artifact")


def test_dot_segments_are_normalised_not_refused():
    table = parse_labels_csv("image,label\n./a.tif,clean\nsub//b.tif,artifact\n")
    assert table.labels == {"a.tif": "clean", "sub/b.tif": "artifact"}


def test_carriage_return_in_a_name_keeps_the_file_readable(tmp_path):
    store = LabelStore(tmp_path / "labels.csv", ["odd\rname.tif"])
    store.set("odd\rname.tif", "clean")
    assert read_labels_csv(tmp_path / "labels.csv").labels == {"odd\rname.tif": "clean"}
