"""Patch SVDD's training pairs: a patch with one of its 8 neighbours (position task) or
with a slightly shifted copy of itself (SVDD task), from the same clean image."""

from __future__ import annotations

import numpy as np
import torch

from .patches import CropSampler

#: Directions (dy, dx) of the 8 neighbours, in class order.
NEIGHBOURS = np.array([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)])
def sample_pairs(
    sampler: CropSampler, n: int, size: int, offsets: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` pairs of ``size`` px crops from the same image, the second shifted by
    ``offsets[i] = (dy, dx)``; both lie inside the image.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        Two (n, 1, size, size) batches.
    """
    margin = int(np.abs(offsets).max())
    first, second = [], []
    for index, (dy, dx) in zip(sampler.image_indices(n, size, margin), offsets, strict=True):
        _, h, w = sampler.images[index].shape
        y = int(sampler.rng.integers(max(0, -dy), h - size - max(0, dy) + 1))
        x = int(sampler.rng.integers(max(0, -dx), w - size - max(0, dx) + 1))
        first.append(sampler.crop(int(index), y, x, size))
        second.append(sampler.crop(int(index), y + int(dy), x + int(dx), size))
    return torch.stack(first), torch.stack(second)


def position_offsets(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour classes and offsets: ``3 size / 4`` plus up to ``size / 4`` px along each
    axis of one of the 8 directions (neighbouring patches overlap by at most a quarter)."""
    labels = rng.integers(0, 8, n)
    distance = 3 * size // 4 + rng.integers(0, max(1, size // 4), (n, 2))
    return labels, NEIGHBOURS[labels] * distance


def svdd_offsets(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Small non-zero shifts (up to ``size / 32`` px per axis) between adjacent patches."""
    reach = max(1, size // 32)
    offsets = rng.integers(-reach, reach + 1, (n, 2))
    still = ~offsets.any(axis=1)
    offsets[still, 1] = reach  # never the same patch twice
    return offsets
