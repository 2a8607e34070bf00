"""The Train tab handles a run's signals in the order they were sent.

napari's activity-dock bars run the Qt event loop inside (``processEvents`` when
one is made or moved), so the next queued progress events, and the worker's
``returned`` and ``finished`` signals, are delivered while the dock is still
handling an earlier one. Without care the earlier one then finishes last and
leaves its stale bar value and stage text on screen.
"""

from __future__ import annotations

from napari.qt.threading import create_worker

from napari_artseg._widgets.stage_progress import BAR_STEPS
from napari_artseg.training.events import ProgressEvent


def scripted_run():
    """The events of a short run: reading, a classifier epoch, saving; returns a folder name."""
    yield ProgressEvent("data", kind="stage", message="reading images on cpu")
    for step in range(1, 6):
        yield ProgressEvent("data", step, 5, message=f"read image {step}")
    yield ProgressEvent("classifier", kind="stage", message="training the classifier")
    for step in range(1, 4):
        yield ProgressEvent("classifier", step, 3, loss=0.5)
    yield ProgressEvent("save", kind="stage", message="saving model")
    for step in range(1, 5):
        yield ProgressEvent("save", step, 4, message=f"{step}/4 files")
    yield ProgressEvent("save", 1, 1, kind="stage", message="saved model")
    return "model"


def test_events_are_handled_in_order_though_napari_bars_run_the_event_loop(artseg, qtbot,
                                                                           monkeypatch):
    _viewer, widget = artseg
    training = widget.training
    handled, announced = [], []
    shown = training.progress.on_event
    monkeypatch.setattr(training.progress, "on_event",
                        lambda event: shown(event) or handled.append(event))
    monkeypatch.setattr(training, "_announce_model", lambda folder: announced.append(
        (folder, len(handled))))
    sent = list(scripted_run())
    worker = create_worker(scripted_run, _start_thread=False, _ignore_errors=True)
    worker.yielded.connect(training._on_yielded)
    worker.returned.connect(training._on_returned)
    with qtbot.waitSignal(worker.finished, timeout=10_000):
        worker.start()
    qtbot.waitUntil(lambda: bool(announced))
    assert handled == sent  # every event once, in the order the run sent them
    assert announced == [("model", len(sent))]  # the end of the run comes after its events
    bars, etas = training.progress.bars, training.progress.eta_labels
    assert bars["data"].value() == bars["classifier"].value() == BAR_STEPS
    assert etas["data"].text() == etas["classifier"].text() == "done"
    qtbot.waitUntil(lambda: bars["save"].value() == BAR_STEPS)  # bars move every BAR_UPDATE_S
    assert training.stage_label.text() == "saved model"


def test_a_note_on_micro_batches_shows_under_the_bars(artseg, qtbot):
    _viewer, widget = artseg
    training = widget.training
    note = ("a step on 8 images needs about 23.27 GB and 19.80 GB is available: each batch "
            "trains in 2 micro-batches")

    def run():
        yield ProgressEvent("unet", kind="stage", message="training the U-Net")
        yield ProgressEvent("unet", 0, 10, kind="info", message=note)
        return "model"

    worker = create_worker(run, _start_thread=False, _ignore_errors=True)
    worker.yielded.connect(training._on_yielded)
    with qtbot.waitSignal(worker.finished, timeout=10_000):
        worker.start()
    qtbot.waitUntil(lambda: training.stage_label.text() == note)
