"""Closing napari while a training or prediction worker runs: a clean exit, nothing lost.

pytest-qt turns any exception raised in a Qt slot or virtual method into a test
failure, so "no traceback" is checked by the tests passing at all.
"""

from __future__ import annotations

import json
from pathlib import Path

from qtpy.QtCore import Qt
from test_training_widget import use_tiny

RUN_TIMEOUT_MS = 120_000


def model_folders(models_dir: Path) -> list[Path]:
    return sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_closing_napari_during_training_stops_the_worker(artseg, qtbot):
    viewer, widget = artseg
    training = widget.training
    project = widget.project
    labels_before = project.labels_path.read_bytes()
    use_tiny(widget, classifier_epochs=40)  # long enough to still be running at close
    qtbot.mouseClick(training.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: training.progress.current == "classifier", timeout=RUN_TIMEOUT_MS)
    worker = training.worker
    assert worker is not None and worker.is_running

    viewer.close()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=RUN_TIMEOUT_MS)

    assert project.labels_path.read_bytes() == labels_before
    for folder in model_folders(project.models_dir):  # the cancelled run: partial or absent
        document = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        assert document["status"] in ("partial", "complete")


def test_closing_napari_during_batch_prediction_stops_the_worker(artseg_with_model, qtbot):
    viewer, widget = artseg_with_model
    predict = widget.predict
    widget.setCurrentWidget(predict)
    labels_before = widget.project.labels_path.read_bytes()
    qtbot.mouseClick(predict.predict_all_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: predict.worker is not None and predict.worker.is_running,
                    timeout=RUN_TIMEOUT_MS)
    worker = predict.worker

    viewer.close()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=RUN_TIMEOUT_MS)
    assert widget.project.labels_path.read_bytes() == labels_before
