"""Patch SVDD: dense embeddings equal per-patch ones, the score map equals a direct
patch-by-patch computation, sampling geometry, memory bank, artifact ranking."""

from __future__ import annotations

import numpy as np
import torch

from napari_artseg.methods.anomaly.networks import PatchEncoder
from napari_artseg.methods.anomaly.pair_sampling import (
    NEIGHBOURS,
    position_offsets,
    sample_pairs,
    svdd_offsets,
)
from napari_artseg.methods.anomaly.patches import CropSampler
from napari_artseg.methods.anomaly.patchsvdd import nearest_distance


def test_dense_embeddings_equal_per_patch_embeddings():
    torch.manual_seed(0)
    encoder = PatchEncoder(width=4, dim=6).eval()
    image = torch.randn(1, 1, 100, 92)
    with torch.inference_mode():
        for size in (32, 64):
            grid = encoder.embed(image, size)
            assert grid.shape[-2:] == ((100 - size) // 4 + 1, (92 - size) // 4 + 1)
            for i, j in [(0, 0), (3, 5), (grid.shape[2] - 1, grid.shape[3] - 1)]:
                crop = image[..., 4 * i : 4 * i + size, 4 * j : 4 * j + size]
                single = encoder.embed(crop, size)
                assert single.shape[-2:] == (1, 1)
                torch.testing.assert_close(grid[..., i, j], single[..., 0, 0])


def test_nearest_distance_equals_brute_force():
    rng = np.random.default_rng(1)
    queries, bank = rng.standard_normal((37, 5)), rng.standard_normal((11, 5))
    expected = np.sqrt(((queries[:, None] - bank[None]) ** 2).sum(-1)).min(1)
    ours = nearest_distance(torch.from_numpy(queries), torch.from_numpy(bank), chunk=8)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-6)


def test_score_map_equals_direct_patch_computation(fitted):
    detector, _ = fitted("patchsvdd")
    rng = np.random.default_rng(2)
    image = torch.from_numpy(rng.standard_normal((1, 70, 83), dtype=np.float32))
    # padded (reflect) to 72 x 84: at least 64 px and a multiple of the stride 4
    padded = torch.nn.functional.pad(image[None], (0, 1, 0, 2), mode="reflect")[0]
    expected = np.zeros((72, 84))
    for size, bank in detector.banks.items():
        total, count = np.zeros((72, 84)), np.zeros((72, 84))
        with torch.inference_mode():
            for y in range(0, 72 - size + 1, 4):
                for x in range(0, 84 - size + 1, 4):
                    crop = padded[None, :, y : y + size, x : x + size]
                    emb = detector.encoder.embed(crop, size).flatten(1)
                    score = float(torch.cdist(emb, bank).min())
                    total[y : y + size, x : x + size] += score
                    count[y : y + size, x : x + size] += 1
        expected += total / count
    np.testing.assert_allclose(detector.score_map(image).numpy(), expected[:70, :83],
                               rtol=1e-4, atol=1e-5)


def test_banded_scoring_equals_one_band(fitted, monkeypatch):
    import napari_artseg.methods.anomaly.patchsvdd as module

    detector, _ = fitted("patchsvdd")
    image = torch.from_numpy(np.random.default_rng(3).standard_normal((1, 150, 97),
                                                                      dtype=np.float32))
    monkeypatch.setattr(module, "BAND_ROWS", 1000)
    whole = detector.score_map(image)
    monkeypatch.setattr(module, "BAND_ROWS", 3)
    torch.testing.assert_close(detector.score_map(image), whole, rtol=1e-5, atol=1e-6)


def test_pairs_lie_at_their_offsets():
    ramp = torch.arange(90 * 120, dtype=torch.float32).reshape(1, 90, 120)
    rng = np.random.default_rng(4)
    sampler = CropSampler([ramp], rng)
    labels, offsets = position_offsets(rng, 50, 32)
    assert np.all(np.sign(offsets) == NEIGHBOURS[labels])
    assert np.all((np.abs(offsets) == 0) | ((np.abs(offsets) >= 24) & (np.abs(offsets) < 32)))
    a, b = sample_pairs(sampler, 50, 32, offsets)
    corner_a, corner_b = a[:, 0, 0, 0].long(), b[:, 0, 0, 0].long()
    dy = corner_b // 120 - corner_a // 120
    dx = corner_b % 120 - corner_a % 120
    assert np.array_equal(torch.stack([dy, dx], 1).numpy(), offsets)
    small = svdd_offsets(rng, 200, 64)
    assert np.abs(small).max() == 2 and np.all(np.abs(small).sum(1) > 0)


def test_memory_bank_holds_training_embeddings(fitted, clean_images):
    detector, events = fitted("patchsvdd")
    assert {e.stage for e in events} == {"patchsvdd", "patchsvdd_memory"}
    assert set(detector.banks) == {32, 64}
    for size, bank in detector.banks.items():
        assert bank.shape == (1000, 16)
        with torch.inference_mode():
            train = torch.cat([detector.encoder.embed(img[None], size).permute(0, 2, 3, 1)
                               .reshape(-1, 16) for img in clean_images])
        for rows in bank.split(100):  # every bank row is (exactly) a training embedding
            gap = (rows[:, None] - train[None]).abs().amax(-1).amin(1)
            assert float(gap.max()) < 1e-6


def test_patchsvdd_ranks_artifact_pixels_higher(fitted, artifact_images, pixel_auroc):
    detector, _ = fitted("patchsvdd")
    assert pixel_auroc(detector, artifact_images) > 0.75
