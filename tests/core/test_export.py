"""``export_project`` and ``artseg export``: every file, NaN at artifacts, QC matching the masks."""

from __future__ import annotations

import csv
import json
import shutil
import zipfile

import numpy as np
import pytest
import tifffile

from generator_helpers import drain
from napari_artseg.cli import main
from napari_artseg.curation import CuratedMasks, MaskEdit
from napari_artseg.export import ExportOptions, export_project
from napari_artseg.image_files import read_image, read_mask
from napari_artseg.project import Project


@pytest.fixture
def project(tiny_dataset, tiny_model, tmp_path):
    """The tiny images as a project with the tiny model and two curated masks."""
    images = tmp_path / "images"
    shutil.copytree(tiny_dataset / "images", images)
    project = Project.create(images)
    shutil.copyfile(tiny_dataset / "labels.csv", project.labels_path)
    shutil.copytree(tiny_model, project.models_dir / "20000101T000000Z-tiny")
    project.set_current_model("20000101T000000Z-tiny")
    curated = CuratedMasks(project.masks_dir)
    artifacts = [k for k, v in project.labels.labels.items() if v == "artifact"][:2]
    for key in artifacts:
        truth = read_mask(tiny_dataset / "masks" / key)
        curated.save(MaskEdit(key, "empty", np.zeros_like(truth)), truth)
    project.curated_keys = artifacts  # for the tests
    return project


def test_export_writes_every_file(project, tmp_path):
    out = tmp_path / "out"
    report = drain(export_project(project, out, ExportOptions(max_artifact_fraction=0.01),
                                   device="cpu"))
    images = project.images()
    assert not report.errors and len(report.rows) == len(images)
    rows = {r["image"]: r for r in csv.DictReader(open(out / "qc_images.csv", newline=""))}
    assert set(rows) == set(images)
    for key in project.curated_keys:
        assert rows[key]["mask_source"] == "curated" and rows[key]["mask_provenance"] == "drawn"
    labels = project.labels.labels
    for image, row in rows.items():
        expected = "curated" if image in project.curated_keys else (
            "clean_label" if labels[image] == "clean" else "predicted")
        assert row["mask_source"] == expected
        stem = image.rsplit(".", 1)[0]
        mask = read_mask(out / "masks" / f"{stem}.tif")
        clean = read_image(out / "clean_images" / f"{stem}.tif")  # (reading replaces NaN)
        clean.data = tifffile.imread(out / "clean_images" / f"{stem}.tif")
        keep = read_mask(out / "keep_masks" / f"{stem}.tif")
        # the QC fraction is the mask's, and NaN sits exactly on the artifact pixels
        assert float(row["artifact_fraction"]) == pytest.approx(mask.mean(), rel=1e-5)
        assert np.array_equal(np.isnan(clean.data), mask) and np.array_equal(keep, ~mask)
        original = read_image(project.image_path(image)).data
        np.testing.assert_array_equal(clean.data[~mask], original[~mask])
        assert clean.pixel_size_um == pytest.approx(0.65)
        assert row["decision"] == ("exclude" if mask.mean() > 0.01 else "keep")
        assert row["pixel_size_um"] and row["artifact_score"]
    model = out / "model"
    with zipfile.ZipFile(model / "20000101T000000Z-tiny.zip") as archive:
        names = archive.namelist()
    assert "20000101T000000Z-tiny/config.json" in names
    assert "20000101T000000Z-tiny/unet.safetensors" in names
    for name in ("classifier", "unet"):
        assert (model / "20000101T000000Z-tiny" / f"{name}.torchscript.pt").is_file()
    summary = json.loads((out / "export.json").read_text())
    assert summary["counts"]["curated"] == 2


