"""Inference: any size in, same size out; tiled equals single pass; the gate."""

import numpy as np
import pytest
import torch

from napari_artseg.predictor import ArtSegModel


@pytest.fixture(scope="module")
def model(tiny_model):
    return ArtSegModel.load(tiny_model, device="cpu")


@pytest.mark.parametrize("shape", [(1000, 1333), (37, 61), (1, 1), (3, 500)])
def test_any_size_round_trips(model, shape):
    image = np.random.default_rng(0).normal(1000, 50, shape).astype(np.float32)
    result = model.predict(image, gate=False)
    assert result.probability.shape == shape and result.mask.shape == shape
    assert result.probability.dtype == np.float32
    assert np.isfinite(result.probability).all()
    assert 0 <= result.probability.min() and result.probability.max() <= 1


def test_tiled_map_equals_single_pass_when_the_image_fits(model):
    """An image that fits one tile gives the real U-Net's direct output."""
    side = model.config.input_size
    image = np.random.default_rng(1).normal(0, 1, (side, side)).astype(np.float32)
    prepared = model.prepare(np.kron(image, np.ones((2, 2), np.float32)))  # scale 0.5 -> side
    assert prepared.shape[-2:] == (side, side)
    with torch.inference_mode():
        direct = torch.sigmoid(model.unet(prepared[None]))[0, 0]
    tiled = model.unet_map(prepared, (side, side))
    np.testing.assert_allclose(tiled, direct.numpy(), atol=1e-5)
    assert direct.std() > 0  # a real network output, not a constant


def test_gate_blanks_images_called_clean_but_keeps_the_ungated_map(model):
    image = np.random.default_rng(2).normal(1000, 50, (96, 96)).astype(np.float32)
    model.document["thresholds"]["gate"] = 1.01  # nothing passes
    try:
        result = model.predict(image, keep_ungated=True)
    finally:
        model.document["thresholds"]["gate"] = 0.5
    assert not result.gate_passed and not result.mask.any() and result.probability.max() == 0
    assert result.ungated is not None and result.ungated.shape == image.shape


def test_threshold_and_min_size_overrides(model):
    image = np.random.default_rng(3).normal(1000, 50, (96, 96)).astype(np.float32)
    everything = model.predict(image, threshold=0.0, min_size_px=0, gate=False)
    assert everything.mask.all() and everything.n_objects == 1
    assert everything.artifact_fraction == 1.0
    nothing = model.predict(image, threshold=1.0, gate=False)
    assert nothing.artifact_fraction <= everything.artifact_fraction
    too_small = model.predict(image, threshold=0.0, min_size_px=96 * 96 + 1, gate=False)
    assert not too_small.mask.any()


def test_saliency_map_has_the_image_size_and_range(model):
    image = np.random.default_rng(4).normal(1000, 50, (70, 90)).astype(np.float32)
    cam = model.saliency(image)
    assert cam.shape == (70, 90) and cam.dtype == np.float32
    assert np.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1


def test_gate_symmetries_average_the_classifier_over_the_square_symmetries(model):
    """With ``gate_symmetries`` the gate is the mean P(artifact) over rotated and transposed
    views, the same at prediction (``artifact_score``) and at threshold choice
    (``classifier_probabilities``)."""
    from napari_artseg.training.classifier import classifier_probabilities
    from napari_artseg.training.data import d4, global_view

    image = np.random.default_rng(5).normal(1000, 50, (80, 120)).astype(np.float32)
    image[10:30, 70:110] -= 300  # an asymmetric dark patch, so the symmetries differ
    prepared = model.prepare(image)
    view = global_view(prepared, model.config.input_size)[None]
    with torch.inference_mode():
        each = [float(torch.sigmoid(model.classifier(d4(view, k)))[0]) for k in range(8)]
    assert np.ptp(each) > 0  # the symmetries give different scores: the mean is a real average
    saved = model.config
    scores = {}
    try:
        for n in (1, 8):
            model.config = saved.replace(gate_symmetries=n)
            scores[n] = model.artifact_score(prepared)
    finally:
        model.config = saved
    assert scores[8] == pytest.approx(np.mean(each), abs=1e-5)
    assert scores[1] == pytest.approx(each[0], abs=1e-5)
    both = classifier_probabilities(model.classifier, view.repeat(3, 1, 1, 1), torch.device("cpu"),
                                    batch_size=16, amp=False, symmetries=8)
    np.testing.assert_allclose(both, np.mean(each), atol=1e-5)
