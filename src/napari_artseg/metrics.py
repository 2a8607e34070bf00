"""Evaluation measures for artifact segmentation (science brief, "Measures").

Three levels are measured:

* **Image level**: classification of "contains an artifact" (:func:`classification_counts`).
* **Pixel level**: precision, recall, F1 (= Dice) and IoU from pixel counts
  (:func:`pixel_counts`), plus a threshold sweep (:func:`precision_recall_curve`) and the
  pixel AUROC (:func:`pixel_auroc`).
* **Object level**: connected components matched by IoU (:func:`object_counts`).

:func:`evaluate_dataset` combines them over a dataset into an :class:`EvaluationResult`.

Conventions for empty denominators
----------------------------------
* precision = TP / (TP + FP) and recall = TP / (TP + FN) are **NaN** when their denominator is 0
  (e.g. the precision of an empty prediction is undefined).
* F1 = 2 TP / (2 TP + FP + FN) and IoU = TP / (TP + FP + FN) are **1.0** when TP + FP + FN == 0:
  an empty prediction of an empty truth is a perfect answer.

This module uses numpy and scikit-image only (no torch, no GUI).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from skimage.measure import label as _label_components

__all__ = [
    "EvaluationResult",
    "ObjectCounts",
    "PixelCounts",
    "classification_counts",
    "evaluate_dataset",
    "object_counts",
    "pixel_auroc",
    "pixel_counts",
    "precision_recall_curve",
]

# Above this many (gt, pred) label pairs the dense joint histogram is replaced by a sparse one.
_DENSE_PAIR_LIMIT = 1 << 24


# ----------------------------------------------------------------------------- ratios


def _ratio(num: float, den: float) -> float:
    """Return ``num / den``, or NaN when ``den == 0``."""
    return float(num) / float(den) if den else math.nan


def _f1(tp: int, fp: int, fn: int) -> float:
    """F1 = 2TP / (2TP + FP + FN); 1.0 when TP + FP + FN == 0."""
    den = 2 * tp + fp + fn
    return 2.0 * tp / den if den else 1.0


def _iou(tp: int, fp: int, fn: int) -> float:
    """IoU = TP / (TP + FP + FN); 1.0 when TP + FP + FN == 0."""
    den = tp + fp + fn
    return float(tp) / den if den else 1.0


# ----------------------------------------------------------------------------- pixel level


class _Rates:
    """Precision, recall, F1 and IoU from ``tp``, ``fp`` and ``fn`` counts.

    Precision and recall are NaN when their denominator is 0; F1 (Dice, 2TP / (2TP
    + FP + FN)) and IoU (Jaccard, TP / (TP + FP + FN)) are 1.0 when there is
    nothing at all, in the truth or the prediction.
    """

    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        """TP / (TP + FP); NaN when nothing is predicted."""
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        """TP / (TP + FN); NaN when the truth is empty."""
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        """2TP / (2TP + FP + FN); 1.0 when truth and prediction are both empty."""
        return _f1(self.tp, self.fp, self.fn)

    @property
    def iou(self) -> float:
        """TP / (TP + FP + FN); 1.0 when truth and prediction are both empty."""
        return _iou(self.tp, self.fp, self.fn)


@dataclass
class PixelCounts(_Rates):
    """Pixel confusion counts of a binary segmentation.

    Parameters
    ----------
    tp, fp, fn, tn : int
        True positive, false positive, false negative and true negative pixel counts.

    Notes
    -----
    ``precision`` and ``recall`` are NaN when their denominator is 0; ``f1`` and ``iou`` are 1.0
    when TP + FP + FN == 0 (empty prediction of an empty truth). Counts add with ``+``, which gives
    micro-averaged measures over several images.
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: PixelCounts) -> PixelCounts:
        if not isinstance(other, PixelCounts):
            return NotImplemented
        return PixelCounts(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn
        )


def _check_same_shape(pred: np.ndarray, truth: np.ndarray) -> None:
    """Raise ValueError naming both shapes when they differ."""
    if pred.shape != truth.shape:
        raise ValueError(
            f"prediction shape {pred.shape} differs from ground-truth shape {truth.shape}"
        )


