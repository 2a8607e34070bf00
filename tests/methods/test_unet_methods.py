"""The U-Net-only methods: fully supervised on pixel masks, and CDL on the detector's labels."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from method_helpers import map_auroc

from generator_helpers import collect as drain
from napari_artseg.config import preset
from napari_artseg.conventional import ConventionalDetector
from napari_artseg.errors import ArtSegError
from napari_artseg.image_files import read_image
from napari_artseg.normalize import mask_to_scale, prepare_image
from napari_artseg.predictor import ArtSegModel
from napari_artseg.training import train_pipeline

CONFIG = {"unet_epochs": 6, "device": "cpu"}


@pytest.fixture(scope="module")
def supervised(tiny_dataset, labels, tmp_path_factory):
    out = tmp_path_factory.mktemp("supervised") / "model"
    config = preset("tiny", method="supervised_unet", **CONFIG)
    events, folder = drain(train_pipeline(tiny_dataset / "images", labels, out, config,
                                          masks_dir=tiny_dataset / "masks"))
    return events, folder


@pytest.fixture(scope="module")
def cdl(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("cdl") / "model"
    config = preset("tiny", method="cdl", **CONFIG)
    return drain(train_pipeline(tiny_dataset / "images", {}, out, config))


def test_supervised_unet_trains_on_masks_and_ranks_artifact_pixels_first(supervised, eval_set):
    events, folder = supervised
    document = json.loads((folder / "config.json").read_text())
    assert document["method"] == "supervised_unet" and document["components"] == ["unet"]
    assert document["status"] == "complete" and set(document["thresholds"]) == {
        "gate", "mask", "min_size_px"}
    assert document["n_curated_masks"] == 16 and document["n_skipped_no_mask"] == 0
    assert {e.stage for e in events} >= {"data", "unet", "thresholds", "save"}
    # the thresholds are chosen image by image, a progress step (and a place to stop) each
    n_val = sum(row["split"] == "val" for row in csv.DictReader(open(folder / "manifest.csv")))
    steps = [e.step for e in events if e.stage == "thresholds" and e.kind == "step"]
    assert n_val > 1 and steps == list(range(1, n_val + 1))
    # the save is a step per file it writes, then the stage's end once the run is finished
    files = sum(path.is_file() for path in folder.rglob("*"))
    saved = [(e.kind, e.step, e.total) for e in events if e.stage == "save"]
    assert saved == [("stage", 0, 0), *(("step", i, files) for i in range(1, files + 1)),
                     ("stage", 1, 1)]
    model = ArtSegModel.load(folder, device="cpu")
    assert model.classifier is None and model.document["method"] == "supervised_unet"
    assert map_auroc(model, eval_set) > 0.65


def test_supervised_unet_refuses_a_project_without_masks(tiny_dataset, labels, tmp_path):
    config = preset("tiny", method="supervised_unet")
    with pytest.raises(ArtSegError, match="needs pixel masks"):
        drain(train_pipeline(tiny_dataset / "images", labels, tmp_path / "m", config))
    assert not (tmp_path / "m").exists()


def test_cdl_labels_come_from_the_conventional_detector(cdl, tiny_dataset):
    _, folder = cdl
    document = json.loads((folder / "config.json").read_text())
    config = preset("tiny", method="cdl")
    detector = ConventionalDetector.from_config(config)
    assert document["cdl_detector"] == detector.to_dict()
    rows = list(csv.DictReader(open(folder / "manifest.csv", newline="")))
    images = sorted(p.name for p in (tiny_dataset / "images").iterdir())
    assert sorted(r["image"] for r in rows) == images  # every image, no human label used
    assert {r["target"] for r in rows} == {"cdl"}
    found = 0
    for name in images:
        data = read_image(tiny_dataset / "images" / name).data
        shape = tuple(prepare_image(data, config.scale).shape[-2:])
        expected = (mask_to_scale(detector.predict(data), shape)[0] >= 0.5).numpy()
        saved = read_image(folder / "cdl_labels" / name).data
        np.testing.assert_array_equal(saved, expected.astype(np.uint8))
        found += int(expected.any())
    assert 0 < found < len(images)
    labels = {r["image"]: r["label"] for r in rows}
    assert sum(v == "artifact" for v in labels.values()) == found


def test_cdl_unet_ranks_artifact_pixels_first(cdl, eval_set):
    _, folder = cdl
    model = ArtSegModel.load(folder, device="cpu")
    assert model.method == "cdl" and not model.has_classifier
    assert map_auroc(model, eval_set) > 0.65


def test_curated_masks_replace_cdl_labels(tiny_dataset, tmp_path):
    import shutil

    masks = tmp_path / "masks"
    masks.mkdir()
    name = sorted(p.name for p in (tiny_dataset / "masks").iterdir())[0]
    shutil.copy(tiny_dataset / "masks" / name, masks / name)
    config = preset("tiny", method="cdl", unet_epochs=1, device="cpu")
    images = sorted(p.name for p in (tiny_dataset / "images").iterdir())[:6]
    _, folder = drain(train_pipeline(tiny_dataset / "images", dict.fromkeys(images, "unsure"),
                                     tmp_path / "m", config, masks_dir=masks))
    rows = {r["image"]: r for r in csv.DictReader(open(folder / "manifest.csv", newline=""))}
    assert set(rows) == set(images) and rows[name]["target"] == "curated"
    assert not (folder / "cdl_labels" / name).exists()
    assert json.loads((folder / "config.json").read_text())["n_curated_masks"] == 1


def test_fine_tuning_needs_a_model_of_the_same_method(cdl, tiny_dataset, labels, tmp_path):
    _, folder = cdl
    config = preset("tiny", method="supervised_unet", unet_epochs=1, device="cpu")
    with pytest.raises(ArtSegError, match="a cdl model cannot start a supervised_unet run"):
        drain(train_pipeline(tiny_dataset / "images", labels, tmp_path / "m", config,
                             masks_dir=tiny_dataset / "masks", init=folder))
    config = preset("tiny", method="cdl", unet_epochs=1, device="cpu")
    _, tuned = drain(train_pipeline(tiny_dataset / "images", {}, tmp_path / "t", config,
                                    init=folder))
    parent = json.loads((folder / "config.json").read_text())["model_id"]
    assert json.loads((tuned / "config.json").read_text())["parent"] == parent


def test_the_predict_tab_cache_works_without_a_classifier(cdl, tiny_dataset):
    from napari_artseg.prediction_cache import predict_one

    model = ArtSegModel.load(cdl[1], device="cpu")
    name = sorted(p.name for p in (tiny_dataset / "images").iterdir())[1]
    item = predict_one(model, tiny_dataset / "images", name, saliency=True)
    assert item.saliency is None and item.probability.shape == (96, 96)
    assert item.ungated is None or item.ungated.shape == (96, 96)
    assert item.score == pytest.approx(model.artifact_score(model.prepare(
        read_image(tiny_dataset / "images" / name).data)))
