"""Tests of napari_artseg.metrics against hand-computed cases and brute force."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from skimage.measure import label

from napari_artseg import metrics
from napari_artseg.metrics import (
    EvaluationResult,
    ObjectCounts,
    PixelCounts,
    classification_counts,
    evaluate_dataset,
    object_counts,
    pixel_auroc,
    pixel_counts,
    precision_recall_curve,
)

# 4x4 hand case: TP = 2, FP = 3, FN = 1, TN = 10
PRED_4X4 = np.array(
    [
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 1],
    ],
    dtype=bool,
)
TRUTH_4X4 = np.array(
    [
        [1, 0, 0, 0],
        [1, 0, 0, 0],
        [1, 0, 0, 0],
        [0, 0, 0, 0],
    ],
    dtype=bool,
)


# ----------------------------------------------------------------------------- brute force


def brute_pixel_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int, int]:
    tp = fp = fn = tn = 0
    for p, t in zip(pred.ravel().tolist(), truth.ravel().tolist(), strict=True):
        if p and t:
            tp += 1
        elif p:
            fp += 1
        elif t:
            fn += 1
        else:
            tn += 1
    return tp, fp, fn, tn


def brute_object_counts(pred, truth, thr=0.5, connectivity=2) -> tuple[int, int, int]:
    gt_lab, n_gt = label(truth, connectivity=connectivity, return_num=True)
    pr_lab, n_pr = label(pred, connectivity=connectivity, return_num=True)
    matched_gt, matched_pr = set(), set()
    for g in range(1, n_gt + 1):
        gm = gt_lab == g
        for p in range(1, n_pr + 1):
            pm = pr_lab == p
            iou = np.logical_and(gm, pm).sum() / np.logical_or(gm, pm).sum()
            if iou > thr:
                matched_gt.add(g)
                matched_pr.add(p)
    assert len(matched_gt) == len(matched_pr)  # one-to-one for thr >= 0.5
    tp = len(matched_gt)
    return tp, n_pr - tp, n_gt - tp


def random_blobs(rng: np.random.Generator, shape=(48, 48), n=6) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for _ in range(n):
        r, c = rng.integers(0, shape[0] - 4), rng.integers(0, shape[1] - 4)
        h, w = rng.integers(2, 12), rng.integers(2, 12)
        mask[r : r + h, c : c + w] = True
    return mask


def perturb(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """Shift a mask by a few pixels and flip some pixels: varied object IoUs."""
    shifted = np.roll(mask, (rng.integers(-3, 4), rng.integers(-3, 4)), axis=(0, 1))
    noise = rng.random(mask.shape) < 0.03
    return shifted ^ noise


# ----------------------------------------------------------------------------- pixel level


def test_pixel_counts_hand_case():
    counts = pixel_counts(PRED_4X4, TRUTH_4X4)
    assert counts == PixelCounts(tp=2, fp=3, fn=1, tn=10)
    assert counts.precision == pytest.approx(2 / 5)
    assert counts.recall == pytest.approx(2 / 3)
    assert counts.f1 == pytest.approx(2 * 2 / (2 * 2 + 3 + 1))
    assert counts.iou == pytest.approx(2 / 6)


def test_pixel_counts_accepts_integer_masks():
    counts = pixel_counts(PRED_4X4.astype(np.uint8) * 255, TRUTH_4X4.astype(np.int32))
    assert counts == PixelCounts(2, 3, 1, 10)


def test_empty_prediction_and_truth_convention():
    empty = np.zeros((5, 5), dtype=bool)
    counts = pixel_counts(empty, empty)
    assert counts == PixelCounts(0, 0, 0, 25)
    assert math.isnan(counts.precision)
    assert math.isnan(counts.recall)
    assert counts.f1 == 1.0
    assert counts.iou == 1.0


def test_empty_prediction_of_nonempty_truth_scores_zero():
    truth = np.zeros((5, 5), dtype=bool)
    truth[1, 1] = True
    counts = pixel_counts(np.zeros_like(truth), truth)
    assert math.isnan(counts.precision)
    assert counts.recall == 0.0
    assert counts.f1 == 0.0
    assert counts.iou == 0.0


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        pixel_counts(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="shape"):
        object_counts(np.zeros((4, 4)), np.zeros((5, 4)))


def test_pixel_counts_add():
    total = PixelCounts(1, 2, 3, 4) + PixelCounts(10, 20, 30, 40)
    assert total == PixelCounts(11, 22, 33, 44)


# ----------------------------------------------------------------------------- object level


def two_object_case() -> tuple[np.ndarray, np.ndarray]:
    """GT A (20 px) overlapped with IoU 0.6, GT B (20 px) with IoU exactly 0.5."""
    truth = np.zeros((20, 20), dtype=bool)
    pred = np.zeros_like(truth)
    truth[0:2, 0:10] = True  # A
    pred[0:2, 0:6] = True  # inter 12, union 20 -> 0.6
    truth[10:12, 0:10] = True  # B
    pred[10:12, 0:5] = True  # inter 10, union 20 -> 0.5 exactly
    return pred, truth


def test_object_counts_iou_strictly_above_half():
    pred, truth = two_object_case()
    counts = object_counts(pred, truth)
    assert counts == ObjectCounts(tp=1, fp=1, fn=1)
    assert counts.f1 == pytest.approx(0.5)
    assert counts.iou == pytest.approx(1 / 3)


def test_object_counts_lower_threshold_matches_both():
    pred, truth = two_object_case()
    assert object_counts(pred, truth, iou_threshold=0.49) == ObjectCounts(2, 0, 0)
    assert object_counts(pred, truth, iou_threshold=0.6) == ObjectCounts(0, 2, 2)


def test_prediction_split_in_two_small_pieces_matches_nothing():
    truth = np.zeros((6, 12), dtype=bool)
    truth[0:2, 0:10] = True  # 20 px
    pred = np.zeros_like(truth)
    pred[0:2, 0:4] = True  # IoU 8 / 20
    pred[0:2, 5:10] = True  # IoU 10 / 20 = 0.5: not above
    assert object_counts(pred, truth) == ObjectCounts(tp=0, fp=2, fn=1)


def test_prediction_split_with_one_large_piece():
    truth = np.zeros((6, 12), dtype=bool)
    truth[0:2, 0:10] = True
    pred = np.zeros_like(truth)
    pred[0:2, 0:8] = True  # IoU 16 / 20 = 0.8: TP
    pred[0:2, 9:10] = True  # IoU 2 / 20: FP
    assert object_counts(pred, truth) == ObjectCounts(tp=1, fp=1, fn=0)


def test_object_connectivity():
    diag = np.eye(4, dtype=bool)
    assert object_counts(diag, diag) == ObjectCounts(1, 0, 0)
    assert object_counts(diag, diag, connectivity=1) == ObjectCounts(4, 0, 0)


def test_object_counts_empty_cases():
    empty = np.zeros((8, 8), dtype=bool)
    blob = empty.copy()
    blob[2:4, 2:4] = True
    assert object_counts(empty, empty) == ObjectCounts(0, 0, 0)
    assert object_counts(blob, empty) == ObjectCounts(0, 1, 0)
    assert object_counts(empty, blob) == ObjectCounts(0, 0, 1)
    assert ObjectCounts().f1 == 1.0


@pytest.mark.parametrize("dense_limit", [metrics._DENSE_PAIR_LIMIT, 0])
def test_object_counts_match_brute_force_on_random_blobs(monkeypatch, dense_limit):
    monkeypatch.setattr(metrics, "_DENSE_PAIR_LIMIT", dense_limit)
    rng = np.random.default_rng(0)
    for _ in range(15):
        truth = random_blobs(rng)
        pred = perturb(rng, truth) | random_blobs(rng, n=2)
        for thr in (0.5, 0.6, 0.75):
            expected = ObjectCounts(*brute_object_counts(pred, truth, thr))
            assert object_counts(pred, truth, iou_threshold=thr) == expected


def test_overlap_pairs_equal_brute_force_intersections():
    rng = np.random.default_rng(1)
    truth = random_blobs(rng)
    pred = perturb(rng, truth)
    gt_lab, n_gt = label(truth, return_num=True)
    pr_lab, n_pr = label(pred, return_num=True)
    g, p, inter = metrics._overlap_pairs(gt_lab, n_gt, pr_lab, n_pr)
    found = {(int(a), int(b)): int(c) for a, b, c in zip(g, p, inter, strict=True)}
    expected = {}
    for a in range(1, n_gt + 1):
        for b in range(1, n_pr + 1):
            n = int(np.sum((gt_lab == a) & (pr_lab == b)))
            if n:
                expected[(a, b)] = n
    assert found == expected


# ----------------------------------------------------------------------------- image level


def test_classification_counts_hand_case():
    pred = [True, True, False, False, True]
    true = [True, False, True, False, True]
    result = classification_counts(pred, true)
    assert (result["tp"], result["fp"], result["fn"], result["tn"]) == (2, 1, 1, 1)
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["accuracy"] == pytest.approx(3 / 5)


def test_classification_counts_length_mismatch():
    with pytest.raises(ValueError):
        classification_counts([True], [True, False])


# ----------------------------------------------------------------------------- dataset level


def test_evaluate_dataset_sums_counts_and_rows():
    pred2, truth2 = two_object_case()
    empty = np.zeros((3, 3), dtype=bool)
    pairs = [("a", PRED_4X4, TRUTH_4X4), ("b", pred2, truth2), ("c", empty, empty)]
    result = evaluate_dataset(iter(pairs))

    expected_pixel = pixel_counts(PRED_4X4, TRUTH_4X4) + pixel_counts(pred2, truth2)
    expected_pixel = expected_pixel + PixelCounts(0, 0, 0, 9)
    assert result.pixel == expected_pixel
    # "a": truth is one 3-px column, prediction a 2x2 square (IoU 2/5) plus a pixel -> 0 TP
    assert result.objects == ObjectCounts(0, 2, 1) + ObjectCounts(1, 1, 1)

    assert [row["image"] for row in result.per_image] == ["a", "b", "c"]
    row_a = result.per_image[0]
    assert row_a["pixel_iou"] == pytest.approx(1 / 3)
    assert row_a["pixel_precision"] == pytest.approx(2 / 5)
    assert (row_a["object_tp"], row_a["object_fp"], row_a["object_fn"]) == (0, 2, 1)
    assert row_a["true_label"] is True and row_a["predicted_label"] is True
    row_c = result.per_image[2]
    assert row_c["true_label"] is False and row_c["predicted_label"] is False
    assert math.isnan(row_c["pixel_precision"]) and row_c["pixel_iou"] == 1.0

    assert result.classification["tp"] == 2 and result.classification["tn"] == 1
    summary = result.summary()
    assert summary["n_images"] == 3
    assert summary["pixel_iou"] == pytest.approx(expected_pixel.iou)
    assert summary["cls_f1"] == 1.0
    # mean over images with artifacts in truth only ("c" excluded)
    iou_b = pixel_counts(pred2, truth2).iou
    assert summary["mean_image_iou"] == pytest.approx((1 / 3 + iou_b) / 2)
    for key in ("pixel_precision", "pixel_recall", "pixel_f1", "object_f1", "object_iou"):
        assert key in summary


def test_evaluate_dataset_uses_given_labels():
    empty = np.zeros((3, 3), dtype=bool)
    pairs = [("a", PRED_4X4, TRUTH_4X4), ("c", empty, empty)]
    result = evaluate_dataset(
        pairs, true_labels={"a": True, "c": True}, pred_labels={"a": False, "c": True}
    )
    cls = result.classification
    assert (cls["tp"], cls["fp"], cls["fn"], cls["tn"]) == (1, 0, 1, 0)
    assert result.per_image[0]["predicted_label"] is False
    with pytest.raises(KeyError, match="'c'"):
        evaluate_dataset(pairs, true_labels={"a": True})


def test_evaluation_result_json_and_table():
    empty = np.zeros((3, 3), dtype=bool)
    result = evaluate_dataset([("c", empty, empty)])
    data = result.to_json_dict()
    text = json.dumps(data, allow_nan=False)  # NaN must have become None
    assert json.loads(text)["per_image"][0]["pixel_precision"] is None
    assert data["summary"]["mean_image_iou"] is None
    assert data["pixel"] == {"tp": 0, "fp": 0, "fn": 0, "tn": 9}
    table = result.format_table()
    assert "pixel_iou" in table and "n/a" in table
    widths = {len(line) for line in table.splitlines()}
    assert len(widths) == 1  # fixed width


def test_empty_evaluation_result():
    result = EvaluationResult()
    assert result.summary()["n_images"] == 0
    assert math.isnan(result.summary()["cls_f1"])


# ----------------------------------------------------------------------------- sweeps


def test_precision_recall_curve_equals_brute_force():
    rng = np.random.default_rng(2)
    images = []
    for shape in [(16, 16), (9, 13), (20, 7)]:
        prob = np.round(rng.random(shape), 2)  # ties on the threshold grid
        truth = rng.random(shape) < prob * 0.8
        images.append((prob, truth))
    thresholds = np.array([0.5, 0.0, 0.25, 0.3, 0.99, 1.0, 1.5, 0.05])
    curve = precision_recall_curve(iter(images), thresholds)
    assert np.array_equal(curve["thresholds"], thresholds)
    for k, thr in enumerate(thresholds):
        total = PixelCounts()
        for prob, truth in images:
            total = total + pixel_counts(prob >= thr, truth)
        assert (curve["tp"][k], curve["fp"][k], curve["fn"][k]) == (total.tp, total.fp, total.fn)
        np.testing.assert_equal(curve["precision"][k], total.precision)
        assert curve["recall"][k] == pytest.approx(total.recall)
        assert curve["f1"][k] == pytest.approx(total.f1)
        assert curve["iou"][k] == pytest.approx(total.iou)
    assert math.isnan(curve["precision"][list(thresholds).index(1.5)])


def brute_auroc(scores: np.ndarray, truth: np.ndarray) -> float:
    pos = scores[truth]
    neg = scores[~truth]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (pos.size * neg.size)


def test_pixel_auroc_equals_pairwise_brute_force_with_ties():
    rng = np.random.default_rng(3)
    for _ in range(5):
        scores = rng.integers(0, 6, size=(7, 9)).astype(np.float32) / 5  # many ties
        truth = rng.random((7, 9)) < 0.4
        assert pixel_auroc(scores, truth) == pytest.approx(brute_auroc(scores, truth), abs=1e-12)


def test_pixel_auroc_extremes():
    truth = np.array([0, 0, 1, 1], dtype=bool)
    assert pixel_auroc(np.array([0.1, 0.2, 0.3, 0.4]), truth) == 1.0
    assert pixel_auroc(np.array([0.4, 0.3, 0.2, 0.1]), truth) == 0.0
    assert pixel_auroc(np.full(4, 0.5), truth) == 0.5
    assert math.isnan(pixel_auroc(np.ones(4), np.zeros(4, dtype=bool)))


# ----------------------------------------------------------------------------- properties


def test_metrics_imports_no_gui_and_no_torch():
    code = (
        "import sys, napari_artseg.metrics\n"
        "bad = {'napari', 'qtpy', 'magicgui', 'torch'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=_subprocess_env())


def _subprocess_env() -> dict[str, str]:
    import os

    import napari_artseg

    src = os.path.dirname(os.path.dirname(napari_artseg.__file__))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    return env


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays
except ImportError:  # pragma: no cover - hypothesis is optional
    given = None

if given is not None:
    masks = st.tuples(st.integers(1, 9), st.integers(1, 9)).flatmap(
        lambda shape: st.tuples(
            arrays(np.bool_, shape), arrays(np.bool_, shape), st.sampled_from([1, 2])
        )
    )

    @settings(deadline=None, max_examples=30)
    @given(masks)
    def test_counts_match_brute_force_property(case):
        pred, truth, connectivity = case
        assert pixel_counts(pred, truth) == PixelCounts(*brute_pixel_counts(pred, truth))
        expected = ObjectCounts(*brute_object_counts(pred, truth, 0.5, connectivity))
        assert object_counts(pred, truth, connectivity=connectivity) == expected
