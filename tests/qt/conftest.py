"""Fixtures for the ArtSeg dock widget tests: a tiny project and the docked container."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def make_project(tiny_dataset: Path, root: Path, model: Path | None = None) -> Path:
    """Copy the tiny images and labels into a fresh project (with ``model`` as current model)."""
    from napari_artseg.project import Project

    images = root / "images"
    shutil.copytree(tiny_dataset / "images", images)
    project = Project.create(images)
    shutil.copyfile(tiny_dataset / "labels.csv", project.labels_path)
    if model is not None:
        target = project.models_dir / "20000101T000000Z-previous"
        shutil.copytree(model, target)
        project.set_current_model(target)
    return project.folder


@pytest.fixture
def project_folder(tiny_dataset, tmp_path) -> Path:
    """A project of the 16 tiny images, all labelled, no model."""
    return make_project(tiny_dataset, tmp_path)


@pytest.fixture
def project_with_model(tiny_dataset, tiny_model, tmp_path) -> Path:
    """A project of the tiny images whose current model is the tiny session model."""
    return make_project(tiny_dataset, tmp_path, tiny_model)


def open_artseg(make_napari_viewer, qtbot, folder: Path):
    """A viewer with the ArtSeg container docked and ``folder`` opened; waits for the image."""
    from napari_artseg._widgets import ArtSegWidget

    viewer = make_napari_viewer()
    widget = ArtSegWidget(viewer)
    viewer.window.add_dock_widget(widget, name="ArtSeg")
    with qtbot.waitSignal(widget.labelling.project_changed):
        assert widget.open_folder(folder)
    qtbot.waitUntil(lambda: widget.labelling.shown_image == widget.labelling.navigator.current,
                    timeout=5000)
    return viewer, widget


@pytest.fixture
def artseg(make_napari_viewer, qtbot, project_folder):
    """(viewer, ArtSegWidget) on the tiny project without a model."""
    return open_artseg(make_napari_viewer, qtbot, project_folder)


@pytest.fixture
def artseg_with_model(make_napari_viewer, qtbot, project_with_model):
    """(viewer, ArtSegWidget) on the tiny project with the tiny model current."""
    return open_artseg(make_napari_viewer, qtbot, project_with_model)