def pixel_counts(pred: np.ndarray, truth: np.ndarray) -> PixelCounts:
    """Count pixel TP/FP/FN/TN of a predicted mask against a ground-truth mask.

    Parameters
    ----------
    pred, truth : numpy.ndarray
        Masks of the same shape; any non-zero value counts as foreground.

    Returns
    -------
    PixelCounts
        The confusion counts.

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    p = np.asarray(pred).astype(bool, copy=False)
    t = np.asarray(truth).astype(bool, copy=False)
    _check_same_shape(p, t)
    tp = int(np.count_nonzero(p & t))
    n_pred = int(np.count_nonzero(p))
    n_true = int(np.count_nonzero(t))
    fp = n_pred - tp
    fn = n_true - tp
    tn = int(p.size) - tp - fp - fn
    return PixelCounts(tp=tp, fp=fp, fn=fn, tn=tn)


# ----------------------------------------------------------------------------- object level


@dataclass
class ObjectCounts(_Rates):
    """Object (connected component) matching counts.

    Parameters
    ----------
    tp : int
        Ground-truth objects matched by a predicted object.
    fp : int
        Predicted objects matched to no ground-truth object.
    fn : int
        Ground-truth objects matched by no predicted object.

    Notes
    -----
    Same empty-denominator conventions as :class:`PixelCounts`; ``iou`` is TP / (TP + FP + FN).
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: ObjectCounts) -> ObjectCounts:
        if not isinstance(other, ObjectCounts):
            return NotImplemented
        return ObjectCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)


