"""Qt widgets of napari-artseg (the only package modules that import napari and Qt)."""

from .container import ArtSegWidget
from .labelling import LabellingWidget
from .predict import PredictWidget
from .training import TrainingWidget

__all__ = ["ArtSegWidget", "LabellingWidget", "PredictWidget", "TrainingWidget"]
