"""A read-only folder and a full disk: the write fails cleanly, nothing on disk is damaged.

Both are simulated so the tests also hold when run as root (which ignores
permissions): a read-only folder makes creating the temporary file fail with
EACCES; a full disk makes fsync fail with ENOSPC (where delayed allocation
reports it). Labels, predictions and model folders must keep their previous
content, leave no temporary file behind, and reach the user as one line.
"""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
from reliability_helpers import summary_rows

from napari_artseg import atomic
from napari_artseg.cli import main
from napari_artseg.config import preset
from napari_artseg.image_files import write_tiff
from napari_artseg.label_store import LabelStore
from napari_artseg.labels_file import read_labels_csv
from napari_artseg.model_files import save_model
from napari_artseg.training.classifier import build_classifier
from napari_artseg.training.segmenter import build_unet

IMAGES = ["a.tif", "b.tif", "c.tif"]


@pytest.fixture
def read_only(monkeypatch):
    """Make every new file fail like a read-only folder (EACCES)."""

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    def apply():
        monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)

    return apply


@pytest.fixture
def disk_full(monkeypatch):
    """Make fsync fail like a full disk (ENOSPC)."""

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    def apply():
        monkeypatch.setattr(os, "fsync", full)

    return apply


def _hidden(folder):
    return [p.name for p in folder.rglob(".*")]


@pytest.mark.parametrize("fault", ["read_only", "disk_full"])
def test_labelling_keeps_the_file_and_memory_consistent(tmp_path, fault, request):
    store = LabelStore(tmp_path / "labels.csv", IMAGES)
    store.set("a.tif", "clean")
    before = store.path.read_bytes()
    request.getfixturevalue(fault)()
    with pytest.raises(OSError):
        store.set("b.tif", "artifact")
    assert store.get("b.tif") is None and store.counts()["artifact"] == 0
    assert store.path.read_bytes() == before and not _hidden(tmp_path)


@pytest.mark.parametrize("fault", ["read_only", "disk_full"])
def test_model_save_leaves_no_folder(tmp_path, fault, request):
    config = preset("tiny")
    networks = {"classifier": build_classifier(config), "unet": build_unet(config)}
    request.getfixturevalue(fault)()
    with pytest.raises(OSError):
        save_model(tmp_path / "m", config, networks, {}, {"manifest": [{"image": "a"}]},
                   rasters={"saliency/a.tif": np.zeros((4, 4), np.uint8)})
    assert list(tmp_path.iterdir()) == []


def test_predict_into_read_only_folder_is_one_line(tiny_model, tmp_path, capsys, read_only):
    write_tiff(tmp_path / "in" / "a.tif", np.ones((16, 16), np.uint8))
    read_only()
    status = main(["predict", "--model", str(tiny_model), "--out", str(tmp_path / "out"),
                   str(tmp_path / "in")])
    _, err = capsys.readouterr()
    assert status == 2 and "cannot write predictions here" in err and err.count("\n") == 1


def test_predict_on_a_full_disk_is_one_line_and_keeps_earlier_results(tiny_model, tmp_path,
                                                                       capsys, disk_full):
    write_tiff(tmp_path / "in" / "a.tif", np.ones((16, 16), np.uint8))
    assert main(["predict", "--model", str(tiny_model), "--out", str(tmp_path / "out"),
                 "--quiet", str(tmp_path / "in")]) == 0
    summary = (tmp_path / "out" / "summary.csv").read_bytes()
    write_tiff(tmp_path / "in" / "b.tif", np.ones((16, 16), np.uint8))
    capsys.readouterr()
    disk_full()
    status = main(["predict", "--model", str(tiny_model), "--out", str(tmp_path / "out"),
                   "--quiet", str(tmp_path / "in")])
    _, err = capsys.readouterr()
    assert status == 2 and "Traceback" not in err
    assert "No space left on device" in err.splitlines()[-1]
    assert "summary.csv: cannot write" in err.splitlines()[-1]
    assert (tmp_path / "out" / "summary.csv").read_bytes() == summary  # the old one, intact
    assert not (tmp_path / "out" / "b_prob.tif").exists() and not _hidden(tmp_path / "out")


def test_project_file_write_is_atomic_under_full_disk(tmp_path, disk_full):
    path = tmp_path / "project.json"
    atomic.atomic_write_text(path, json.dumps({"version": 1}))
    disk_full()
    with pytest.raises(OSError):
        atomic.atomic_write_text(path, json.dumps({"version": 2}))
    assert json.loads(path.read_text()) == {"version": 1} and not _hidden(tmp_path)


def test_written_files_are_readable_by_others(tmp_path):
    """Temporary files are private (0600); the final files get the umask's permissions."""
    mask = os.umask(0o022)
    os.umask(mask)
    path = atomic.atomic_write_text(tmp_path / "labels.csv", "image,label\n")
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    with atomic.atomic_folder(tmp_path / "model") as folder:
        (folder / "x").write_text("1")
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o777 & ~mask
    assert read_labels_csv(path).labels == {}


def test_stale_temporaries_are_removed_and_an_interrupted_overwrite_restored(tmp_path):
    (tmp_path / ".labels.csv.abc.tmp").write_text("half")
    (tmp_path / ".m.xyz.partial").mkdir()
    (tmp_path / ".old.old-123").mkdir()  # moved aside, replacement never arrived
    (tmp_path / ".old.old-123" / "config.json").write_text("{}")
    removed = atomic.remove_stale_temporaries(tmp_path, age_s=0)
    assert len(removed) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]
    assert (tmp_path / "old" / "config.json").is_file()


def test_summary_rows_survive_an_unreadable_summary(tiny_model, tmp_path, capsys):
    write_tiff(tmp_path / "in" / "a.tif", np.ones((16, 16), np.uint8))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "summary.csv").write_bytes(b"\xff\xfe not csv")
    assert main(["predict", "--model", str(tiny_model), "--out", str(tmp_path / "out"),
                 "--quiet", str(tmp_path / "in")]) == 0
    assert (tmp_path / "out" / "summary.csv.unreadable").read_bytes() == b"\xff\xfe not csv"
    assert [r["image"] for r in summary_rows(tmp_path / "out")] == ["a"]
