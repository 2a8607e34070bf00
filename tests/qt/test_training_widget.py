"""The Train tab: a real tiny training run in a napari worker, cancel, errors."""

from __future__ import annotations

import gc
import hashlib
import json
from pathlib import Path

import pytest
from qtpy.QtCore import Qt, QTimer

from napari_artseg._widgets.stage_progress import STAGES
from napari_artseg.labels_file import read_labels_csv
from napari_artseg.training_curves import CURVES_CSV, CURVES_PNG

RUN_TIMEOUT_MS = 120_000


def use_tiny(widget, classifier_epochs: int = 2) -> None:
    """The tiny preset in the form (tests must take seconds)."""
    settings = widget.training.settings
    settings.preset_box.setCurrentText("tiny")
    settings.fields["classifier_epochs"].setValue(classifier_epochs)
    settings.device_box.setCurrentIndex(settings.device_box.findData("cpu"))


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


class Ticks:
    """Counts the ticks of a 10 ms timer in the GUI thread (proof the event loop runs)."""

    def __init__(self) -> None:
        self.count = 0
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self.tick)
        self.timer.start()

    def tick(self) -> None:
        self.count += 1


def test_training_run_in_worker(artseg, qtbot):
    viewer, widget = artseg
    training = widget.training
    use_tiny(widget, classifier_epochs=4)
    widget.setCurrentWidget(training)
    events = []
    qtbot.mouseClick(training.start_button, Qt.MouseButton.LeftButton)
    assert training.running and not training.start_button.isEnabled()
    training.worker.yielded.connect(events.append)

    # while a stage is running, the viewer answers: a labelling key is handled and saved
    qtbot.waitUntil(lambda: training.progress.current == "classifier", timeout=RUN_TIMEOUT_MS)
    ticks = Ticks()
    image = widget.labelling.navigator.current
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.keyClick(canvas, Qt.Key.Key_Q)  # clear this image's label ...
    qtbot.waitUntil(lambda: image not in read_labels_csv(widget.project.labels_path).labels)
    qtbot.keyClick(canvas, Qt.Key.Key_K)  # ... and label it again
    qtbot.waitUntil(lambda: read_labels_csv(widget.project.labels_path).labels.get(image)
                    == "artifact")
    qtbot.waitUntil(lambda: ticks.count >= 5)  # a 10 ms timer keeps ticking meanwhile
    assert training.running and training.progress.current in STAGES
    assert gc.get_freeze_count() > 0  # napari's objects are out of full collections' way

    with qtbot.waitSignal(training.model_trained, timeout=RUN_TIMEOUT_MS) as signal:
        pass
    qtbot.waitUntil(lambda: not training.running)
    folder = Path(signal.args[0])
    assert folder.parent == widget.project.models_dir and folder.name.endswith("scorecam_unet")
    document = json.loads((folder / "config.json").read_text())
    assert document["status"] == "complete"
    assert (folder / CURVES_PNG).stat().st_size > 0
    rows = training.job.curves  # 4 classifier epochs, then the U-Net's (and its self-training)
    assert len((folder / CURVES_CSV).read_text().splitlines()) == 1 + len(rows)
    assert [r["epoch"] for r in rows if r["stage"] == "classifier"] == [1, 2, 3, 4]
    unet_epochs = [r["epoch"] for r in rows if r["stage"] == "unet"]
    assert unet_epochs == list(range(1, len(unet_epochs) + 1))  # numbered on across rounds
    # progress and plot
    assert {e.stage for e in events} >= set(STAGES)
    assert training.device_label.text() == "Device in use: cpu"
    short = {s: training.progress.bars[s].value() for s in STAGES
             if training.progress.bars[s].value() != training.progress.bars[s].maximum()}
    assert not short, f"bars not full: {short}; stage order {[e.stage for e in events]}"
    # the choice of thresholds has its bar too (it judges every validation image), and each
    # epoch's validation reported its images
    assert training.progress.bars["thresholds"].value() == training.progress.bars[
        "thresholds"].maximum()
    assert {e.stage for e in events if e.kind == "validation"} >= {"classifier", "unet"}
    qtbot.waitUntil(lambda: training.plot.points == 3 * len(rows),  # rendered off the GUI thread
                    timeout=RUN_TIMEOUT_MS)
    assert training.plot.rows == rows
    # the newest model is current and selected in the predict tab
    assert widget.project.current_model == folder.name
    assert widget.predict.model_box.currentText() == folder.name
    assert training.start_button.isEnabled() and not training.cancel_button.isEnabled()
    assert gc.get_freeze_count() == 0  # unfrozen when the run ended


