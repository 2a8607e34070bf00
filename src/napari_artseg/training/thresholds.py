"""Choosing the gate, mask and minimum-size settings on the validation split.

With curated masks among the validation images the mask threshold and minimum
size maximise pixel IoU on them. Without, they maximise the image-level F1 of
"the final mask is non-empty" against the labels. Ties go to the best IoU against
the validation targets when those are Score-CAM pseudo-labels; when they are the
U-Net's own masks cut at 0.5 (self-training, a parent's masks) or there are none,
ties go to the mask threshold nearest 0.5 first (the IoU then decides the minimum
size). Test data is never used.

That threshold decides which images have artifacts. When the targets are the
U-Net's own 0.5 masks, a chosen threshold below 0.5 then becomes the *empty-mask
fallback* and the mask's extent is cut at 0.5 (:func:`extent_and_fallback`): an
image keeps its 0.5 mask, and only an image whose 0.5 mask is empty gets its mask
at the lower threshold, so the image-level calls are those of the chosen threshold
while the pixels follow the cut the U-Net was trained toward.

The gate is the cut-off that maximises the gate score's own validation F1
(``gate_rule="classifier"``, the default), or it is searched jointly with the
mask settings (``gate_rule="joint"``): lower gates that let through the
validation artifacts that cut-off misses, and no gate at all (every image
reaches the U-Net, whose mask then decides), are also tried, and the setting
with the best objective wins (ties: the higher gate).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from ..config import GATE_RULES

#: At most this many lower gates (one per missed validation artifact) are tried besides no gate.
MAX_LOWER_GATES = 8
#: The cut of the U-Net's own masks (its self-training and parent-mask targets).
OWN_MASK_CUT = 0.5
MASK_CANDIDATES = (0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9)
#: Minimum object sizes tried, as a share of the image area at the processing scale.
MIN_SIZE_FRACTIONS = (0.0, 0.0002, 0.0005, 0.001, 0.002, 0.005)


def f1_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """Binary F1 of boolean arrays (1.0 when both are all false)."""
    tp = float(np.sum(pred & truth))
    denom = float(np.sum(pred) + np.sum(truth))
    return 2 * tp / denom if denom else 1.0


def choose_gate_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The classifier cut-off that maximises F1 on validation (ties: closest to 0.5)."""
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels).astype(bool)
    candidates = np.unique(np.concatenate([scores, [0.5]]))
    best = (-1.0, 0.0, 0.5)
    for t in candidates:
        f1 = f1_score(scores >= t, labels)
        key = (round(f1, 6), -abs(t - 0.5), t)
        if key > best:
            best = key
    return float(best[2])


def gate_candidates(scores: np.ndarray, labels: np.ndarray, rule: str = "joint") -> list[float]:
    """The gate cut-offs a search tries, best first on ties.

    Parameters
    ----------
    scores : numpy.ndarray
        Validation gate scores (P(artifact)).
    labels : numpy.ndarray
        Validation image labels (1 artifact).
    rule : str
        ``classifier``: the F1-optimal cut-off alone. ``joint``: also the scores of
        the validation artifacts it misses (highest first, at most
        :data:`MAX_LOWER_GATES`) and 0 (no gate).
    """
    best = choose_gate_threshold(scores, labels)
    if rule == "classifier":
        return [best]
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels).astype(bool)
    missed = sorted({float(s) for s in scores[labels & (scores < best)]}, reverse=True)
    lower = [g for g in missed[:MAX_LOWER_GATES] if g > 0.0]
    return [best, *lower] + ([0.0] if best > 0.0 else [])


def extent_and_fallback(threshold: float, own_targets: bool,
                        curated: bool) -> tuple[float, float | None]:
    """Split a chosen mask threshold into the extent threshold and the empty-mask fallback.

    Parameters
    ----------
    threshold : float
        The mask threshold chosen on validation (image F1 first, without curated masks).
    own_targets : bool
        The uncurated targets are the U-Net's own masks cut at :data:`OWN_MASK_CUT`.
    curated : bool
        Curated masks chose the threshold (their IoU): it is kept as it is.

    Returns
    -------
    mask : float
        The threshold of every mask: :data:`OWN_MASK_CUT` when ``threshold`` is lower
        and the targets are the U-Net's own, else ``threshold``.
    fallback : float or None
        ``threshold`` when it was raised (images with an empty mask at 0.5 are cut
        there), else None.
    """
    if own_targets and not curated and threshold < OWN_MASK_CUT:
        return OWN_MASK_CUT, float(threshold)
    return float(threshold), None


