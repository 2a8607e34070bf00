"""The small networks of the anomaly detectors, in plain torch.nn.

* :class:`ConvAutoencoder`: Bergmann et al. (2019)'s patch autoencoder, generalised
  to patch sides 32, 64, 128, ... (AE-SSIM, and PaDiM's clean-only backbone).
* :class:`PatchEncoder` and :class:`PositionClassifier`: the Patch SVDD encoder
  (Yi & Yoon 2020), written so that it runs densely over a whole image.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


class ConvAutoencoder(nn.Module):
    """Convolutional autoencoder with a dense (1 x 1 spatial) latent code.

    Encoder: ``levels = log2(patch / 8)`` down blocks, each a 4x4 convolution with
    stride 2 followed (from the second block on) by a 3x3 convolution; channels
    ``width, width, 2 width, 4 width, 4 width, ...``; then an 8x8 convolution without
    padding to ``latent`` channels. The decoder mirrors it with transposed
    convolutions and ends in a linear 3x3 convolution (inputs are z-scored, so
    there is no output squashing). Leaky ReLU (slope 0.2) as in the paper, Kaiming
    initialisation (PyTorch's default one left the SSIM-trained network stuck at a
    constant output for hundreds of steps). ``patch = 128``, ``width = 32``,
    ``latent = 100`` follows the paper's network (see docs/anomaly-detectors.md).

    Parameters
    ----------
    patch : int
        Input side: 8 times a power of two, at least 16.
    width : int
        Channels of the first block.
    latent : int
        Size of the latent code.
    """

    def __init__(self, patch: int = 128, width: int = 32, latent: int = 100) -> None:
        super().__init__()
        levels = int(round(math.log2(patch / 8)))
        if patch < 16 or 8 * 2**levels != patch:
            raise ValueError(f"autoencoder patch size must be 8 * 2**k >= 16 (got {patch})")
        self.patch, self.levels = patch, levels
        channels = [width * 2 ** min(max(0, i - 1), 2) for i in range(levels)]
        self.down = nn.ModuleList()
        previous = 1
        for i, ch in enumerate(channels):
            block: list[nn.Module] = [nn.Conv2d(previous, ch, 4, 2, 1), _act()]
            if i > 0:
                block += [nn.Conv2d(ch, ch, 3, 1, 1), _act()]
            self.down.append(nn.Sequential(*block))
            previous = ch
        self.to_latent = nn.Conv2d(previous, latent, 8, 1, 0)
        self.from_latent = nn.Sequential(nn.ConvTranspose2d(latent, previous, 8, 1, 0), _act())
        up: list[nn.Module] = []
        for i in reversed(range(levels)):
            out = channels[i - 1] if i > 0 else width
            if i > 0:
                up += [nn.Conv2d(channels[i], channels[i], 3, 1, 1), _act()]
            up += [nn.ConvTranspose2d(channels[i], out, 4, 2, 1), _act()]
        up.append(nn.Conv2d(width, 1, 3, 1, 1))
        self.up = nn.Sequential(*up)
        self.feature_channels = channels
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, a=0.2, nonlinearity="leaky_relu")
                nn.init.zeros_(module.bias)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of every down block (strides 2, 4, 8, ...); any input size divisible by
        ``2 ** levels`` works, since the blocks are fully convolutional."""
        out = []
        for block in self.down:
            x = block(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct (N, 1, patch, patch) inputs."""
        code = self.to_latent(self.features(x)[-1])
        return self.up(self.from_latent(code))


class PatchEncoder(nn.Module):
    """Patch SVDD encoder: 32 px patches, optionally 64 px patches hierarchically.

    ``embed32`` is fully convolutional without padding: layers 3x3/1, 4x4/2, 4x4/2,
    6x6/1, 1x1, so its receptive field is exactly 32 px and its output stride 4. On
    a 32 px crop it returns one embedding; on a whole image the embedding at grid
    position ``(i, j)`` is that of the patch with top-left corner ``(4i, 4j)``.

    ``embed64`` is the paper's hierarchical encoder: the 64 px patch is split into
    2 x 2 sub-patches of 32 px, each encoded by ``embed32``, and a 2x2 convolution
    (dilation 8 on the stride-4 grid) plus a 1x1 convolution combine them. Outputs
    pass through tanh, as in the reference code.

    Parameters
    ----------
    width : int
        Channels of the first layers.
    dim : int
        Embedding size D.
    """

    stride = 4

    def __init__(self, width: int = 32, dim: int = 64) -> None:
        super().__init__()
        act = nn.LeakyReLU(0.1, inplace=True)
        self.small = nn.Sequential(
            nn.Conv2d(1, width, 3, 1, 0), act,
            nn.Conv2d(width, width, 4, 2, 0), act,
            nn.Conv2d(width, 2 * width, 4, 2, 0), act,
            nn.Conv2d(2 * width, 2 * width, 6, 1, 0), act,
            nn.Conv2d(2 * width, dim, 1, 1, 0), nn.Tanh(),
        )
        self.combine = nn.Sequential(
            nn.Conv2d(dim, 2 * width, 2, 1, 0, dilation=32 // self.stride), act,
            nn.Conv2d(2 * width, dim, 1, 1, 0), nn.Tanh(),
        )

    def embed32(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) -> (N, D, (H - 32) // 4 + 1, (W - 32) // 4 + 1)."""
        return self.small(x)

    def embed64_from32(self, grid32: torch.Tensor) -> torch.Tensor:
        """64 px embeddings from a dense 32 px embedding grid (8 fewer rows and columns)."""
        return self.combine(grid32)

    def embed(self, x: torch.Tensor, patch: int) -> torch.Tensor:
        """Embeddings of ``patch`` (32 or 64) px patches on the stride-4 grid."""
        grid = self.embed32(x)
        return grid if patch == 32 else self.embed64_from32(grid)


class PositionClassifier(nn.Module):
    """MLP predicting which of the 8 neighbours a patch is, from the embedding difference."""

    def __init__(self, dim: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.LeakyReLU(0.1),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.1),
            nn.Linear(hidden, 8),
        )

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Logits (N, 8) for embeddings ``a`` and ``b`` of shape (N, D)."""
        return self.net(a - b)
