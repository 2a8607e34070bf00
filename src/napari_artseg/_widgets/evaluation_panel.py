"""Evaluate the selected model on the project's curated masks; pick a threshold on the PR plot.

The measures come from the GUI-free :func:`~napari_artseg.retrain.evaluate_on_masks`
run in a napari worker: pixel IoU and F1 and object F1 at the model's threshold,
and a precision-recall sweep over thresholds. Clicking a point of the plot sets
the predict widget's threshold control to that point's threshold.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QPushButton, QVBoxLayout, QWidget

from ..retrain import HELD_OUT_SETTING, MaskEvaluation, curated_images, evaluate_on_masks


class EvaluationPanel(QWidget):
    """"Evaluate on curated masks" button, the numbers, and a clickable PR plot.

    Parameters
    ----------
    owner : PredictWidget
        Provides ``project``, ``models.folder`` and the ``threshold`` control.
    """

    def __init__(self, owner: Any) -> None:
        super().__init__()
        self.owner = owner
        self.worker: Any = None
        self.result: MaskEvaluation | None = None
        self.canvas: Any = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.button = QPushButton("Evaluate on curated masks")
        self.button.setToolTip("Pixel IoU/F1 and object F1 of the selected model on the curated "
                               "masks, and a precision-recall plot (click it to set the threshold)")
        self.button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.button.clicked.connect(self.evaluate)
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)
        layout.addWidget(self.button)
        layout.addWidget(self.result_label)
        self._layout = layout

    def evaluate(self) -> bool:
        """Start the evaluation in a worker; False (with the reason shown) when it cannot."""
        from napari.qt.threading import create_worker

        project, folder = self.owner.project, self.owner.models.folder
        if self.worker is not None:
            return False
        if project is None or folder is None:
            self.result_label.setText("Open a project and train a model first.")
            return False
        images = curated_images(project)
        if not images:
            self.result_label.setText("No curated masks yet: correct and accept some (G) first.")
            return False
        self.result_label.setText(f"Evaluating {folder.name} on {len(images)} curated mask(s) …")
        self.button.setEnabled(False)
        self.worker = create_worker(evaluate_on_masks, folder, project, images,
                                    _start_thread=False, _ignore_errors=True)
        self.worker.returned.connect(self._on_returned)
        self.worker.errored.connect(self._on_errored)
        self.worker.finished.connect(self._on_finished)
        self.worker.start()
        return True

    def _on_returned(self, result: MaskEvaluation) -> None:
        self.result = result
        s = result.summary
        held = self.owner.project.settings.get(HELD_OUT_SETTING) or [] \
            if self.owner.project is not None else []
        note = (f"; {len(held)} of them are held out (never trained)" if held else
                "; masks that trained this model flatter it")
        self.result_label.setText(
            f"{result.model} on {s['n_images']} curated mask(s) at threshold "
            f"{result.threshold:.4g}: pixel IoU {s['pixel_iou']:.3f}, pixel F1 "
            f"{s['pixel_f1']:.3f}, object F1 {s['object_f1']:.3f}{note}. "
            "Click the plot to set the threshold.")
        self._draw(result)

    def _draw(self, result: MaskEvaluation, chosen: float | None = None) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        if self.canvas is None:
            self.canvas = FigureCanvasQTAgg(Figure(figsize=(3.2, 2.4), dpi=90))
            self.canvas.setMinimumHeight(200)
            self.canvas.mpl_connect("button_press_event", self._on_plot_click)
            self._layout.addWidget(self.canvas)
        figure = self.canvas.figure
        figure.clear()
        axes = figure.add_subplot(111)
        recall, precision = self._points(result)
        axes.plot(recall, precision, "o-", markersize=3, color="#3060c0")
        cut = result.threshold if chosen is None else chosen
        k = int(np.argmin(np.abs(np.log10(np.maximum(result.curve["thresholds"], 1e-6))
                                 - np.log10(max(cut, 1e-6)))))
        axes.plot([recall[k]], [precision[k]], "o", color="#e04040", markersize=7)
        axes.set_xlabel("recall")
        axes.set_ylabel("precision")
        axes.set_xlim(0, 1.02)
        axes.set_ylim(0, 1.02)
        axes.set_title(f"threshold {result.curve['thresholds'][k]:.4g}", fontsize=9)
        figure.tight_layout()
        self.canvas.draw_idle()

    @staticmethod
    def _points(result: MaskEvaluation) -> tuple[np.ndarray, np.ndarray]:
        recall = np.array([np.nan if v is None else v for v in result.curve["recall"]], float)
        precision = np.array([np.nan if v is None else v for v in result.curve["precision"]],
                             float)
        return np.nan_to_num(recall, nan=0.0), np.nan_to_num(precision, nan=1.0)

    def threshold_at(self, recall: float, precision: float) -> float:
        """The threshold of the PR point nearest to (recall, precision)."""
        r, p = self._points(self.result)
        k = int(np.argmin((r - recall) ** 2 + (p - precision) ** 2))
        return float(self.result.curve["thresholds"][k])

    def _on_plot_click(self, event: Any) -> None:
        """A click on the plot: the nearest point's threshold goes to the threshold control."""
        if self.result is None or event.xdata is None or event.ydata is None:
            return
        threshold = self.threshold_at(event.xdata, event.ydata)
        self.owner.threshold.set_value(threshold)
        self._draw(self.result, threshold)

    def _on_errored(self, exc: BaseException) -> None:
        self.result_label.setText(f"Evaluation failed: {exc}")

    def _on_finished(self) -> None:
        self.worker = None
        self.button.setEnabled(True)

    def release(self) -> None:
        """Stop a running evaluation."""
        if self.worker is not None:
            self.worker.quit()
