"""Single-channel ResNet image classifier with a single-logit binary head.

Written with plain ``torch`` (no torchvision). The last convolutional stage is
exposed through :meth:`ResNetClassifier.features` because it is Score-CAM's
target layer, and the pooling + linear head through :meth:`ResNetClassifier.head`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import POOLS

#: Sharpness r of the ``"lse"`` head: logit = log(mean(exp(r * s))) / r over location logits s.
LSE_SHARPNESS = 5.0

# depth -> (block type name, blocks per stage)
_DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
}


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    """Identity, or a strided 1x1 projection + BN when the shape changes."""
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(_conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34).

    Parameters
    ----------
    in_channels : int
        Channels entering the block.
    planes : int
        Channels of the block's convolutions (and of its output).
    stride : int
        Stride of the first convolution (2 halves the resolution).
    """

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = _conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, out_channels, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The batch norm closing the residual branch (before the addition)."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block; returns ``ReLU(branch(x) + shortcut(x))``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck block with expansion 4 (ResNet-50).

    Parameters
    ----------
    in_channels : int
        Channels entering the block.
    planes : int
        Channels of the inner convolutions; the output has ``4 * planes``.
    stride : int
        Stride of the 3x3 convolution (2 halves the resolution).
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = _conv1x1(in_channels, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, out_channels, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The batch norm closing the residual branch (before the addition)."""
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block; returns ``ReLU(branch(x) + shortcut(x))``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ResNetClassifier(nn.Module):
    """ResNet-18/34/50 binary classifier with one output logit.

    Stem: 7x7 convolution with stride 2 + BN + ReLU, then (if ``stem_pool``) a
    3x3 max-pool with stride 2; then four stages of residual blocks with
    ``width, 2*width, 4*width, 8*width`` planes (stride 1, 2, 2, 2); then global
    average pooling and a linear layer to a single logit (artifact = 1).

    Convolutions use Kaiming-normal initialisation; the last batch norm of
    every residual branch starts with gamma = 0, so each block starts as the
    identity (helps training from scratch).

    Parameters
    ----------
    depth : int
        18 or 34 (basic blocks), or 50 (bottleneck blocks, expansion 4).
    width : int
        Channels of the stem and of the first stage (the paper uses 64).
    in_channels : int
        Channels of the input images (1 for brightfield).
    stem_pool : bool
        Keep the stem max-pool. ``False`` halves the total downsampling
        (16 instead of 32), which doubles the resolution of Score-CAM maps.
    pool : str
        The global pooling of the head: ``"avg"`` (the paper's average pooling),
        ``"avgmax"`` (average and maximum side by side into the linear layer,
        so one small artifact is not averaged away over the whole field) or
        ``"lse"`` (multiple-instance pooling: the linear layer scores every
        location of the feature grid and the image logit is their log-sum-exp
        mean with sharpness :data:`LSE_SHARPNESS`, between the mean (0) and the
        maximum (infinity) of the location logits, so one artifact anywhere
        decides the call).

    Attributes
    ----------
    num_feature_channels : int
        Channels K of :meth:`features` (``8 * width``, times 4 for depth 50).
    downsample : int
        Nominal downsampling factor of :meth:`features` (32, or 16 without the
        stem pool).

    Raises
    ------
    ValueError
        If ``depth`` is not 18, 34 or 50, ``width`` / ``in_channels`` < 1, or
        ``pool`` is not one of :data:`POOLS`.
    """

    def __init__(
        self, depth: int = 18, width: int = 64, in_channels: int = 1, stem_pool: bool = True,
        pool: str = "avg",
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"ResNet pool must be one of {POOLS}, got {pool!r}")
        if depth not in _DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(_DEPTHS)}, got {depth!r}")
        if width < 1 or in_channels < 1:
            raise ValueError(
                f"width and in_channels must be >= 1, got width={width}, in_channels={in_channels}"
            )
        kind, blocks = _DEPTHS[depth]
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock if kind == "basic" else Bottleneck
        self.depth = depth
        self.width = width
        self.in_channels = in_channels
        self.stem_pool = stem_pool

        stem: list[nn.Module] = [
            nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        if stem_pool:
            stem.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)

        stages: list[nn.Module] = []
        channels = width
        for index, n_blocks in enumerate(blocks):
            planes = width * 2**index
            stride = 1 if index == 0 else 2
            layers: list[nn.Module] = []
            for b in range(n_blocks):
                layers.append(block(channels, planes, stride if b == 0 else 1))
                channels = planes * block.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)

        self.num_feature_channels: int = channels
        self.downsample: int = 32 if stem_pool else 16
        self.pool_kind = pool
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels * (2 if pool == "avgmax" else 1), 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, (BasicBlock, Bottleneck)):
                nn.init.zeros_(module.last_bn.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Activations of the last convolutional stage (Score-CAM's target layer).

        Parameters
        ----------
        x : torch.Tensor
            Images, shape (N, in_channels, H, W), H and W >= 32 recommended.

        Returns
        -------
        torch.Tensor
            Shape (N, K, h, w) with ``K = num_feature_channels`` and
            ``h ~= H / downsample``; taken after the stage's final ReLU, so >= 0.
        """
        return self.stages(self.stem(x))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Global pooling and the linear layer (see ``pool`` in the class docstring).

        Parameters
        ----------
        features : torch.Tensor
            Output of :meth:`features`, shape (N, K, h, w).

        Returns
        -------
        torch.Tensor
            Logits, shape (N,) (artifact class; apply a sigmoid for probabilities).
        """
        if self.pool_kind == "lse":
            scores = torch.einsum("nkhw,k->nhw", features, self.fc.weight[0]).flatten(1)
            pooled = torch.logsumexp(LSE_SHARPNESS * scores, dim=1) - math.log(scores.shape[1])
            return pooled / LSE_SHARPNESS + self.fc.bias[0]
        pooled = torch.flatten(self.pool(features), 1)
        if self.pool_kind == "avgmax":
            pooled = torch.cat([pooled, torch.amax(features, dim=(2, 3))], dim=1)
        return self.fc(pooled).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify images.

        Parameters
        ----------
        x : torch.Tensor
            Images, shape (N, in_channels, H, W).

        Returns
        -------
        torch.Tensor
            Logits, shape (N,).
        """
        return self.head(self.features(x))


class StageView(nn.Module):
    """A classifier seen with an earlier stage as Score-CAM's target layer.

    ``forward`` is the whole classifier (the masked inputs are still scored by
    the full network); ``features`` are the activations after ``stage`` (1-4), at
    a finer grid than the last stage: stage 3 has twice the resolution of stage 4.

    Parameters
    ----------
    net : ResNetClassifier
        The classifier (shared, not copied).
    stage : int
        1 to 4; 4 is the last stage (the same maps as ``net.features``).
    """

    def __init__(self, net: ResNetClassifier, stage: int) -> None:
        super().__init__()
        if stage not in (1, 2, 3, 4):
            raise ValueError(f"stage must be 1, 2, 3 or 4, got {stage!r}")
        self.net = net
        self.stage = stage
        last_block = net.stages[stage - 1][-1]
        self.num_feature_channels: int = last_block.last_bn.num_features
        self.downsample: int = (4 if net.stem_pool else 2) * 2 ** (stage - 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Activations after stage ``stage`` (>= 0, after the stage's final ReLU)."""
        x = self.net.stem(x)
        for index in range(self.stage):  # indexed, not sliced: torch.fx can trace it
            x = self.net.stages[index](x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's logits, shape (N,)."""
        return self.net(x)


def cam_target(net: ResNetClassifier, stage: int) -> nn.Module:
    """``net`` itself for stage 4 (its last stage), else a :class:`StageView` of it."""
    return net if stage == 4 else StageView(net, stage)
