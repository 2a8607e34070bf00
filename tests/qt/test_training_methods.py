"""The Train tab's method choice: the list, what each needs, refusals, a run of another method."""

from __future__ import annotations

import json
from pathlib import Path

from qtpy.QtCore import Qt

from napari_artseg.config import METHODS

RUN_TIMEOUT_MS = 120_000


def choose(widget, method: str) -> None:
    settings = widget.training.settings
    settings.preset_box.setCurrentText("tiny")
    settings.set_method(method)
    settings.device_box.setCurrentIndex(settings.device_box.findData("cpu"))


def test_the_widget_lists_every_method_with_its_supervision(artseg):
    _, widget = artseg
    box = widget.training.settings.method_box
    assert [box.itemData(i) for i in range(box.count())] == list(METHODS)
    texts = [box.itemText(i) for i in range(box.count())]
    assert texts[0] == "ScoreCAM-U-Net (image labels)"
    assert "AE-SSIM (clean images only)" in texts and "U-Net (pixel masks) (pixel masks)" in texts
    assert texts[-1].endswith("(no labels)")
    assert box.itemData(3, Qt.ItemDataRole.ToolTipRole).startswith("A convolutional autoencoder")
    widget.training.settings.preset_box.setCurrentText("paper")  # a preset keeps the method
    choose(widget, "padim")
    widget.training.settings.preset_box.setCurrentText("fast")
    assert widget.training.settings.config().method == "padim"


def test_missing_clean_images_or_masks_are_named_before_starting(artseg, qtbot):
    _, widget = artseg
    training = widget.training
    store = widget.project.labels
    for image, word in list(store.labels.items()):
        if word == "clean":
            store.clear(image)
    choose(widget, "ae_ssim")
    assert "Missing: AE-SSIM trains on clean images only" in training.needs_label.text()
    qtbot.mouseClick(training.start_button, Qt.MouseButton.LeftButton)
    assert not training.running
    assert "labelled clean; got 0" in training.status_label.text()
    assert "Label clean images in the Label tab" in training.status_label.text()
    choose(widget, "supervised_unet")
    assert training.needs_label.text().startswith("Needs pixel masks")
    assert training.start() is False
    assert "needs pixel masks" in training.status_label.text()
    assert "accept them (G) in Predict & correct" in training.status_label.text()
    choose(widget, "cdl")
    assert "Missing" not in training.needs_label.text()


def test_a_cdl_run_from_the_widget_becomes_the_current_model(artseg, qtbot):
    _, widget = artseg
    training = widget.training
    choose(widget, "cdl")
    training.settings.fields["unet_epochs"].setValue(1)
    with qtbot.waitSignal(training.model_trained, timeout=RUN_TIMEOUT_MS) as signal:
        assert training.start()
    qtbot.waitUntil(lambda: not training.running)
    folder = Path(signal.args[0])
    assert folder.name.endswith("-cdl")
    document = json.loads((folder / "config.json").read_text())
    assert document["method"] == "cdl" and document["status"] == "complete"
    assert widget.project.current_model == folder.name
    assert widget.predict.model_box.currentText() == folder.name
    assert widget.project.settings["training"]["method"] == "cdl"
    other = widget.training.settings
    other.set_method("scorecam_unet")
    training.set_project(widget.project)  # the saved settings bring the method back
    assert other.method() == "cdl"
