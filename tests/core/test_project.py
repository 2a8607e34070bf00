"""Project: folder layout, project.json round trip, image discovery, resume state."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_artseg.image_files import write_tiff
from napari_artseg.project import Project, ProjectError, is_project_folder


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    for name in ("b.tif", "a.tif", "sub/c.tif"):
        write_tiff(folder / name, np.zeros((8, 8), np.uint16))
    return folder


def test_create_default_layout(image_folder):
    project = Project.create(image_folder)
    assert project.folder == (image_folder / "artseg").resolve()
    assert is_project_folder(project.folder)
    for folder in (project.masks_dir, project.models_dir, project.predictions_dir):
        assert folder.is_dir()
    assert project.labels_path == project.folder / "labels.csv"
    raw = json.loads(project.project_file.read_text())
    assert raw["image_folder"] == ".."  # relative: the folder can be moved as one
    assert project.images() == ["a.tif", "b.tif", "sub/c.tif"]


def test_images_skip_project_folder(image_folder, tmp_path):
    project = Project.create(image_folder)
    write_tiff(project.masks_dir / "a.tif", np.zeros((8, 8), np.uint8))
    write_tiff(project.folder / "stray.tif", np.zeros((8, 8), np.uint8))
    assert project.images(refresh=True) == ["a.tif", "b.tif", "sub/c.tif"]
    custom = Project.create(image_folder, image_folder / "my project")
    write_tiff(custom.folder / "x.tif", np.zeros((8, 8), np.uint8))
    assert custom.images() == ["a.tif", "b.tif", "sub/c.tif"]


def test_project_elsewhere_stores_absolute_folder(image_folder, tmp_path):
    project = Project.create(image_folder, tmp_path / "elsewhere")
    raw = json.loads(project.project_file.read_text())
    assert raw["image_folder"] == image_folder.resolve().as_posix()
    assert Project.open(tmp_path / "elsewhere").image_folder == image_folder.resolve()


def test_round_trip_settings_model_session(image_folder):
    project = Project.create(image_folder)
    project.settings["epochs"] = 5
    project.save()
    (project.models_dir / "run1").mkdir()
    project.set_current_model(project.models_dir / "run1")
    project.save_session("b.tif", "unlabelled")
    again = Project.open(project.folder)
    assert again.settings == {"epochs": 5}
    assert again.current_model == "run1"
    assert again.session == {"image": "b.tif", "filter": "unlabelled"}
    with pytest.raises(ProjectError):
        again.set_current_model(image_folder)
    again.set_current_model(None)
    assert Project.open(project.folder).current_model is None


def test_create_again_opens_existing_and_labels(image_folder):
    project = Project.create(image_folder)
    project.labels.set("a.tif", "clean")
    again = Project.create(image_folder)
    assert again.labels.get("a.tif") == "clean"
    assert Project.open_or_create(image_folder).labels.get("a.tif") == "clean"
    assert Project.open_or_create(project.folder).labels.get("a.tif") == "clean"
    assert again.labels.counts()["unlabelled"] == 2


def test_errors(tmp_path, image_folder):
    with pytest.raises(ProjectError, match="not an artseg project"):
        Project.open(tmp_path)
    with pytest.raises(ProjectError, match="does not exist"):
        Project.create(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "project.json").write_text("{not json")
    with pytest.raises(ProjectError, match="cannot be read"):
        Project.open(bad)
    other = tmp_path / "other"
    other.mkdir()
    Project.create(other, tmp_path / "p")
    with pytest.raises(ProjectError, match="another image folder"):
        Project.create(image_folder, tmp_path / "p")