def _overlap_pairs(
    gt_lab: np.ndarray, n_gt: int, pred_lab: np.ndarray, n_pred: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the overlapping label pairs and their intersection areas.

    The joint histogram of ``(gt_label, pred_label)`` over the pixels where both are foreground
    is built with one ``np.bincount`` over the combined index ``g * (n_pred + 1) + p`` (or with
    ``np.unique`` when that dense table would be very large).

    Returns
    -------
    g, p, inter : numpy.ndarray
        Ground-truth labels, predicted labels (both >= 1) and pixel counts of each
        overlapping pair.
    """
    both = (gt_lab > 0) & (pred_lab > 0)
    combined = gt_lab[both].astype(np.int64) * (n_pred + 1) + pred_lab[both].astype(np.int64)
    n_pairs = (n_gt + 1) * (n_pred + 1)
    if n_pairs <= _DENSE_PAIR_LIMIT:
        hist = np.bincount(combined, minlength=n_pairs)
        index = np.flatnonzero(hist)
        inter = hist[index]
    else:
        index, inter = np.unique(combined, return_counts=True)
    return index // (n_pred + 1), index % (n_pred + 1), inter


def _match_objects(
    g: np.ndarray, p: np.ndarray, iou: np.ndarray, iou_threshold: float
) -> int:
    """Count one-to-one matches of pairs with IoU strictly above the threshold.

    With a threshold >= 0.5 every object has at most one partner above it, so the matching is
    the set of such pairs. Below 0.5 the pairs are taken greedily by decreasing IoU.
    """
    keep = iou > iou_threshold
    g, p, iou = g[keep], p[keep], iou[keep]
    if iou_threshold >= 0.5:
        return int(g.size)
    used_g: set[int] = set()
    used_p: set[int] = set()
    for k in np.argsort(-iou, kind="stable"):
        gk, pk = int(g[k]), int(p[k])
        if gk not in used_g and pk not in used_p:
            used_g.add(gk)
            used_p.add(pk)
    return len(used_g)


def object_counts(
    pred: np.ndarray,
    truth: np.ndarray,
    iou_threshold: float = 0.5,
    connectivity: int = 2,
) -> ObjectCounts:
    """Match connected components of a prediction to those of the ground truth.

    A ground-truth object is a true positive when its IoU with a predicted object is strictly
    greater than ``iou_threshold``. With a threshold of 0.5 or more the matching is necessarily
    one-to-one: two objects that are disjoint cannot both overlap a third by more than half of
    their union. Unmatched ground-truth objects are false negatives, unmatched predicted objects
    false positives. (Below 0.5 a greedy one-to-one matching by decreasing IoU is used.)

    Parameters
    ----------
    pred, truth : numpy.ndarray
        2-D (or N-D) masks of the same shape; non-zero is foreground.
    iou_threshold : float, optional
        IoU that a match must exceed, by default 0.5.
    connectivity : int, optional
        Connectivity of :func:`skimage.measure.label`; 2 (8-connectivity in 2-D) by default.

    Returns
    -------
    ObjectCounts
        Object TP/FP/FN.

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    p_mask = np.asarray(pred).astype(bool, copy=False)
    t_mask = np.asarray(truth).astype(bool, copy=False)
    _check_same_shape(p_mask, t_mask)
    gt_lab, n_gt = _label_components(t_mask, connectivity=connectivity, return_num=True)
    pred_lab, n_pred = _label_components(p_mask, connectivity=connectivity, return_num=True)
    if n_gt == 0 or n_pred == 0:
        return ObjectCounts(tp=0, fp=int(n_pred), fn=int(n_gt))
    gt_area = np.bincount(gt_lab.ravel(), minlength=n_gt + 1)
    pred_area = np.bincount(pred_lab.ravel(), minlength=n_pred + 1)
    g, p, inter = _overlap_pairs(gt_lab, n_gt, pred_lab, n_pred)
    iou = inter / (gt_area[g] + pred_area[p] - inter)
    tp = _match_objects(g, p, iou, iou_threshold)
    return ObjectCounts(tp=tp, fp=int(n_pred) - tp, fn=int(n_gt) - tp)


# ----------------------------------------------------------------------------- image level


def classification_counts(
    pred_labels: Sequence[bool] | np.ndarray, true_labels: Sequence[bool] | np.ndarray
) -> dict[str, float]:
    """Image-level confusion counts and scores of "contains an artifact".

    Parameters
    ----------
    pred_labels, true_labels : sequence of bool
        One label per image, True meaning "artifact"; same length.

    Returns
    -------
    dict
        ``tp``, ``fp``, ``fn``, ``tn`` (int) and ``f1``, ``precision``, ``recall``, ``accuracy``
        (float, with the module's empty-denominator conventions; accuracy is NaN for no images).

    Raises
    ------
    ValueError
        If the lengths differ.
    """
    pred = np.asarray(pred_labels, dtype=bool).ravel()
    true = np.asarray(true_labels, dtype=bool).ravel()
    if pred.shape != true.shape:
        raise ValueError(f"{pred.size} predicted labels but {true.size} true labels")
    tp = int(np.count_nonzero(pred & true))
    fp = int(np.count_nonzero(pred & ~true))
    fn = int(np.count_nonzero(~pred & true))
    tn = int(np.count_nonzero(~pred & ~true))
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "f1": _f1(tp, fp, fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "accuracy": _ratio(tp + tn, pred.size),
    }


# ----------------------------------------------------------------------------- dataset level


def _json_safe(value: Any) -> Any:
    """Convert numpy scalars/arrays to Python types and NaN/inf to None, recursively."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_json_safe(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class EvaluationResult:
    """Measures of a segmentation over a dataset.

    Attributes
    ----------
    per_image : list of dict
        One row per image with keys ``image``, ``pixel_precision``, ``pixel_recall``,
        ``pixel_f1``, ``pixel_iou``, ``object_tp``, ``object_fp``, ``object_fn``, ``object_f1``,
        ``true_pixels``, ``pred_pixels``, ``true_label``, ``predicted_label``.
    pixel : PixelCounts
        Pixel counts summed over all images (micro average).
    objects : ObjectCounts
        Object counts summed over all images.
    classification : dict or None
        Image-level counts and scores from :func:`classification_counts`.
    """

    per_image: list[dict[str, Any]] = field(default_factory=list)
    pixel: PixelCounts = field(default_factory=PixelCounts)
    objects: ObjectCounts = field(default_factory=ObjectCounts)
    classification: dict[str, float] | None = None

    def mean_image_iou(self) -> float:
        """Mean per-image pixel IoU over images whose truth mask has artifacts (NaN if none)."""
        ious = [row["pixel_iou"] for row in self.per_image if row["true_pixels"] > 0]
        return float(np.mean(ious)) if ious else math.nan

    def summary(self) -> dict[str, float]:
        """Return the headline numbers as a flat dict.

        Returns
        -------
        dict
            ``n_images``, ``cls_f1``, ``cls_precision``, ``cls_recall``, ``cls_accuracy``
            (NaN without classification), ``pixel_precision``, ``pixel_recall``, ``pixel_f1``,
            ``pixel_iou`` (micro), ``object_f1``, ``object_iou`` and ``mean_image_iou`` (mean
            per-image pixel IoU over images with artifacts in the truth mask).
        """
        cls = self.classification or {}
        return {
            "n_images": len(self.per_image),
            "cls_f1": cls.get("f1", math.nan),
            "cls_precision": cls.get("precision", math.nan),
            "cls_recall": cls.get("recall", math.nan),
            "cls_accuracy": cls.get("accuracy", math.nan),
            "pixel_precision": self.pixel.precision,
            "pixel_recall": self.pixel.recall,
            "pixel_f1": self.pixel.f1,
            "pixel_iou": self.pixel.iou,
            "object_f1": self.objects.f1,
            "object_iou": self.objects.iou,
            "mean_image_iou": self.mean_image_iou(),
        }

    def to_json_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (NaN becomes None).

        Returns
        -------
        dict
            Keys ``summary``, ``pixel``, ``objects``, ``classification`` and ``per_image``.
        """
        pixel = {"tp": self.pixel.tp, "fp": self.pixel.fp, "fn": self.pixel.fn,
                 "tn": self.pixel.tn}
        objects = {"tp": self.objects.tp, "fp": self.objects.fp, "fn": self.objects.fn}
        return _json_safe(
            {
                "summary": self.summary(),
                "pixel": pixel,
                "objects": objects,
                "classification": self.classification,
                "per_image": self.per_image,
            }
        )

    def format_table(self) -> str:
        """Return the summary as a fixed-width two-column text table.

        Returns
        -------
        str
            One line per measure; NaN is shown as ``n/a``.
        """
        rows = self.summary()
        width = max(len(name) for name in rows)
        lines = [f"{'measure':<{width}}  {'value':>8}", f"{'-' * width}  {'-' * 8}"]
        for name, value in rows.items():
            lines.append(f"{name:<{width}}  {_format_value(value):>8}")
        return "\n".join(lines)


def _format_value(value: float) -> str:
    """Format a summary value for :meth:`EvaluationResult.format_table`."""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.4f}"


