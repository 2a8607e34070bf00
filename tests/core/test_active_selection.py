"""Active selection: classifier uncertainty, expected mask errors, ordering, cached predictions."""

from __future__ import annotations

import numpy as np
import pytest

from generator_helpers import drain
from napari_artseg.active_selection import (
    classifier_uncertainty,
    expected_errors,
    next_most_useful,
    rank,
    score_predictions,
    score_unlabelled,
)
from napari_artseg.prediction_cache import CachedPrediction, PredictionCache


def test_classifier_uncertainty_peaks_at_the_gate():
    assert classifier_uncertainty(0.5) == pytest.approx(1.0)
    assert classifier_uncertainty(0.0) == classifier_uncertainty(1.0) == pytest.approx(0.0)
    assert classifier_uncertainty(0.2, gate=0.2) == pytest.approx(1.0)
    assert classifier_uncertainty(0.6) > classifier_uncertainty(0.9)


def test_expected_errors_count_the_pixels_a_correction_would_change():
    sure = np.zeros((8, 8))
    sure[:4] = 1.0
    assert expected_errors(sure, sure >= 0.5) == 0.0  # a sure map, its own mask: nothing to fix
    assert expected_errors(sure, np.zeros((8, 8), bool)) == 32.0  # gated out: all 32 missed
    half = np.full((8, 8), 0.5)
    assert expected_errors(half, half >= 0.5) == pytest.approx(32.0)  # a coin per pixel
    p = np.array([[0.9, 0.2], [0.6, 0.0]])
    mask = np.array([[1, 0], [0, 0]], np.uint8)
    assert expected_errors(p, mask) == pytest.approx(0.1 + 0.2 + 0.6)
    # a large unsure artifact outranks a small one the model doubts just as much
    big, small = np.zeros((32, 32)), np.zeros((32, 32))
    big[:16] = 0.6
    small[:2, :2] = 0.6
    assert expected_errors(big, big >= 0.5) > 20 * expected_errors(small, small >= 0.5)
    with pytest.raises(ValueError, match="shapes differ"):
        expected_errors(sure, np.zeros((4, 4)))


def test_rank_and_next():
    order = rank({"a": 0.1, "b": 0.9, "c": 0.5, "d": 0.9})
    assert order == ["b", "d", "c", "a"]
    assert next_most_useful(order, skip={"b", "d"}) == "c"
    assert next_most_useful(order, skip=order) is None


def test_score_unlabelled_uses_the_classifier(tiny_dataset, tiny_model):
    from napari_artseg.predictor import ArtSegModel

    model = ArtSegModel.load(tiny_model, device="cpu")
    images = ["synth_0000.tif", "synth_0001.tif", "missing.tif"]
    scores = drain(score_unlabelled(lambda: model, tiny_dataset / "images", images))
    assert set(scores) == set(images[:2]) and all(0 <= v <= 1 for v in scores.values())


def test_score_predictions_reads_the_cache(tmp_path):
    cache = PredictionCache(tmp_path, "m1")
    flat = np.full((16, 16), 0.5, np.float32)
    sure = np.zeros((16, 16), np.float32)
    blob = np.zeros((16, 16), np.float32)
    blob[:8] = 0.8  # the U-Net is fairly sure of an artifact the gate dropped
    for name, prob, ungated, score in (("a.tif", sure, None, 0.01), ("b.tif", flat, None, 0.5),
                                       ("d.tif", sure, blob, 0.2)):
        item = CachedPrediction(name, prob, ungated, prob.copy(), score, score >= 0.5, 0.5, 0,
                                "m1")
        cache.save(item, prob >= 0.5)
    scores = drain(score_predictions(tmp_path, "m1", ["a.tif", "b.tif", "c.tif", "d.tif"]))
    assert rank(scores) == ["b.tif", "d.tif", "a.tif"]  # c.tif has no prediction
    assert scores["a.tif"] == 0.0
    assert scores["b.tif"] == pytest.approx(128.0)  # 256 pixels at 0.5
    assert scores["d.tif"] == pytest.approx(0.8 * 128)  # the gated-out artifact counts
