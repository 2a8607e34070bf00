"""Score-CAM alone: the classifier's saliency map is the prediction, gated by the classifier."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from method_helpers import map_auroc

from generator_helpers import collect as drain
from napari_artseg.config import preset
from napari_artseg.errors import ArtSegError
from napari_artseg.methods.classifier_methods import ScoreCAMModel
from napari_artseg.predictor import ArtSegModel
from napari_artseg.training import train_pipeline


@pytest.fixture(scope="module")
def scorecam_model(tiny_dataset, labels, tmp_path_factory):
    out = tmp_path_factory.mktemp("scorecam") / "model"
    config = preset("tiny", method="scorecam", classifier_epochs=6, device="cpu")
    return drain(train_pipeline(tiny_dataset / "images", labels, out, config))


def test_scorecam_trains_a_classifier_only(scorecam_model):
    events, folder = scorecam_model
    document = json.loads((folder / "config.json").read_text())
    assert document["method"] == "scorecam" and document["components"] == ["classifier"]
    assert "unet" not in {e.stage for e in events} and (folder / "history_classifier.csv").is_file()
    assert not (folder / "unet.safetensors").exists()


def test_scorecam_map_is_the_gated_saliency_of_any_image_size(scorecam_model):
    _, folder = scorecam_model
    model = ArtSegModel.load(folder, device="cpu")
    assert isinstance(model, ScoreCAMModel) and model.has_classifier
    image = np.random.default_rng(3).normal(500, 40, (50, 70)).astype(np.float32)
    ungated = model.predict(image, gate=False)
    assert ungated.probability.shape == image.shape
    assert 0 <= ungated.probability.min() and ungated.probability.max() <= 1
    prepared = model.prepare(image)
    cam = model.processing_map(prepared)
    assert cam.shape == prepared.shape[-2:] and float(cam.max()) > 0
    assert ungated.score == pytest.approx(model.artifact_score(prepared))  # the classifier's
    closed = model.predict(image, threshold=0.5)
    if not closed.gate_passed:
        assert not closed.probability.any() and not closed.mask.any()
    saliency = model.saliency(image)
    assert saliency.shape == image.shape


def test_scorecam_map_ranks_artifact_pixels_first(scorecam_model, eval_set):
    model = ArtSegModel.load(scorecam_model[1], device="cpu")
    assert map_auroc(model, eval_set) > 0.6


def test_tiling_code_sees_the_map_through_unet(scorecam_model):
    from napari_artseg.large_images import tiled_probability

    model = ArtSegModel.load(scorecam_model[1], device="cpu")
    tile = model.config.input_size
    image = torch.randn(1, tile, tile)
    tiled = tiled_probability(model, image[0].numpy())
    np.testing.assert_allclose(tiled, model.processing_map(image).numpy(), atol=1e-4)


def test_anomaly_and_ensemble_methods_cannot_fine_tune(scorecam_model, tiny_dataset, labels,
                                                       tmp_path):
    config = preset("tiny", method="padim")
    with pytest.raises(ArtSegError, match="padim cannot fine-tune"):
        drain(train_pipeline(tiny_dataset / "images", labels, tmp_path / "m", config,
                             init=scorecam_model[1]))
