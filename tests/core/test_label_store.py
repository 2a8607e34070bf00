"""LabelStore: every change on disk before the call returns; hand edits read back."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from napari_artseg.errors import LabelsFileError
from napari_artseg.label_store import LabelStore
from napari_artseg.labels_file import read_labels_csv

IMAGES = ["a.tif", "b.tif", "sub/c.tif", "d e.tif"]


def on_disk(store: LabelStore) -> dict[str, str]:
    return dict(read_labels_csv(store.path).labels)


def test_set_clear_persist_before_return(tmp_path):
    store = LabelStore(tmp_path / "labels.csv", IMAGES)
    assert not store.path.exists()
    store.set("a.tif", "artifact")
    assert on_disk(store) == {"a.tif": "artifact"}
    store.set("sub/c.tif", "clean")
    store.set("d e.tif", "unsure")
    assert on_disk(store) == {"a.tif": "artifact", "sub/c.tif": "clean", "d e.tif": "unsure"}
    store.set("a.tif", "clean")  # relabel keeps the row's place
    assert list(on_disk(store)) == ["a.tif", "sub/c.tif", "d e.tif"]
    store.clear("sub/c.tif")
    assert on_disk(store) == {"a.tif": "clean", "d e.tif": "unsure"}
    assert store.counts() == {"clean": 1, "artifact": 0, "unsure": 1, "unlabelled": 2}
    text = store.path.read_text(encoding="utf-8")
    assert text.startswith("image,label\n") and text.endswith("\n")
    assert not list(tmp_path.glob(".labels.csv.*"))  # no temporary file left behind


def test_undo_restores_previous_label(tmp_path):
    store = LabelStore(tmp_path / "labels.csv", IMAGES)
    store.set("a.tif", "artifact")
    store.set("a.tif", "clean")
    store.set("b.tif", "unsure")
    assert store.undo().image == "b.tif"
    assert on_disk(store) == {"a.tif": "clean"}
    change = store.undo()
    assert (change.image, change.before, change.after) == ("a.tif", "artifact", "clean")
    assert on_disk(store) == {"a.tif": "artifact"}
    store.undo()
    assert on_disk(store) == {}
    assert store.undo() is None and not store.can_undo


def test_rejects_bad_label_and_escaping_path(tmp_path):
    store = LabelStore(tmp_path / "labels.csv", IMAGES)
    with pytest.raises(ValueError):
        store.set("a.tif", "dirty")
    with pytest.raises(ValueError):
        store.set("../x.tif", "clean")
    assert not store.path.exists()


def test_hand_edited_file_duplicates_and_unknown_kept(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text(
        "\ufeffimage,label\r\na.tif,clean\r\nghost.tif,artifact\r\n"
        "a.tif,Artifact\r\n\r\n\"d e.tif\",unsure\r\n",
        encoding="utf-8",
    )
    store = LabelStore(path, IMAGES)
    assert store.get("a.tif") == "artifact"  # last duplicate wins
    assert store.duplicates == ["a.tif"]
    assert store.unknown == ["ghost.tif"]
    problems = store.problems()
    assert any("several rows" in p for p in problems)
    assert any("ghost.tif" in p for p in problems)
    assert store.counts() == {"clean": 0, "artifact": 1, "unsure": 1, "unlabelled": 2}
    store.set("b.tif", "clean")
    assert on_disk(store) == {
        "ghost.tif": "artifact", "a.tif": "artifact", "d e.tif": "unsure", "b.tif": "clean"
    }  # unknown row kept, duplicate collapsed


@pytest.mark.parametrize(
    "content",
    [
        "name,kind\na.tif,clean\n",
        "image,label\na.tif,maybe\n",
        "image,label\na.tif\n",
        "image,label\n/etc/passwd,clean\n",
    ],
)
def test_corrupt_file_refused_and_never_overwritten(tmp_path, content):
    path = tmp_path / "labels.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(LabelsFileError, match=r"labels\.csv"):
        LabelStore(path, IMAGES)
    assert path.read_text(encoding="utf-8") == content


def test_not_utf8_refused(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes(b"image,label\n\xff\xfe.tif,clean\n")
    with pytest.raises(LabelsFileError, match="UTF-8"):
        LabelStore(path, IMAGES)
    assert path.read_bytes() == b"image,label\n\xff\xfe.tif,clean\n"


def test_external_edit_while_open_is_merged(tmp_path):
    store = LabelStore(tmp_path / "labels.csv", IMAGES)
    store.set("a.tif", "clean")
    time.sleep(0.01)
    store.path.write_text("image,label\na.tif,clean\nb.tif,artifact\n", encoding="utf-8")
    store.set("sub/c.tif", "unsure")
    assert on_disk(store) == {"a.tif": "clean", "b.tif": "artifact", "sub/c.tif": "unsure"}


def test_external_corruption_while_open_is_not_overwritten(tmp_path):
    store = LabelStore(tmp_path / "labels.csv", IMAGES)
    store.set("a.tif", "clean")
    store.path.write_text("garbage that is not a labels file\n", encoding="utf-8")
    with pytest.raises(LabelsFileError):
        store.set("b.tif", "clean")
    assert store.path.read_text(encoding="utf-8") == "garbage that is not a labels file\n"
    assert store.get("b.tif") is None


def test_deleted_file_is_written_again_from_memory(tmp_path):
    store = LabelStore(tmp_path / "labels.csv", IMAGES)
    store.set("a.tif", "clean")
    store.path.unlink()
    store.set("b.tif", "artifact")
    assert on_disk(store) == {"a.tif": "clean", "b.tif": "artifact"}


def test_ten_thousand_images_every_keypress_on_disk(tmp_path):
    # how long a keypress takes at this size is measured by benchmarks/bench_labelling.py
    images = [f"plate{i // 100:03d}/image_{i:05d}.tif" for i in range(10_000)]
    path = tmp_path / "labels.csv"
    path.write_text(
        "image,label\n" + "".join(f"{name},clean\n" for name in images[:9_990]), encoding="utf-8"
    )
    store = LabelStore(path, images)
    for count, name in enumerate(images[9_990:], start=9_991):
        store.set(name, "artifact")
        assert len(on_disk(store)) == count  # on disk before the next key
    assert store.counts()["unlabelled"] == 0


def test_core_imports_no_gui():
    code = (
        "import sys, napari_artseg.label_store, napari_artseg.project, napari_artseg.readahead\n"
        "bad = [m for m in ('napari', 'qtpy', 'PyQt6', 'magicgui') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_stale_temporary_files_removed_on_open(tmp_path):
    import os

    stale = tmp_path / ".labels.csv.abc123.tmp"
    fresh = tmp_path / ".labels.csv.def456.tmp"
    stale.write_text("half a file")
    fresh.write_text("being written")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    LabelStore(tmp_path / "labels.csv", IMAGES)
    assert not stale.exists() and fresh.exists()
