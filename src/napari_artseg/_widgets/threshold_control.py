"""A threshold control: a log-scale slider with a numeric field, reaching 0.0001."""

from __future__ import annotations

import math

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QDoubleSpinBox, QHBoxLayout, QSlider, QWidget

LOG_MIN = -4.0  # 1e-4: below the paper's 0.001
SLIDER_STEPS = 400


def slider_to_value(position: int) -> float:
    """Slider position (0 .. SLIDER_STEPS) -> threshold (1e-4 .. 1, log scale)."""
    return 10 ** (LOG_MIN + (-LOG_MIN) * position / SLIDER_STEPS)


def value_to_slider(value: float) -> int:
    """Threshold -> nearest slider position (values below 1e-4 go to 0)."""
    if value <= 10**LOG_MIN:
        return 0
    return round((math.log10(min(value, 1.0)) - LOG_MIN) / -LOG_MIN * SLIDER_STEPS)


class ThresholdControl(QWidget):
    """Log-scale slider plus a 4-decimal field; both edit one value in [0, 1].

    Emits :attr:`value_changed` once per change, from either part.
    """

    value_changed = Signal(float)

    def __init__(self, value: float = 0.5) -> None:
        super().__init__()
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, SLIDER_STEPS)
        self.slider.setToolTip("Mask threshold, log scale from 0.0001 to 1")
        self.field = QDoubleSpinBox()
        self.field.setRange(0.0, 1.0)
        self.field.setDecimals(4)
        self.field.setSingleStep(0.001)
        self.field.setToolTip("Mask threshold (type any value in [0, 1])")
        layout.addWidget(self.slider, 1)
        layout.addWidget(self.field)
        self._value = value
        self._show(value)
        self.slider.valueChanged.connect(self._on_slider)
        self.field.valueChanged.connect(self._on_field)

    def value(self) -> float:
        """The threshold."""
        return self._value

    def set_value(self, value: float, emit: bool = True) -> None:
        """Set the threshold (and emit :attr:`value_changed` when ``emit`` and it changed)."""
        value = min(1.0, max(0.0, float(value)))
        changed = value != self._value
        self._value = value
        self._show(value)
        if changed and emit:
            self.value_changed.emit(value)

    def _show(self, value: float) -> None:
        for widget, shown in ((self.slider, value_to_slider(value)), (self.field, value)):
            widget.blockSignals(True)
            widget.setValue(shown)
            widget.blockSignals(False)

    def _on_slider(self, position: int) -> None:
        self.set_value(round(slider_to_value(position), 6))

    def _on_field(self, value: float) -> None:
        self.set_value(value)
