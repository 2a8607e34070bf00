"""The ArtSeg dock widget: Label, Train and Predict & correct tabs sharing one project.

The container owns one widget per step and wires them together with signals;
there is no global state. The labelling widget opens the project and announces
it (``project_changed``), and announces every image it shows (``image_changed``),
which the predict widget follows; a finished training run (``model_trained``)
selects the new model in the predict widget.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QTabWidget

from ..project import Project
from .export_widget import ExportWidget
from .labelling import LabellingWidget
from .lifecycle import ReleaseOnUndock
from .predict import PredictWidget
from .training import TrainingWidget


class ArtSegWidget(ReleaseOnUndock, QTabWidget):
    """Label -> train -> predict -> correct in one dock, on one project.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer all three widgets draw in.

    Attributes
    ----------
    labelling : LabellingWidget
    training : TrainingWidget
    predict : PredictWidget
    export : ExportWidget
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.labelling = LabellingWidget(napari_viewer)
        self.training = TrainingWidget(napari_viewer)
        self.predict = PredictWidget(napari_viewer)
        self.export = ExportWidget(napari_viewer)
        self.addTab(self.labelling, "Label")
        self.addTab(self.training, "Train")
        self.addTab(self.predict, "Predict && correct")
        self.addTab(self.export, "Export")
        self.labelling.project_changed.connect(self._on_project_changed)
        self.labelling.image_changed.connect(self.predict.show_image)
        self.training.model_trained.connect(self.predict.on_model_trained)
        self.predict.image_requested.connect(self.labelling.go_to_image)
        self.export.filled.connect(self._on_images_added)
        self._released = False

    @property
    def project(self) -> Project | None:
        """The shared project (opened in the Label tab)."""
        return self.labelling.project

    def open_folder(self, folder: Any) -> bool:
        """Open an image folder or project (as the Label tab's Open button does)."""
        return self.labelling.open_folder(folder)

    def _on_project_changed(self, project: Project) -> None:
        """Hand the project the labelling widget opened to the other two widgets."""
        self.training.set_project(project)
        self.predict.set_project(project)
        self.export.set_project(project)

    def _on_images_added(self, _result: Any) -> None:
        """Filled clean images were added to the image folder: list them in the Label tab."""
        navigator = self.labelling.navigator
        if self.project is None:
            return
        current = navigator.current
        navigator.images = self.project.images(refresh=True)
        if current is not None:
            navigator.go_to(current)

    def release(self) -> None:
        """Stop workers, save pending edits and the session, release keys (once)."""
        if self._released:
            return
        self._released = True
        self.predict.release()
        self.export.release()
        self.training.release()
        self.labelling.release()
