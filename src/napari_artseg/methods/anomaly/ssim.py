"""Structural similarity (SSIM, Wang et al. 2004) as a local map, in plain torch.

Local means, variances and the covariance are Gaussian-weighted averages over a
``window`` x ``window`` neighbourhood (separable convolution, reflect padding, so
the map has the input's size). With ``L`` the data range,
``C1 = (0.01 L)^2`` and ``C2 = (0.03 L)^2``::

    SSIM = (2 mu_x mu_y + C1) (2 cov_xy + C2) / ((mu_x^2 + mu_y^2 + C1) (var_x + var_y + C2))

Images here are z-scored (mean 0), where the luminance term is meaningless (it
assumes non-negative intensities). :func:`zscore_ssim_map` therefore maps z-scores
to ``x / L + 0.5`` (``[-L/2, L/2]`` to ``[0, 1]``) and applies SSIM with data range 1;
``L`` also sets the local contrast below which differences count less.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel(window: int, sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian weights of length ``window`` (odd)."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"SSIM window must be a positive odd integer (got {window})")
    x = torch.arange(window, dtype=torch.float32) - (window - 1) / 2
    weights = torch.exp(-0.5 * (x / sigma) ** 2)
    return weights / weights.sum()


def _blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian average of (N, C, H, W) with reflect (or replicate) padding.

    Written as a weighted sum of shifted views rather than a convolution: CPU
    convolutions with one-channel kernels unfold the input (11x its memory for an
    11-tap window, 1.5 GB for the SSIM statistics of a 2048 px image).
    """
    r = kernel.numel() // 2
    h, w = x.shape[-2:]
    mode = "reflect" if min(h, w) > r else "replicate"
    x = F.pad(x, (r, r, r, r), mode=mode)
    weights = kernel.tolist()
    rows = x[..., :h, :] * weights[0]
    for k in range(1, len(weights)):
        rows.add_(x[..., k : k + h, :], alpha=weights[k])
    out = rows[..., :w] * weights[0]
    for k in range(1, len(weights)):
        out.add_(rows[..., k : k + w], alpha=weights[k])
    return out


def ssim_map(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    window: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """Local SSIM between two single-channel image batches.

    Parameters
    ----------
    x, y : torch.Tensor
        Shape (N, 1, H, W), same shape.
    data_range : float
        ``L`` in the stabilising constants.
    window : int
        Odd side of the Gaussian window.
    sigma : float
        Standard deviation of the Gaussian window in pixels.

    Returns
    -------
    torch.Tensor
        (N, 1, H, W) SSIM values in [-1, 1]; 1 where the images agree.
    """
    if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"ssim_map needs two (N, 1, H, W) tensors (got {x.shape}, {y.shape})")
    kernel = gaussian_kernel(window, sigma).to(device=x.device, dtype=x.dtype)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    stats = _blur(torch.cat([x, y, x * x, y * y, x * y], dim=1), kernel)
    mu_x, mu_y = stats[:, 0], stats[:, 1]
    var_x = (stats[:, 2] - mu_x * mu_x).clamp_min(0.0)
    var_y = (stats[:, 3] - mu_y * mu_y).clamp_min(0.0)
    cov = stats[:, 4] - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return (numerator / denominator)[:, None]


def zscore_ssim_map(
    x: torch.Tensor, y: torch.Tensor, data_range: float = 8.0, window: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """SSIM map of z-scored images, mapped to ``x / data_range + 0.5`` first.

    Parameters
    ----------
    x, y : torch.Tensor
        (N, 1, H, W) z-scored images.
    data_range : float
        z-score span mapped onto [0, 1].
    window, sigma : int, float
        Gaussian window, as in :func:`ssim_map`.

    Returns
    -------
    torch.Tensor
        (N, 1, H, W) SSIM values.
    """
    return ssim_map(x / data_range + 0.5, y / data_range + 0.5, 1.0, window, sigma)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing of (N, 1, H, W) maps (window ``2 ceil(3 sigma) + 1``, reflect
    padding); ``sigma <= 0`` returns ``x`` unchanged."""
    if sigma <= 0:
        return x
    window = 2 * int(math.ceil(3 * sigma)) + 1
    return _blur(x, gaussian_kernel(window, sigma).to(device=x.device, dtype=x.dtype))
