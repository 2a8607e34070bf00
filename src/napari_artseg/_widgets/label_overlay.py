"""Show the current image's label in the canvas: a coloured frame and a text overlay."""

from __future__ import annotations

from typing import Any

#: Frame and text colour per label (None: unlabelled).
LABEL_COLOURS: dict[str | None, str] = {
    "artifact": "#ff2a2a",
    "clean": "#2ad12a",
    "unsure": "#ffb000",
    None: "#9a9a9a",
}
FRAME_THICKNESS = 8


def canvas_text_overlay(viewer: Any) -> Any:
    """The viewer's text overlay (``viewer.canvas.overlays['text']`` from napari 0.9)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    if overlays is not None and "text" in overlays:
        return overlays["text"]
    return viewer.text_overlay  # napari < 0.9


def overlay_text(label: str | None) -> str:
    """The overlay text for a label."""
    return label.upper() if label else "unlabelled"


class LabelOverlay:
    """Draw the label of the displayed image on the canvas.

    The image layer's bounding box becomes a thick frame in the label colour,
    and the viewer's text overlay (top left) names the label in the same colour.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose text overlay is used.
    """

    def __init__(self, viewer: Any) -> None:
        self._viewer = viewer
        self._layer: Any = None
        self.label: str | None = None
        self.text = ""

    def attach(self, layer: Any) -> None:
        """Draw the frame around ``layer`` (and remove it from the previous one)."""
        if self._layer is not None and self._layer is not layer:
            self._layer.bounding_box.visible = False
        self._layer = layer
        box = layer.bounding_box
        box.points = False
        box.line_thickness = FRAME_THICKNESS
        box.visible = True

    def show(self, label: str | None, detail: str = "") -> None:
        """Show ``label`` (None: unlabelled), with an optional detail line."""
        colour = LABEL_COLOURS.get(label, LABEL_COLOURS[None])
        self.label = label
        self.text = overlay_text(label) + (f"\n{detail}" if detail else "")
        if self._layer is not None:
            self._layer.bounding_box.line_color = colour
        overlay = canvas_text_overlay(self._viewer)
        overlay.position = "top_left"  # unchanged values emit no event and cost nothing
        overlay.font_size = 18
        overlay.color = colour
        overlay.text = self.text
        overlay.visible = True

    @property
    def colour(self) -> str:
        """Colour of the current label."""
        return LABEL_COLOURS.get(self.label, LABEL_COLOURS[None])

    def hide(self) -> None:
        """Remove the text overlay and the frame."""
        overlay = canvas_text_overlay(self._viewer)
        overlay.visible = False
        overlay.text = ""
        if self._layer is not None:
            self._layer.bounding_box.visible = False
        self._layer = None
