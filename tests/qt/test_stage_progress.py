"""Stage bars: ScoreCAM-U-Net's from the start, other methods' added when their stage runs."""

from __future__ import annotations

from napari_artseg._widgets.stage_progress import BAR_STEPS, STAGES, StageProgress
from napari_artseg.training.events import ProgressEvent


def test_a_new_stage_gets_its_bar_and_finishes_it(make_napari_viewer, qtbot):
    make_napari_viewer()  # napari's activity dock receives the mirrored bars
    progress = StageProgress()
    qtbot.addWidget(progress)
    assert list(progress.bars) == list(STAGES)
    progress.on_event(ProgressEvent("data", kind="stage"))
    progress.on_event(ProgressEvent("ae_ssim", 3, 10, kind="step"))
    assert progress.titles["ae_ssim"] == "Autoencoder (AE-SSIM)"
    assert progress.bars["data"].value() == BAR_STEPS  # reading the images ended
    assert progress.bars["ae_ssim"].value() == int(0.3 * BAR_STEPS)
    progress.on_event(ProgressEvent("my_new_stage", 1, 2))
    assert progress.titles["my_new_stage"] == "My new stage"
    assert progress.bars["ae_ssim"].value() == BAR_STEPS  # the finished stage is filled
    progress.finish(complete=True)
    assert progress.bars["my_new_stage"].value() == BAR_STEPS
    progress.reset()
    assert all(bar.value() == 0 for bar in progress.bars.values())


def test_complete_run_fills_every_stage_it_ran_and_a_stop_marks_one(make_napari_viewer, qtbot):
    make_napari_viewer()
    progress = StageProgress()
    qtbot.addWidget(progress)
    for _round in (1, 2):  # self-training: the same two stages run twice
        progress.on_event(ProgressEvent("self_training", 1, 4))
        progress.on_event(ProgressEvent("unet_finetune", 2, 8))
    assert progress.visited == ["self_training", "unet_finetune"]
    progress.finish(complete=True)
    assert progress.bars["self_training"].value() == BAR_STEPS
    assert progress.bars["unet_finetune"].value() == BAR_STEPS
    assert progress.bars["classifier"].value() == 0  # never ran: stays empty
    assert progress.eta_labels["unet_finetune"].text() == "done"

    progress.reset()
    progress.on_event(ProgressEvent("classifier", 1, 4))
    progress.finish(complete=False)
    assert progress.bars["classifier"].value() == BAR_STEPS // 4
    assert progress.eta_labels["classifier"].text() == "stopped"


def test_validation_events_keep_the_bar_at_the_epoch_end(make_napari_viewer, qtbot):
    make_napari_viewer()
    progress = StageProgress()
    qtbot.addWidget(progress)
    progress.on_event(ProgressEvent("unet", 5, 10, message="epoch 1/2"))
    for done in (1, 2, 3):
        progress.on_event(ProgressEvent("unet", 5, 10, kind="validation",
                                        metrics={"validated": done, "of": 3},
                                        message=f"epoch 1/2: validating {done}/3"))
        assert progress.bars["unet"].value() == BAR_STEPS // 2
    progress.on_event(ProgressEvent("thresholds", kind="stage", message="choosing thresholds"))
    progress.on_event(ProgressEvent("thresholds", 3, 4, message="synth_0003.tif"))
    assert progress.bars["unet"].value() == BAR_STEPS  # the stage before ended
    assert progress.titles["thresholds"] == "Thresholds (validation images)"
    qtbot.waitUntil(lambda: progress.bars["thresholds"].value() == 3 * BAR_STEPS // 4)
    progress.close_napari_bars()


def test_a_burst_of_events_moves_a_bar_a_few_times_and_ends_on_the_latest(make_napari_viewer,
                                                                          qtbot, monkeypatch):
    """Each bar repaint costs the GUI thread (30 ms with software OpenGL): a burst of steps,
    as a save of many small files sends, is shown at most every BAR_UPDATE_S."""
    make_napari_viewer()
    progress = StageProgress()
    qtbot.addWidget(progress)
    shown = []
    bar = progress.bars["save"]
    real = bar.setValue
    monkeypatch.setattr(bar, "setValue", lambda value: shown.append(value) or real(value))
    progress.on_event(ProgressEvent("save", kind="stage", message="saving"))
    for step in range(1, 101):
        progress.on_event(ProgressEvent("save", step, 100))
    assert len(shown) < 10  # the stage's first value at once, the rest held back
    qtbot.waitUntil(lambda: bar.value() == BAR_STEPS)  # the latest, once the interval passed
    assert shown[-1] == BAR_STEPS and len(shown) < 10
    progress.on_event(ProgressEvent("classifier", 1, 4))  # a new stage shows at once
    assert progress.bars["classifier"].value() == BAR_STEPS // 4
    assert bar.value() == BAR_STEPS and progress.eta_labels["save"].text() == "done"
