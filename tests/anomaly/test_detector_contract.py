"""The contract every anomaly detector keeps: parameters, fit as a generator that can be
stopped, score maps of any size, strict state round trips (through a safetensors file)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from anomaly_helpers import TINY_PARAMS
from safetensors.torch import load_file, save_file

from napari_artseg.errors import ArtSegError
from napari_artseg.methods.anomaly import (
    DETECTORS,
    DetectorParamsError,
    DetectorStateError,
    NotFittedError,
)
from napari_artseg.training.events import ProgressEvent

NAMES = sorted(DETECTORS)


def test_registry_names():
    assert set(DETECTORS) == {"ae_ssim", "padim", "patchsvdd"}


@pytest.mark.parametrize("name", NAMES)
def test_default_params_are_json_and_merge(name):
    cls = DETECTORS[name]
    defaults = cls.default_params()
    assert json.loads(json.dumps(defaults)) == defaults
    detector = cls(TINY_PARAMS[name])
    assert set(detector.params) == set(defaults)
    for key, value in TINY_PARAMS[name].items():
        assert detector.params[key] == value
    # the merged dict, written to JSON and read back, builds the same detector
    again = cls(json.loads(json.dumps(detector.params)))
    assert again.params == detector.params


@pytest.mark.parametrize("name", NAMES)
def test_unknown_param_is_named(name):
    with pytest.raises(ValueError, match="'no_such_knob'"):
        DETECTORS[name]({"no_such_knob": 3})


@pytest.mark.parametrize(
    ("name", "params", "fragment"),
    [
        ("ae_ssim", {"patch_size": 48}, "patch_size"),
        ("ae_ssim", {"epochs": 0}, "epochs"),
        ("ae_ssim", {"learning_rate": "fast"}, "learning_rate"),
        ("ae_ssim", {"ssim_window": 10}, "ssim_window"),
        ("ae_ssim", {"augment": 1}, "augment"),
        ("padim", {"backbone": "imagenet"}, "backbone"),
        ("padim", {"layers": [2, 1]}, "layers"),
        ("padim", {"layers": [1, 2, 5]}, "layers"),
        ("padim", {"crop_size": 36}, "crop_size"),
        ("padim", {"d": 10_000}, "'d'"),
        ("padim", {"tile_overlap": 0.5}, "tile_overlap"),
        ("patchsvdd", {"patch_sizes": [16]}, "patch_sizes"),
        ("patchsvdd", {"patch_sizes": []}, "patch_sizes"),
        ("patchsvdd", {"memory_size": 0}, "memory_size"),
        ("patchsvdd", {"svdd_weight": float("nan")}, "svdd_weight"),
    ],
)
def test_bad_param_values(name, params, fragment):
    with pytest.raises(DetectorParamsError, match=fragment) as info:
        DETECTORS[name](params)
    assert isinstance(info.value, (ValueError, ArtSegError))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", NAMES)
def test_score_before_fit_is_a_clear_error(name):
    detector = DETECTORS[name](TINY_PARAMS[name])
    with pytest.raises(NotFittedError, match="not fitted"):
        detector.score_map(torch.zeros(1, 40, 40))
    with pytest.raises(NotFittedError):
        detector.state_tensors()


@pytest.mark.parametrize("name", NAMES)
def test_fit_yields_progress_and_stops_early(name, clean_images):
    detector = DETECTORS[name](TINY_PARAMS[name])
    fit = detector.fit(clean_images)
    first = next(fit)
    second = next(fit)
    assert isinstance(first, ProgressEvent) and first.kind == "step"
    assert first.total > 0 and 0 < first.step < second.step <= first.total
    assert first.loss is not None and np.isfinite(first.loss)
    fit.close()
    assert not detector.fitted
    with pytest.raises(NotFittedError):
        detector.score_map(clean_images[0])


@pytest.mark.parametrize("name", NAMES)
def test_fit_events_cover_epochs(name, fitted):
    detector, events = fitted(name)
    assert detector.fitted
    epochs = [e for e in events if e.kind == "epoch"]
    assert [e.metrics["epoch"] for e in epochs] == list(range(1, TINY_PARAMS[name]["epochs"] + 1))
    assert all(np.isfinite(e.loss) for e in epochs)
    assert events[-1].step == events[-1].total


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(1, 32, 32), (1, 37, 45), (1, 131, 77), (1, 203, 150)])
def test_score_map_shape_any_size(name, shape, fitted):
    detector, _ = fitted(name)
    image = torch.from_numpy(np.random.default_rng(3).standard_normal(shape, dtype=np.float32))
    scores = detector.score_map(image)
    assert scores.shape == shape[1:]
    assert scores.dtype == torch.float32 and scores.device.type == "cpu"
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "bad", [torch.zeros(40, 40), torch.zeros(2, 40, 40), torch.zeros(1, 31, 64),
            torch.full((1, 40, 40), float("nan")), torch.zeros(1, 40, 40, dtype=torch.int64)],
)
def test_score_map_rejects_bad_images(name, bad, fitted):
    detector, _ = fitted(name)
    with pytest.raises(DetectorParamsError, match="image"):
        detector.score_map(bad)


@pytest.mark.parametrize("name", NAMES)
def test_fit_rejects_too_small_or_empty(name):
    detector = DETECTORS[name](TINY_PARAMS[name])
    with pytest.raises(DetectorParamsError, match="non-empty"):
        list(detector.fit([]))
    with pytest.raises(DetectorParamsError, match="at least"):
        list(detector.fit([torch.zeros(1, 20, 20)]))


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_through_safetensors(name, fitted, artifact_images, tmp_path):
    detector, _ = fitted(name)
    path = tmp_path / "detector.safetensors"
    save_file(detector.state_tensors(), str(path))
    # another seed: everything that matters must come from the tensors
    loaded = DETECTORS[name](json.loads(json.dumps(detector.params)), seed=7)
    loaded.load_state_tensors(load_file(str(path)))
    assert loaded.fitted
    for image, _ in artifact_images[:2]:
        assert torch.equal(loaded.score_map(image), detector.score_map(image))
    odd = artifact_images[0][0][:, :70, :99]
    assert torch.equal(loaded.score_map(odd), detector.score_map(odd))


@pytest.mark.parametrize("name", NAMES)
def test_load_names_the_bad_tensor(name, fitted):
    detector, _ = fitted(name)
    state = detector.state_tensors()
    first = sorted(state)[0]
    target = DETECTORS[name](detector.params)

    missing = {k: v for k, v in state.items() if k != first}
    with pytest.raises(DetectorStateError, match=f"'{first}' is missing"):
        target.load_state_tensors(missing)

    extra = {**state, "surprise": torch.zeros(1)}
    with pytest.raises(DetectorStateError, match="unexpected tensor 'surprise'"):
        target.load_state_tensors(extra)

    float_name = next(k for k in sorted(state) if state[k].is_floating_point())
    reshaped = {**state, float_name: torch.zeros(*state[float_name].shape, 2)}
    with pytest.raises(DetectorStateError, match=f"'{float_name}' has shape"):
        target.load_state_tensors(reshaped)

    retyped = {**state, float_name: state[float_name].double()}
    with pytest.raises(DetectorStateError, match=f"'{float_name}' has dtype"):
        target.load_state_tensors(retyped)

    poisoned = {**state, float_name: torch.full_like(state[float_name], float("nan"))}
    with pytest.raises(DetectorStateError, match="not finite"):
        target.load_state_tensors(poisoned)
    assert not target.fitted
