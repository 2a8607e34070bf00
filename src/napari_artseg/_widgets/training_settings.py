"""The training settings form: the method, a preset and the settings people change most."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QFormLayout, QSpinBox, QWidget

from ..config import DEVICES, METHODS, PRESETS, ArtSegConfig, preset
from ..methods import SUPERVISIONS, get_method, list_methods

#: The supervision kinds in a few words, for the method list.
SUPERVISION_WORDS = {"image_labels": "image labels", "clean_images": "clean images only",
                     "pixel_masks": "pixel masks", "none": "no labels"}

#: Config fields the form edits, in order.
FORM_FIELDS = ("classifier_epochs", "unet_epochs", "input_size", "scale", "batch_size", "seed")


def available_devices() -> dict[str, bool]:
    """Device name -> whether it can be used here (``auto`` and ``cpu`` always can)."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    return {"auto": True, "cpu": True, "cuda": torch.cuda.is_available(),
            "mps": bool(mps and mps.is_available())}


class TrainingSettings(QWidget):
    """Method, preset, epochs, input size and scale, batch size, device and seed.

    Choosing a preset fills the fields with its values (the method stays);
    :meth:`config` is the preset with the method and the fields applied (validated).
    """

    #: Emitted with the method's name when another method is chosen.
    method_changed = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        self.method_box = QComboBox()
        for index, method in enumerate(list_methods()):
            self.method_box.addItem(
                f"{method.title} ({SUPERVISION_WORDS[method.supervision]})", method.name)
            self.method_box.setItemData(
                index, f"{method.description}\nNeeds: {SUPERVISIONS[method.supervision]}",
                Qt.ItemDataRole.ToolTipRole)
        self.method_box.setToolTip("What to train; docs/methods.md compares the methods")
        self.method_box.currentIndexChanged.connect(self._on_method_index)
        form.addRow("Method", self.method_box)
        self.preset_box = QComboBox()
        self.preset_box.addItems(list(PRESETS))
        self.preset_box.setToolTip("fast: CPU, minutes; paper: the paper's settings, for GPUs; "
                                   "tiny: smoke tests only")
        self.fields: dict[str, QSpinBox | QDoubleSpinBox] = {
            "classifier_epochs": _spin(0, 1000, "Classifier epochs (early stopping may stop it "
                                                "sooner)"),
            "unet_epochs": _spin(0, 1000, "U-Net epochs (early stopping may end sooner)"),
            "input_size": _spin(32, 4096, "The classifier's view: the whole image resized to "
                                          "this square, in px", step=32),
            "scale": _double(0.05, 4.0, "Images are resized by this factor before training"),
            "batch_size": _spin(1, 256, "Images per batch; lower it when memory runs out"),
            "seed": _spin(0, 2**31 - 1, "Random seed (split, initialisation, augmentation)"),
        }
        self.device_box = QComboBox()
        usable = available_devices()
        for name in DEVICES:
            self.device_box.addItem(name if usable[name] else f"{name} (not available)", name)
        self.device_box.setToolTip("auto picks CUDA, then Apple MPS, then the CPU")
        form.addRow("Preset", self.preset_box)
        titles = {"classifier_epochs": "Classifier epochs", "unet_epochs": "U-Net epochs",
                  "input_size": "Classifier view (px)", "scale": "Scale",
                  "batch_size": "Batch size", "seed": "Seed"}
        for name in FORM_FIELDS:
            form.addRow(titles[name], self.fields[name])
        form.addRow("Device", self.device_box)
        self.preset_box.currentTextChanged.connect(self.load_preset)
        self.preset_box.setCurrentText("fast")
        self.load_preset("fast")

    def method(self) -> str:
        """The chosen method's name."""
        return str(self.method_box.currentData())

    def set_method(self, name: str) -> None:
        """Choose a method by name (unknown names are ignored)."""
        index = self.method_box.findData(name)
        if index >= 0:
            self.method_box.setCurrentIndex(index)

    def _on_method_index(self, _index: int) -> None:
        """Announce the newly chosen method."""
        self.method_changed.emit(self.method())

    def load_preset(self, name: str) -> None:
        """Fill the fields with a preset's values (the chosen method stays)."""
        self.show_config(preset(name, method=self.method() or "scorecam_unet"))

    def show_config(self, config: ArtSegConfig) -> None:
        """Fill the form from a config."""
        self.set_method(config.method)
        self.preset_box.blockSignals(True)
        self.preset_box.setCurrentText(config.preset)
        self.preset_box.blockSignals(False)
        for name in FORM_FIELDS:
            self.fields[name].setValue(getattr(config, name))
        self.device_box.setCurrentIndex(max(0, self.device_box.findData(config.device)))

    def values(self) -> dict[str, Any]:
        """The form's values: ``method``, ``preset``, the :data:`FORM_FIELDS` and ``device``."""
        values: dict[str, Any] = {"method": self.method(),
                                  "preset": self.preset_box.currentText()}
        values.update({name: self.fields[name].value() for name in FORM_FIELDS})
        values["device"] = self.device_box.currentData()
        return values

    def set_values(self, values: dict[str, Any]) -> None:
        """Fill the form from :meth:`values` output (unknown keys are ignored)."""
        if values.get("method") in METHODS:
            self.set_method(values["method"])
        name = values.get("preset")
        if name in PRESETS:
            self.load_preset(name)
        for key in FORM_FIELDS:
            if isinstance(values.get(key), int | float):
                self.fields[key].setValue(values[key])
        if values.get("device") in DEVICES:
            self.device_box.setCurrentIndex(self.device_box.findData(values["device"]))

    def config(self, **overrides: Any) -> ArtSegConfig:
        """The preset with the form's fields (and ``overrides``) applied.

        Raises
        ------
        ArtSegError
            When a value is invalid (the message names the setting).
        """
        values = self.values()
        name = values.pop("preset")
        return preset(name, **{**values, **overrides})

    def supervision_text(self) -> str:
        """What the chosen method needs, in words."""
        method = get_method(self.method())
        return f"Needs {SUPERVISIONS[method.supervision]}."


def _spin(low: int, high: int, tip: str, step: int = 1) -> QSpinBox:
    box = QSpinBox()
    box.setRange(low, high)
    box.setSingleStep(step)
    box.setToolTip(tip)
    return box


def _double(low: float, high: float, tip: str) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(low, high)
    box.setDecimals(2)
    box.setSingleStep(0.05)
    box.setToolTip(tip)
    return box
