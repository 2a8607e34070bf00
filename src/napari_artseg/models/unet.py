"""U-Net of the ArtSeg paper (Fishman et al. 2021 variant), plain ``torch``.

Constant width in every layer, ``convs_per_level`` 3x3 convolutions per level,
nearest-neighbour x2 upsampling in the decoder, logits out. With ``downsample`` > 1 the
network works at a lower resolution inside: the input is average-pooled by that factor
and the logits are bilinearly resized back, so callers see the input's resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_stack(in_channels: int, width: int, count: int, batch_norm: bool) -> nn.Sequential:
    """``count`` times [3x3 conv (padding 1) -> optional BN -> ReLU]."""
    layers: list[nn.Module] = []
    channels = in_channels
    for _ in range(count):
        layers.append(nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU(inplace=True))
        channels = width
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """Encoder-decoder segmentation network with skip connections.

    Encoder: ``levels`` levels of ``convs_per_level`` 3x3 conv + ReLU layers,
    each followed by a 2x2 max-pool; the skip connection is taken just before
    the pool. Bottleneck: ``convs_per_level`` convs. Decoder: ``levels`` levels
    of x2 nearest-neighbour upsampling (``nn.Upsample(mode="nearest")``, no
    parameters, no checkerboard artefacts), concatenation with the matching
    skip, then ``convs_per_level`` convs. Every conv has ``width`` filters.
    A final 1x1 conv gives one channel.

    With ``batch_norm=True`` (default) each conv is followed by BatchNorm
    before the ReLU (conv -> BN -> ReLU); it makes training from scratch much
    more stable for this deep, constant-width network. ``batch_norm=False``
    gives the paper's plain conv -> ReLU layers.

    Parameters
    ----------
    width : int
        Filters of every convolution (the paper uses 64).
    levels : int
        Number of pooling levels; inputs must be multiples of ``2**levels``.
    convs_per_level : int
        3x3 convolutions per level (the paper uses 3).
    in_channels : int
        Channels of the input images.
    batch_norm : bool
        Insert BatchNorm after every 3x3 convolution.
    downsample : int
        Work at ``1/downsample`` of the input's resolution: average-pool the
        input by this factor first and bilinearly resize the logits back. Adds
        no weights; the receptive field and the context per pixel of compute
        grow by the factor, the finest detail shrinks by it.

    Raises
    ------
    ValueError
        If any of ``width``, ``levels``, ``convs_per_level``, ``in_channels``,
        ``downsample`` is < 1.
    """

    def __init__(
        self,
        width: int = 64,
        levels: int = 5,
        convs_per_level: int = 3,
        in_channels: int = 1,
        batch_norm: bool = True,
        downsample: int = 1,
    ) -> None:
        super().__init__()
        for name, value in (
            ("width", width),
            ("levels", levels),
            ("convs_per_level", convs_per_level),
            ("in_channels", in_channels),
            ("downsample", downsample),
        ):
            if value < 1:
                raise ValueError(f"UNet {name} must be >= 1, got {value}")
        self.width = width
        self.levels = levels
        self.convs_per_level = convs_per_level
        self.in_channels = in_channels
        self.batch_norm = batch_norm
        self.downsample = downsample

        self.encoder = nn.ModuleList(
            _conv_stack(in_channels if i == 0 else width, width, convs_per_level, batch_norm)
            for i in range(levels)
        )
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.bottleneck = _conv_stack(width, width, convs_per_level, batch_norm)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.decoder = nn.ModuleList(
            _conv_stack(2 * width, width, convs_per_level, batch_norm) for _ in range(levels)
        )
        self.out = nn.Conv2d(width, 1, kernel_size=1)

    @property
    def divisor(self) -> int:
        """Input height and width must be multiples of this (``2**levels * downsample``)."""
        return 2**self.levels * self.downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment images.

        Parameters
        ----------
        x : torch.Tensor
            Images, shape (N, in_channels, H, W), H and W multiples of
            :attr:`divisor`.

        Returns
        -------
        torch.Tensor
            LOGITS, shape (N, 1, H, W); callers apply ``torch.sigmoid`` to get
            artifact probabilities (train with ``BCEWithLogitsLoss``).

        Raises
        ------
        ValueError
            If the input is not 4-D or H or W is not a multiple of
            :attr:`divisor`.
        """
        if x.dim() != 4:
            raise ValueError(f"UNet expects input of shape (N, C, H, W), got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if height % self.divisor or width % self.divisor:
            raise ValueError(
                f"UNet input height and width must be multiples of {self.divisor} "
                f"(2**levels * downsample with levels={self.levels}, "
                f"downsample={self.downsample}), got {height}x{width}"
            )
        if self.downsample > 1:
            x = F.avg_pool2d(x, self.downsample)
        skips: list[torch.Tensor] = []
        for stack in self.encoder:
            x = stack(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for stack, skip in zip(self.decoder, reversed(skips), strict=True):
            x = stack(torch.cat([self.upsample(x), skip], dim=1))
        logits = self.out(x)
        if self.downsample > 1:
            logits = F.interpolate(logits, size=(height, width), mode="bilinear",
                                   align_corners=False)
        return logits
