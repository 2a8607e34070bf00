"""Dock widget: label images clean / artifact / unsure with one keypress each.

The widget composes GUI-free pieces: a :class:`~napari_artseg.project.Project`
(with its :class:`~napari_artseg.label_store.LabelStore`, which saves each label
before the call returns), an :class:`~._widgets.navigation.ImageNavigator`
(position and filter) and a :class:`~napari_artseg.readahead.ReadAhead` (the
next images, decoded in background threads). Drawing is all it does itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QFileDialog, QWidget

from ..errors import ArtSegError
from ..project import Project
from ..readahead import DEFAULT_MAX_BYTES, CachedImage, ReadAhead
from .active_keys import ActiveSelector
from .keys import LABELLING_KEYS, KeyBinder
from .label_overlay import LabelOverlay
from .labelling_layout import build_labelling_ui
from .layer_sources import LayerLabelling
from .lifecycle import ReleaseOnUndock, show_status
from .navigation import FILTERS, ImageNavigator

#: Images read ahead of the current one (within the byte budget).
READ_AHEAD_COUNT = 8
IMAGE_LAYER_NAME = "artseg image"
SESSION_SAVE_DELAY_MS = 1000


class LabellingWidget(ReleaseOnUndock, QWidget):
    """Label the images of a project one keypress at a time.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer to draw in and bind the keys on.
    read_ahead_bytes : int
        Memory budget for images read ahead.

    Attributes
    ----------
    project : Project or None
        The open project, shared with other widgets through :attr:`project_changed`.
    """

    #: Emitted with the new :class:`~napari_artseg.project.Project` after one is opened.
    project_changed = Signal(object)
    #: Emitted with the image name (relative to the image folder) once it is on screen.
    image_changed = Signal(str)
    #: Emitted (from a reading thread) with the path of an image that is ready.
    _image_ready = Signal(object)

    def __init__(self, napari_viewer: Any, read_ahead_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.project: Project | None = None
        self.navigator = ImageNavigator([], self._label_of)
        self.overlay = LabelOverlay(napari_viewer)
        self.layer: Any = None
        self.shown_image: str | None = None
        self._waiting_for: str | None = None
        self._released = False
        self._keys = KeyBinder(LABELLING_KEYS, self)
        self.selector = ActiveSelector("label")
        self.selector.picked.connect(self.go_to_image)
        self.selector.message.connect(self.show_message)
        self._layers = LayerLabelling(self)
        self._readahead = ReadAhead(read_ahead_bytes, on_ready=self._image_ready.emit)
        self._image_ready.connect(self._on_image_ready)
        self._session_timer = QTimer(self)
        self._session_timer.setSingleShot(True)
        self._session_timer.setInterval(SESSION_SAVE_DELAY_MS)
        self._session_timer.timeout.connect(self.save_session)
        self._build_ui()
        self._keys.bind(self.viewer)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self._update_info()

    # ------------------------------------------------------------------ layout
    def _build_ui(self) -> None:
        build_labelling_ui(self)

    # ------------------------------------------------------------------ opening
    def _on_open_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Image folder or artseg project")
        if folder:
            self.open_folder(folder)

    def _on_new_project_clicked(self) -> None:
        images = QFileDialog.getExistingDirectory(self, "Image folder")
        if not images:
            return
        folder = QFileDialog.getExistingDirectory(self, "Where to keep the project", images)
        if folder:
            self.open_folder(images, project_folder=folder)

    def open_folder(self, folder: str | Path, project_folder: str | Path | None = None) -> bool:
        """Open a project folder, or the project of an image folder (created if needed).

        Returns False (with the reason shown) when it cannot be opened; a corrupt
        ``labels.csv`` is refused and left untouched.
        """
        try:
            if project_folder is not None:
                project = Project.create(folder, project_folder)
            else:
                project = Project.open_or_create(folder)
            project.labels  # noqa: B018 - load now so a corrupt labels file is refused here
        except ArtSegError as exc:
            self.show_message(str(exc), error=True)
            return False
        self.set_project(project)
        return True

    def set_project(self, project: Project, images: list[str] | None = None) -> None:
        """Show ``project``: resume at its saved image and filter, and announce it.

        Parameters
        ----------
        project : Project
            The project.
        images : list of str, optional
            Label only these images (open layers); all the folder's images by default.
        """
        self.save_session()
        if images is None:
            self._layers.stop()
        for layer in self._layers.layers.values():
            self._keys.bind(layer)
        self.project = project
        store = project.labels
        self.navigator = ImageNavigator(
            project.images() if images is None else images, self._label_of
        )
        session = project.session
        filter_name = session.get("filter") if session.get("filter") in FILTERS else "all"
        self.navigator.set_filter(filter_name)
        self.filter_box.blockSignals(True)
        self.filter_box.setCurrentText(filter_name)
        self.filter_box.blockSignals(False)
        if not self.navigator.go_to(session.get("image") or ""):
            first = self.navigator.first_match("unlabelled")
            self.navigator.index = first or 0
        self.project_label.setText(f"Project: {project.folder}\nImages: {project.image_folder}")
        problems = store.problems()
        self.show_message("\n".join(problems), error=False, notify=bool(problems))
        self.project_changed.emit(project)
        self._show_current()

    # ------------------------------------------------------------------ key actions
    def label_artifact(self) -> None:
        """Label the shown image 'artifact' and show the next one."""
        self.label("artifact")

    def label_clean(self) -> None:
        """Label the shown image 'clean' and show the next one."""
        self.label("clean")

    def label_unsure(self) -> None:
        """Label the shown image 'unsure' and show the next one."""
        self.label("unsure")

    def label(self, word: str) -> None:
        """Save ``word`` for the shown image, then move to the next image in the filter.

        Nothing is saved while the current image is still loading: a label only
        ever applies to an image the user has seen.
        """
        image = self._ready_image()
        if image is None or self.project is None:
            return
        try:
            self.project.labels.set(image, word)
        except (ArtSegError, OSError, ValueError) as exc:
            self.show_message(f"Label not saved: {exc}", error=True)
            return
        following = self.navigator.find(+1)
        if following is None:
            self.show_message("Last image of this filter: labelled and saved.")
            self._update_info()
            return
        self.navigator.index = following
        self._show_current()

    def clear_label(self) -> None:
        """Remove the shown image's label (saved at once)."""
        image = self._ready_image()
        if image is None or self.project is None:
            return
        try:
            self.project.labels.clear(image)
        except (ArtSegError, OSError) as exc:
            self.show_message(f"Label not cleared: {exc}", error=True)
            return
        self._update_info()

    def undo(self) -> None:
        """Undo the last label change and show that image again."""
        if self.project is None:
            return
        try:
            change = self.project.labels.undo()
        except (ArtSegError, OSError) as exc:
            self.show_message(f"Undo failed: {exc}", error=True)
            return
        if change is None:
            self.show_message("Nothing to undo.")
            return
        self.navigator.go_to(change.image)
        self.show_message(f"Undone: {change.image} is {change.before or 'unlabelled'} again.")
        self._show_current()

    def next_image(self) -> None:
        """Show the next image passing the filter."""
        self._step(self.navigator.find(+1), "No next image in this filter.")

    def previous_image(self) -> None:
        """Show the previous image passing the filter."""
        self._step(self.navigator.find(-1), "No previous image in this filter.")

    def next_unlabelled(self) -> None:
        """Show the next unlabelled image (wrapping around to the start)."""
        self._step(self.navigator.find(+1, "unlabelled", wrap=True), "Every image is labelled.")

    def next_most_useful(self) -> None:
        """Show the unlabelled image the current model is least sure about (ranked in a worker)."""
        if self.project is None:
            self.show_message("Open an image folder or a project first.")
            return
        unlabelled = [i for i in self.navigator.images if self._label_of(i) is None]
        self.selector.pick(self.project, unlabelled)

    def go_to_image(self, image: str) -> None:
        """Show ``image`` (switching the filter to ``all`` when it hides the image)."""
        if image not in self.navigator.images:
            self.show_message(f"{image} is not among this project's images.")
            return
        if not self.navigator.matches(image):
            self.navigator.set_filter("all")
            self.filter_box.blockSignals(True)
            self.filter_box.setCurrentText("all")
            self.filter_box.blockSignals(False)
        self.navigator.go_to(image)
        self._show_current()

    def set_filter(self, name: str) -> None:
        """Step only through images of one kind (``all``, ``unlabelled``, ``clean``, ...)."""
        self.navigator.set_filter(name)
        if self.filter_box.currentText() != name:
            self.filter_box.setCurrentText(name)
        current = self.navigator.current
        if current is not None and not self.navigator.matches(current):
            target = self.navigator.find(+1)
            if target is None:
                target = self.navigator.first_match()
            if target is None:
                self.show_message(f"No {name} images.")
            else:
                self.navigator.index = target
        self._show_current()

    def _step(self, index: int | None, message: str) -> None:
        if index is None:
            self.show_message(message)
            return
        self.navigator.index = index
        self._show_current()

    def _ready_image(self) -> str | None:
        """The current image if it is on screen, else None (with a message)."""
        current = self.navigator.current
        if current is None:
            self.show_message("Open an image folder or a project first.")
            return None
        if self.shown_image != current:
            self.show_message("Still loading this image: the key was ignored.")
            return None
        return current

    def _label_of(self, image: str) -> str | None:
        return self.project.labels.get(image) if self.project is not None else None

    # ------------------------------------------------------------------ drawing
    def _show_current(self) -> None:
        """Draw the current image if it is read, else ask for it and draw on arrival."""
        self._update_info()
        image = self.navigator.current
        if image is None or self.project is None:
            return
        project = self.project
        self._readahead.want(
            [project.image_path(name) for name in self.navigator.upcoming(READ_AHEAD_COUNT)]
        )
        self._session_timer.start()
        if self._layers.show(image):
            if self.layer is not None and self.layer.visible:
                self.layer.visible = False
            self.shown_image = image
            self._update_info()
            self.image_changed.emit(image)
            return
        item = self._readahead.peek(project.image_path(image))
        if item is None:
            self._waiting_for = image
            self.position_label.setText(self.position_label.text() + "  (loading…)")
            return
        self._draw(image, item)

    def _on_image_ready(self, path: Path) -> None:
        """A reading thread finished ``path``: draw it if the user is waiting for it."""
        if self._waiting_for is None or self.project is None:
            return
        if self.project.image_path(self._waiting_for) != Path(path):
            return
        item = self._readahead.peek(path)
        if item is not None:
            self._draw(self._waiting_for, item)

    def _draw(self, image: str, item: CachedImage) -> None:
        """Put the pixels on screen, keeping camera and contrast mode when sizes match."""
        self._waiting_for = None
        if item.error is not None or item.data is None:
            self.show_message(f"Cannot show {image}: {item.error}", error=True)
        else:
            self._set_layer_data(item)
            if item.notes:
                self.show_message("; ".join(item.notes))
        self.shown_image = image
        self._update_info()
        self.image_changed.emit(image)

    def _set_layer_data(self, item: CachedImage) -> None:
        auto = self.contrast_box.currentIndex() == 0
        if self.layer is None:
            self.layer = self.viewer.add_image(
                item.data, name=IMAGE_LAYER_NAME, contrast_limits=item.contrast_limits
            )
            self._keys.bind(self.layer)
            self.overlay.attach(self.layer)
            return
        if not self.layer.visible:  # setting it, even to True again, redraws the layer
            self.layer.visible = True
            self.overlay.attach(self.layer)
        resized = self.layer.data.shape != item.data.shape
        self.layer.data = item.data
        if auto:
            low, high = item.contrast_limits
            range_low, range_high = self.layer.contrast_limits_range
            if low < range_low or high > range_high:
                self.layer.contrast_limits_range = (min(low, range_low), max(high, range_high))
            self.layer.contrast_limits = item.contrast_limits
        if resized:
            self.viewer.reset_view()

    def _on_layer_removed(self, event: Any) -> None:
        if event.value is self.layer:
            self._keys.release(self.layer)
            self.overlay.hide()
            self.layer = None
            self.shown_image = None

    # ------------------------------------------------------------------ text
    def _update_info(self) -> None:
        nav = self.navigator
        if self.project is None or nav.current is None:
            self.position_label.setText("No images" if self.project is not None else "")
            self.counts_label.setText("")
            return
        counts = self._counts()
        self.position_label.setText(f"Image {nav.index + 1} of {len(nav.images)}: {nav.current}")
        self.counts_label.setText(
            f"clean {counts['clean']} · artifact {counts['artifact']} · "
            f"unsure {counts['unsure']} · unlabelled {counts['unlabelled']}"
        )
        if self.shown_image == nav.current:
            label = self._label_of(nav.current)
            self.overlay.show(label)  # one short word: longer canvas text costs ~20 ms a draw

    def _counts(self) -> dict[str, int]:
        """Label counts over the folder, or over the layers in layer mode."""
        store = self.project.labels
        if not self._layers.layers:
            return store.counts()
        counts = dict.fromkeys(("clean", "artifact", "unsure", "unlabelled"), 0)
        for image in self.navigator.images:
            counts[store.get(image) or "unlabelled"] += 1
        return counts

    def show_message(self, text: str, error: bool = False, notify: bool | None = None) -> None:
        """Show a message under the buttons (and as a napari notification for errors)."""
        show_status(self.status_label, text, error, notify)

    # ------------------------------------------------------------------ closing
    def save_session(self) -> None:
        """Save the current image and filter in ``project.json`` (to resume there)."""
        self._session_timer.stop()
        if self.project is not None:
            try:
                self.project.save_session(self.navigator.current, self.navigator.filter)
            except OSError as exc:
                self.show_message(f"Could not save where you stopped: {exc}", error=True)

    @property
    def released(self) -> bool:
        """True once :meth:`release` ran (the widget was closed)."""
        return self._released

    def release(self) -> None:
        """Save the session, stop reading ahead, and release the keys and overlay."""
        if self._released:
            return
        self._released = True
        self.save_session()
        self._readahead.close()
        self.selector.release()
        self._keys.release_all()
        self._layers.stop()
        self.overlay.hide()
        self.viewer.layers.events.removed.disconnect(self._on_layer_removed)
