"""Model folders of every method: strict method and component checks, safe ensemble members."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from napari_artseg.config import preset
from napari_artseg.errors import ModelFileError
from napari_artseg.model_files import read_model_document, save_model
from napari_artseg.predictor import ArtSegModel
from napari_artseg.training.classifier import build_classifier
from napari_artseg.training.segmenter import build_unet

THRESHOLDS = {"gate": 0.5, "mask": 0.5, "min_size_px": 0}


def save(folder, method, networks, status="complete", copy=None, **metadata):
    config = preset("tiny", method=method)
    torch.manual_seed(0)
    return save_model(folder, config, networks, {"thresholds": THRESHOLDS, **metadata},
                      status=status, members=copy)


def edit(folder, **changes):
    document = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if key == "config":
            document["config"].update(value)
        else:
            document[key] = value
    (folder / "config.json").write_text(json.dumps(document))


@pytest.fixture
def unet_folder(tmp_path):
    return save(tmp_path / "unet_model", "supervised_unet", {"unet": build_unet(preset("tiny"))})


def test_a_classifier_free_model_gates_on_the_maximum_of_its_map(unet_folder):
    model = ArtSegModel.load(unet_folder, device="cpu")
    assert model.classifier is None and not model.has_classifier and model.method == (
        "supervised_unet")
    image = np.random.default_rng(0).normal(100, 10, (70, 90)).astype(np.float32)
    prepared = model.prepare(image)
    assert model.artifact_score(prepared) == pytest.approx(float(model.processing_map(
        prepared).max()))
    prediction = model.predict(image, keep_ungated=True)
    assert prediction.probability.shape == prediction.mask.shape == image.shape
    assert prediction.score == pytest.approx(float(model.processing_map(prepared).max()))
    assert model.saliency(image) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [({"method": "magic"}, "unknown method 'magic'"),
     ({"method": "cdl"}, "method 'cdl' but config.method 'supervised_unet'"),
     ({"components": ["unet", "classifier"]}, "components of a supervised_unet model must be"),
     ({"components": ["detector"]}, "components of a supervised_unet model must be"),
     ({"components": "unet"}, "must be a list"),
     ({"components": []}, r"a complete supervised_unet model needs the component\(s\) unet")],
)
def test_unknown_methods_and_bad_components_are_refused(unet_folder, change, message):
    edit(unet_folder, **change)
    with pytest.raises(ModelFileError, match=message):
        read_model_document(unet_folder)
    with pytest.raises(ModelFileError, match=message):
        ArtSegModel.load(unet_folder)


def test_a_partial_model_without_a_needed_part_cannot_predict(tmp_path):
    folder = save(tmp_path / "p", "scorecam_unet", {"classifier": build_classifier(
        preset("tiny"))}, status="partial")
    with pytest.raises(ModelFileError, match="partial scorecam_unet model without unet"):
        ArtSegModel.load(folder)


def test_tensor_dicts_are_saved_and_count_in_the_model_id(tmp_path):
    first = save(tmp_path / "a", "padim", {"detector": {"mean": torch.zeros(3)}},
                 detector_params={}, calibration={"center": 0, "scale": 1, "percentile": 99})
    second = save(tmp_path / "b", "padim", {"detector": {"mean": torch.ones(3)}},
                  detector_params={}, calibration={"center": 0, "scale": 1, "percentile": 99})
    assert (first / "detector.safetensors").is_file()
    ids = [read_model_document(f)["model_id"] for f in (first, second)]
    assert ids[0] != ids[1]


def test_anomaly_folders_are_checked_before_use(tmp_path, detectors):
    from napari_artseg.methods.anomaly_methods import detector_class

    detector = detector_class("ae_ssim")(params={}, device="cpu", seed=0)
    assert hasattr(detector, "load_state_tensors")
    calibration = {"center": 1.0, "scale": 0.5, "percentile": 99.0}
    folder = save(tmp_path / "ae", "ae_ssim", {"detector": {"bogus": torch.zeros(2)}},
                  detector_params=detector.params, calibration=calibration)
    with pytest.raises(ModelFileError, match=r"detector\.safetensors"):
        ArtSegModel.load(folder)
    edit(folder, detector_params="big")
    with pytest.raises(ModelFileError, match="detector_params must be an object"):
        ArtSegModel.load(folder)


def ensemble(tmp_path, member, name="m1", records=None):
    weights = {"weights": torch.tensor([1.0])}
    document = read_model_document(member)
    return save(tmp_path / "ens", "ensemble", {"ensemble": weights}, copy={name: member},
                members=records or [{"name": name, "method": document["method"],
                                     "model_id": document["model_id"], "weight": 1.0}])


def test_ensemble_members_are_copied_in_without_links_or_rasters(tmp_path, unet_folder):
    (unet_folder / "cdl_labels").mkdir()
    np.save(unet_folder / "extra.npy", np.zeros(3))
    (unet_folder / "link.json").symlink_to(unet_folder / "config.json")
    folder = ensemble(tmp_path, unet_folder)
    copied = {p.name for p in (folder / "members" / "m1").iterdir()}
    assert copied == {"config.json", "unet.safetensors"}
    model = ArtSegModel.load(folder, device="cpu")
    assert model.method == "ensemble" and len(model.members) == 1


@pytest.mark.parametrize(
    ("records", "message"),
    [([{"name": "../m1", "model_id": "x"}], "invalid ensemble member name"),
     ([{"name": "m1", "model_id": "0000"}], "differs from the ensemble's record"),
     ([], "non-empty members list"),
     ([{"name": "m1"}, {"name": "m1"}], r"weights must be 2 finite")],
)
def test_bad_ensemble_records_are_refused(tmp_path, unet_folder, records, message):
    folder = ensemble(tmp_path, unet_folder)
    edit(folder, members=records)
    with pytest.raises(ModelFileError, match=message):
        ArtSegModel.load(folder)


def test_ensemble_members_must_share_the_scale_and_not_nest(tmp_path, unet_folder):
    folder = ensemble(tmp_path, unet_folder)
    edit(folder / "members" / "m1", config={"scale": 1.0})
    with pytest.raises(ModelFileError, match="members must share it"):
        ArtSegModel.load(folder)
    inner = ensemble(tmp_path / "inner", unet_folder)
    outer = ensemble(tmp_path / "outer", inner)
    with pytest.raises(ModelFileError, match="cannot be a member of an ensemble"):
        ArtSegModel.load(outer)


def test_ensemble_weights_file_is_checked(tmp_path, unet_folder):
    folder = ensemble(tmp_path, unet_folder)
    save_file({"weights": torch.tensor([-1.0])}, str(folder / "ensemble.safetensors"))
    with pytest.raises(ModelFileError, match="non-negative"):
        ArtSegModel.load(folder)
