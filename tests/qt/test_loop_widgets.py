"""The human-in-the-loop pieces of the dock: retrain, next-most-useful keys, evaluate, export."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QPoint, Qt

from napari_artseg._widgets.prediction_layers import MASK_LAYER
from napari_artseg.active_selection import rank
from napari_artseg.curation import CuratedMasks, MaskEdit
from napari_artseg.image_files import read_mask

RUN_TIMEOUT_MS = 300_000
TIMEOUT_MS = 60_000


def press(qtbot, viewer, key, modifier=Qt.KeyboardModifier.NoModifier):
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, key, modifier)


def click(qtbot, button):
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def curate_truth(project, tiny_root, images):
    """Accept the true masks of ``images`` as curated (as if a person had drawn them)."""
    curated = CuratedMasks(project.masks_dir)
    for image in images:
        truth = read_mask(tiny_root / "masks" / image)
        curated.save(MaskEdit(image, "empty", np.zeros_like(truth)), truth)


def predict_shown(qtbot, viewer, widget):
    widget.setCurrentWidget(widget.predict)
    press(qtbot, viewer, Qt.Key.Key_W)
    qtbot.waitUntil(lambda: widget.predict.worker is None and widget.predict.prediction
                    is not None, timeout=TIMEOUT_MS)


def test_correct_then_retrain_selects_new_model_and_reports_iou(artseg_with_model, qtbot,
                                                                tiny_dataset):
    viewer, widget = artseg_with_model
    project = widget.project
    artifacts = [k for k, v in project.labels.labels.items() if v == "artifact"]
    curate_truth(project, tiny_dataset, artifacts[1:6])
    # correct the shown image's mask by hand and accept it with G
    widget.labelling.go_to_image(artifacts[0])
    qtbot.waitUntil(lambda: widget.labelling.shown_image == artifacts[0], timeout=TIMEOUT_MS)
    predict_shown(qtbot, viewer, widget)
    mask_layer = viewer.layers[MASK_LAYER]
    mask_layer.brush_size = 9  # paint with napari's brush (or erase where predicted)
    mask_layer.paint((30, 30), 0 if mask_layer.data[30, 30] else 1)
    press(qtbot, viewer, Qt.Key.Key_G)
    assert CuratedMasks(project.masks_dir).table.get(artifacts[0]).provenance == "corrected"
    # retrain with the fast preset (1 epoch each) from the Train tab
    training = widget.training
    widget.setCurrentWidget(training)
    training.settings.preset_box.setCurrentText("fast")
    training.settings.fields["classifier_epochs"].setValue(1)
    training.settings.fields["unet_epochs"].setValue(1)
    with qtbot.waitSignal(training.model_trained, timeout=RUN_TIMEOUT_MS) as signal:
        click(qtbot, training.retrain_button)
    qtbot.waitUntil(lambda: not training.running, timeout=TIMEOUT_MS)
    new = signal.args[0]
    assert project.current_model == new.name != "20000101T000000Z-previous"
    assert widget.predict.model_box.currentText() == new.name
    text = training.retrain_label.text()
    assert "held-out IoU" in text and "before" in text and "after" in text, text
    assert (new / "retrain_report.json").is_file() and (new / "masks_manifest.csv").is_file()


def test_next_most_useful_label_key_shows_an_unlabelled_image(artseg_with_model, qtbot):
    viewer, widget = artseg_with_model
    store = widget.project.labels
    cleared = list(store.labels)[-3:]
    for image in cleared:
        store.clear(image)
    press(qtbot, viewer, Qt.Key.Key_V)
    qtbot.waitUntil(lambda: widget.labelling.shown_image in cleared, timeout=TIMEOUT_MS)
    scores = widget.labelling.selector.scores
    assert set(scores) == set(cleared)
    assert widget.labelling.shown_image == rank(scores)[0]


def test_mask_key_evaluate_plot_click_and_export(artseg_with_model, qtbot, tiny_dataset):
    viewer, widget = artseg_with_model
    project, predict = widget.project, widget.predict
    artifacts = [k for k, v in project.labels.labels.items() if v == "artifact"]
    curate_truth(project, tiny_dataset, artifacts[:3])
    widget.setCurrentWidget(predict)
    click(qtbot, predict.predict_all_button)
    qtbot.waitUntil(lambda: predict.worker is None, timeout=RUN_TIMEOUT_MS)
    # Shift+V: the uncurated prediction with the most expected wrong pixels
    press(qtbot, viewer, Qt.Key.Key_V, Qt.KeyboardModifier.ShiftModifier)
    qtbot.waitUntil(lambda: bool(predict.selector.scores) and predict.selector.worker is None,
                    timeout=TIMEOUT_MS)
    scores = predict.selector.scores
    best = rank({i: v for i, v in scores.items() if i not in artifacts[:3]})[0]
    assert best not in artifacts[:3]
    qtbot.waitUntil(lambda: widget.labelling.shown_image == best, timeout=TIMEOUT_MS)
    # evaluate on the curated masks, then click the PR plot to set the threshold
    panel = predict.evaluation
    click(qtbot, panel.button)
    qtbot.waitUntil(lambda: panel.result is not None and panel.worker is None,
                    timeout=TIMEOUT_MS)
    assert "pixel IoU" in panel.result_label.text() and "object F1" in panel.result_label.text()
    assert panel.canvas is not None, "no plot"
    panel.canvas.draw()  # (the test viewer is not shown; draw so the transforms are final)
    axes = panel.canvas.figure.axes[0]
    x, y = axes.transData.transform((0.5, 0.5))
    ratio = panel.canvas.device_pixel_ratio
    where = QPoint(int(x / ratio), int((panel.canvas.figure.bbox.height - y) / ratio))
    predict.threshold.set_value(1.0)
    expected = panel.threshold_at(0.5, 0.5)
    assert expected < 1.0
    qtbot.mouseClick(panel.canvas, Qt.MouseButton.LeftButton, pos=where)
    qtbot.waitUntil(lambda: abs(predict.threshold.value() - round(expected, 6)) < 1e-3
                    or abs(predict.threshold.value() - expected) < 1e-3)
    # export from the Export tab
    export = widget.export
    widget.setCurrentWidget(export)
    export.model_box.setChecked(False)
    with qtbot.waitSignal(export.exported, timeout=RUN_TIMEOUT_MS) as signal:
        click(qtbot, export.export_button)
    report = signal.args[0]
    out = project.folder / "export"
    assert report.out == out and (out / "qc_images.csv").is_file()
    assert report.counts["curated"] == 3 and not report.errors
