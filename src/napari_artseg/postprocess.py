"""Turning a probability map into a mask: threshold, then drop small objects."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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


def mask_cuts(threshold: float, fallback: float | None = None) -> tuple[float, ...]:
    """The thresholds a mask is tried at, in order: ``threshold``, then a lower ``fallback``.

    Parameters
    ----------
    threshold : float
        The mask threshold (the artifacts' extent).
    fallback : float, optional
        The empty-mask fallback: an image whose mask is empty at ``threshold`` gets
        its mask at this lower threshold instead. None, or not below ``threshold``: none.
    """
    if fallback is None or not fallback < threshold:
        return (float(threshold),)
    return float(threshold), float(fallback)


def chosen_cuts(thresholds: Mapping[str, Any], threshold: float | None = None) -> tuple[float, ...]:
    """The cuts of a model's masks: a user's ``threshold`` alone, else the model's own.

    Parameters
    ----------
    thresholds : mapping
        A model's ``thresholds`` (``mask``, default 0.5, and an optional ``fallback``).
    threshold : float, optional
        A threshold chosen by the user: that one alone, no fallback.
    """
    if threshold is not None:
        return mask_cuts(float(threshold))
    return mask_cuts(float(thresholds.get("mask", 0.5)), thresholds.get("fallback"))


def final_mask(prob: np.ndarray, cuts: tuple[float, ...], min_size: int) -> np.ndarray:
    """The mask at the first of ``cuts`` that leaves an object (the last one's when none does).

    Parameters
    ----------
    prob : numpy.ndarray
        A probability map.
    cuts : tuple of float
        Thresholds in the order they are tried (:func:`mask_cuts`).
    min_size : int
        Objects smaller than this many pixels are dropped (at every cut).
    """
    for cut in cuts:
        mask = clean_mask(prob, cut, min_size)
        if mask.any():
            break
    return mask