@pytest.mark.parametrize("in_subprocess", [True, False])
def test_cancel_keeps_previous_model(artseg_with_model, qtbot, monkeypatch, in_subprocess):
    import multiprocessing

    import napari_artseg.training.pipeline as pipeline

    released = []
    original = pipeline.release_memory
    monkeypatch.setattr(pipeline, "release_memory",
                        lambda device: (released.append(device), original(device)))
    _, widget = artseg_with_model
    training = widget.training
    training.in_subprocess = in_subprocess
    children_before = set(multiprocessing.active_children())  # e.g. earlier tests' pools
    project = widget.project
    previous = project.models_dir / project.current_model
    before = folder_digest(previous)
    use_tiny(widget)
    qtbot.mouseClick(training.start_button, Qt.MouseButton.LeftButton)
    job = training.job
    qtbot.waitUntil(lambda: training.progress.current == "unet", timeout=RUN_TIMEOUT_MS)
    with qtbot.waitSignal(training.running_changed, timeout=RUN_TIMEOUT_MS):
        qtbot.mouseClick(training.cancel_button, Qt.MouseButton.LeftButton)
    # in-process the pipeline released the device's memory; a child process has ended
    children_after = set(multiprocessing.active_children())
    assert job.cancelled and (children_after <= children_before if in_subprocess else released)
    assert job.in_subprocess == in_subprocess
    assert project.current_model == previous.name
    assert folder_digest(previous) == before
    partial = json.loads((job.out / "config.json").read_text())
    assert partial["status"] == "partial"
    assert (job.out / CURVES_CSV).is_file()
    assert "Cancelled" in training.status_label.text()
    assert training.start_button.isEnabled() and not training.cancel_button.isEnabled()
    assert widget.predict.model_box.currentText() == previous.name  # partial is not listed


def test_too_few_labels_is_refused(artseg, qtbot):
    _, widget = artseg
    store = widget.project.labels
    for image, word in list(store.labels.items()):
        if word == "artifact":
            store.clear(image)
    qtbot.mouseClick(widget.training.start_button, Qt.MouseButton.LeftButton)
    assert not widget.training.running
    assert "at least 2 clean and 2 artifact" in widget.training.status_label.text()
    assert widget.training.start_button.isEnabled()


def test_worker_error_is_shown_and_widget_recovers(artseg, qtbot, monkeypatch):
    import napari_artseg.training_job as training_job

    def out_of_memory(*_args, **_kwargs):
        from napari_artseg.training.events import ProgressEvent

        yield ProgressEvent("data", kind="stage", metrics={"device": "cuda"})
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(training_job, "train_pipeline", out_of_memory)
    _, widget = artseg
    training = widget.training
    training.in_subprocess = False  # the patched pipeline lives in this process
    with qtbot.waitSignal(training.running_changed, timeout=RUN_TIMEOUT_MS,
                          check_params_cb=lambda running: not running):
        assert training.start()
    text = training.status_label.text()
    assert "out of GPU memory" in text and "batch size" in text
    assert training.start_button.isEnabled() and not training.running


@pytest.mark.parametrize("name", ["fast", "paper"])
def test_preset_fills_the_form(artseg, name):
    from napari_artseg.config import preset

    _, widget = artseg
    settings = widget.training.settings
    settings.preset_box.setCurrentText(name)
    config = settings.config()
    expected = preset(name)
    assert (config.input_size, config.unet_epochs, config.batch_size) == (
        expected.input_size, expected.unet_epochs, expected.batch_size)
