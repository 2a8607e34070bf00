"""npe2 reader (artseg project folders) and writer (Labels layer -> mask TIFF).

Opening a project folder in napari (File > Open Folder, or drag and drop) docks the
labelling widget, if it is not docked yet, and opens the project in it; no layer
is added by the reader itself. Any folder holding a ``project.json`` is a project,
as is an image folder with a default project inside (``<folder>/artseg``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .image_files import write_tiff
from .project import DEFAULT_PROJECT_FOLDER, is_project_folder

PLUGIN_NAME = "napari-artseg"
LABELLING_WIDGET_NAME = "Label images"


def _project_folder(path: Any) -> Path | None:
    """The project folder that ``path`` names, or None."""
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, str | os.PathLike):
        return None
    folder = Path(path)
    if is_project_folder(folder):
        return folder
    if folder.name != DEFAULT_PROJECT_FOLDER and is_project_folder(folder / DEFAULT_PROJECT_FOLDER):
        return folder / DEFAULT_PROJECT_FOLDER
    return None


def get_project_reader(path: Any):
    """npe2 reader hook: a reader function for an artseg project folder, else None."""
    folder = _project_folder(path)
    if folder is None:
        return None
    return ProjectOpener(folder)


class ProjectOpener:
    """Opens one project folder in the current viewer's labelling widget."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, _path: Any) -> list[tuple]:
        """Dock the labelling widget and open the project; returns no layers."""
        widget = labelling_widget_of_current_viewer()
        if widget is not None:
            widget.open_folder(self.folder)
        return [(None,)]  # napari's "read, nothing to add"


def labelling_widget_of_current_viewer() -> Any:
    """The labelling widget of the current viewer, docked on demand (None without a viewer)."""
    import napari

    from ._widgets.labelling import LabellingWidget

    viewer = napari.current_viewer()
    if viewer is None:
        return None
    for docked in viewer.window.dock_widgets.values():  # napari 0.9: the inner widgets
        inner = docked.widget() if hasattr(docked, "widget") else docked
        inner = getattr(inner, "labelling", inner)  # the tab container holds one
        if isinstance(inner, LabellingWidget) and not inner.released:
            return inner
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, LABELLING_WIDGET_NAME)
    return widget


def write_mask(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 writer hook: save a Labels layer as a mask TIFF.

    Non-zero labels become 1 (artifact) in a uint8 image, zero stays 0 (clean),
    which is the mask format the rest of the package reads (non-zero = artifact).
    Only 2-D layers are written.
    """
    array = np.asarray(data)
    if array.ndim != 2:
        raise ValueError(f"{path}: a mask is one 2-D plane; this layer has shape {array.shape}")
    target = Path(path)
    if target.suffix.lower() not in (".tif", ".tiff"):
        target = target.with_suffix(".tif")
    scale = meta.get("scale") if isinstance(meta, dict) else None
    pixel_size = None
    units = meta.get("units") if isinstance(meta, dict) else None
    if scale is not None and units is not None and str(units[-1]) in ("micrometer", "µm", "um"):
        pixel_size = float(scale[-1])
    write_tiff(target, (array != 0).astype(np.uint8), pixel_size_um=pixel_size)
    return [str(target)]
