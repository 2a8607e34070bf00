"""Layout of the labelling widget: buttons, project text, filter and contrast, key buttons."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGridLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
)

from .keys import LABELLING_KEYS, KeyCommand
from .navigation import FILTERS

CONTRAST_MODES = ("per image (percentiles)", "keep current")


def build_labelling_ui(self: Any) -> None:
    """Create the labelling widget's child widgets as attributes of ``self`` and lay them out.

    Parameters
    ----------
    self : LabellingWidget
        The widget (its methods are connected to the buttons).
    """
    layout = QVBoxLayout(self)
    self.open_button = QPushButton("Open images or project…")
    self.open_button.setToolTip(
        "Choose an image folder (its project is <folder>/artseg) or a project folder"
    )
    self.open_button.clicked.connect(self._on_open_clicked)
    self.new_project_button = QPushButton("New project elsewhere…")
    self.new_project_button.setToolTip("Choose an image folder, then where its project goes")
    self.new_project_button.clicked.connect(self._on_new_project_clicked)
    self.layers_button = QPushButton("Label open image layers")
    self.layers_button.setToolTip(self._layers.__doc__.splitlines()[0])
    self.layers_button.clicked.connect(self._layers.start)
    for button in (self.open_button, self.new_project_button, self.layers_button):
        layout.addWidget(button)

    self.project_label = QLabel("No project open")
    self.position_label = QLabel("")
    self.counts_label = QLabel("")
    for label in (self.project_label, self.position_label, self.counts_label):
        label.setWordWrap(True)
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(label)

    form = QFormLayout()
    self.filter_box = QComboBox()
    self.filter_box.addItems(list(FILTERS))
    self.filter_box.setToolTip("Step only through images with this label")
    self.filter_box.currentTextChanged.connect(self.set_filter)
    self.contrast_box = QComboBox()
    self.contrast_box.addItems(list(CONTRAST_MODES))
    self.contrast_box.setToolTip("Contrast limits: from each image's percentiles, or kept")
    form.addRow("Show", self.filter_box)
    form.addRow("Contrast", self.contrast_box)
    layout.addLayout(form)

    grid = QGridLayout()
    self.buttons: dict[str, QPushButton] = {}
    for i, action in enumerate(LABELLING_KEYS):
        button = QPushButton(action.button_text)
        button.setToolTip(action.tooltip)
        button.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # keys keep going to the canvas
        button.clicked.connect(KeyCommand(getattr(self, action.method)))
        grid.addWidget(button, i // 2, i % 2)
        self.buttons[action.method] = button
    layout.addLayout(grid)

    self.status_label = QLabel("")
    self.status_label.setWordWrap(True)
    layout.addWidget(self.status_label)
    layout.addStretch(1)
