"""A conventional artifact detector: background correction, local contrast, threshold.

This is the plain baseline the learned methods are compared with (and the label
source for a CDL-style start with no human labels). Steps:

1. background: a wide Gaussian blur of the image (flat-field estimate);
2. residual: image minus background, divided by a robust noise scale
   (1.4826 x the median absolute deviation), smoothed a little;
3. threshold the absolute residual, drop objects smaller than ``min_size_px``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

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
        Cut-off on the absolute robust z-score of the residual.
    min_size_px : int
        Objects smaller than this are dropped.
    """

    background_sigma: float = 25.0
    smooth_sigma: float = 1.5
    threshold: float = 4.0
    min_size_px: int = 50

    def score_map(self, image: np.ndarray) -> np.ndarray:
        """Absolute robust z-score of the background-corrected image (float32, H x W)."""
        image = np.asarray(image, dtype=np.float32)
        background = ndimage.gaussian_filter(image, self.background_sigma, mode="reflect")
        residual = image - background
        mad = float(np.median(np.abs(residual - np.median(residual))))
        scale = 1.4826 * mad if mad > 0 else float(residual.std()) or 1.0
        z = np.abs(residual) / scale
        if self.smooth_sigma > 0:
            z = ndimage.gaussian_filter(z, self.smooth_sigma)
        return z.astype(np.float32)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """The boolean artifact mask of an image."""
        return remove_small(self.score_map(image) >= self.threshold, self.min_size_px)

    def to_dict(self) -> dict[str, float]:
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
            inter = union = 0
            for score, truth in zip(scores, truths, strict=True):
                pred = remove_small(score >= threshold, min_size)
                inter += int(np.sum(pred & truth))
                union += int(np.sum(pred | truth))
            iou = inter / union if union else 1.0
            if iou > best[0]:
                candidate = ConventionalDetector(base.background_sigma, base.smooth_sigma,
                                                 threshold, min_size)
                best = (iou, candidate)
    return best[1], best[0]
