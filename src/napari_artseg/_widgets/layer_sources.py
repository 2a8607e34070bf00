"""Label the image layers already open in napari, keyed by the files behind them."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtSegError
from ..image_files import IMAGE_EXTENSIONS, write_tiff
from ..project import Project

#: Folder (inside the image folder) where layers without a file are saved as TIFF.
SAVED_LAYERS_FOLDER = "from_layers"


def layer_file(layer: Any) -> Path | None:
    """The image file a layer was opened from, or None."""
    source = getattr(layer, "source", None)
    path = getattr(source, "path", None)
    if not path:
        return None
    path = Path(path)
    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        return path.resolve()
    return None


def safe_file_name(name: str) -> str:
    """A file name made from a layer name (letters, digits, ``-``, ``_``, ``.``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "layer"
    return cleaned + ".tif"


def common_folder(paths: list[Path]) -> Path:
    """The deepest folder holding all ``paths``."""
    return Path(os.path.commonpath([str(p.parent) for p in paths]))


class LayerLabelling:
    """Label the open image layers in place; layers with no file are saved as TIFF first.

    The layers' files become the project's images (keys are their paths relative
    to the image folder). While labelling, only the current layer is visible;
    the other layers are restored to visible when the mode ends.

    Parameters
    ----------
    widget : LabellingWidget
        The labelling widget to drive.
    """

    def __init__(self, widget: Any) -> None:
        self._widget = widget
        self.layers: dict[str, Any] = {}

    def candidate_layers(self) -> list[Any]:
        """2-D single-channel image layers, other than the labelling widget's own."""
        from napari.layers import Image

        return [
            layer
            for layer in self._widget.viewer.layers
            if isinstance(layer, Image)
            and layer is not self._widget.layer
            and layer.ndim == 2
            and not layer.rgb
        ]

    def start(self) -> None:
        """Collect the layers, save file-less ones if the user agrees, and label them."""
        widget = self._widget
        layers = self.candidate_layers()
        if not layers:
            widget.show_message("No 2-D image layers are open to label.")
            return
        files = {id(layer): layer_file(layer) for layer in layers}
        unsaved = [layer for layer in layers if files[id(layer)] is None]
        if unsaved:
            target = self._folder_for_unsaved(files)
            if target is None or not self._confirm_save(unsaved, target):
                widget.show_message(
                    f"{len(unsaved)} layer(s) have no file behind them and were left out: "
                    "save them as TIFF to label them."
                )
                layers = [layer for layer in layers if files[id(layer)] is not None]
            else:
                for layer in unsaved:
                    files[id(layer)] = self.save_layer(layer, target)
        if not layers:
            return
        paths = [files[id(layer)] for layer in layers]
        try:
            project = self._project_for(paths)
        except ArtSegError as exc:
            widget.show_message(str(exc), error=True)
            return
        names = [p.relative_to(project.image_folder).as_posix() for p in paths]
        self.layers = dict(zip(names, layers, strict=True))
        widget.set_project(project, images=names)

    def save_layer(self, layer: Any, folder: Path) -> Path:
        """Save a layer's pixels as TIFF in ``folder`` and record it as the layer's file."""
        path = folder / safe_file_name(layer.name)
        write_tiff(path, np.asarray(layer.data))
        return path.resolve()

    def _folder_for_unsaved(self, files: dict[int, Path | None]) -> Path | None:
        project = self._widget.project
        if project is not None:
            return project.image_folder / SAVED_LAYERS_FOLDER
        known = [p for p in files.values() if p is not None]
        if known:
            return common_folder(known) / SAVED_LAYERS_FOLDER
        from qtpy.QtWidgets import QFileDialog

        chosen = QFileDialog.getExistingDirectory(self._widget, "Folder to save the layers into")
        return Path(chosen) if chosen else None

    def _confirm_save(self, unsaved: list[Any], folder: Path) -> bool:
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(
            self._widget,
            "Save layers as TIFF?",
            f"{len(unsaved)} layer(s) have no file behind them, so their labels would have "
            f"no name to be saved under.\nSave them as TIFF into {folder} and label them?",
        )
        return answer == QMessageBox.StandardButton.Yes

    def _project_for(self, paths: list[Path]) -> Project:
        project = self._widget.project
        if project is not None and all(p.is_relative_to(project.image_folder) for p in paths):
            return project
        return Project.create(common_folder(paths))

    # ------------------------------------------------------------------ display
    def show(self, image: str) -> bool:
        """Make the layer of ``image`` the only visible one; False if it is not a layer."""
        layer = self.layers.get(image)
        if layer is None or layer not in self._widget.viewer.layers:
            return False
        for other in self.layers.values():
            if other.visible != (other is layer):
                other.visible = other is layer
        self._widget.overlay.attach(layer)
        return True

    def stop(self) -> None:
        """Leave layer mode: make the layers visible again."""
        for layer in self.layers.values():
            layer.visible = True
        self.layers = {}
