"""PaDiM's feature extractors: multi-layer CNN embeddings from a trained backbone.

Two backbones (no ImageNet weights can be downloaded, so both are trained here):

* ``autoencoder``: the encoder of a :class:`~.networks.ConvAutoencoder` trained on
  clean crops only (layer ``k`` = output of down block ``k``, stride ``2**k``);
* ``classifier``: the project's :class:`napari_artseg.models.ResNetClassifier` (layer
  ``k`` = residual stage ``k``, stride ``4 * 2**(k-1)``, or half that without the stem
  max-pool, as ResNet's layer1-3 in the paper). It saw artifact images in training,
  so PaDiM with it is no longer trained on clean images only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ...models import ResNetClassifier
from .networks import ConvAutoencoder


def classifier_arch(classifier: ResNetClassifier) -> torch.Tensor:
    """The architecture of a classifier as an int64 tensor (depth, width, in_channels,
    stem_pool), stored with PaDiM's state so the backbone can be rebuilt on load."""
    return torch.tensor(
        [classifier.depth, classifier.width, classifier.in_channels, int(classifier.stem_pool)],
        dtype=torch.int64,
    )


def classifier_from_arch(arch: torch.Tensor | None) -> ResNetClassifier:
    """An untrained :class:`ResNetClassifier` of the architecture :func:`classifier_arch`
    describes.

    Raises
    ------
    ValueError
        When ``arch`` is missing, not four int64 values, or no valid architecture.
    """
    if arch is None:
        raise ValueError("is missing")
    if not isinstance(arch, torch.Tensor) or arch.shape != (4,) or arch.dtype != torch.int64:
        raise ValueError("must be 4 int64 values (depth, width, in_channels, stem_pool)")
    depth, width, in_channels, stem_pool = (int(v) for v in arch.tolist())
    try:
        return ResNetClassifier(depth, width, in_channels, bool(stem_pool))
    except ValueError as error:
        raise ValueError(f"holds no valid architecture ({error})") from None


def layer_strides(backbone: torch.nn.Module, layers: Sequence[int]) -> list[int]:
    """Downsampling factor of each selected layer (1-based) of ``backbone``."""
    if isinstance(backbone, ConvAutoencoder):
        return [2**k for k in layers]
    first = 4 if backbone.stem_pool else 2
    return [first * 2 ** (k - 1) for k in layers]


def layer_channels(backbone: torch.nn.Module, layers: Sequence[int]) -> list[int]:
    """Channels of each selected layer (1-based) of ``backbone``."""
    if isinstance(backbone, ConvAutoencoder):
        return [backbone.feature_channels[k - 1] for k in layers]
    expansion = 4 if backbone.depth == 50 else 1
    return [backbone.width * 2 ** (k - 1) * expansion for k in layers]


def max_layer(backbone: torch.nn.Module) -> int:
    """Number of layers ``backbone`` offers."""
    if isinstance(backbone, ConvAutoencoder):
        return backbone.levels
    return len(backbone.stages)


def backbone_problem(
    backbone: torch.nn.Module, layers: Sequence[int], crop: int, d: int
) -> str | None:
    """Why ``layers``, ``crop`` size and ``d`` do not suit ``backbone`` (None when they do)."""
    if max(layers) > max_layer(backbone):
        return f"parameter 'layers' {list(layers)}: it has layers 1 to {max_layer(backbone)}"
    stride = layer_strides(backbone, layers)[-1]
    if crop % stride:
        return (f"parameter 'crop_size' ({crop}) must be a multiple of {stride}, the stride of "
                f"layer {max(layers)}")
    channels = sum(layer_channels(backbone, layers))
    if d > channels:
        return f"parameter 'd' ({d}) exceeds the {channels} channels of layers {list(layers)}"
    return None


def layer_features(backbone: torch.nn.Module, x: torch.Tensor, layers: Sequence[int]) -> list:
    """Feature maps of the selected layers (1-based) for a (N, 1, H, W) batch."""
    last = max(layers)
    maps: list[torch.Tensor] = []
    if isinstance(backbone, ConvAutoencoder):
        for block in backbone.down[:last]:
            x = block(x)
            maps.append(x)
    else:
        x = backbone.stem(x)
        for stage in backbone.stages[:last]:
            x = stage(x)
            maps.append(x)
    return [maps[k - 1] for k in layers]


def embed(
    backbone: torch.nn.Module, x: torch.Tensor, layers: Sequence[int], channels: torch.Tensor
) -> torch.Tensor:
    """PaDiM embedding: selected layers upsampled to the first's grid, concatenated, then
    the channels ``channels`` kept (random subsampling).

    Parameters
    ----------
    backbone : torch.nn.Module
        A :class:`ConvAutoencoder` or :class:`ResNetClassifier` in eval mode.
    x : torch.Tensor
        (N, 1, H, W) crops, H and W divisible by the deepest layer's stride.
    layers : sequence of int
        1-based layer numbers, shallowest first.
    channels : torch.Tensor
        int64 indices into the concatenated channels.

    Returns
    -------
    torch.Tensor
        (N, len(channels), H / s1, W / s1) with ``s1`` the first layer's stride.
    """
    maps = layer_features(backbone, x, layers)
    size = maps[0].shape[-2:]
    maps = [maps[0]] + [
        F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:]
    ]
    return torch.cat(maps, dim=1).index_select(1, channels.to(x.device))
