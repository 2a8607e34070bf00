"""One determinate progress bar per training stage, with ETA, in the dock and the activity dock."""

from __future__ import annotations

import time
from typing import Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QGridLayout, QLabel, QProgressBar, QWidget

from ..training.events import ProgressEvent

#: The ScoreCAM-U-Net stages: a bar each from the start, with these titles. Every method
#: reads its images (a step per image) and saves its model folder (a step per file).
STAGES: dict[str, str] = {
    "data": "Reading images",
    "classifier": "Classifier",
    "pseudo_labels": "Score-CAM pseudo-labels",
    "unet": "U-Net",
    "self_training": "Self-training targets",
    "unet_finetune": "U-Net fine-tuning",
    "thresholds": "Thresholds (validation images)",
    "save": "Saving the model",
}
#: Titles of optional stages and of the other methods' stages; their bars are added when the
#: stage first runs (per-image deletion-test thresholds run only with ``pseudo_label_per_image``).
OTHER_TITLES: dict[str, str] = {
    "pseudo_thresholds": "Pseudo-label thresholds",
    "cdl_labels": "Conventional labels",
    "ae_ssim": "Autoencoder (AE-SSIM)",
    "padim": "PaDiM encoder",
    "padim_backbone": "PaDiM encoder",
    "padim_statistics": "PaDiM statistics",
    "patchsvdd": "PatchSVDD encoder",
    "patchsvdd_memory": "PatchSVDD memory",
    "calibration": "Calibration",
    "members": "Ensemble members",
}
#: Short bookkeeping stages: a bar in the dock, none in napari's activity dock (each napari bar
#: made or moved runs the event loop and repaints the window).
NOT_MIRRORED = ("data", "save")
BAR_STEPS = 1000
#: The dock's bars move at most this often within a stage. ``QProgressBar.setValue`` repaints
#: at once, and with napari's OpenGL canvas in the window that took 30 ms per call on the
#: development VM (software OpenGL under Xvfb): a save of 30 small files, an event each,
#: stalled the GUI thread for up to 0.95 s (``benchmarks/bench_event_loop.py``, session 22).
BAR_UPDATE_S = 0.2
#: napari's activity-dock bars are updated at most this often (each update repaints there).
NAPARI_UPDATE_S = 0.25


def format_eta(seconds: float | None) -> str:
    """``ETA 1:05`` style text ('' when unknown)."""
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"ETA {hours}:{minutes:02d}:{secs:02d}" if hours else f"ETA {minutes}:{secs:02d}"


