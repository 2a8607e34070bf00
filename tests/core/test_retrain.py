"""Retrain from curated masks: fixed held-out set, before/after IoU, manifests, curated weights."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from napari_artseg.cli import main
from napari_artseg.config import ArtSegConfig
from napari_artseg.curation import CuratedMasks, MaskEdit
from napari_artseg.image_files import read_mask
from napari_artseg.project import Project
from napari_artseg.retrain import (
    HELD_OUT_SETTING,
    curated_images,
    held_out_set,
    inherit_architecture,
)


def _project(tiny_dataset, tmp_path, model=None, n_masks=6):
    images = tmp_path / "images"
    shutil.copytree(tiny_dataset / "images", images)
    project = Project.create(images)
    shutil.copyfile(tiny_dataset / "labels.csv", project.labels_path)
    if model is not None:
        shutil.copytree(model, project.models_dir / "20000101T000000Z-tiny")
        project.set_current_model("20000101T000000Z-tiny")
    curated = CuratedMasks(project.masks_dir)
    labels = project.labels.labels
    chosen = [k for k in labels if labels[k] == "artifact"][:n_masks - 1] + \
        [k for k in labels if labels[k] == "clean"][:1]
    for key in chosen:
        truth = read_mask(tiny_dataset / "masks" / key)
        curated.save(MaskEdit(key, "prediction", np.zeros_like(truth), "abc"), truth)
    return project


def test_held_out_set_is_fixed_in_project_json(tiny_dataset, tmp_path):
    project = _project(tiny_dataset, tmp_path, n_masks=6)
    assert len(curated_images(project)) == 6
    held = held_out_set(project, fraction=0.34, minimum=5)
    assert len(held) == 2
    reopened = Project.open(project.folder)
    assert reopened.settings[HELD_OUT_SETTING] == held
    # more masks later: the set stays the same, so retrains stay comparable
    extra = [k for k, v in reopened.labels.labels.items() if v == "artifact"][-1]
    CuratedMasks(reopened.masks_dir).save(MaskEdit(extra, "empty", np.zeros((96, 96), bool)),
                                          np.ones((96, 96), bool))
    assert held_out_set(reopened, fraction=0.34, minimum=5) == held


def test_too_few_masks_hold_nothing_out(tiny_dataset, tmp_path):
    project = _project(tiny_dataset, tmp_path, n_masks=3)
    assert held_out_set(project, minimum=5) == []
    assert HELD_OUT_SETTING not in Project.open(project.folder).settings


def test_inherit_architecture_takes_the_parents_networks():
    from napari_artseg.config import preset

    mixed = inherit_architecture(preset("fast", unet_epochs=3), preset("tiny"))
    assert mixed.unet_width == 4 and mixed.input_size == 64 and mixed.unet_epochs == 3


def test_cli_retrain_reports_before_after_and_manifests(tiny_dataset, tiny_model, tmp_path,
                                                        capsys, monkeypatch):
    from napari_artseg.training import segmenter

    weights = []
    original = segmenter.segmentation_loss

    def recording(logits, target, weight, dice_weight=0.0):
        weights.append((float(weight.max()), dice_weight))
        return original(logits, target, weight, dice_weight)

    monkeypatch.setattr(segmenter, "segmentation_loss", recording)
    project = _project(tiny_dataset, tmp_path, tiny_model, n_masks=6)
    code = main(["train", "--project", str(project.folder), "--preset", "tiny", "--epochs", "1",
                 "--set", "self_training_rounds=0", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "held-out IoU (1 masks): before" in captured.out and "-> after" in captured.out
    reopened = Project.open(project.folder)
    held = reopened.settings[HELD_OUT_SETTING]
    folder = reopened.models_dir / reopened.current_model
    assert folder.name != "20000101T000000Z-tiny"
    report = json.loads((folder / "retrain_report.json").read_text())
    assert report["parent"] == "20000101T000000Z-tiny" and report["held_out"] == held
    assert report["before"]["summary"]["pixel_iou"] is not None
    assert report["after"]["summary"]["pixel_iou"] is not None
    assert len(report["after"]["curve"]["thresholds"]) == len(report["after"]["curve"]["recall"])
    # the pipeline's manifest: curated masks where present, pseudo-labels / zeros elsewhere
    rows = {r["image"]: r for r in csv.DictReader(open(folder / "manifest.csv", newline=""))}
    curated = set(curated_images(reopened))
    assert not set(held) & set(rows)  # held-out images never train
    for image, row in rows.items():
        expected = "curated" if image in curated else (
            "pseudo" if row["label"] == "artifact" else "zero")
        assert row["target"] == expected, image
    masks = list(csv.DictReader(open(folder / "masks_manifest.csv", newline="")))
    assert {r["image"] for r in masks} == curated
    assert {r["image"] for r in masks if r["role"] == "held_out"} == set(held)
    assert all(len(r["sha256"]) == 64 and r["provenance"] in ("corrected", "predicted")
               for r in masks)
    # the loss saw curated pixels weighted more heavily, with the Dice term on
    assert max(w for w, _ in weights) == pytest.approx(4.0)
    assert {d for _, d in weights} == {1.0}


def test_a_current_model_that_cannot_fine_tune_is_replaced_from_scratch(tiny_dataset, tmp_path,
                                                                        capsys):
    import torch

    from napari_artseg.config import preset
    from napari_artseg.model_files import save_model

    project = _project(tiny_dataset, tmp_path, n_masks=3)  # too few to hold any out
    padim = project.models_dir / "20000101T000000Z-padim"
    save_model(padim, preset("tiny", method="padim"), {"detector": {"mean": torch.zeros(2)}},
               {"thresholds": {"gate": 0.5, "mask": 0.5, "min_size_px": 0},
                "detector_params": {}, "calibration": {"center": 0, "scale": 1,
                                                       "percentile": 99}})
    project.set_current_model(padim)
    code = main(["train", "--project", str(project.folder), "--preset", "tiny", "--epochs", "1",
                 "--set", "self_training_rounds=0", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "(from scratch)" in captured.out and "(padim) cannot be fine-tuned" in captured.out
    reopened = Project.open(project.folder)
    folder = reopened.models_dir / reopened.current_model
    document = json.loads((folder / "config.json").read_text())
    assert document["method"] == "scorecam_unet" and document["parent"] is None
    assert json.loads((folder / "retrain_report.json").read_text())["parent"] is None


def test_retrain_keeps_the_classifier_when_the_labels_are_those_it_was_trained_on(
        tiny_dataset, tiny_model, tmp_path, capsys):
    from napari_artseg.model_files import load_weights
    from napari_artseg.training.classifier import build_classifier

    project = _project(tiny_dataset, tmp_path, tiny_model, n_masks=6)
    command = ["train", "--project", str(project.folder), "--preset", "tiny", "--epochs", "1",
               "--set", "self_training_rounds=0", "--quiet"]
    assert main(command) == 0, capsys.readouterr().err
    first = Project.open(project.folder)
    first_folder = first.models_dir / first.current_model
    # the held-out images left the training labels: the tiny model's classifier trained again
    assert "classifier was kept" not in capsys.readouterr().out
    assert len(list(csv.DictReader(open(first_folder / "history_classifier.csv")))) == 1

    assert main(command) == 0  # nothing relabelled since: only the U-Net learns
    out = capsys.readouterr().out
    assert "its classifier was kept" in out
    second = Project.open(project.folder)
    second_folder = second.models_dir / second.current_model
    assert second_folder != first_folder
    document = json.loads((second_folder / "config.json").read_text())
    assert document["config"]["classifier_epochs"] == 0
    assert document["parent"] == json.loads((first_folder / "config.json").read_text())["model_id"]
    # the same Score-CAM maps, read from the project's cache instead of recomputed
    assert document["pseudo_labels"]["saliency_cached"] == document["pseudo_labels"][
        "pseudo_mask_images"] > 0
    weights = []
    for folder in (first_folder, second_folder):
        net = build_classifier(ArtSegConfig.from_dict(document["config"]))
        load_weights(folder, "classifier", net)
        weights.append(net.state_dict())
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name

    labels = dict(second.labels.labels)  # one image relabelled: the classifier trains again
    key = next(k for k, v in labels.items() if v == "clean" and k not in curated_images(second))
    labels[key] = "artifact"
    second.labels_path.write_text("image,label\n" + "".join(f"{k},{v}\n"
                                                           for k, v in labels.items()))
    assert main(command) == 0
    assert "classifier was kept" not in capsys.readouterr().out


def test_the_evaluation_keeps_freed_memory_while_it_predicts(tiny_dataset, tiny_model, tmp_path,
                                                             monkeypatch):
    from napari_artseg import process_memory
    from napari_artseg.retrain import evaluate_on_masks

    calls = []  # heap_reuse's glibc calls, recorded instead of made
    monkeypatch.setattr(process_memory, "MALLOPT", lambda *call: calls.append(call) or 1)
    project = _project(tiny_dataset, tmp_path, model=tiny_model)
    images = curated_images(project)[:2]
    generator = evaluate_on_masks(tiny_model, project, images, device="cpu")
    next(generator)
    job = [(process_memory.M_MMAP_THRESHOLD, process_memory.JOB_MMAP_THRESHOLD),
           (process_memory.M_TRIM_THRESHOLD, process_memory.JOB_TRIM_THRESHOLD)]
    assert calls == job  # set while the held-out images are predicted
    for _ in generator:
        pass
    assert calls == [*job, (process_memory.M_TRIM_THRESHOLD, process_memory.IDLE_TRIM_THRESHOLD)]
