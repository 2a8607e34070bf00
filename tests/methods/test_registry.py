"""The method registry, the method settings, calibration and the CDL detector (no training)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_artseg.config import ANOMALY_METHODS, METHODS, ArtSegConfig, preset
from napari_artseg.conventional import ConventionalDetector
from napari_artseg.errors import ArtSegError
from napari_artseg.methods import SUPERVISIONS, get_method, list_methods
from napari_artseg.model_files import METHOD_COMPONENTS


def test_every_method_is_registered_once_with_its_declarations():
    names = [m.name for m in list_methods()]
    assert names == list(METHODS) == list(METHOD_COMPONENTS)
    assert set(ANOMALY_METHODS) < set(names)
    for method in list_methods():
        assert method.title and len(method.description) > 40
        assert method.supervision in SUPERVISIONS
        assert method.components == METHOD_COMPONENTS[method.name]
    assert {m.name for m in list_methods() if m.supervision == "clean_images"} == set(
        ANOMALY_METHODS)
    assert get_method("cdl").supervision == "none"
    assert get_method("supervised_unet").supervision == "pixel_masks"


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ArtSegError, match="unknown method 'magic'; choose one of scorecam_unet"):
        get_method("magic")
    with pytest.raises(ArtSegError, match="method must be one of"):
        preset("tiny", method="magic")


@pytest.mark.parametrize(
    ("name", "labels", "masks", "expected"),
    [("scorecam_unet", {"a": "clean", "b": "clean", "c": "artifact"}, False,
      "at least 2 clean and 2 artifact images; got 2 clean and 1 artifact"),
     ("ae_ssim", {"a": "artifact", "b": "artifact", "c": "clean"}, False,
      "clean images only and needs at least 2 images labelled clean; got 1"),
     ("supervised_unet", {"a": "clean", "b": "artifact"}, False, "needs pixel masks"),
     ("supervised_unet", {"a": "clean", "b": "artifact"}, True, ""),
     ("cdl", {}, False, ""),
     ("padim", {"a": "clean", "b": "clean"}, False, "")],
)
def test_missing_inputs_say_what_is_missing(tmp_path, name, labels, masks, expected):
    masks_dir = None
    if masks:
        masks_dir = tmp_path / "masks"
        masks_dir.mkdir()
        for key in labels:
            (masks_dir / f"{key}.tif").write_bytes(b"")
    message = get_method(name).missing_inputs(labels, masks_dir)
    assert (expected in message) if expected else message == ""


def test_ensemble_needs_what_its_members_need(tmp_path):
    labels = {"a": "clean", "b": "clean", "c": "artifact", "d": "artifact"}
    config = preset("tiny", method="ensemble", ensemble_members=["scorecam_unet",
                                                                  "supervised_unet"])
    message = get_method("ensemble").missing_inputs(labels, None, config)
    assert message.startswith("Ensemble member U-Net (pixel masks) needs pixel masks")
    config = config.replace(ensemble_members=["scorecam_unet", "ae_ssim"])
    assert get_method("ensemble").missing_inputs(labels, None, config) == ""


@pytest.mark.parametrize(
    ("changes", "word"),
    [({"ensemble_members": []}, "ensemble_members"),
     ({"ensemble_members": ["ensemble"]}, "ensemble_members"),
     ({"ensemble_weights": [1.0]}, "ensemble_weights"),
     ({"ensemble_weights": [0, 0]}, "ensemble_weights"),
     ({"ensemble_weights": [1, -1]}, "ensemble_weights"),
     ({"anomaly_params": {"unet": {}}}, "anomaly_params"),
     ({"anomaly_params": {"padim": 3}}, "anomaly_params"),
     ({"anomaly_calibration_percentile": 100.0}, "anomaly_calibration_percentile"),
     ({"cdl_low_threshold": 20.0}, "cdl_low_threshold"),
     ({"cdl_polarity": "up"}, "cdl_polarity")],
)
def test_bad_method_settings_name_the_field(changes, word):
    with pytest.raises(ArtSegError, match=word):
        preset("tiny", **changes)


def test_method_settings_round_trip_and_type_checks():
    config = preset("tiny", method="ensemble", ensemble_members=["cdl", "/some/model"],
                    ensemble_weights=[2, 1], anomaly_params={"padim": {"d": 3}})
    assert ArtSegConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ArtSegError, match="ensemble_members must be a list"):
        ArtSegConfig.from_dict({"ensemble_members": "cdl"})


def test_calibration_is_monotone_and_centred_on_the_clean_percentile():
    from napari_artseg.methods.anomaly_methods import Calibration

    clean = np.random.default_rng(0).normal(1.0, 0.2, 10_000)
    calibration = Calibration.fit(clean, 99.0)
    assert calibration.center == pytest.approx(np.percentile(clean, 99.0))
    scores = torch.linspace(-5, 10, 301)
    probs = calibration.apply(scores)
    assert torch.all(probs[1:] >= probs[:-1]) and probs.min() >= 0 and probs.max() <= 1
    assert float(calibration.apply(torch.tensor([calibration.center]))) == pytest.approx(0.5)
    assert float(calibration.apply(torch.tensor([float(np.median(clean))]))) < 0.05
    assert Calibration.fit(np.ones(100), 99.0).scale > 0  # constant scores: no division by 0


def test_default_conventional_detector_keeps_the_original_formula():
    from scipy import ndimage

    image = np.random.default_rng(1).normal(100, 5, (64, 64)).astype(np.float32)
    image[20:30, 20:30] -= 60
    residual = image - ndimage.gaussian_filter(image, 25.0, mode="reflect")
    mad = np.median(np.abs(residual - np.median(residual)))
    expected = ndimage.gaussian_filter(np.abs(residual) / (1.4826 * mad), 1.5)
    np.testing.assert_allclose(ConventionalDetector().score_map(image), expected, rtol=1e-5)


def test_hysteresis_grows_seeded_objects_only():
    score = np.zeros((40, 40), np.float32)
    score[5:15, 5:15] = 3.0  # above low only: no seed
    score[25:35, 25:35] = 3.0
    score[30, 30] = 9.0  # a seed inside the second object
    detector = ConventionalDetector(threshold=8.0, low_threshold=2.0, min_size_px=0)
    mask = detector.mask_from_scores(score)
    assert mask[25:35, 25:35].all() and not mask[5:15, 5:15].any()
    single = ConventionalDetector(threshold=8.0, min_size_px=0).mask_from_scores(score)
    assert single.sum() == 1


def test_cdl_detector_comes_from_the_config():
    config = preset("tiny", cdl_threshold=7.0, cdl_low_threshold=3.0, cdl_polarity="dark")
    detector = ConventionalDetector.from_config(config)
    assert (detector.threshold, detector.low_threshold, detector.polarity) == (7.0, 3.0, "dark")
    assert detector.flat_field and detector.dog_sigma == config.cdl_dog_sigma


def test_mask_settings_without_targets_prefer_f1_then_a_central_threshold():
    from napari_artseg.training.thresholds import choose_mask_settings

    probs = [np.full((8, 8), 0.05, np.float32), np.full((8, 8), 0.05, np.float32)]
    probs[1][2:5, 2:5] = 0.95
    threshold, fraction, report = choose_mask_settings(
        probs, np.array([0, 1]), np.array([True, True]), [None, None], np.array([False, False]))
    assert report["val_image_f1"] == 1.0 and threshold == 0.5 and fraction == 0.0


def test_the_methods_package_imports_no_gui_toolkit():
    import subprocess
    import sys

    code = ("import sys, napari_artseg.methods, napari_artseg.methods.anomaly_methods\n"
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'vispy'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == ""
