"""Turning a probability map into a mask: threshold, then drop small objects."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def remove_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop connected objects (4-connected) with fewer than ``min_size`` pixels.

    This is ``skimage.morphology.remove_small_objects`` with the paper's
    semantics (objects strictly smaller than ``min_size`` go), independent of
    the scikit-image version.
    """
    mask = np.asarray(mask, dtype=bool)
    if min_size <= 1 or not mask.any():
        return mask
    labels, count = ndimage.label(mask)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def clean_mask(prob: np.ndarray, threshold: float, min_size: int) -> np.ndarray:
    """Threshold a probability map and drop objects smaller than ``min_size`` pixels."""
    return remove_small(np.asarray(prob) >= threshold, min_size)
