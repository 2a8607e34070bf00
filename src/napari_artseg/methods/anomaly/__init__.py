"""Anomaly detectors trained on clean images only (issue 8): AE-SSIM, PaDiM, PatchSVDD.

Each detector class takes ``(params=None, device="cpu", seed=0)``, trains with the
generator ``fit(images)`` (clean z-scored (1, h, w) images; yields
:class:`~napari_artseg.training.events.ProgressEvent`), returns a raw (h, w) anomaly
map from ``score_map(image)`` (higher = more anomalous) and round-trips its learned
state through ``state_tensors()`` / ``load_state_tensors()``. See
docs/anomaly-detectors.md.
"""

from __future__ import annotations

from .ae_ssim import AESSIM
from .base import AnomalyDetector, DetectorParamsError, DetectorStateError, NotFittedError
from .padim import PaDiM, mahalanobis_map
from .patchsvdd import PatchSVDD

#: Detector classes by method name.
DETECTORS: dict[str, type[AnomalyDetector]] = {
    "ae_ssim": AESSIM,
    "padim": PaDiM,
    "patchsvdd": PatchSVDD,
}

__all__ = [
    "AESSIM",
    "DETECTORS",
    "AnomalyDetector",
    "DetectorParamsError",
    "DetectorStateError",
    "NotFittedError",
    "PaDiM",
    "PatchSVDD",
    "mahalanobis_map",
]
