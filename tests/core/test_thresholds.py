"""Choosing the gate, mask threshold and minimum size on the validation split."""

from __future__ import annotations

import numpy as np
import pytest

from napari_artseg.config import preset
from napari_artseg.errors import ArtSegError
from napari_artseg.postprocess import clean_mask
from napari_artseg.training.thresholds import (
    MASK_CANDIDATES,
    MIN_SIZE_FRACTIONS,
    MaskStatistics,
    choose_gate_and_mask,
    choose_gate_and_mask_from,
    choose_gate_threshold,
    choose_mask_settings,
    f1_score,
    gate_candidates,
)


def _maps(rng: np.random.Generator, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Smooth random maps in [0, 1] and random boolean targets."""
    from scipy import ndimage

    probs = []
    for _ in range(n):
        prob = ndimage.gaussian_filter(rng.random((24, 32)), 1.5)
        probs.append(((prob - prob.min()) / (prob.max() - prob.min())).astype(np.float32))
    targets = [rng.random((24, 32)) < 0.3 for _ in range(n)]
    return probs, targets


def _brute_force(probs, labels, passed, targets, curated, own_targets):
    """The best (threshold, size) found by masking every setting directly."""
    use_curated = bool(np.any(curated))
    toward_half = own_targets or all(t is None for t in targets)
    best_key, best = None, None
    for threshold in MASK_CANDIDATES:
        for fraction in MIN_SIZE_FRACTIONS:
            masks = [clean_mask(p, threshold, int(round(fraction * p.size))) if ok
                     else np.zeros(p.shape, bool) for p, ok in zip(probs, passed, strict=True)]
            pairs = [(m, t) for m, t, c in zip(masks, targets, curated, strict=True)
                     if t is not None and (c or not use_curated)]
            inter = sum(float(np.sum(m & t)) for m, t in pairs)
            union = sum(float(np.sum(m | t)) for m, t in pairs)
            iou = inter / union if union else 1.0
            f1 = f1_score(np.array([m.any() for m in masks]), labels)
            if use_curated:
                key = (round(iou, 4), round(f1, 4))
            elif toward_half:
                key = (round(f1, 4), -abs(threshold - 0.5), round(iou, 4))
            else:
                key = (round(f1, 4), round(iou, 4))
            if best_key is None or key > best_key:
                best_key, best = key, (threshold, fraction, f1, iou)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_mask_search_equals_masking_every_setting(seed):
    rng = np.random.default_rng(seed)
    probs, targets = _maps(rng, 7)
    targets[2] = None
    labels = rng.random(7) < 0.5
    passed = rng.random(7) < 0.7
    curated = np.array([t is not None and seed % 2 == 1 and i < 3 for i, t in enumerate(targets)])
    own = seed in (0, 3)
    threshold, fraction, report = choose_mask_settings(probs, labels, passed, targets, curated,
                                                       own_targets=own)
    want = _brute_force(probs, labels, passed, targets, curated, own)
    assert (threshold, fraction) == want[:2]
    assert report["val_image_f1"] == pytest.approx(want[2])
    assert report["val_target_iou"] == pytest.approx(want[3])


def test_image_f1_ties_follow_the_targets_or_move_toward_half_when_they_are_the_unets_own():
    # each artifact map is a bright core (0.9) in a halo (0.15); the targets cover core and
    # halo. Every threshold up to 0.9 finds the same images, so image F1 ties.
    probs, targets = [], []
    for _ in range(4):
        prob = np.zeros((32, 32), np.float32)
        prob[4:28, 4:28] = 0.15
        prob[12:20, 12:20] = 0.9
        probs.append(prob)
        targets.append(prob > 0.1)
    probs += [np.zeros((32, 32), np.float32)] * 2
    targets += [np.zeros((32, 32), bool)] * 2
    labels = np.array([1, 1, 1, 1, 0, 0], bool)
    passed, uncurated = np.ones(6, bool), np.zeros(6, bool)
    # Score-CAM pseudo-labels: the IoU against them breaks the tie (down into the halo)
    threshold, _, report = choose_mask_settings(probs, labels, passed, targets, uncurated)
    assert threshold == 0.1
    assert report["val_image_f1"] == 1.0
    # the U-Net's own 0.5-cut masks as targets: the threshold nearest 0.5
    threshold, _, _ = choose_mask_settings(probs, labels, passed, targets, uncurated,
                                           own_targets=True)
    assert threshold == 0.5
    # no pixel targets at all: nearest 0.5 as well
    threshold, _, _ = choose_mask_settings(probs, labels, passed, [None] * 6, uncurated)
    assert threshold == 0.5
    # with curated masks their IoU decides: the halo is part of the truth here
    threshold, _, _ = choose_mask_settings(probs, labels, np.ones(6, bool), targets,
                                           np.ones(6, bool))
    assert threshold == 0.1


def test_gate_candidates_add_the_missed_artifacts_and_no_gate():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.2, 0.05])
    labels = np.array([1, 1, 0, 0, 0, 0, 0, 1, 1])
    best = choose_gate_threshold(scores, labels)
    assert best == 0.8
    assert gate_candidates(scores, labels, "classifier") == [0.8]
    assert gate_candidates(scores, labels, "joint") == [0.8, 0.2, 0.05, 0.0]


def test_joint_rule_drops_a_gate_that_hides_artifacts_the_map_finds():
    # the classifier misses two artifact images; the U-Net map finds them and nothing in clean ones
    probs = [np.zeros((16, 16), np.float32) for _ in range(9)]
    targets = [np.zeros((16, 16), bool) for _ in range(9)]
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0])
    for i in range(4):
        probs[i][4:9, 4:9] = 0.95
        targets[i][4:9, 4:9] = True
    scores = np.array([0.9, 0.8, 0.2, 0.1, 0.5, 0.45, 0.4, 0.35, 0.3])
    curated = np.zeros(9, bool)
    gate, _, _, report = choose_gate_and_mask(scores, labels, probs, targets, curated,
                                              "classifier")
    assert gate == 0.8 and report["val_image_f1"] == pytest.approx(2 / 3)
    gate, _, _, report = choose_gate_and_mask(scores, labels, probs, targets, curated)
    assert gate <= 0.1 and report["val_image_f1"] == 1.0 and report["val_target_iou"] == 1.0
    assert report["gates_tried"] == 4  # 0.8, 0.2, 0.1 and no gate


def test_joint_rule_keeps_the_classifier_gate_on_a_tie():
    # the map is as good as the gate: the higher gate wins (clean images skip the U-Net)
    probs = [np.zeros((16, 16), np.float32) for _ in range(4)]
    targets = [np.zeros((16, 16), bool) for _ in range(4)]
    for i in range(2):
        probs[i][2:6, 2:6] = 0.9
        targets[i][2:6, 2:6] = True
    scores = np.array([0.9, 0.4, 0.6, 0.1])
    labels = np.array([1, 1, 0, 0])
    gate, *_ = choose_gate_and_mask(scores, labels, probs, targets, np.zeros(4, bool))
    assert gate == choose_gate_threshold(scores, labels)


def test_a_fixed_gate_is_kept():
    rng = np.random.default_rng(3)
    probs, targets = _maps(rng, 4)
    gate, *_, report = choose_gate_and_mask(rng.random(4), np.array([1, 0, 1, 0]), probs,
                                            targets, np.zeros(4, bool), gate=0.37)
    assert gate == 0.37 and report["gates_tried"] == 1


def test_gate_rule_is_validated():
    assert preset("fast").gate_rule == preset("tiny").gate_rule == "classifier"
    with pytest.raises(ArtSegError, match="gate_rule"):
        preset("tiny", gate_rule="maybe")


def test_statistics_gathered_image_by_image_choose_as_the_maps_do():
    """Training adds each validation map as it is made and drops it; the choice is the same."""
    rng = np.random.default_rng(4)
    probs, targets = _maps(rng, 6)
    scores, labels = rng.random(6), np.array([1, 0, 1, 0, 1, 0])
    statistics = MaskStatistics()
    for prob, target in zip(probs, targets, strict=True):
        statistics.add(prob.copy(), target)
    expected = choose_gate_and_mask(scores, labels, probs, targets, np.zeros(6, bool), "joint")
    assert choose_gate_and_mask_from(statistics, scores, labels, np.zeros(6, bool),
                                     "joint") == expected
    with pytest.raises(ValueError, match="statistics of 6 maps for 5 gate scores"):
        choose_gate_and_mask_from(statistics, scores[:5], labels[:5], np.zeros(5, bool))