class MaskStatistics:
    """Per validation image and mask threshold: object sizes and their overlap with the target.

    Enough to score every minimum size and gate without labelling a map twice. Built
    image by image with :meth:`add`, so a caller can judge each validation image as its
    map is made and drop the map (only the objects' sizes are kept).
    """

    def __init__(self) -> None:
        self.pixels: list[int] = []
        self.target_sums: list[float] = []
        self.has_target: list[bool] = []
        self.stats: list[dict[float, tuple[np.ndarray, np.ndarray]]] = []

    @classmethod
    def of(cls, probs: list[np.ndarray], targets: list[np.ndarray | None]) -> MaskStatistics:
        """The statistics of several maps and their targets (None: no target)."""
        statistics = cls()
        for prob, target in zip(probs, targets, strict=True):
            statistics.add(prob, target)
        return statistics

    def add(self, prob: np.ndarray, target: np.ndarray | None) -> None:
        """Label one image's map at every mask candidate and keep its objects' statistics."""
        prob = np.asarray(prob)
        self.pixels.append(int(prob.size))
        self.target_sums.append(0.0 if target is None else float(np.sum(target)))
        self.has_target.append(target is not None)
        weights = None if target is None else np.asarray(target).ravel().astype(float)
        per_threshold = {}
        for threshold in MASK_CANDIDATES:
            labelled, count = ndimage.label(prob >= threshold)
            flat = labelled.ravel()
            sizes = np.bincount(flat, minlength=count + 1)[1:]
            overlap = (np.bincount(flat, weights=weights, minlength=count + 1)[1:]
                       if weights is not None else np.zeros(count))
            per_threshold[threshold] = sizes, overlap
        self.stats.append(per_threshold)

    def __len__(self) -> int:
        return len(self.pixels)

    def kept(self, i: int, threshold: float, fraction: float) -> tuple[bool, float, float]:
        """Whether image ``i``'s mask is non-empty, its area and its overlap with the target."""
        sizes, overlap = self.stats[i][threshold]
        min_size = int(round(fraction * self.pixels[i]))
        keep = sizes >= min_size if min_size > 1 else np.ones(sizes.shape, bool)
        return bool(keep.any()), float(sizes[keep].sum()), float(overlap[keep].sum())


def _objective(use_curated: bool, toward_half: bool, threshold: float, f1: float,
               iou: float) -> tuple:
    """The key a mask setting is ranked by (larger is better).

    Curated masks: their IoU, then the image F1. Otherwise the image F1, then (with
    ``toward_half``) the mask threshold nearest 0.5, then IoU against the targets.
    """
    if use_curated:
        return round(iou, 4), round(f1, 4)
    if toward_half:
        return round(f1, 4), -abs(threshold - 0.5), round(iou, 4)
    return round(f1, 4), round(iou, 4)


def _search_mask(components: MaskStatistics, labels: np.ndarray, gate_passed: np.ndarray,
                 curated: np.ndarray, own_targets: bool) -> tuple[tuple, float, float, dict]:
    """The best mask threshold and minimum size for one gate, with its objective key."""
    has_target = components.has_target
    use_curated = bool(np.any(curated))
    toward_half = own_targets or not any(has_target)
    best_key, best = None, (0.5, 0.0, {})
    for threshold in MASK_CANDIDATES:
        for fraction in MIN_SIZE_FRACTIONS:
            nonempty, inter, union = [], 0.0, 0.0
            for i, passed in enumerate(gate_passed):
                present, area, overlap = (components.kept(i, threshold, fraction) if passed
                                          else (False, 0.0, 0.0))
                nonempty.append(present)
                if has_target[i] and (curated[i] or not use_curated):
                    inter += overlap
                    union += area + components.target_sums[i] - overlap
            iou = inter / union if union else 1.0
            f1 = f1_score(np.array(nonempty, dtype=bool), labels)
            key = _objective(use_curated, toward_half, threshold, f1, iou)
            if best_key is None or key > best_key:
                best_key = key
                best = (threshold, fraction, {"val_image_f1": f1, "val_target_iou": iou})
    return best_key, *best


