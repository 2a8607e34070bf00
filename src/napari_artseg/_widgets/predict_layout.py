"""Layout of the predict & correct widget: model, run buttons, mask controls, correction."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QSpinBox,
    QVBoxLayout,
)

from .evaluation_panel import EvaluationPanel
from .keys import CORRECTION_KEYS, KeyCommand
from .lifecycle import make_button
from .threshold_control import ThresholdControl


def build_predict_ui(self: Any) -> None:
    """Create the predict widget's child widgets as attributes of ``self`` and lay them out.

    Parameters
    ----------
    self : PredictWidget
        The widget (its methods are connected to the controls).
    """
    layout = QVBoxLayout(self)
    form = QFormLayout()
    self.model_box = QComboBox()
    self.model_box.setToolTip("Trained models of the project (newest first)")
    self.model_box.activated.connect(self._on_model_chosen)
    form.addRow("Model", self.model_box)
    layout.addLayout(form)

    keyed = {a.method: a for a in CORRECTION_KEYS}
    self.predict_button = make_button(keyed["predict_current"].button_text,
                                  keyed["predict_current"].tooltip,
                                  KeyCommand(self.predict_current))
    self.predict_all_button = make_button("Predict all images", "Run the model on every project "
                                      "image (cached in predictions/)", self.predict_all)
    self.cancel_button = make_button("Cancel", "Stop after the current image", self.cancel)
    self.cancel_button.setEnabled(False)
    row = QHBoxLayout()
    for button in (self.predict_button, self.predict_all_button, self.cancel_button):
        row.addWidget(button)
    layout.addLayout(row)
    self.progress_bar = QProgressBar()
    self.progress_bar.setFormat("%v / %m images")
    self.progress_bar.setValue(0)
    layout.addWidget(self.progress_bar)

    self.score_label = QLabel("")
    self.score_label.setWordWrap(True)
    layout.addWidget(self.score_label)

    controls = QFormLayout()
    self.threshold = ThresholdControl()
    self.threshold.value_changed.connect(self._schedule_mask_update)
    self.min_size_box = QSpinBox()
    self.min_size_box.setRange(0, 10**8)
    self.min_size_box.setSuffix(" px")
    self.min_size_box.setToolTip("Objects smaller than this are dropped from the mask")
    self.min_size_box.valueChanged.connect(self._schedule_mask_update)
    self.fallback_box = QDoubleSpinBox()
    self.fallback_box.setRange(0.0, 1.0)
    self.fallback_box.setDecimals(2)
    self.fallback_box.setSingleStep(0.05)
    self.fallback_box.setSpecialValueText("off")
    self.fallback_box.setToolTip("An image whose mask is empty at the threshold gets its mask at "
                                 "this lower threshold instead (off: never)")
    self.fallback_box.valueChanged.connect(self._schedule_mask_update)
    controls.addRow("Threshold", self.threshold)
    controls.addRow("Empty-mask fallback", self.fallback_box)
    controls.addRow("Min. object size", self.min_size_box)
    layout.addLayout(controls)
    self.saliency_box = QCheckBox("Score-CAM map beside the image")
    self.saliency_box.setChecked(True)
    self.saliency_box.setToolTip("Compute and show the classifier's Score-CAM saliency map")
    self.saliency_box.toggled.connect(self._on_view_option)
    self.ungated_box = QCheckBox("Un-gated map (ignore the classifier)")
    self.ungated_box.setToolTip("Show the U-Net's map even when the classifier called the "
                                "image clean, to see gate errors")
    self.ungated_box.toggled.connect(self._on_view_option)
    layout.addWidget(self.saliency_box)
    layout.addWidget(self.ungated_box)

    grid = QGridLayout()
    self.accept_button = make_button(keyed["accept_mask"].button_text, keyed["accept_mask"].tooltip,
                                 KeyCommand(self.accept_mask))
    self.draw_button = make_button("Draw mask from scratch", "An empty mask to paint with napari's "
                               "brush (P), eraser (E) and fill (F)", self.draw_from_scratch)
    self.reset_button = make_button("Reset mask to prediction", "Drop the edits: the mask from the "
                                "probability map at this threshold", self.reset_mask)
    self.next_mask_button = make_button(keyed["next_most_useful_mask"].button_text,
                                    keyed["next_most_useful_mask"].tooltip,
                                    KeyCommand(self.next_most_useful_mask))
    grid.addWidget(self.accept_button, 0, 0, 1, 2)
    grid.addWidget(self.draw_button, 1, 0)
    grid.addWidget(self.reset_button, 1, 1)
    grid.addWidget(self.next_mask_button, 2, 0, 1, 2)
    layout.addLayout(grid)
    self.evaluation = EvaluationPanel(self)
    layout.addWidget(self.evaluation)
    self.status_label = QLabel("")
    self.status_label.setWordWrap(True)
    layout.addWidget(self.status_label)
    layout.addStretch(1)