def _image_row(
    name: str,
    pix: PixelCounts,
    obj: ObjectCounts,
    true_label: bool,
    pred_label: bool,
) -> dict[str, Any]:
    """Build one per-image row of :class:`EvaluationResult`."""
    return {
        "image": name,
        "pixel_precision": pix.precision,
        "pixel_recall": pix.recall,
        "pixel_f1": pix.f1,
        "pixel_iou": pix.iou,
        "object_tp": obj.tp,
        "object_fp": obj.fp,
        "object_fn": obj.fn,
        "object_f1": obj.f1,
        "true_pixels": pix.tp + pix.fn,
        "pred_pixels": pix.tp + pix.fp,
        "true_label": bool(true_label),
        "predicted_label": bool(pred_label),
    }


def _lookup_label(labels: dict[str, bool] | None, name: str, default: bool, kind: str) -> bool:
    """Return ``labels[name]``, or ``default`` when no labels are given."""
    if labels is None:
        return default
    if name not in labels:
        raise KeyError(f"no {kind} image label for {name!r}")
    return bool(labels[name])


def evaluate_dataset(
    pairs: Iterable[tuple[str, np.ndarray, np.ndarray]],
    true_labels: dict[str, bool] | None = None,
    pred_labels: dict[str, bool] | None = None,
    *,
    iou_threshold: float = 0.5,
    connectivity: int = 2,
) -> EvaluationResult:
    """Evaluate predicted masks against ground-truth masks over a dataset.

    Parameters
    ----------
    pairs : iterable of (str, numpy.ndarray, numpy.ndarray)
        ``(image name, predicted mask, true mask)`` per image; consumed once, so a generator
        that loads images lazily is fine.
    true_labels : dict of str to bool, optional
        True image labels (True = artifact) by name; by default "truth mask non-empty".
    pred_labels : dict of str to bool, optional
        Predicted image labels by name; by default "predicted mask non-empty".
    iou_threshold : float, optional
        Object-matching IoU threshold, by default 0.5.
    connectivity : int, optional
        Connectivity of the connected components, by default 2.

    Returns
    -------
    EvaluationResult
        Per-image rows, summed (micro) pixel and object counts and image classification counts.

    Raises
    ------
    KeyError
        If a label dict lacks an image name.
    ValueError
        If a predicted and a true mask differ in shape.
    """
    rows: list[dict[str, Any]] = []
    pixel_total = PixelCounts()
    object_total = ObjectCounts()
    y_true: list[bool] = []
    y_pred: list[bool] = []
    for name, pred, truth in pairs:
        pix = pixel_counts(pred, truth)
        obj = object_counts(pred, truth, iou_threshold=iou_threshold, connectivity=connectivity)
        t_label = _lookup_label(true_labels, name, pix.tp + pix.fn > 0, "true")
        p_label = _lookup_label(pred_labels, name, pix.tp + pix.fp > 0, "predicted")
        rows.append(_image_row(name, pix, obj, t_label, p_label))
        pixel_total = pixel_total + pix
        object_total = object_total + obj
        y_true.append(t_label)
        y_pred.append(p_label)
    return EvaluationResult(
        per_image=rows,
        pixel=pixel_total,
        objects=object_total,
        classification=classification_counts(y_pred, y_true),
    )


# ----------------------------------------------------------------------------- threshold sweeps


