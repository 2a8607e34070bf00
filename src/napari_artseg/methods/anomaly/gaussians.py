"""PaDiM's statistics: per-position Gaussians, Mahalanobis distances, channel subsampling."""

from __future__ import annotations

import numpy as np
import torch


def mahalanobis_map(
    embeddings: torch.Tensor, mean: torch.Tensor, cov_inv: torch.Tensor
) -> torch.Tensor:
    """Mahalanobis distance of every embedding to its position's Gaussian.

    Parameters
    ----------
    embeddings : torch.Tensor
        (N, d, h, w) embeddings.
    mean : torch.Tensor
        (h, w, d) mean per position.
    cov_inv : torch.Tensor
        (h, w, d, d) inverse covariance per position.

    Returns
    -------
    torch.Tensor
        (N, h, w): ``sqrt((x - mu)^T S^-1 (x - mu))`` per image and position.
    """
    n, d, h, w = embeddings.shape
    delta = embeddings.permute(2, 3, 0, 1).reshape(h * w, n, d) - mean.reshape(h * w, 1, d)
    product = torch.bmm(delta, cov_inv.reshape(h * w, d, d))
    squared = (product * delta).sum(-1).clamp_min(0.0)
    return squared.sqrt().reshape(h, w, n).permute(2, 0, 1)


def choose_channels(total: int, d: int, seed: int) -> torch.Tensor:
    """``d`` of ``total`` embedding channels drawn at random without replacement (seeded),
    in increasing order, as an int64 tensor (PaDiM's random dimensionality reduction)."""
    chosen = np.random.default_rng([seed, 1]).choice(total, d, replace=False)
    return torch.from_numpy(np.sort(chosen)).to(torch.int64)


class GaussianAccumulator:
    """Streams embeddings into per-position sums; :meth:`finish` gives the Gaussians.

    Sums are kept in float64 on ``device``, so memory does not grow with the number of
    crops.

    Parameters
    ----------
    positions : int
        Number of grid positions P.
    d : int
        Embedding size.
    device : torch.device
        Where the sums live.
    """

    def __init__(self, positions: int, d: int, device: torch.device) -> None:
        self.count = 0
        self.total = torch.zeros(positions, d, dtype=torch.float64, device=device)
        self.outer = torch.zeros(positions, d, d, dtype=torch.float64, device=device)

    def add(self, embeddings: torch.Tensor) -> None:
        """Add (N, d, h, w) embeddings of N crops (h * w = P)."""
        n, d, h, w = embeddings.shape
        e = embeddings.to(torch.float64).permute(2, 3, 0, 1).reshape(h * w, n, d)
        self.total += e.sum(1)
        self.outer += torch.bmm(e.transpose(1, 2), e)
        self.count += n

    def finish(self, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (P, d) and inverse of ``covariance + eps * I`` (P, d, d), float32.

        The covariance is the unbiased sample covariance (divisor N - 1), as in the paper.
        """
        n, d = self.count, self.total.shape[1]
        if n < 2:
            raise ValueError("a covariance needs at least two crops")
        mean = self.total / n
        cov = (self.outer - n * mean[:, :, None] * mean[:, None, :]) / (n - 1)
        cov += eps * torch.eye(d, dtype=torch.float64, device=cov.device)
        return mean.to(torch.float32), torch.linalg.inv(cov).to(torch.float32)
