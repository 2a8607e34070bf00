"""PaDiM: Mahalanobis map and fitted Gaussians against numpy, artifact ranking, the
classifier backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from anomaly_helpers import TINY_PARAMS

from napari_artseg.methods.anomaly import (
    DetectorParamsError,
    DetectorStateError,
    PaDiM,
    mahalanobis_map,
)
from napari_artseg.methods.anomaly.encoders import embed
from napari_artseg.methods.anomaly.gaussians import choose_channels
from napari_artseg.methods.anomaly.patches import CropSampler
from napari_artseg.models import ResNetClassifier


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T + 0.5 * np.eye(d)


def test_mahalanobis_map_equals_numpy():
    rng = np.random.default_rng(0)
    n, d, h, w = 3, 5, 4, 6
    emb = rng.standard_normal((n, d, h, w))
    mean = rng.standard_normal((h, w, d))
    cov_inv = np.stack([np.linalg.inv(_random_spd(rng, d)) for _ in range(h * w)])
    cov_inv = cov_inv.reshape(h, w, d, d)
    expected = np.zeros((n, h, w))
    for k in range(n):
        for i in range(h):
            for j in range(w):
                delta = emb[k, :, i, j] - mean[i, j]
                expected[k, i, j] = np.sqrt(delta @ cov_inv[i, j] @ delta)
    ours = mahalanobis_map(torch.from_numpy(emb), torch.from_numpy(mean),
                           torch.from_numpy(cov_inv))
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-10)


def test_fitted_gaussians_equal_numpy_statistics(fitted, clean_images):
    detector, _ = fitted("padim")
    p = detector.params
    copy = PaDiM(p)
    copy.backbone, copy.channels = detector.backbone, detector.channels
    for _ in copy._fit_gaussians(CropSampler(clean_images, np.random.default_rng(42))):
        pass
    crops = CropSampler(clean_images, np.random.default_rng(42))
    batches = []
    left = p["n_crops"]
    while left:
        size = min(p["score_batch_size"], left)
        batches.append(crops.crops(size, p["crop_size"]))
        left -= size
    with torch.inference_mode():
        e = embed(detector.backbone, torch.cat(batches), p["layers"], detector.channels)
    e = e.double().numpy()  # (N, d, h, w)
    _, d, h, w = e.shape
    for i, j in [(0, 0), (h // 2, w - 1), (h - 1, 3)]:
        x = e[:, :, i, j]
        np.testing.assert_allclose(copy.mean[i, j].numpy(), x.mean(0), rtol=1e-5, atol=1e-6)
        cov = np.cov(x, rowvar=False) + p["eps"] * np.eye(d)
        expected = np.linalg.inv(cov)
        np.testing.assert_allclose(copy.cov_inv[i, j].numpy(), expected,
                                   rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def test_channels_are_a_seeded_random_subset(fitted):
    detector, _ = fitted("padim")
    channels = detector.channels.numpy()
    total = 8 + 8  # ae_width 8: layers 1 and 2 have 8 channels each
    assert len(set(channels)) == TINY_PARAMS["padim"]["d"] == len(channels) < total
    assert channels.min() >= 0 and channels.max() < total
    assert torch.equal(detector.channels, choose_channels(total, len(channels), 0))
    draws = [choose_channels(448, 100, seed).numpy() for seed in range(3)]
    assert not np.array_equal(draws[0], draws[1])
    assert all(len(set(c)) == 100 and np.all(np.diff(c) > 0) and c.max() < 448 for c in draws)
    assert max(c.max() for c in draws) > 400  # drawn from all layers, not the first d


def test_padim_ranks_artifact_pixels_higher(fitted, artifact_images, pixel_auroc):
    detector, events = fitted("padim")
    assert {e.stage for e in events} == {"padim_backbone", "padim_statistics"}
    assert pixel_auroc(detector, artifact_images) > 0.75


def _classifier() -> ResNetClassifier:
    torch.manual_seed(3)
    return ResNetClassifier(depth=18, width=8, stem_pool=True).eval()


def test_classifier_backbone_fits_and_round_trips(clean_images, artifact_images):
    params = {"backbone": "classifier", "crop_size": 32, "d": 24, "n_crops": 64,
              "layers": [1, 2, 3]}
    with pytest.raises(DetectorParamsError, match="needs a trained classifier"):
        list(PaDiM(params).fit(clean_images))
    detector = PaDiM(params, classifier=_classifier())
    events = list(detector.fit(clean_images))
    assert {e.stage for e in events} == {"padim_statistics"}  # the classifier is not retrained
    assert detector.mean.shape == (8, 8, 24)  # layer 1 of a ResNet with stem pool: stride 4
    image = artifact_images[0][0][:, :90, :77]
    scores = detector.score_map(image)
    assert scores.shape == (90, 77) and torch.isfinite(scores).all()
    # the state carries the architecture and weights: no classifier needs to be attached
    loaded = PaDiM(params)
    state = detector.state_tensors()
    loaded.load_state_tensors(state)
    assert torch.equal(loaded.score_map(image), scores)
    bad_arch = {**state, "classifier_arch": torch.tensor([7, 8, 1, 1])}
    with pytest.raises(DetectorStateError, match="'classifier_arch' holds no valid"):
        PaDiM(params).load_state_tensors(bad_arch)
    without = {k: v for k, v in state.items() if k != "classifier_arch"}
    with pytest.raises(DetectorStateError, match="'classifier_arch' is missing"):
        PaDiM(params).load_state_tensors(without)


def test_classifier_backbone_checks():
    with pytest.raises(DetectorParamsError, match="backbone='classifier'"):
        PaDiM({}).attach_classifier(_classifier())
    with pytest.raises(DetectorParamsError, match="multiple of 16"):
        PaDiM({"backbone": "classifier", "crop_size": 40}, classifier=_classifier())
    with pytest.raises(DetectorParamsError, match="ResNetClassifier"):
        PaDiM({"backbone": "classifier"}, classifier=torch.nn.Conv2d(1, 1, 3))
