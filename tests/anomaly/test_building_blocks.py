"""SSIM, blurring, AUROC, patch-score spreading and crop sampling against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from napari_artseg.methods.anomaly.base import DetectorParamsError
from napari_artseg.methods.anomaly.patches import (
    CropSampler,
    auroc,
    pad_to_at_least,
    spread_patch_scores,
)
from napari_artseg.methods.anomaly.ssim import gaussian_blur, ssim_map, zscore_ssim_map


def _pair(seed: int = 0, shape=(48, 53)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.2, 0.8, shape)
    y = np.clip(x + rng.normal(0, 0.1, shape), 0, 1)
    return x, y


def test_ssim_matches_skimage_away_from_the_border():
    x, y = _pair()
    _, expected = structural_similarity(
        x, y, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        full=True,
    )
    ours = ssim_map(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None], 1.0)
    ours = ours[0, 0].numpy()
    inner = (slice(5, -5), slice(5, -5))
    np.testing.assert_allclose(ours[inner], expected[inner], atol=1e-6)
    assert ours.shape == x.shape


def test_ssim_of_identical_images_is_one_and_zscore_variant_rescales():
    x, y = _pair(1)
    tx, ty = torch.from_numpy(x)[None, None].float(), torch.from_numpy(y)[None, None].float()
    torch.testing.assert_close(ssim_map(tx, tx), torch.ones_like(tx))
    torch.testing.assert_close(zscore_ssim_map(tx, ty, 8.0),
                               ssim_map(tx / 8 + 0.5, ty / 8 + 0.5, 1.0))
    with pytest.raises(ValueError, match="odd"):
        ssim_map(tx, ty, window=4)


def test_gaussian_blur_keeps_constants_and_sigma_zero_is_identity():
    flat = torch.full((1, 1, 20, 30), 2.5)
    torch.testing.assert_close(gaussian_blur(flat, 2.0), flat)
    noise = torch.randn(1, 1, 20, 30)
    assert torch.equal(gaussian_blur(noise, 0.0), noise)
    assert gaussian_blur(noise, 2.0).std() < noise.std()


def test_auroc_equals_pairwise_count_with_ties():
    rng = np.random.default_rng(4)
    scores = rng.integers(0, 6, 300).astype(float)
    positive = rng.random(300) < 0.3
    pos, neg = scores[positive], scores[~positive]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert auroc(scores, positive) == pytest.approx(pairs / (len(pos) * len(neg)))
    assert auroc(positive.astype(float), positive) == 1.0
    with pytest.raises(ValueError, match="both"):
        auroc(scores, np.zeros(300, bool))


def test_spread_patch_scores_is_the_mean_over_covering_patches():
    rng = np.random.default_rng(5)
    grid = rng.random((4, 6))
    patch, stride = 8, 3
    out = spread_patch_scores(torch.from_numpy(grid), patch, stride).numpy()
    total = np.zeros(out.shape)
    count = np.zeros(out.shape)
    for i in range(4):
        for j in range(6):
            total[i * stride : i * stride + patch, j * stride : j * stride + patch] += grid[i, j]
            count[i * stride : i * stride + patch, j * stride : j * stride + patch] += 1
    assert out.shape == (3 * stride + patch, 5 * stride + patch)
    np.testing.assert_allclose(out, total / count)


def test_crop_sampler_is_seeded_and_crops_come_from_the_images():
    images = [torch.arange(40 * 50, dtype=torch.float32).reshape(1, 40, 50),
              -1 - torch.arange(64 * 64, dtype=torch.float32).reshape(1, 64, 64)]
    first = CropSampler(images, np.random.default_rng(9)).crops(20, 16)
    again = CropSampler(images, np.random.default_rng(9)).crops(20, 16)
    assert first.shape == (20, 1, 16, 16) and torch.equal(first, again)
    for crop in first:
        value = float(crop[0, 0, 0])
        source = images[0] if value >= 0 else images[1]
        y, x = np.argwhere(source[0].numpy() == value)[0]
        assert torch.equal(crop, source[:, y : y + 16, x : x + 16])
    with pytest.raises(DetectorParamsError, match="at least 65 px"):
        CropSampler(images, np.random.default_rng(0)).crops(1, 65)


def test_pad_to_at_least_pads_bottom_right_only():
    image = torch.randn(1, 33, 70)
    padded = pad_to_at_least(image, 64, 4)
    assert padded.shape == (1, 64, 72)
    assert torch.equal(padded[:, :33, :70], image)
