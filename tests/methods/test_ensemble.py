"""Ensembles: the weighted mean of member maps, members trained in the run or copied in."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from method_helpers import map_auroc

from generator_helpers import collect as drain
from napari_artseg.config import preset
from napari_artseg.errors import ArtSegError
from napari_artseg.methods.ensemble import EnsembleModel
from napari_artseg.predictor import ArtSegModel
from napari_artseg.training import train_pipeline

MEMBERS = ["cdl", "supervised_unet"]


def config(**changes):
    return preset("tiny", **{"method": "ensemble", "unet_epochs": 6, "device": "cpu",
                             "ensemble_members": MEMBERS, **changes})


@pytest.fixture(scope="module")
def trained(tiny_dataset, labels, tmp_path_factory):
    out = tmp_path_factory.mktemp("ensemble") / "model"
    return drain(train_pipeline(tiny_dataset / "images", labels, out, config(),
                                masks_dir=tiny_dataset / "masks"))


def member_models(folder):
    return [ArtSegModel.load(folder / "members" / name, device="cpu") for name in MEMBERS]


def test_members_are_trained_in_the_run_and_kept_inside(trained):
    events, folder = trained
    document = json.loads((folder / "config.json").read_text())
    assert document["method"] == "ensemble" and document["components"] == ["ensemble"]
    assert [m["name"] for m in document["members"]] == MEMBERS
    assert [m["method"] for m in document["members"]] == MEMBERS
    for record in document["members"]:
        member = json.loads((folder / "members" / record["name"] / "config.json").read_text())
        assert member["model_id"] == record["model_id"] and member["status"] == "complete"
    assert next(e.message for e in events if e.stage == "members").startswith("member 1 of 2")
    assert not any(p.name.startswith(".") for p in folder.parent.iterdir())  # staging removed


def test_ensemble_map_equals_the_mean_of_its_parts(trained):
    model = ArtSegModel.load(trained[1], device="cpu")
    assert isinstance(model, EnsembleModel) and model.weights == [0.5, 0.5]
    parts = member_models(trained[1])
    image = np.random.default_rng(4).normal(800, 60, (72, 88)).astype(np.float32)
    image[20:40, 30:50] -= 300
    whole = model.predict(image, gate=False)
    maps = [p.predict(image, gate=False).probability for p in parts]
    np.testing.assert_allclose(whole.probability, (maps[0] + maps[1]) / 2, atol=1e-5)
    prepared = model.prepare(image)
    scores = [p.artifact_score(prepared) for p in parts]
    assert model.artifact_score(prepared) == pytest.approx(sum(scores) / 2)
    assert model.saliency(image) is None  # no member has a classifier


def test_ensemble_ranks_artifact_pixels_first(trained, eval_set):
    assert map_auroc(ArtSegModel.load(trained[1], device="cpu"), eval_set) > 0.65


def test_model_folders_as_members_are_copied_with_their_weights(trained, tiny_dataset, labels,
                                                                 tmp_path):
    sources = []
    for name in MEMBERS:
        sources.append(tmp_path / f"own-{name}")
        shutil.copytree(trained[1] / "members" / name, sources[-1])
    _, folder = drain(train_pipeline(
        tiny_dataset / "images", labels, tmp_path / "e",
        config(ensemble_members=[str(s) for s in sources], ensemble_weights=[3, 1])))
    for source in sources:
        shutil.rmtree(source)  # the ensemble is self-contained
    model = ArtSegModel.load(folder, device="cpu")
    assert model.weights == [0.75, 0.25]
    parts = member_models(trained[1])
    image = np.random.default_rng(5).normal(800, 60, (64, 64)).astype(np.float32)
    maps = [p.predict(image, gate=False).probability for p in parts]
    np.testing.assert_allclose(model.predict(image, gate=False).probability,
                               0.75 * maps[0] + 0.25 * maps[1], atol=1e-5)
    records = json.loads((folder / "config.json").read_text())["members"]
    assert [r["source"] for r in records] == [str(s) for s in sources]
    assert [r["name"] for r in records] == [s.name for s in sources]
    first = json.loads((trained[1] / "config.json").read_text())["model_id"]
    assert json.loads((folder / "config.json").read_text())["model_id"] != first


def test_bad_members_are_refused(trained, tiny_dataset, labels, tmp_path):
    with pytest.raises(ArtSegError, match="'nothing': neither a method"):
        drain(train_pipeline(tiny_dataset / "images", labels, tmp_path / "a",
                             config(ensemble_members=["nothing"])))
    with pytest.raises(ArtSegError, match="members must share it"):
        drain(train_pipeline(tiny_dataset / "images", labels, tmp_path / "b",
                             config(ensemble_members=[str(trained[1] / "members" / "cdl")],
                                    scale=1.0)))
    with pytest.raises(ArtSegError, match="complete model of another method"):
        drain(train_pipeline(tiny_dataset / "images", labels, tmp_path / "c",
                             config(ensemble_members=[str(trained[1])])))
    assert not any((tmp_path / n).exists() for n in "abc")
