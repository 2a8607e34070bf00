"""AE-SSIM, PaDiM and PatchSVDD as methods: clean-only training, calibration, strict loading.

With the detectors of ``napari_artseg.methods.anomaly`` when present, else with the contract
detector of ``method_helpers`` (same interface).
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from method_helpers import ANOMALY, anomaly_params, map_auroc
from safetensors.torch import load_file, save_file

from generator_helpers import collect as drain
from napari_artseg.config import preset
from napari_artseg.errors import ArtSegError, ModelFileError
from napari_artseg.methods.anomaly_methods import AnomalyModel, raw_scores
from napari_artseg.predictor import ArtSegModel
from napari_artseg.training import train_pipeline


def train(name, tiny_dataset, labels, out, **changes):
    # scale 1: the detectors' patches (32 px and their neighbours) need images of 64 px and more
    config = preset("tiny", method=name, device="cpu", anomaly_params=anomaly_params(),
                    scale=1.0, **changes)
    return drain(train_pipeline(tiny_dataset / "images", labels, out, config))


@pytest.mark.parametrize("name", ANOMALY)
def test_detector_trains_on_clean_images_and_ranks_artifact_pixels_first(
        name, detectors, tiny_dataset, labels, eval_set, tmp_path, monkeypatch):
    seen = []
    if detectors is None:  # the contract detector records what it was fitted on
        from napari_artseg.methods import anomaly_methods

        cls = anomaly_methods.detector_class(name)

        class Recording(cls):
            def fit(self, images):
                seen.extend(images)
                return (yield from super().fit(images))

        monkeypatch.setattr(anomaly_methods, "detector_class", lambda _name: Recording)
    events, folder = train(name, tiny_dataset, labels, tmp_path / "m")
    document = json.loads((folder / "config.json").read_text())
    assert document["method"] == name and document["components"] == ["detector"]
    assert set(document["calibration"]) == {"center", "scale", "percentile"}
    assert document["calibration"]["percentile"] == 99.0
    rows = list(csv.DictReader(open(folder / "manifest.csv", newline="")))
    fitted = [r for r in rows if r["target"] == "detector"]
    assert fitted and all(r["label"] == "clean" and r["split"] == "train" for r in fitted)
    if detectors is None:
        assert len(seen) == len(fitted)
    assert {"data", name, "calibration", "thresholds", "save"} <= {e.stage for e in events}
    # calibration and the thresholds count their validation images, one step (and stop) each
    for stage in ("calibration", "thresholds"):
        steps = [e for e in events if e.stage == stage and e.kind == "step"]
        assert len(steps) > 1 and [e.step for e in steps] == list(range(1, steps[-1].total + 1))
    model = ArtSegModel.load(folder, device="cpu")
    assert isinstance(model, AnomalyModel) and not model.has_classifier
    assert map_auroc(model, eval_set) > 0.6


@pytest.mark.parametrize("name", ["ae_ssim"])
def test_calibrated_map_is_monotone_in_the_raw_score_and_gates_on_its_maximum(
        name, detectors, tiny_dataset, labels, tmp_path):
    _, folder = train(name, tiny_dataset, labels, tmp_path / "m")
    model = ArtSegModel.load(folder, device="cpu")
    image = np.random.default_rng(2).normal(300, 30, (40, 52)).astype(np.float32)
    image[10:20, 10:20] += 200
    prepared = model.prepare(image)
    raw = raw_scores(model.detector, prepared).ravel()
    prob = model.processing_map(prepared).ravel()
    order = torch.argsort(raw)
    assert torch.all(prob[order][1:] >= prob[order][:-1])
    assert model.artifact_score(prepared) == pytest.approx(float(prob.max()))
    small = model.predict(np.full((20, 24), 100.0, np.float32), gate=False)  # padded to 32
    assert small.probability.shape == (20, 24)
    # a tampered state tensor is refused with the file named
    tensors = load_file(str(folder / "detector.safetensors"))
    first = sorted(tensors)[0]
    tensors[first] = torch.zeros(*(s + 1 for s in tensors[first].shape))
    save_file(tensors, str(folder / "detector.safetensors"))
    with pytest.raises(ModelFileError, match=r"detector\.safetensors"):
        ArtSegModel.load(folder, device="cpu")


def test_a_project_without_clean_images_is_refused(detectors, tiny_dataset, labels, tmp_path):
    only_artifacts = {k: v for k, v in labels.items() if v == "artifact"}
    with pytest.raises(ArtSegError, match="needs at least 2 images labelled clean; got 0"):
        train("padim", tiny_dataset, only_artifacts, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_clean_only_project_uses_the_calibration_as_thresholds(detectors, tiny_dataset, labels,
                                                               tmp_path):
    clean = {k: v for k, v in labels.items() if v == "clean"}
    _, folder = train("patchsvdd", tiny_dataset, clean, tmp_path / "m")
    document = json.loads((folder / "config.json").read_text())
    assert document["thresholds"]["gate"] == 0.5 and document["thresholds"]["mask"] == 0.5
    assert "calibration defaults" in document["validation_metrics"]["note"]


def test_padim_can_use_the_projects_classifier_as_backbone(tiny_dataset, labels, tmp_path):
    from napari_artseg.methods import get_method

    params = {**anomaly_params()["padim"], "backbone": "classifier", "d": 8}
    config = preset("tiny", method="padim", device="cpu", scale=1.0, classifier_epochs=2,
                    anomaly_params={"padim": params})
    clean_only = {k: v for k, v in labels.items() if v == "clean"}
    assert "needs at least 2 clean and 2 artifact" in get_method("padim").missing_inputs(
        clean_only, None, config)
    events, folder = drain(train_pipeline(tiny_dataset / "images", labels, tmp_path / "m",
                                          config))
    assert [e.stage for e in events if e.kind == "stage"][1:3] == ["classifier", "padim"]
    assert (folder / "history_classifier.csv").is_file()
    model = ArtSegModel.load(folder, device="cpu")
    assert model.detector.params["backbone"] == "classifier" and not model.has_classifier
    image = np.random.default_rng(6).normal(300, 30, (80, 64)).astype(np.float32)
    assert model.predict(image, gate=False).probability.shape == (80, 64)


class _Ramp:
    """A stand-in detector whose raw score of a pixel is its value."""

    def score_map(self, image):
        return image[0]


@pytest.mark.parametrize("limit", [10**6, 500])
def test_calibration_takes_a_bounded_share_of_each_image(monkeypatch, limit):
    """Every pixel while they fit; past the limit each image gives its share, drawn as its
    map is made (the maps are never held together)."""
    from types import SimpleNamespace

    from napari_artseg.methods import anomaly_methods

    monkeypatch.setattr(anomaly_methods, "CALIBRATION_PIXELS", limit)
    shapes = [(40, 40), (20, 40), (40, 60)]  # 1,600 + 800 + 2,400 = 4,800 pixels
    items = [SimpleNamespace(key=f"i{n}", image=torch.full((1, *shape), float(n)))
             for n, shape in enumerate(shapes)]
    events, pooled = drain(anomaly_methods.clean_calibration_scores(_Ramp(), items, seed=0))
    assert [e.step for e in events] == [1, 2, 3] and {e.stage for e in events} == {"calibration"}
    counts = [int((pooled == n).sum()) for n in range(3)]
    if limit > 4800:
        assert counts == [1600, 800, 2400]  # all of them, as before the limit existed
    else:
        assert counts == [167, 84, 250]  # 500 shared in proportion (rounded up)
