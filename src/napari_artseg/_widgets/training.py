"""Dock widget: train a model on the project's labels in a worker thread.

The widget composes a :class:`TrainingSettings` form, a :class:`StageProgress`
(one bar per stage, mirrored in napari's activity dock) and a :class:`LossPlot`.
The run itself is a GUI-free :class:`~napari_artseg.training_job.TrainingJob`
whose generator runs in a napari worker; the widget only reacts to its signals.
"""

from __future__ import annotations

import gc
import threading
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ..errors import ArtSegError
from ..project import Project
from ..training.events import ProgressEvent
from ..training_curves import CurveRecorder
from ..training_job import TrainingJob, advice_for, warm_up
from .in_order import InOrder
from .lifecycle import show_status
from .loss_plot import LossPlot
from .stage_progress import StageProgress
from .training_settings import TrainingSettings

SETTINGS_KEY = "training"


#: What to do when a method's inputs are missing, by supervision kind.
ADVICE = {"image_labels": "Label more in the Label tab, then start again.",
          "clean_images": "Label clean images in the Label tab, then start again.",
          "pixel_masks": "Correct predictions and accept them (G) in Predict & correct to make "
                         "masks, then start again.",
          "none": "Add images to the image folder, then start again."}


class TrainingWidget(QWidget):
    """Train a model of the chosen method on the shared project; napari stays usable meanwhile.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (for notifications; no layer is touched).
    project : Project, optional
        The shared project (usually set later through :meth:`set_project`).
    """

    #: Emitted with the new model folder after a complete run (it is then the current model).
    model_trained = Signal(object)
    #: Emitted with True when a run starts and False when it ends, however it ends.
    running_changed = Signal(bool)

    def __init__(self, napari_viewer: Any, project: Project | None = None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.project: Project | None = None
        self.job: TrainingJob | None = None
        self.worker: Any = None
        self.last_model: Path | None = None
        self._torch_threads = 0
        #: Train in a child process (see napari_artseg.subprocess_jobs); tests that patch the
        #: pipeline in this process switch it off.
        self.in_subprocess = True
        self._curves = CurveRecorder()
        #: imports the optimiser needs, done now so that they never stall a run
        self.warm_up_thread = threading.Thread(target=warm_up, name="artseg-warm-up", daemon=True)
        self.warm_up_thread.start()
        self._build_ui()
        self.set_project(project)

    # ------------------------------------------------------------------ layout
    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        self.project_label = QLabel("")
        self.project_label.setWordWrap(True)
        layout.addWidget(self.project_label)
        self.settings = TrainingSettings()
        self.settings.method_changed.connect(self._show_needs)
        layout.addWidget(self.settings)
        self.needs_label = QLabel("")
        self.needs_label.setWordWrap(True)
        layout.addWidget(self.needs_label)
        self.device_label = QLabel("Device in use: (not started)")
        layout.addWidget(self.device_label)
        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start training")
        self.start_button.setToolTip("Train on the project's labels (and curated masks)")
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop at the next step; the previous model stays current")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        for button in (self.start_button, self.cancel_button):
            button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            buttons.addWidget(button)
        layout.addLayout(buttons)
        retrain_row = QHBoxLayout()
        self.retrain_button = QPushButton("Retrain with curated masks")
        self.retrain_button.setToolTip(
            "Curated masks supervise their images, the current model's own masks the rest; "
            "fine-tunes the current model and reports IoU on held-out curated masks before and "
            "after")
        self.retrain_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.retrain_button.clicked.connect(self.start_retrain)
        self.scratch_box = QCheckBox("from scratch")
        self.scratch_box.setToolTip("Train new networks instead of fine-tuning the current model")
        retrain_row.addWidget(self.retrain_button, 1)
        retrain_row.addWidget(self.scratch_box)
        layout.addLayout(retrain_row)
        self.retrain_label = QLabel("")
        self.retrain_label.setWordWrap(True)
        layout.addWidget(self.retrain_label)
        self.stage_label = QLabel("")
        layout.addWidget(self.stage_label)
        self.progress = StageProgress()
        self._in_order = InOrder()  # napari's bars deliver later signals inside a handler
        layout.addWidget(self.progress)
        self.plot = LossPlot()
        layout.addWidget(self.plot, 1)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)

    # ------------------------------------------------------------------ project
    def set_project(self, project: Project | None) -> None:
        """Use ``project`` (the shared one); restores its saved training settings."""
        self.project = project
        if project is None:
            self.project_label.setText("Open an image folder in the Label tab first.")
            self._show_needs()
            return
        saved = project.settings.get(SETTINGS_KEY)
        if isinstance(saved, dict):
            self.settings.set_values(saved)
        self.project_label.setText(f"Project: {project.folder}\n{self._label_summary()}")
        self._show_needs()

    def showEvent(self, event: Any) -> None:
        """Refresh the label counts when the tab is shown (labelling goes on meanwhile)."""
        if self.project is not None:
            self.project_label.setText(f"Project: {self.project.folder}\n{self._label_summary()}")
        self._show_needs()
        super().showEvent(event)

    def _show_needs(self, _method: str = "") -> None:
        """``Needs ...`` for the chosen method, and what the project lacks for it."""
        text = self.settings.supervision_text()
        missing = self._missing_inputs()
        self.needs_label.setText(f"{text}\nMissing: {missing}" if missing else text)

    def _missing_inputs(self) -> str:
        """What the project lacks for the chosen method ('' when nothing, or no project)."""
        if self.project is None:
            return ""
        try:
            config = self.settings.config()
        except ArtSegError as exc:
            return str(exc)
        return TrainingJob.for_project(self.project, config).missing_inputs()

    def _label_summary(self) -> str:
        counts = self.project.labels.counts() if self.project is not None else {}
        return (f"Labels: {counts.get('clean', 0)} clean, {counts.get('artifact', 0)} artifact "
                f"({counts.get('unsure', 0)} unsure are skipped)")

    @property
    def running(self) -> bool:
        """True while a run is in progress."""
        return self.worker is not None

    # ------------------------------------------------------------------ start / cancel
    def start(self) -> bool:
        """Start a run in a worker thread; False (with the reason shown) when it cannot start."""
        return self._start_job(self._new_job)

    def start_retrain(self) -> bool:
        """Retrain from the curated masks (MDL) in a worker; False when it cannot start."""
        return self._start_job(self._new_retrain_job)

    def _new_retrain_job(self) -> TrainingJob:
        from ..retrain import RetrainJob, curated_images

        job = self._new_job()
        if not curated_images(self.project):
            raise ArtSegError("No curated masks yet: correct masks and accept them (G) in "
                              "Predict & correct, then retrain.")
        self.retrain_label.setText("")
        return RetrainJob(self.project, job.config, from_scratch=self.scratch_box.isChecked())

    def _start_job(self, make_job: Any) -> bool:
        from napari.qt.threading import create_worker

        if self.running:
            return False
        try:
            job = make_job()
        except ArtSegError as exc:
            self.show_message(str(exc), error=True)
            return False
        self.job = job
        self.progress.reset()
        self.plot.clear()
        self._curves = CurveRecorder()
        self.project_label.setText(f"Project: {self.project.folder}\n{self._label_summary()}")
        self.worker = create_worker(job.events, _start_thread=False, _ignore_errors=True)
        self.worker.yielded.connect(self._on_yielded)
        self.worker.returned.connect(self._on_returned)
        self.worker.errored.connect(self._on_errored)
        self.worker.finished.connect(self._on_finished)
        # closes the pipeline in the worker thread, right where it stopped
        self.worker.aborted.connect(job.cancel, Qt.ConnectionType.DirectConnection)
        if self.in_subprocess:
            import torch

            job.in_subprocess, job.threads = True, max(1, torch.get_num_threads() - 1)
        else:
            self._leave_a_core()
        self._set_running(True)
        # Python's full garbage collections walk every object of napari and torch: 0.2-0.4 s
        # each on the 2-core VM, in whichever thread triggers them, the GUI thread stalled
        # meanwhile. Objects that exist now are left out of them until the run ends.
        gc.freeze()
        self.show_message(f"Training into {job.out.name} …")
        self.worker.start()
        return True

    def _new_job(self) -> TrainingJob:
        """The run for the current project and settings (checks the labels first)."""
        if self.project is None:
            raise ArtSegError("Open an image folder in the Label tab first.")
        config = self.settings.config()
        self.project.settings[SETTINGS_KEY] = self.settings.values()
        self.project.save()
        job = TrainingJob.for_project(self.project, config)
        missing = job.missing_inputs()
        if missing:
            from ..methods import get_method

            advice = ADVICE[get_method(config.method).supervision]
            raise ArtSegError(f"{missing}. {advice}")
        return job

    def cancel(self) -> None:
        """Stop the run at its next step; the previous model stays the current one."""
        if self.worker is not None:
            self.show_message("Cancelling at the next step …")
            self.cancel_button.setEnabled(False)
            self.worker.quit()

    def _leave_a_core(self) -> None:
        """Train on one CPU thread fewer than torch would, so napari keeps a core to itself.

        (On the 2-core development VM this halved the 99th-percentile stall of the
        event loop and made CPU training faster, not slower.) Restored when the run ends.
        A run in a child process gets the same thread count there instead.
        """
        import torch

        self._torch_threads = torch.get_num_threads()
        torch.set_num_threads(max(1, self._torch_threads - 1))

    def _restore_threads(self) -> None:
        import torch

        if self._torch_threads:
            torch.set_num_threads(self._torch_threads)
            self._torch_threads = 0

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.retrain_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.settings.setEnabled(not running)
        self.running_changed.emit(running)

    # ------------------------------------------------------------------ worker signals
    def _on_yielded(self, event: ProgressEvent) -> None:
        """Show a progress event, after those before it (see :mod:`.in_order`)."""
        self._in_order(self._show_event, event)

    def _on_returned(self, folder: Path) -> None:
        """Announce the model once the run's events are shown."""
        self._in_order(self._announce_model, folder)

    def _on_errored(self, exc: BaseException) -> None:
        """Show the error once the run's events are shown."""
        self._in_order(self._show_error, exc)

    def _on_finished(self) -> None:
        """Make the tab usable again once everything before is shown."""
        self._in_order(self._end_run)

    def _show_event(self, event: ProgressEvent) -> None:
        """Move the bars; redraw the plot only when an epoch ended."""
        self.progress.on_event(event)
        if "device" in event.metrics:
            self.device_label.setText(f"Device in use: {event.metrics['device']}")
        if event.kind in ("stage", "validation", "info"):
            self.stage_label.setText(event.message)
        row = self._curves.add(event)
        if row is not None:
            self.plot.add_row(row)
            self.stage_label.setText(f"{event.stage}: {event.message}")

    def _announce_model(self, folder: Path) -> None:
        """A complete model: make it the project's current model and announce it."""
        self.progress.finish(complete=True)
        self.last_model = Path(folder)
        if self.project is not None:
            try:
                self.project.set_current_model(folder)
            except (ArtSegError, OSError) as exc:
                self.show_message(f"Model saved, but not made current: {exc}", error=True)
                return
        self.show_message(f"Model saved: {Path(folder).name} (now the current model)")
        report = getattr(self.job, "report", None)
        if report is not None:
            self.retrain_label.setText(report.text())
        self.model_trained.emit(Path(folder))

    def _show_error(self, exc: BaseException) -> None:
        """Show what went wrong and what to do, as a napari notification too."""
        self.progress.finish(complete=False)
        self.show_message(advice_for(exc), error=True)

    def _end_run(self) -> None:
        """Back to a usable state, however the run ended."""
        job = self.job
        self.worker = None
        self._restore_threads()
        gc.unfreeze()  # frozen at the start of the run
        if job is not None and job.cancelled:
            self.progress.finish(complete=False)
            kept = "saved as partial" if job.out.exists() else "nothing saved"
            self.show_message(f"Cancelled ({kept}); the previous model is still the current one.")
        self._set_running(False)

    def show_message(self, text: str, error: bool = False) -> None:
        """Show a message under the plot (and as a napari notification for errors)."""
        show_status(self.status_label, text, error)

    # ------------------------------------------------------------------ closing
    def release(self) -> None:
        """Cancel a running run and close the napari progress bars."""
        if self.worker is not None:
            self.worker.quit()
        self.progress.close_napari_bars()
        self.plot.close_renderer()

    def closeEvent(self, event: Any) -> None:
        """Stop training when the widget is closed."""
        self.release()
        super().closeEvent(event)
