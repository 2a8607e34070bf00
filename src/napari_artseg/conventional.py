"""A conventional artifact detector: background correction, local contrast, threshold.

This is the plain baseline the learned methods are compared with, and the label
source of the ``cdl`` method (no human labels). Steps:

1. background: a wide Gaussian blur of the image (flat-field estimate);
2. correction: image minus background, or image divided by it minus 1
   (``flat_field``: uneven illumination multiplies the image);
3. optional difference of Gaussians: subtract a Gaussian blur of width
   ``dog_sigma`` (with the smoothing of step 5 this is a band-pass that keeps
   structures between ``smooth_sigma`` and ``dog_sigma`` in size);
4. a robust z-score: divided by 1.4826 x the median absolute deviation; its
   absolute value, or only the dark or the bright side (``polarity``);
5. smoothing with a small Gaussian (``smooth_sigma``);
6. hysteresis threshold: objects above ``low_threshold`` that reach ``threshold``
   somewhere; objects smaller than ``min_size_px`` are dropped.

The defaults reproduce the original baseline (subtraction, no band-pass, one
threshold); the ``cdl`` method's defaults are the ``cdl_*`` settings of
:class:`~napari_artseg.config.ArtSegConfig`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage

from .postprocess import remove_small


@dataclass
class ConventionalDetector:
    """Background-corrected intensity threshold.

    Attributes
    ----------
    background_sigma : float
        Gaussian sigma (px) of the background estimate.
    smooth_sigma : float
        Gaussian sigma (px) applied to the residual before thresholding.
    threshold : float
        Cut-off on the robust z-score that an object must reach.
    min_size_px : int
        Objects smaller than this are dropped.
    flat_field : bool
        Divide by the background instead of subtracting it.
    dog_sigma : float
        Width (px) of the blur subtracted for the difference of Gaussians (0: none).
    low_threshold : float or None
        Hysteresis: an object's extent is where the score reaches this (None:
        ``threshold``, a single cut-off).
    polarity : str
        ``both`` (absolute z-score), ``dark`` or ``bright``.
    """

    background_sigma: float = 25.0
    smooth_sigma: float = 1.5
    threshold: float = 4.0
    min_size_px: int = 50
    flat_field: bool = False
    dog_sigma: float = 0.0
    low_threshold: float | None = None
    polarity: str = "both"

    @classmethod
    def from_config(cls, config: Any) -> ConventionalDetector:
        """The detector of an :class:`~napari_artseg.config.ArtSegConfig`'s ``cdl_*`` settings."""
        return cls(config.cdl_background_sigma, config.cdl_smooth_sigma, config.cdl_threshold,
                   config.cdl_min_size_px, config.cdl_flat_field, config.cdl_dog_sigma,
                   config.cdl_low_threshold, config.cdl_polarity)

    def score_map(self, image: np.ndarray) -> np.ndarray:
        """The smoothed robust z-score of the corrected image (float32, H x W, >= 0)."""
        image = np.asarray(image, dtype=np.float32)
        background = ndimage.gaussian_filter(image, self.background_sigma, mode="reflect")
        if self.flat_field:
            floor = max(float(np.abs(background).max()) * 1e-3, 1e-6)
            residual = image / np.maximum(background, floor) - 1.0
        else:
            residual = image - background
        if self.dog_sigma > 0:
            residual = residual - ndimage.gaussian_filter(residual, self.dog_sigma, mode="reflect")
        mad = float(np.median(np.abs(residual - np.median(residual))))
        scale = 1.4826 * mad if mad > 0 else float(residual.std()) or 1.0
        z = residual / scale
        z = np.abs(z) if self.polarity == "both" else np.maximum(
            -z if self.polarity == "dark" else z, 0)
        if self.smooth_sigma > 0:
            z = ndimage.gaussian_filter(z, self.smooth_sigma)
        return z.astype(np.float32)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """The boolean artifact mask of an image."""
        return self.mask_from_scores(self.score_map(image))

    def mask_from_scores(self, score: np.ndarray) -> np.ndarray:
        """Hysteresis threshold and size filter of a :meth:`score_map` result."""
        high = score >= self.threshold
        low = self.low_threshold
        if low is not None and low < self.threshold and high.any():
            regions, _ = ndimage.label(score >= low)
            seeded = np.unique(regions[high])
            high = np.isin(regions, seeded[seeded > 0])
        return remove_small(high, self.min_size_px)

    def to_dict(self) -> dict[str, Any]:
        """The parameters as a dict (for configs and reports)."""
        return asdict(self)


def tune_detector(
    images: Iterable[np.ndarray],
    masks: Iterable[np.ndarray],
    thresholds: Sequence[float] = (2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0),
    min_sizes: Sequence[int] = (0, 25, 100, 400, 1000),
    base: ConventionalDetector | None = None,
) -> tuple[ConventionalDetector, float]:
    """Pick the threshold and minimum size that maximise pooled pixel IoU on masks.

    Returns the tuned detector and its IoU on the data it was tuned on.
    """
    base = base or ConventionalDetector()
    scores, truths = [], []
    for image, mask in zip(images, masks, strict=True):
        scores.append(base.score_map(image))
        truths.append(np.asarray(mask, dtype=bool))
    best = (-1.0, base)
    for threshold in thresholds:
        for min_size in min_sizes:
            candidate = replace(base, threshold=threshold, min_size_px=min_size,
                                low_threshold=None if base.low_threshold is None
                                else min(base.low_threshold, threshold))
            inter = union = 0
            for score, truth in zip(scores, truths, strict=True):
                pred = candidate.mask_from_scores(score)
                inter += int(np.sum(pred & truth))
                union += int(np.sum(pred | truth))
            iou = inter / union if union else 1.0
            if iou > best[0]:
                best = (iou, candidate)
    return best[1], best[0]