def _count_at_or_above(values: np.ndarray, sorted_thresholds: np.ndarray) -> np.ndarray:
    """For each threshold t_k (ascending), count values >= t_k, via one histogram.

    ``searchsorted(..., side="right")`` puts each value in the bin of the number of thresholds
    it reaches; a reversed cumulative sum of the bin counts gives the counts per threshold.
    """
    n_thr = sorted_thresholds.size
    bins = np.searchsorted(sorted_thresholds, values, side="right")
    hist = np.bincount(bins, minlength=n_thr + 1)
    # count(values >= t_k) = number of values whose bin index is > k
    return np.cumsum(hist[::-1])[::-1][1:]


def _safe_divide(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    """Element-wise ``num / den`` as float, ``empty`` where ``den == 0``."""
    result = np.full(num.shape, empty, dtype=np.float64)
    np.divide(num, den, out=result, where=den != 0)
    return result


def precision_recall_curve(
    prob_maps_and_truths: Iterable[tuple[np.ndarray, np.ndarray]],
    thresholds: np.ndarray | Sequence[float],
) -> dict[str, np.ndarray]:
    """Pixel precision, recall, F1 and IoU at each threshold, summed over images.

    A pixel is predicted positive when its probability is ``>= threshold``. Counts are summed
    over all images (micro average) before the ratios are taken. Each image is visited once:
    the probabilities of its positive and negative pixels are histogrammed over the threshold
    bins and the counts per threshold come from cumulative sums.

    Parameters
    ----------
    prob_maps_and_truths : iterable of (numpy.ndarray, numpy.ndarray)
        ``(probability map, true mask)`` pairs of equal shapes.
    thresholds : array_like
        1-D thresholds, in any order; the outputs follow the same order.

    Returns
    -------
    dict
        ``thresholds``, ``precision``, ``recall``, ``f1``, ``iou`` (float arrays) and ``tp``,
        ``fp``, ``fn`` (int arrays), one entry per threshold, with the module's conventions for
        empty denominators.

    Raises
    ------
    ValueError
        If a probability map and its mask differ in shape.
    """
    thr = np.asarray(thresholds, dtype=np.float64).ravel()
    order = np.argsort(thr, kind="stable")
    sorted_thr = thr[order]
    pos_hits = np.zeros(thr.size, dtype=np.int64)
    neg_hits = np.zeros(thr.size, dtype=np.int64)
    n_pos_total = 0
    for prob, truth in prob_maps_and_truths:
        prob = np.asarray(prob)
        t = np.asarray(truth).astype(bool, copy=False)
        _check_same_shape(prob, t)
        pos_hits += _count_at_or_above(prob[t], sorted_thr)
        neg_hits += _count_at_or_above(prob[~t], sorted_thr)
        n_pos_total += int(np.count_nonzero(t))
    tp = np.empty_like(pos_hits)
    fp = np.empty_like(neg_hits)
    tp[order] = pos_hits
    fp[order] = neg_hits
    fn = n_pos_total - tp
    return {
        "thresholds": thr,
        "precision": _safe_divide(tp, tp + fp, np.nan),
        "recall": _safe_divide(tp, tp + fn, np.nan),
        "f1": _safe_divide(2 * tp, 2 * tp + fp + fn, 1.0),
        "iou": _safe_divide(tp, tp + fp + fn, 1.0),
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def pixel_auroc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve of pixel scores, by the Mann-Whitney rank statistic.

    AUROC is the probability that a random positive pixel scores higher than a random negative
    one, ties counting one half. It is computed exactly from counts per distinct score.

    Parameters
    ----------
    scores : numpy.ndarray
        Pixel scores (e.g. probabilities), finite.
    truth : numpy.ndarray
        True mask of the same shape.

    Returns
    -------
    float
        The AUROC, or NaN when the truth has no positive or no negative pixel.

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    s = np.asarray(scores)
    t = np.asarray(truth).astype(bool, copy=False)
    _check_same_shape(s, t)
    s, t = s.ravel(), t.ravel()
    n_pos = int(np.count_nonzero(t))
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse = np.unique(s, return_inverse=True)
    n_values = int(inverse.max()) + 1
    pos = np.bincount(inverse[t], minlength=n_values).astype(np.int64)
    neg = np.bincount(inverse[~t], minlength=n_values).astype(np.int64)
    neg_below = np.cumsum(neg) - neg
    # twice the Mann-Whitney U: each positive beats the negatives below it, ties count 1/2
    twice_u = int(np.sum(pos * (2 * neg_below + neg)))
    return twice_u / (2.0 * n_pos * n_neg)
