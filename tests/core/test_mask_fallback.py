"""The empty-mask fallback: masks cut at the mask threshold, a lower cut only for empty ones."""

from __future__ import annotations

import copy
import csv
import json
import shutil

import numpy as np
import pytest
import tifffile

from napari_artseg.cli import main
from napari_artseg.postprocess import clean_mask, final_mask, mask_cuts
from napari_artseg.prediction_cache import CachedPrediction, PredictionCache
from napari_artseg.predictor import ArtSegModel
from napari_artseg.training.thresholds import OWN_MASK_CUT, extent_and_fallback


def two_blobs() -> np.ndarray:
    """A map with a strong object (0.9) and a weak one (0.3) on 0.05."""
    prob = np.full((40, 40), 0.05, np.float32)
    prob[5:15, 5:15] = 0.9
    prob[25:35, 25:35] = 0.3
    return prob


def test_the_fallback_cuts_only_a_mask_that_is_empty_at_the_threshold():
    prob = two_blobs()
    strong = final_mask(prob, mask_cuts(0.5, 0.2), 0)
    assert strong.sum() == 100 and strong[5:15, 5:15].all()  # the weak object stays out
    weak_only = prob.copy()
    weak_only[5:15, 5:15] = 0.05
    fallen = final_mask(weak_only, mask_cuts(0.5, 0.2), 0)
    np.testing.assert_array_equal(fallen, clean_mask(weak_only, 0.2, 0))
    assert fallen.sum() == 100
    # objects below the minimum size do not count as a mask at the threshold
    assert final_mask(prob, mask_cuts(0.5, 0.2), 101).sum() == 0
    assert not final_mask(weak_only, mask_cuts(0.5), 0).any()


def test_mask_cuts_drop_a_fallback_that_is_not_lower():
    assert mask_cuts(0.5, 0.2) == (0.5, 0.2)
    assert mask_cuts(0.5, None) == mask_cuts(0.5, 0.5) == mask_cuts(0.5, 0.7) == (0.5,)


def test_only_a_threshold_below_half_chosen_without_curated_masks_on_own_targets_splits():
    assert extent_and_fallback(0.2, own_targets=True, curated=False) == (OWN_MASK_CUT, 0.2)
    assert extent_and_fallback(0.2, own_targets=False, curated=False) == (0.2, None)
    assert extent_and_fallback(0.2, own_targets=True, curated=True) == (0.2, None)
    assert extent_and_fallback(0.7, own_targets=True, curated=False) == (0.7, None)


@pytest.fixture
def model(tiny_model):
    loaded = ArtSegModel.load(tiny_model, device="cpu")
    loaded.document = copy.deepcopy(loaded.document)
    return loaded


def test_predict_falls_back_only_for_the_models_own_threshold(model):
    image = np.random.default_rng(3).normal(1000, 50, (96, 96)).astype(np.float32)
    prob = model.predict(image, gate=False).probability
    low, high = float(np.quantile(prob, 0.5)), float(prob.max()) + 0.01
    model.document["thresholds"].update(mask=high, fallback=low, min_size_px=0)
    fallen = model.predict(image, gate=False)
    np.testing.assert_array_equal(fallen.mask, prob >= low)
    assert 0 < fallen.artifact_fraction < 1
    assert not model.predict(image, threshold=high, gate=False).mask.any()  # the user's cut
    model.document["thresholds"].update(mask=low, fallback=0.0)  # a mask at the threshold
    np.testing.assert_array_equal(model.predict(image, gate=False).mask, prob >= low)


def test_cached_prediction_keeps_the_fallback(tmp_path):
    prob = two_blobs()
    prob[5:15, 5:15] = 0.05
    item = CachedPrediction("a.tif", prob, None, None, 0.9, True, 0.5, 0, "m", None, 0.2)
    cache = PredictionCache(tmp_path, "m")
    cache.save(item, item.mask())
    loaded = cache.load("a.tif")
    assert loaded.fallback == 0.2 and loaded.mask().sum() == 100
    assert cache.load_mask("a.tif", prob.shape).sum() == 100


def test_cli_summary_records_the_fallback_and_resumes_only_with_the_same(model, tiny_dataset,
                                                                            tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(model.folder, folder)
    image = tiny_dataset / "images" / "synth_0000.tif"
    data = tifffile.imread(image).astype(np.float32)
    prob = model.predict(data, gate=False).probability
    document = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    document["thresholds"].update(mask=float(prob.max()) + 0.01,
                                  fallback=float(np.quantile(prob, 0.5)), min_size_px=0)
    (folder / "config.json").write_text(json.dumps(document), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["predict", "--model", str(folder), "--out", str(out), "--no-gate",
                 str(image)]) == 0
    with (out / "summary.csv").open(encoding="utf-8", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert float(row["fallback"]) == pytest.approx(document["thresholds"]["fallback"])
    assert 0 < float(row["artifact_fraction"]) < 1  # the fallback's mask, not an empty one
    mask = tifffile.imread(out / "synth_0000_mask.tif").astype(bool)
    np.testing.assert_array_equal(mask, prob >= document["thresholds"]["fallback"])
    capsys.readouterr()
    assert main(["predict", "--model", str(folder), "--out", str(out), "--no-gate",
                 str(image)]) == 0
    assert "0 image(s) predicted, 1 already done" in capsys.readouterr().out
    # a run with an explicit threshold has no fallback: the image is redone, its mask empty
    assert main(["predict", "--model", str(folder), "--out", str(out), "--no-gate",
                 "--threshold", str(document["thresholds"]["mask"]), str(image)]) == 0
    with (out / "summary.csv").open(encoding="utf-8", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["fallback"] == "" and float(row["artifact_fraction"]) == 0
