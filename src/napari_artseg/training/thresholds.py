"""Choosing the gate, mask and minimum-size settings on the validation split.

With curated masks among the validation images the mask threshold and minimum
size maximise pixel IoU on them. Without, they maximise the image-level F1 of
"the final mask is non-empty" against the labels, ties broken by IoU against the
validation pseudo-labels (or, for a method without pixel targets, by closeness of
the threshold to 0.5). Test data is never used.
"""

from __future__ import annotations

import numpy as np

from ..postprocess import clean_mask

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


def choose_mask_settings(
    probs: list[np.ndarray],
    labels: np.ndarray,
    gate_passed: np.ndarray,
    targets: list[np.ndarray | None],
    curated: np.ndarray,
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

    Returns
    -------
    threshold : float
    min_size_fraction : float
        Minimum object size as a share of the image area.
    report : dict
        The objective values of the chosen setting.
    """
    labels = np.asarray(labels).astype(bool)
    use_curated = bool(np.any(curated))
    any_target = any(t is not None for t in targets)
    best_key, best = None, (0.5, 0.0, {})
    for threshold in MASK_CANDIDATES:
        for fraction in MIN_SIZE_FRACTIONS:
            nonempty, inter, union = [], 0.0, 0.0
            for prob, target, passed, is_curated in zip(
                probs, targets, gate_passed, curated, strict=True
            ):
                min_size = int(round(fraction * prob.size))
                mask = clean_mask(prob, threshold, min_size) if passed else np.zeros(prob.shape,
                                                                                    bool)
                nonempty.append(bool(mask.any()))
                if target is not None and (is_curated or not use_curated):
                    inter += float(np.sum(mask & target))
                    union += float(np.sum(mask | target))
            iou = inter / union if union else 1.0
            f1 = f1_score(np.array(nonempty), labels)
            key = (round(iou, 4), round(f1, 4)) if use_curated else (round(f1, 4), round(iou, 4))
            if not any_target:
                key = (round(f1, 4), -abs(threshold - 0.5))
            if best_key is None or key > best_key:
                best_key = key
                best = (threshold, fraction, {"val_image_f1": f1, "val_target_iou": iou})
    return best
