"""The U-Net's loss: pixel-weighted BCE plus the soft-Dice term, against hand computation."""

import math

import torch

from napari_artseg.training.segmenter import segmentation_loss


def _case():
    logits = torch.tensor([[[[2.0, -1.0], [0.0, 3.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    weight = torch.tensor([[[[1.0, 1.0], [4.0, 0.0]]]])  # a curated pixel and a padded one
    return logits, target, weight


def _bce(z: float, y: float) -> float:
    p = 1 / (1 + math.exp(-z))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_weighted_bce_alone_when_dice_weight_is_zero():
    logits, target, weight = _case()
    expected = (1 * _bce(2, 1) + 1 * _bce(-1, 0) + 4 * _bce(0, 1)) / 6
    assert math.isclose(float(segmentation_loss(logits, target, weight, 0.0)), expected,
                        rel_tol=1e-6)


def test_dice_term_counts_unpadded_pixels_only():
    logits, target, weight = _case()
    s = [1 / (1 + math.exp(-z)) for z in (2.0, -1.0, 0.0)]  # the padded pixel (3.0) is left out
    inter = s[0] * 1 + s[2] * 1
    dice = (2 * inter + 1) / (sum(s) + 2 + 1)
    expected = (1 * _bce(2, 1) + 1 * _bce(-1, 0) + 4 * _bce(0, 1)) / 6 + 0.5 * (1 - dice)
    assert math.isclose(float(segmentation_loss(logits, target, weight, 0.5)), expected,
                        rel_tol=1e-6)


def test_dice_term_prefers_the_right_extent():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    weight = torch.ones_like(target)
    right = torch.where(target > 0, 6.0, -6.0)
    shrunk = torch.full_like(target, -6.0)
    shrunk[..., 3:5, 3:5] = 6.0
    dice_only = [float(segmentation_loss(z, target, weight, 1.0)
                       - segmentation_loss(z, target, weight, 0.0)) for z in (right, shrunk)]
    assert dice_only[0] < 0.01 < 0.5 < dice_only[1]