class StageClock:
    """Elapsed time and remaining-time estimate of one stage (GUI-free)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def eta(self, fraction: float) -> float | None:
        """Seconds left at ``fraction`` done, by linear extrapolation (None before any step)."""
        if fraction <= 0:
            return None
        elapsed = time.perf_counter() - self.start
        return max(0.0, elapsed * (1 - fraction) / fraction)


class StageProgress(QWidget):
    """A bar per training stage, mirrored as napari progress bars.

    ScoreCAM-U-Net's stages have bars from the start; another method's stages get
    theirs when they first run.

    The napari bars (``napari.utils.progress``) appear in napari's activity dock;
    each is opened when its stage starts and closed when it ends or the run stops.
    Reading the images and saving the model (:data:`NOT_MIRRORED`) are not mirrored.
    """

    def __init__(self) -> None:
        super().__init__()
        self._grid = QGridLayout(self)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self.bars: dict[str, QProgressBar] = {}
        self.eta_labels: dict[str, QLabel] = {}
        self.titles: dict[str, str] = {}
        for stage in STAGES:
            self._add_bar(stage)
        self._napari_bars: dict[str, Any] = {}
        self._clocks: dict[str, StageClock] = {}
        self.current: str | None = None
        self.visited: list[str] = []
        self.events_seen = 0
        self._napari_updated = 0.0
        self._pending: dict[str, tuple[int, str]] = {}  # stage -> (bar value, ETA text)
        self._shown_at = 0.0
        self._show_timer = QTimer(self)
        self._show_timer.setSingleShot(True)
        self._show_timer.setInterval(int(BAR_UPDATE_S * 1000))
        self._show_timer.timeout.connect(self._show_pending)

    def _add_bar(self, stage: str) -> None:
        """A row (title, bar, ETA) for ``stage``."""
        title = STAGES.get(stage) or OTHER_TITLES.get(stage) or stage.replace("_", " ").capitalize()
        bar = QProgressBar()
        bar.setRange(0, BAR_STEPS)
        bar.setValue(0)  # 0 %, not Qt's blank 'not started' (-1)
        bar.setFormat("%p%")
        eta = QLabel("")
        eta.setMinimumWidth(70)
        row = len(self.bars)
        self._grid.addWidget(QLabel(title), row, 0)
        self._grid.addWidget(bar, row, 1)
        self._grid.addWidget(eta, row, 2)
        self.bars[stage], self.eta_labels[stage], self.titles[stage] = bar, eta, title

    def reset(self) -> None:
        """Empty every bar (a new run)."""
        self.close_napari_bars()
        self._drop_pending()
        for stage in self.bars:
            self.bars[stage].setValue(0)
            self.eta_labels[stage].setText("")
        self._clocks.clear()
        self.current = None
        self.visited = []
        self.events_seen = 0

    def on_event(self, event: ProgressEvent) -> None:
        """Move the bars for one progress event (main thread)."""
        self.events_seen += 1
        changed = event.stage != self.current
        if changed:
            self._stage_changed(event.stage)
        fraction = event.fraction
        self._pending[event.stage] = (int(round(fraction * BAR_STEPS)),
                                      format_eta(self._clocks[event.stage].eta(fraction)))
        if changed or time.perf_counter() - self._shown_at >= BAR_UPDATE_S:
            self._show_pending()
        elif not self._show_timer.isActive():
            self._show_timer.start()  # the latest value is shown when it fires
        napari_bar = self._napari_bars.get(event.stage)
        now = time.perf_counter()
        if napari_bar is not None and event.total and now - self._napari_updated >= NAPARI_UPDATE_S:
            self._napari_updated = now
            if napari_bar.total != event.total:
                napari_bar.total = event.total
            if event.step > napari_bar.n:
                napari_bar.update(event.step - napari_bar.n)

    def _show_pending(self) -> None:
        """Put the latest value and ETA of each stage that moved on screen."""
        self._show_timer.stop()
        pending, self._pending = self._pending, {}
        for stage, (value, eta) in pending.items():
            self.bars[stage].setValue(value)
            self.eta_labels[stage].setText(eta)
        self._shown_at = time.perf_counter()

    def _drop_pending(self) -> None:
        """Forget values not shown yet (the bars are about to be set for good)."""
        self._show_timer.stop()
        self._pending.clear()

    def _stage_changed(self, stage: str) -> None:
        """Complete the previous stage's bar (early stopping ends short) and open the next."""
        self._drop_pending()  # only the previous stage can have one, and it is now done
        if self.current is not None:
            self.bars[self.current].setValue(BAR_STEPS)
            self.eta_labels[self.current].setText("done")
            self._close_napari_bar(self.current)
        self.current = stage
        if stage not in self.visited:
            self.visited.append(stage)
        if stage not in self.bars:
            self._add_bar(stage)
        self._clocks[stage] = StageClock()
        if stage not in NOT_MIRRORED:
            from napari.utils import progress

            self._napari_bars[stage] = progress(total=0, desc=f"ArtSeg: {self.titles[stage]}")

    def finish(self, complete: bool) -> None:
        """End of the run: close the napari bars.

        A complete run fills the bar of every stage it ran (a stage that ran
        again, like a self-training round, ends full too); a stopped run marks
        the stage it stopped in.
        """
        if complete:
            self._drop_pending()
            for stage in self.visited:
                self.bars[stage].setValue(BAR_STEPS)
                self.eta_labels[stage].setText("done")
        elif self.current is not None:
            self._show_pending()  # where it stopped
            self.eta_labels[self.current].setText("stopped")
        self.close_napari_bars()

    def _close_napari_bar(self, stage: str) -> None:
        bar = self._napari_bars.pop(stage, None)
        if bar is not None:
            bar.close()

    def close_napari_bars(self) -> None:
        """Close every open napari progress bar."""
        for stage in list(self._napari_bars):
            self._close_napari_bar(stage)
