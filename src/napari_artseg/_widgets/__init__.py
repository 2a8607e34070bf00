"""Qt widgets of napari-artseg (the only package modules that import napari and Qt)."""

from .labelling import LabellingWidget

__all__ = ["LabellingWidget"]