def test_torchscript_unet_matches_the_model(project, tmp_path):
    import torch

    from napari_artseg.predictor import ArtSegModel

    drain(export_project(project, tmp_path / "out", ExportOptions(images=[]), device="cpu"))
    folder = project.models_dir / "20000101T000000Z-tiny"
    scripted = torch.jit.load(str(tmp_path / "out" / "model" / folder.name / "unet.torchscript.pt"))
    model = ArtSegModel.load(folder, device="cpu")
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model.unet.float()(x))


def test_cli_export_fill_value_and_wells(project, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["export", "--project", str(project.folder), "--out", str(out), "--fill", "-1",
                 "--no-model", "--no-predict", "--well-pattern", r"synth_(?P<well>\d\d)",
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert "exported 16 image(s)" in capsys.readouterr().out
    assert not (out / "model").exists()
    key = project.curated_keys[0].rsplit(".", 1)[0]
    clean = read_image(out / "clean_images" / f"{key}.tif").data
    mask = read_mask(out / "masks" / f"{key}.tif")
    assert mask.any() and (clean[mask] == -1).all() and not np.isnan(clean).any()
    rows = list(csv.DictReader(open(out / "qc_wells.csv", newline="")))
    assert rows and all(r["well"] for r in rows)


def test_cli_export_bad_fill_is_one_line(project, capsys):
    assert main(["export", "--project", str(project.folder), "--fill", "lots"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--fill" in err


def test_cli_fill_project_labels_filled_images_clean(project, capsys):
    code = main(["fill", "--project", str(project.folder), "--quiet"])
    assert code == 0, capsys.readouterr().err
    reopened = Project.open(project.folder)
    filled = [k for k in reopened.images() if k.startswith("filled/")]
    assert len(filled) == 2
    assert all(reopened.labels.get(k) == "clean" for k in filled)


def test_new_core_modules_import_no_gui_toolkit():
    import subprocess
    import sys

    modules = ["napari_artseg.export", "napari_artseg.qc_table", "napari_artseg.background_fill",
               "napari_artseg.retrain", "napari_artseg.active_selection",
               "napari_artseg.cli.export_cmd", "napari_artseg.cli.fill_cmd"]
    code = (f"import sys\nfor name in {modules!r}: __import__(name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_torchscript_export_follows_the_method(tiny_dataset, tmp_path):
    from napari_artseg.config import preset
    from napari_artseg.export import write_torchscript
    from napari_artseg.methods import train_method

    images, labels = tiny_dataset / "images", tiny_dataset / "labels.csv"
    unet_only = train_method("supervised_unet", images, labels, tmp_path / "sup", preset("tiny"),
                             masks_dir=tiny_dataset / "masks")
    written = write_torchscript(unet_only, tmp_path / "out")
    assert [p.name for p in written] == ["unet.torchscript.pt", "README.txt"]
    readme = written[-1].read_text(encoding="utf-8")
    assert "no classifier" in readme and "classifier.torchscript.pt" not in readme
    saliency_only = train_method("scorecam", images, labels, tmp_path / "cam", preset("tiny"))
    assert write_torchscript(saliency_only, tmp_path / "out") == []


def test_export_keeps_freed_memory_while_it_goes_through_the_images(project, tmp_path,
                                                                   monkeypatch):
    from napari_artseg import process_memory

    calls = []  # heap_reuse's glibc calls, recorded instead of made
    monkeypatch.setattr(process_memory, "MALLOPT", lambda *call: calls.append(call) or 1)
    generator = export_project(project, tmp_path / "out", ExportOptions(), device="cpu")
    next(generator)  # the stage event, before the images
    assert calls == []
    next(generator)  # the first image is exported
    job = [(process_memory.M_MMAP_THRESHOLD, process_memory.JOB_MMAP_THRESHOLD),
           (process_memory.M_TRIM_THRESHOLD, process_memory.JOB_TRIM_THRESHOLD)]
    assert calls == job
    drain(generator)
    assert calls == [*job, (process_memory.M_TRIM_THRESHOLD, process_memory.IDLE_TRIM_THRESHOLD)]
