"""Model folders: round trip, refusal of unsafe, mismatching or newer files."""

import json
import pickle
import shutil

import numpy as np
import pytest
import torch

from napari_artseg.errors import ModelFileError
from napari_artseg.model_files import read_model_document
from napari_artseg.predictor import ArtSegModel


def copy_model(src, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def test_model_folder_has_the_documented_files(tiny_model):
    names = {p.name for p in tiny_model.iterdir()}
    assert {"config.json", "classifier.safetensors", "unet.safetensors", "manifest.csv",
            "history_classifier.csv", "history_unet.csv"} <= names
    document = json.loads((tiny_model / "config.json").read_text())
    for key in ("format_version", "method", "model_id", "status", "parent", "versions",
                "label_counts", "validation_metrics", "thresholds", "config"):
        assert key in document
    chosen = set(document["thresholds"]) - {"fallback"}  # the fallback: only when chosen
    assert chosen == {"pseudo_label", "gate", "mask", "min_size_px"}
    assert document["thresholds"].get("fallback", 0) < document["thresholds"]["mask"]
    assert document["status"] == "complete" and document["config"]["preset"] == "tiny"
    n_pseudo = sum(1 for line in (tiny_model / "manifest.csv").read_text().splitlines()
                   if line.split(",")[2] == "pseudo")
    assert len(list((tiny_model / "pseudo_labels").iterdir())) == n_pseudo > 0
    assert len(list((tiny_model / "saliency").iterdir())) == n_pseudo


def test_save_load_round_trip_predicts_identically(tiny_model, tiny_dataset):
    from napari_artseg.image_files import read_image

    image = read_image(next((tiny_dataset / "images").iterdir())).data
    first = ArtSegModel.load(tiny_model, device="cpu").predict(image, gate=False)
    second = ArtSegModel.load(tiny_model, device="cpu").predict(image, gate=False)
    np.testing.assert_array_equal(first.probability, second.probability)
    assert first.score == second.score


def test_pickle_payload_is_refused_without_running_it(tiny_model, tmp_path):
    model = copy_model(tiny_model, tmp_path)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (model / "unet.safetensors").write_bytes(pickle.dumps(Exploit()))
    torch.save({"x": Exploit()}, model / "classifier.safetensors")
    with pytest.raises(ModelFileError, match="not a valid safetensors"):
        ArtSegModel.load(model)
    assert not marker.exists()


def test_wrong_architecture_is_a_clear_error(tiny_model, tmp_path):
    model = copy_model(tiny_model, tmp_path)
    document = json.loads((model / "config.json").read_text())
    document["config"]["unet_width"] = 8
    (model / "config.json").write_text(json.dumps(document))
    with pytest.raises(ModelFileError, match="do not match the architecture"):
        ArtSegModel.load(model)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"format_version": 99}, "newer"), ({"method": "magic"}, "unknown method"),
     ({"config": {"input_size": 7}}, "input_size")],
)
def test_bad_config_json(tiny_model, tmp_path, change, message):
    model = copy_model(tiny_model, tmp_path)
    document = json.loads((model / "config.json").read_text())
    document.update(change)
    (model / "config.json").write_text(json.dumps(document))
    with pytest.raises(ModelFileError, match=message):
        read_model_document(model)


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        ArtSegModel.load(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match=r"config\.json"):
        ArtSegModel.load(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{nope")
    with pytest.raises(ModelFileError, match="JSON"):
        ArtSegModel.load(tmp_path / "bad")
