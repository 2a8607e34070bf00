"""TrainingJob: model folder naming, curves, cancel and error messages (GUI-free)."""

from __future__ import annotations

import json

import pytest

from napari_artseg.config import preset
from napari_artseg.errors import ArtSegError
from napari_artseg.labels_file import read_labels_csv
from napari_artseg.training.events import ProgressEvent
from napari_artseg.training_curves import CURVES_CSV, CURVES_PNG, curve_row
from napari_artseg.training_job import TrainingFailed, TrainingJob, advice_for, new_model_folder


def test_advice_for_errors():
    assert "batch size" in advice_for(RuntimeError("CUDA out of memory. Tried"))
    assert advice_for(ArtSegError("need 2 clean")) == "need 2 clean"
    assert "ValueError" in advice_for(ValueError("bad"))


def test_new_model_folder_is_unique(tmp_path):
    first = new_model_folder(tmp_path, "m")
    first.mkdir()
    second = new_model_folder(tmp_path, "m")
    assert (second != first and not second.exists() and second.name.endswith("-m")) or \
        second.name.endswith("-2")


def test_curve_row():
    event = ProgressEvent("unet", 4, 8, kind="epoch", loss=0.3,
                          metrics={"epoch": 2, "train_loss": 0.3, "val_loss": 0.4, "val_iou": 0.5})
    assert curve_row(event) == {"stage": "unet", "epoch": 2, "train_loss": 0.3, "val_loss": 0.4,
                                "val_metric": 0.5, "metric_name": "val_iou"}
    assert curve_row(ProgressEvent("unet")) is None


def test_cancel_after_classifier_saves_partial_with_curves(tiny_dataset, tmp_path):
    labels = read_labels_csv(tiny_dataset / "labels.csv").labels
    job = TrainingJob(tiny_dataset / "images", labels, tmp_path, preset("tiny"))
    events = job.events()
    for event in events:
        if event.stage == "pseudo_labels":
            break
    job.cancel()
    assert json.loads((job.out / "config.json").read_text())["status"] == "partial"
    assert (job.out / CURVES_PNG).is_file()
    assert len((job.out / CURVES_CSV).read_text().splitlines()) == 1 + 2
    assert job.device == "cpu"


def test_errors_become_training_failed(tiny_dataset, tmp_path):
    job = TrainingJob(tiny_dataset / "images", {"synth_0000.tif": "artifact"}, tmp_path,
                      preset("tiny"))
    with pytest.raises(TrainingFailed, match="at least 2 clean"):
        list(job.events())
    assert not job.out.exists()


def test_curve_recorder_numbers_repeated_stages_on():
    from napari_artseg.training_curves import CurveRecorder

    recorder = CurveRecorder()

    def epoch(stage, n):
        return ProgressEvent(stage, kind="epoch", metrics={"epoch": n, "train_loss": 1.0})

    for stage, n in [("classifier", 1), ("classifier", 2), ("unet", 1), ("unet", 2),
                     ("unet", 1)]:
        recorder.add(epoch(stage, n))
    assert [(r["stage"], r["epoch"]) for r in recorder.rows] == [
        ("classifier", 1), ("classifier", 2), ("unet", 1), ("unet", 2), ("unet", 3)]


def test_a_method_without_labels_takes_every_project_image(tiny_dataset, tmp_path):
    import shutil

    from napari_artseg.project import Project

    shutil.copytree(tiny_dataset / "images", tmp_path / "images")
    project = Project.create(tmp_path / "images")
    first = project.images()[0]
    project.labels.set(first, "clean")
    job = TrainingJob.for_project(project, preset("tiny", method="cdl"))
    assert sorted(job.labels) == project.images() and job.labels[first] == "clean"
    assert set(job.labels.values()) == {"clean", "unsure"} and job.missing_inputs() == ""
    assert job.out.name.endswith("-cdl")
    job = TrainingJob.for_project(project, preset("tiny", method="ae_ssim"))
    assert job.labels == {first: "clean"}
    assert "needs at least 2 images labelled clean; got 1" in job.missing_inputs()
