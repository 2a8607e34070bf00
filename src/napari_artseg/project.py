"""A labelling project: a folder a person can open, next to (or inside) the image folder.

Layout::

    <project folder>/          default: <image folder>/artseg/
        project.json           image folder, settings, current model, where the user stopped
        labels.csv             image,label (see :mod:`napari_artseg.labels_file`)
        masks/                 curated masks (TIFF)
        models/                trained models
        predictions/           predicted masks and maps

``project.json`` stores the image folder relative to the project folder when the
project lies inside it (so the pair can be moved or shared as one folder), and as
an absolute path otherwise. The module imports no GUI toolkit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text, remove_stale_temporaries
from .errors import ArtSegError
from .image_files import discover_images
from .label_store import LabelStore

PROJECT_FILE = "project.json"
DEFAULT_PROJECT_FOLDER = "artseg"
FORMAT_NAME = "napari-artseg project"
FORMAT_VERSION = 1


class ProjectError(ArtSegError):
    """A project folder is missing, malformed or points at a missing image folder."""


def is_project_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder holding a ``project.json``."""
    return (Path(path) / PROJECT_FILE).is_file()


class Project:
    """A labelling project on disk.

    Use :meth:`open` for an existing project and :meth:`create` for a new one;
    the constructor is internal.

    Attributes
    ----------
    folder : pathlib.Path
        The project folder.
    image_folder : pathlib.Path
        The folder holding the images (absolute).
    settings : dict
        Free-form settings saved in ``project.json`` (call :meth:`save` after
        changing them).
    session : dict
        Where the user stopped: ``{"image": str | None, "filter": str}``.
    """

    def __init__(
        self,
        folder: Path,
        image_folder: Path,
        settings: dict[str, Any] | None = None,
        current_model: str | None = None,
        session: dict[str, Any] | None = None,
    ) -> None:
        self.folder = Path(folder).resolve()
        self.image_folder = Path(image_folder).resolve()
        self.settings: dict[str, Any] = dict(settings or {})
        self.session: dict[str, Any] = {"image": None, "filter": "all", **(session or {})}
        self._current_model = current_model
        self._images: list[str] | None = None
        self._labels: LabelStore | None = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, folder: str | os.PathLike) -> Project:
        """Open an existing project folder.

        Raises
        ------
        ProjectError
            When the folder has no readable ``project.json`` or its image folder
            does not exist.
        """
        folder = Path(folder).resolve()
        path = folder / PROJECT_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ProjectError(f"{folder}: not an artseg project (no {PROJECT_FILE})") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProjectError(f"{path}: cannot be read ({exc})") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("image_folder"), str):
            raise ProjectError(f"{path}: no 'image_folder' entry")
        image_folder = (folder / raw["image_folder"]).resolve()
        if not image_folder.is_dir():
            raise ProjectError(f"{path}: image folder {image_folder} does not exist")
        model = raw.get("current_model")
        for sub in ("models", "masks", "predictions"):
            remove_stale_temporaries(folder / sub)
        remove_stale_temporaries(folder)
        return cls(
            folder,
            image_folder,
            settings=raw.get("settings") if isinstance(raw.get("settings"), dict) else None,
            current_model=model if isinstance(model, str) else None,
            session=raw.get("session") if isinstance(raw.get("session"), dict) else None,
        )

    @classmethod
    def create(
        cls, image_folder: str | os.PathLike, project_folder: str | os.PathLike | None = None
    ) -> Project:
        """Create a project for an image folder, or open it when it already exists.

        Parameters
        ----------
        image_folder : path-like
            The folder of images to label.
        project_folder : path-like, optional
            Where the project lives; ``<image_folder>/artseg`` by default.

        Raises
        ------
        ProjectError
            When the image folder does not exist, or ``project_folder`` already
            holds a project for a different image folder.
        """
        image_folder = Path(image_folder).resolve()
        if not image_folder.is_dir():
            raise ProjectError(f"{image_folder}: image folder does not exist")
        folder = Path(project_folder or image_folder / DEFAULT_PROJECT_FOLDER).resolve()
        if is_project_folder(folder):
            project = cls.open(folder)
            if project.image_folder != image_folder:
                raise ProjectError(
                    f"{folder}: already a project for another image folder "
                    f"({project.image_folder})"
                )
            return project
        project = cls(folder, image_folder)
        for sub in (project.masks_dir, project.models_dir, project.predictions_dir):
            sub.mkdir(parents=True, exist_ok=True)
        project.save()
        return project

    @classmethod
    def open_or_create(cls, folder: str | os.PathLike) -> Project:
        """Open ``folder`` when it is a project, else treat it as an image folder.

        An image folder with a default project inside (``artseg/``) opens that project.
        """
        folder = Path(folder)
        if is_project_folder(folder):
            return cls.open(folder)
        return cls.create(folder)

    # ------------------------------------------------------------------ paths
    @property
    def labels_path(self) -> Path:
        """The ``labels.csv`` file."""
        return self.folder / "labels.csv"

    @property
    def masks_dir(self) -> Path:
        """Folder of curated masks."""
        return self.folder / "masks"

    @property
    def models_dir(self) -> Path:
        """Folder of trained models."""
        return self.folder / "models"

    @property
    def predictions_dir(self) -> Path:
        """Folder of predictions."""
        return self.folder / "predictions"

    @property
    def project_file(self) -> Path:
        """The ``project.json`` file."""
        return self.folder / PROJECT_FILE

    # ------------------------------------------------------------------ model
    @property
    def current_model(self) -> str | None:
        """The current model as a POSIX path relative to ``models/``, or None."""
        return self._current_model

    def set_current_model(self, path: str | os.PathLike | None) -> None:
        """Set (and save) the current model.

        Parameters
        ----------
        path : path-like or None
            A path inside ``models/`` (absolute, or relative to ``models/``);
            None clears it.

        Raises
        ------
        ProjectError
            When the path lies outside ``models/``.
        """
        if path is None:
            self._current_model = None
        else:
            candidate = Path(path)
            absolute = (candidate if candidate.is_absolute() else self.models_dir / candidate)
            try:
                relative = absolute.resolve().relative_to(self.models_dir.resolve())
            except ValueError:
                raise ProjectError(f"{path}: a model must lie inside {self.models_dir}") from None
            self._current_model = relative.as_posix()
        self.save()

    # ------------------------------------------------------------------ images, labels
    def images(self, refresh: bool = False) -> list[str]:
        """The images of the image folder as relative POSIX paths (extension included).

        The project folder itself is skipped. The list is cached; ``refresh``
        searches the folder again.
        """
        if self._images is None or refresh:
            found = discover_images(self.image_folder, exclude=[self.folder])
            self._images = [p.relative_to(self.image_folder).as_posix() for p in found]
            if self._labels is not None:
                self._labels.set_images(self._images)
        return list(self._images)

    def image_path(self, image: str) -> Path:
        """Absolute path of an image given by its relative name."""
        return self.image_folder / image

    @property
    def labels(self) -> LabelStore:
        """The project's :class:`~napari_artseg.label_store.LabelStore` (loaded on first use).

        Raises
        ------
        LabelsFileError
            When ``labels.csv`` is malformed (it is left untouched).
        """
        if self._labels is None:
            self._labels = LabelStore(self.labels_path, self.images())
        return self._labels

    # ------------------------------------------------------------------ saving
    def to_dict(self) -> dict[str, Any]:
        """The content of ``project.json``."""
        try:
            image_folder = os.path.relpath(self.image_folder, self.folder)
            if not all(part == ".." for part in Path(image_folder).parts):
                image_folder = str(self.image_folder)  # not an ancestor: keep absolute
        except ValueError:  # other drive on Windows
            image_folder = str(self.image_folder)
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "image_folder": Path(image_folder).as_posix(),
            "current_model": self._current_model,
            "settings": self.settings,
            "session": self.session,
        }

    def save(self) -> None:
        """Write ``project.json`` atomically."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"
        atomic_write_text(self.project_file, text)

    def save_session(self, image: str | None, filter_name: str) -> None:
        """Remember where the user stopped (current image and filter) and save."""
        if self.session.get("image") == image and self.session.get("filter") == filter_name:
            return
        self.session = {"image": image, "filter": filter_name}
        self.save()

    def __repr__(self) -> str:
        return f"Project({str(self.folder)!r}, image_folder={str(self.image_folder)!r})"
