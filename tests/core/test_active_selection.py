"""Active selection: uncertainty terms, ordering, and scoring of cached predictions."""

from __future__ import annotations

import numpy as np
import pytest
from generator_helpers import drain

from napari_artseg.active_selection import (
    classifier_uncertainty,
    map_disagreement,
    mask_uncertainty,
    mean_entropy,
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


def test_map_terms():
    sure = np.zeros((8, 8))
    sure[:4] = 1.0
    assert mean_entropy(sure) == pytest.approx(0.0, abs=1e-4)
    assert mean_entropy(np.full((8, 8), 0.5)) == pytest.approx(1.0)
    assert map_disagreement(sure, sure) == pytest.approx(0.0)
    assert map_disagreement(sure, 1 - sure) == pytest.approx(1.0)
    assert map_disagreement(np.zeros((4, 4)), np.zeros((4, 4))) == 0.0
    confident = mask_uncertainty(sure, sure, score=0.99)
    unsure = mask_uncertainty(np.full((8, 8), 0.5), 1 - sure, score=0.5)
    assert 0 <= confident < unsure <= 1


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
    for name, prob, score in (("a.tif", sure, 0.01), ("b.tif", flat, 0.5)):
        item = CachedPrediction(name, prob, None, prob.copy(), score, score >= 0.5, 0.5, 0, "m1")
        cache.save(item, prob >= 0.5)
    scores = drain(score_predictions(tmp_path, "m1", ["a.tif", "b.tif", "c.tif"]))
    assert rank(scores) == ["b.tif", "a.tif"]
