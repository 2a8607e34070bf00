"""The Export tab: masks, artifact-free images, QC tables and the model; and filled clean images.

Both actions are GUI-free generators (:func:`~napari_artseg.export.export_project`,
:func:`~napari_artseg.background_fill.fill_project`) run in a napari worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QVBoxLayout,
    QWidget,
)

from ..background_fill import FillResult, fill_project
from ..export import EXPORT_FOLDER, ExportOptions, ExportReport, export_project
from ..project import Project
from ..training.events import ProgressEvent
from .lifecycle import make_button


class ExportWidget(QWidget):
    """Export results for downstream tools, and make clean images from curated masks.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (for notifications).
    """

    #: Emitted with the :class:`~napari_artseg.export.ExportReport` of a finished export.
    exported = Signal(object)
    #: Emitted with the :class:`~napari_artseg.background_fill.FillResult` of a finished fill.
    filled = Signal(object)

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.project: Project | None = None
        self.worker: Any = None
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.out_edit = QLineEdit()
        self.out_edit.setToolTip(f"Export folder (empty: <project>/{EXPORT_FOLDER})")
        self.fill_box = QComboBox()
        self.fill_box.addItems(["NaN", "value"])
        self.fill_box.setToolTip("Artifact pixels of the clean images: NaN (float32) or a value")
        self.fill_value = _double(-1e9, 1e9, 0.0, "The value for 'value'")
        self.max_fraction = _double(0.0, 1.0, 0.2, "Exclude an image (well, plate) whose "
                                                   "artifact fraction exceeds this")
        self.well_edit = QLineEdit()
        self.well_edit.setPlaceholderText("default: r02c05f01 and A01_s1 styles")
        self.well_edit.setToolTip("Regular expression with named groups plate, well (or row, "
                                  "col) and field")
        self.model_box = QCheckBox("Model archive and TorchScript networks")
        self.model_box.setChecked(True)
        form.addRow("Export folder", self.out_edit)
        form.addRow("Artifact pixels", self.fill_box)
        form.addRow("Fill value", self.fill_value)
        form.addRow("Exclude above fraction", self.max_fraction)
        form.addRow("Well pattern", self.well_edit)
        form.addRow(self.model_box)
        layout.addLayout(form)
        self.export_button = make_button("Export", "Masks, artifact-free images, keep masks, QC "
                                     "tables (per image, well, plate) and the model",
                                     self.export)
        self.fill_button = make_button("Make clean images from curated masks",
                                   "Fill each curated artifact with a polynomial background plus "
                                   "noise; the results go to <images>/filled/, labelled clean",
                                   self.fill)
        layout.addWidget(self.export_button)
        layout.addWidget(self.fill_button)
        self.progress_bar = QProgressBar()
        layout.addWidget(self.progress_bar)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        layout.addStretch(1)

    def set_project(self, project: Project | None) -> None:
        """Use the shared project."""
        self.project = project

    def options(self) -> ExportOptions:
        """The export options from the form."""
        pattern = self.well_edit.text().strip()
        with_model = self.model_box.isChecked()
        return ExportOptions(fill="nan" if self.fill_box.currentText() == "NaN" else "value",
                             fill_value=self.fill_value.value(),
                             max_artifact_fraction=self.max_fraction.value(),
                             well_patterns=[pattern] if pattern else None,
                             model_archive=with_model, torchscript=with_model)

    def export(self) -> bool:
        """Start the export in a worker (False when it cannot start)."""
        if self.project is None:
            self.status_label.setText("Open an image folder in the Label tab first.")
            return False
        out = self.out_edit.text().strip()
        return self._run(export_project, self.project, Path(out) if out else None,
                         self.options())

    def fill(self) -> bool:
        """Start filling curated artifacts in a worker (False when it cannot start)."""
        if self.project is None:
            self.status_label.setText("Open an image folder in the Label tab first.")
            return False
        return self._run(fill_project, self.project)

    def _run(self, function: Any, *args: Any) -> bool:
        from napari.qt.threading import create_worker

        if self.worker is not None:
            return False
        self.worker = create_worker(function, *args, _start_thread=False, _ignore_errors=True)
        self.worker.yielded.connect(self._on_event)
        self.worker.returned.connect(self._on_returned)
        self.worker.errored.connect(self._on_errored)
        self.worker.finished.connect(self._on_finished)
        for button in (self.export_button, self.fill_button):
            button.setEnabled(False)
        self.status_label.setText("Working …")
        self.worker.start()
        return True

    def _on_event(self, event: ProgressEvent) -> None:
        if event.total:
            self.progress_bar.setRange(0, event.total)
            self.progress_bar.setValue(event.step)

    def _on_returned(self, result: Any) -> None:
        if isinstance(result, ExportReport):
            counts = ", ".join(f"{n} {k}" for k, n in result.counts.items() if n)
            excluded = sum(r.get("decision") == "exclude" for r in result.rows)
            text = (f"Exported {len(result.rows)} image(s) to {result.out} ({counts}); "
                    f"{excluded} over the artifact fraction.")
            if result.errors:
                text += f" {len(result.errors)} failed (see export.json)."
            self.status_label.setText(" ".join([text, *result.notes]))
            self.exported.emit(result)
        elif isinstance(result, FillResult):
            self.status_label.setText(
                f"Made {len(result.written)} clean image(s) in filled/ (labelled clean); "
                f"{len(result.skipped)} without a curated artifact mask skipped.")
            self.filled.emit(result)

    def _on_errored(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        self.status_label.setText(f"Failed: {exc}")
        show_error(f"Failed: {exc}")

    def _on_finished(self) -> None:
        self.worker = None
        for button in (self.export_button, self.fill_button):
            button.setEnabled(True)

    def release(self) -> None:
        """Stop a running export or fill."""
        if self.worker is not None:
            self.worker.quit()


def _double(low: float, high: float, value: float, tip: str) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(low, high)
    box.setDecimals(3)
    box.setValue(value)
    box.setToolTip(tip)
    return box