def choose_mask_settings(
    probs: list[np.ndarray],
    labels: np.ndarray,
    gate_passed: np.ndarray,
    targets: list[np.ndarray | None],
    curated: np.ndarray,
    own_targets: bool = False,
) -> tuple[float, float, dict[str, float]]:
    """Choose the mask threshold and the minimum object size on validation images.

    Parameters
    ----------
    probs : list of numpy.ndarray
        U-Net probability maps at the processing scale.
    labels : numpy.ndarray
        Image labels (1 artifact).
    gate_passed : numpy.ndarray
        Whether the classifier gate let each image through.
    targets : list of numpy.ndarray or None
        Boolean pixel targets (curated masks or pseudo-labels); None where an
        image has none (it then counts for the F1 only).
    curated : numpy.ndarray
        Which targets are curated masks.
    own_targets : bool
        The uncurated targets are the U-Net's own masks cut at 0.5 (self-training, a
        parent's masks): ties in image F1 then go to the threshold nearest 0.5 rather
        than to the IoU against them.

    Returns
    -------
    threshold : float
    min_size_fraction : float
        Minimum object size as a share of the image area.
    report : dict
        The objective values of the chosen setting.
    """
    _, threshold, fraction, report = _search_mask(
        MaskStatistics.of(probs, targets), np.asarray(labels).astype(bool),
        np.asarray(gate_passed), np.asarray(curated, dtype=bool), own_targets)
    return threshold, fraction, report


def choose_gate_and_mask(
    scores: np.ndarray,
    labels: np.ndarray,
    probs: list[np.ndarray],
    targets: list[np.ndarray | None],
    curated: np.ndarray,
    rule: str = "joint",
    gate: float | None = None,
    own_targets: bool = False,
) -> tuple[float, float, float, dict[str, Any]]:
    """Choose the gate, mask threshold and minimum size together on validation images.

    Parameters
    ----------
    scores : numpy.ndarray
        Gate scores (P(artifact)) of the validation images.
    labels : numpy.ndarray
        Image labels (1 artifact).
    probs, targets, curated, own_targets
        As in :func:`choose_mask_settings`.
    rule : str
        ``joint`` or ``classifier`` (see :func:`gate_candidates`).
    gate : float, optional
        A fixed gate (a setting in the config): only the mask settings are searched.

    Returns
    -------
    gate : float
    threshold : float
    min_size_fraction : float
    report : dict
        The objective values of the chosen setting and the number of gates tried.
    """
    return choose_gate_and_mask_from(MaskStatistics.of(probs, targets), scores, labels, curated,
                                     rule, gate, own_targets)


def choose_gate_and_mask_from(
    statistics: MaskStatistics,
    scores: np.ndarray,
    labels: np.ndarray,
    curated: np.ndarray,
    rule: str = "joint",
    gate: float | None = None,
    own_targets: bool = False,
) -> tuple[float, float, float, dict[str, Any]]:
    """:func:`choose_gate_and_mask` on statistics gathered image by image.

    ``statistics`` holds one entry per validation image, in the order of ``scores``,
    ``labels`` and ``curated`` (:meth:`MaskStatistics.add` as each map is made); the
    other parameters and the result are those of :func:`choose_gate_and_mask`.
    """
    if rule not in GATE_RULES:
        raise ValueError(f"gate_rule must be one of {', '.join(GATE_RULES)}, not {rule!r}")
    scores = np.asarray(scores, dtype=float)
    if len(statistics) != len(scores):
        raise ValueError(f"statistics of {len(statistics)} maps for {len(scores)} gate scores")
    labels = np.asarray(labels).astype(bool)
    candidates = [float(gate)] if gate is not None else gate_candidates(scores, labels, rule)
    curated = np.asarray(curated, dtype=bool)
    best = None
    for candidate in candidates:
        key, threshold, fraction, report = _search_mask(statistics, labels, scores >= candidate,
                                                        curated, own_targets)
        if best is None or key > best[0]:
            best = (key, candidate, threshold, fraction, report)
    _, chosen, threshold, fraction, report = best
    return chosen, threshold, fraction, {**report, "gates_tried": len(candidates)}
