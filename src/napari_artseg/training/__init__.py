"""Training generators: classifier, Score-CAM pseudo-labels, U-Net, whole pipeline.

Every long step is a generator that yields :class:`ProgressEvent` objects and
returns its result; the caller may stop between yields (``generator.close()``).
"""

from .events import ProgressEvent
from .pipeline import TrainingCancelled, train_pipeline

__all__ = ["ProgressEvent", "TrainingCancelled", "train_pipeline"]
