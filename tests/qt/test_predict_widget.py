"""The Predict & correct tab: prediction layers, live threshold, painting and accepting."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_artseg._widgets.prediction_layers import MASK_LAYER, PROBABILITY_LAYER
from napari_artseg._widgets.threshold_control import SLIDER_STEPS
from napari_artseg.image_files import read_mask
from napari_artseg.predictor import ArtSegModel

TIMEOUT_MS = 60_000


@pytest.fixture
def predict_calls(monkeypatch):
    """Counts calls of ArtSegModel.predict (the network), from any thread."""
    calls = []
    original = ArtSegModel.predict

    def counted(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ArtSegModel, "predict", counted)
    return calls


def press(qtbot, viewer, key):
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, key)


def predict_shown_image(qtbot, viewer, widget):
    predict = widget.predict
    widget.setCurrentWidget(predict)
    press(qtbot, viewer, Qt.Key.Key_W)
    assert predict.worker is not None
    qtbot.waitUntil(lambda: predict.worker is None, timeout=TIMEOUT_MS)
    assert predict.prediction is not None and predict.prediction.image == predict.image
    return predict


def provenance_rows(project):
    with open(project.masks_dir / "provenance.csv", newline="") as handle:
        return {row["image"]: row for row in csv.DictReader(handle)}


def test_predict_adds_layers_at_image_size(artseg_with_model, qtbot, predict_calls):
    viewer, widget = artseg_with_model
    predict = predict_shown_image(qtbot, viewer, widget)
    shape = widget.labelling.layer.data.shape
    prob, mask = viewer.layers[PROBABILITY_LAYER], viewer.layers[MASK_LAYER]
    assert prob.data.shape == shape and mask.data.shape == shape
    assert prob.colormap.name == "inferno" and prob.opacity == 0.5
    assert viewer.layers.selection.active is mask and mask.selected_label == 1
    assert predict.layers.saliency is not None and predict.layers.saliency.data.shape == shape
    assert predict.score_label.text().startswith("Artifact score")
    assert len(predict_calls) == 1
    cached = widget.project.predictions_dir / predict.model_id
    stem = predict.image.rsplit(".", 1)[0]
    for suffix in ("_prob.tif", "_mask.tif", ".json", "_saliency.tif"):
        assert (cached / f"{stem}{suffix}").is_file()


def test_threshold_changes_mask_without_inference(artseg_with_model, qtbot, predict_calls):
    viewer, widget = artseg_with_model
    predict = predict_shown_image(qtbot, viewer, widget)
    predict.ungated_box.setChecked(True)  # the tiny model may call the image clean
    predict.min_size_box.setValue(0)
    predict.fallback_box.setValue(0)  # off: an empty mask stays empty
    mask_layer = viewer.layers[MASK_LAYER]
    predict.threshold.slider.setValue(0)  # 0.0001
    qtbot.waitUntil(lambda: mask_layer.data.sum() > 0)
    assert predict.threshold.value() == pytest.approx(1e-4)
    low = int(mask_layer.data.sum())
    predict.threshold.slider.setValue(SLIDER_STEPS)  # 1.0
    qtbot.waitUntil(lambda: mask_layer.data.sum() < low)
    predict.threshold.field.setValue(0.001)  # the paper's threshold, typed
    qtbot.waitUntil(lambda: mask_layer.data.sum() > 0)
    assert predict.threshold.slider.value() == SLIDER_STEPS // 4
    assert len(predict_calls) == 1  # one inference, many masks


def test_fallback_cuts_the_mask_only_when_it_is_empty_at_the_threshold(artseg_with_model, qtbot,
                                                                      predict_calls):
    viewer, widget = artseg_with_model
    predict = predict_shown_image(qtbot, viewer, widget)
    predict.ungated_box.setChecked(True)
    predict.min_size_box.setValue(0)
    chosen = ArtSegModel.load(widget.project.models_dir / predict.model_box.currentText()
                              ).thresholds.get("fallback") or 0.0
    assert predict.fallback_box.value() == pytest.approx(chosen, abs=0.005)  # the model's
    predict.fallback_box.setValue(0)
    assert predict.fallback_box.text() == "off"
    prob = predict.prediction.map(gated=False)
    mask_layer = viewer.layers[MASK_LAYER]
    predict.threshold.slider.setValue(SLIDER_STEPS)  # 1.0: above the whole map
    qtbot.waitUntil(lambda: not mask_layer.data.any())
    median = round(float(np.median(prob)), 2)
    predict.fallback_box.setValue(median)  # the empty mask falls back to the median
    qtbot.waitUntil(lambda: mask_layer.data.any())
    np.testing.assert_array_equal(np.asarray(mask_layer.data) != 0, prob >= median)
    predict.threshold.field.setValue(float(np.quantile(prob, 0.99)))
    cut = predict.threshold.value()  # as the field rounds it
    assert median < cut <= prob.max()  # a mask at the threshold: no fallback
    qtbot.waitUntil(lambda: np.asarray(mask_layer.data).sum() == (prob >= cut).sum())
    assert len(predict_calls) == 1


def test_paint_accept_and_reopen(artseg_with_model, qtbot, predict_calls):
    viewer, widget = artseg_with_model
    project = widget.project
    predict = predict_shown_image(qtbot, viewer, widget)
    image = predict.image
    mask_layer = viewer.layers[MASK_LAYER]
    mask_layer.brush_size = 5
    before = np.asarray(mask_layer.data) != 0
    mask_layer.paint((20, 30), 0 if before[20, 30] else 1)  # paint, or erase where predicted
    painted = np.asarray(mask_layer.data) != 0
    assert painted[20, 30] != before[20, 30]
    press(qtbot, viewer, Qt.Key.Key_G)  # accept as curated
    saved = read_mask(project.masks_dir / image)
    assert np.array_equal(saved, painted)
    row = provenance_rows(project)[image]
    assert row["provenance"] == "corrected" and row["model_id"] == predict.model_id

    # the next image, then back: the curated mask is the Labels layer again
    press(qtbot, viewer, Qt.Key.Key_N)
    qtbot.waitUntil(lambda: predict.image != image)
    press(qtbot, viewer, Qt.Key.Key_H)
    qtbot.waitUntil(lambda: predict.image == image)
    assert np.array_equal(np.asarray(viewer.layers[MASK_LAYER].data) != 0, painted)
    assert predict.edit.source == "curated"
    assert len(predict_calls) == 1


def test_unsaved_edits_are_autosaved_when_moving_on(artseg_with_model, qtbot):
    viewer, widget = artseg_with_model
    project = widget.project
    predict = widget.predict
    image = predict.image
    qtbot.mouseClick(predict.draw_button, Qt.MouseButton.LeftButton)
    layer = viewer.layers[MASK_LAYER]
    assert layer.data.shape == widget.labelling.layer.data.shape and not layer.data.any()
    layer.paint((10, 10), 1)
    press(qtbot, viewer, Qt.Key.Key_N)
    qtbot.waitUntil(lambda: predict.image != image)
    assert read_mask(project.masks_dir / image)[10, 10]
    assert provenance_rows(project)[image]["provenance"] == "drawn"
