"""The per-model prediction cache and the prediction generator (GUI-free)."""

from __future__ import annotations

import shutil

import numpy as np

from napari_artseg import process_memory
from napari_artseg.postprocess import clean_mask
from napari_artseg.prediction_cache import (
    CachedPrediction,
    LoadedModel,
    PredictionCache,
    complete_models,
    predict_images,
)


def test_cache_round_trip(tmp_path):
    cache = PredictionCache(tmp_path, "abc")
    prob = np.linspace(0, 1, 48, dtype=np.float32).reshape(6, 8)
    item = CachedPrediction("plate/a.tif", np.zeros_like(prob), prob, None, 0.2, False, 0.5, 3,
                            "abc", 0.65)
    assert not cache.has("plate/a.tif")
    cache.save(item, clean_mask(item.probability, 0.5, 3))
    assert (tmp_path / "abc" / "plate" / "a_prob.tif").is_file()
    loaded = cache.load("plate/a.tif")
    assert loaded.score == 0.2 and loaded.gate_passed is False and loaded.min_size_px == 3
    assert np.allclose(loaded.map(gated=False), prob) and not loaded.map().any()
    assert loaded.saliency is None and loaded.pixel_size_um == 0.65


def _recorded_mallopt(monkeypatch) -> list:
    """Record ``heap_reuse``'s glibc calls instead of making them."""
    calls: list = []
    monkeypatch.setattr(process_memory, "MALLOPT", lambda param, value: calls.append(
        (param, value)) or 1)
    return calls


JOB = [(process_memory.M_MMAP_THRESHOLD, process_memory.JOB_MMAP_THRESHOLD),
       (process_memory.M_TRIM_THRESHOLD, process_memory.JOB_TRIM_THRESHOLD)]
IDLE = [(process_memory.M_TRIM_THRESHOLD, process_memory.IDLE_TRIM_THRESHOLD)]


def test_the_prediction_job_keeps_freed_memory_while_it_runs(tiny_dataset, tiny_model, tmp_path,
                                                             monkeypatch):
    calls = _recorded_mallopt(monkeypatch)
    holder = LoadedModel()
    holder.select(tiny_model, "cpu")
    generator = predict_images(holder.get, tiny_dataset / "images",
                               ["synth_0000.tif", "synth_0001.tif"], tmp_path / "pred")
    next(generator)
    assert calls == JOB  # set while the images are predicted
    assert len(list(generator)) == 1
    assert calls == JOB + IDLE  # glibc's idle threshold once the job is done


def test_predict_images_caches_and_lists_models(tiny_dataset, tiny_model, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_model, models / "20240101T000000Z-a")
    (models / "junk").mkdir()
    assert complete_models(models) == ["20240101T000000Z-a"]
    holder = LoadedModel()
    holder.select(models / "20240101T000000Z-a", "cpu")
    images = ["synth_0000.tif", "missing.tif"]
    generator = predict_images(holder.get, tiny_dataset / "images", images, tmp_path / "pred")
    steps = list(generator)
    assert [s.index for s in steps] == [1, 2]
    assert steps[0].result is not None and steps[0].result.saliency is not None
    assert steps[1].error and steps[1].result is None
    cache = PredictionCache(tmp_path / "pred", holder.get().model_id)
    assert cache.has("synth_0000.tif") and not cache.has("missing.tif")
    holder.release()
    assert holder.model is None
