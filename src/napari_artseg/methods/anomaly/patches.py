"""Seeded random crops from clean training images, padding, and patch scores to pixels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...tiling import pad_bottom_right
from .base import DetectorParamsError, check_image


class CropSampler:
    """Draws square crops at seeded random positions from a list of images.

    An image is chosen with probability proportional to the number of positions a
    crop of the requested size has in it, so every valid position of every image
    is equally likely.

    Parameters
    ----------
    images : sequence of torch.Tensor
        Clean training images, each (1, h, w) float; kept on the CPU.
    rng : numpy.random.Generator
        Source of all positions and augmentations.
    """

    def __init__(self, images: Sequence[torch.Tensor], rng: np.random.Generator) -> None:
        if isinstance(images, torch.Tensor) or len(images) == 0:
            raise DetectorParamsError("fit needs a non-empty list of clean (1, h, w) images")
        for index, image in enumerate(images):
            check_image(image, min_size=1, what=f"training image {index}")
        self.images = [image.detach().to("cpu", torch.float32) for image in images]
        self.rng = rng

    def _weights(self, size: int, margin: int = 0) -> np.ndarray:
        """Number of crop positions per image (0 where the image is too small)."""
        counts = np.array(
            [
                max(0, img.shape[1] - size - margin + 1) * max(0, img.shape[2] - size - margin + 1)
                for img in self.images
            ],
            dtype=np.float64,
        )
        if counts.sum() == 0:
            largest = max(min(img.shape[1:]) for img in self.images)
            raise DetectorParamsError(
                f"training images must be at least {size + margin} px on each side for this "
                f"detector's crop size (largest is {largest} px); lower the crop/patch size"
            )
        return counts / counts.sum()

    def image_indices(self, n: int, size: int, margin: int = 0) -> np.ndarray:
        """``n`` image indices, weighted by the positions a ``size + margin`` crop has."""
        return self.rng.choice(len(self.images), size=n, p=self._weights(size, margin))

    def crop(self, index: int, y: int, x: int, size: int) -> torch.Tensor:
        """The (1, size, size) crop of image ``index`` at top-left ``(y, x)``."""
        return self.images[index][:, y : y + size, x : x + size]

    def crops(self, n: int, size: int, augment: bool = False) -> torch.Tensor:
        """``n`` random crops, shape (n, 1, size, size).

        With ``augment``, each crop gets a random 90-degree rotation and a random
        flip (brightfield fields of view have no preferred orientation).
        """
        out = []
        for index in self.image_indices(n, size):
            _, h, w = self.images[index].shape
            y = int(self.rng.integers(0, h - size + 1))
            x = int(self.rng.integers(0, w - size + 1))
            patch = self.crop(int(index), y, x, size)
            if augment:
                patch = torch.rot90(patch, int(self.rng.integers(0, 4)), dims=(1, 2))
                if self.rng.random() < 0.5:
                    patch = torch.flip(patch, dims=(2,))
            out.append(patch)
        return torch.stack(out)


def pad_to_at_least(image: torch.Tensor, size: int, multiple: int = 1) -> torch.Tensor:
    """Pad a (C, H, W) tensor on the bottom/right to at least ``size`` and a multiple.

    Reflect padding where possible, replicate otherwise (as :mod:`napari_artseg.tiling`).
    """
    _, h, w = image.shape
    height = -(-max(h, size) // multiple) * multiple
    width = -(-max(w, size) // multiple) * multiple
    return pad_bottom_right(image, height, width)


def spread_patch_scores(scores: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """Average patch scores over the pixels each patch covers.

    Parameters
    ----------
    scores : torch.Tensor
        (gh, gw) score of the patch whose top-left corner is ``(i * stride, j * stride)``.
    patch : int
        Patch side.
    stride : int
        Distance between patch corners.

    Returns
    -------
    torch.Tensor
        ((gh - 1) * stride + patch, (gw - 1) * stride + patch) map: each pixel holds
        the mean score of the patches that contain it.
    """
    ones = torch.ones(1, 1, patch, patch, dtype=scores.dtype, device=scores.device)
    total = F.conv_transpose2d(scores[None, None], ones, stride=stride)
    count = F.conv_transpose2d(torch.ones_like(scores)[None, None], ones, stride=stride)
    return (total / count)[0, 0]


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for boolean ``positive`` (ties averaged).

    Computed from ranks (Mann-Whitney U); used by tests and the measurement script.
    """
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64).ravel()
    positive = np.asarray(positive, dtype=bool).ravel()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both positive and negative pixels")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
