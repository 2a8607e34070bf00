"""The layers the predict widget draws over the image: probability, saliency and mask."""

from __future__ import annotations

from typing import Any

import numpy as np

PROBABILITY_LAYER = "artseg probability"
SALIENCY_LAYER = "artseg Score-CAM"
MASK_LAYER = "artseg mask"
#: Gap in pixels between the image and the saliency map shown beside it.
SIDE_GAP = 16


def brush_size_for(shape: tuple[int, ...]) -> int:
    """A brush of about 1/40 of the image's smaller side (at least 3 px)."""
    return max(3, int(round(min(shape[-2:]) / 40)))


class PredictionLayers:
    """Create, update and remove the prediction layers of one viewer.

    The probability map is an ``inferno`` image at 0.5 opacity with additive
    blending over the brightfield image; the Score-CAM map sits beside the
    image (translated by its width plus :data:`SIDE_GAP`); the mask is a Labels
    layer ready for painting (label 1, brush ~1/40 of the image, active layer).
    Layer data is replaced in place when the shape allows, so moving between
    images or thresholds does not rebuild layers.

    Parameters
    ----------
    viewer : napari.Viewer
        Where the layers go.
    on_mask_created : callable
        Called with every new mask layer (to bind keys on it).
    """

    def __init__(self, viewer: Any, on_mask_created: Any = None) -> None:
        self.viewer = viewer
        self._on_mask_created = on_mask_created
        self.probability: Any = None
        self.saliency: Any = None
        self.mask: Any = None

    def _alive(self, layer: Any) -> bool:
        return layer is not None and layer in self.viewer.layers

    def show_probability(self, prob: np.ndarray) -> Any:
        """Show (or update) the probability map."""
        if self._alive(self.probability):
            self.probability.data = prob
        else:
            self.probability = self.viewer.add_image(
                prob, name=PROBABILITY_LAYER, colormap="inferno", opacity=0.5,
                blending="additive", contrast_limits=(0.0, 1.0))
        return self.probability

    def show_saliency(self, saliency: np.ndarray | None) -> None:
        """Show the Score-CAM map beside the image (None removes it)."""
        if saliency is None:
            self._remove("saliency")
            return
        offset = (0.0, float(saliency.shape[1] + SIDE_GAP))
        if self._alive(self.saliency):
            self.saliency.data = saliency
            self.saliency.translate = offset
        else:
            self.saliency = self.viewer.add_image(
                saliency, name=SALIENCY_LAYER, colormap="magma", contrast_limits=(0.0, 1.0),
                translate=offset, blending="translucent")

    def show_mask(self, mask: np.ndarray) -> Any:
        """Show (or replace) the mask; the mask layer becomes the active layer."""
        data = np.asarray(mask).astype(np.uint8)
        if self._alive(self.mask) and self.mask.data.shape == data.shape:
            self.mask.data = data
        else:
            self._remove("mask")
            self.mask = self.viewer.add_labels(data, name=MASK_LAYER, opacity=0.6)
            if self._on_mask_created is not None:
                self._on_mask_created(self.mask)
        self.mask.selected_label = 1
        self.mask.brush_size = brush_size_for(data.shape)
        self.viewer.layers.selection.active = self.mask
        return self.mask

    def mask_data(self) -> np.ndarray | None:
        """The mask as the user sees it (None when there is no mask layer)."""
        return np.asarray(self.mask.data) if self._alive(self.mask) else None

    def remove_probability(self) -> None:
        """Remove the probability map (and the saliency map)."""
        self._remove("saliency")
        self._remove("probability")

    def _remove(self, name: str) -> None:
        layer = getattr(self, name)
        if self._alive(layer):
            self.viewer.layers.remove(layer)
        setattr(self, name, None)

    def clear(self) -> None:
        """Remove every prediction layer."""
        for name in ("saliency", "probability", "mask"):
            self._remove(name)
