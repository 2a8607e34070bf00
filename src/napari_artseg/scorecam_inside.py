"""Score-CAM with the masks applied inside the classifier (``mask_stage``), an approximation.

Exact Score-CAM multiplies the *input image* by each channel's normalised map and
runs the whole classifier on every masked input. With ``mask_stage = s`` (1 to the
target stage) the classifier's activations after stage ``s`` are masked instead,
and only the stages after ``s`` and the head run once per channel::

    masked_k = base + m_k * (h_s(x) - base),    base = h_s(0)

``h_s`` is the stem and stages 1 to ``s``, ``m_k`` the channel's map upsampled to
``h_s``'s grid and min-max normalised, and ``base`` the activations of an all-zero
(image-mean) input. Where a mask is 0 the later stages see what they see for a
blank image, where it is 1 what they see for the image, as in exact Score-CAM away
from the mask's edges; near the edges, within the receptive field of the stages up
to ``s``, and for masks between 0 and 1, the two differ. What it saves: the masked
passes skip the stem and the first ``s`` stages, the costliest part of a ResNet
(on the ``fast`` classifier, masking after stage 2 made Score-CAM 2.4-3.0x faster
with all channels on a 2-core CPU). Its speed and accuracy are measured, not
assumed: docs/performance.md, "Masking inside the classifier".

``mask_stage = 0`` is exact Score-CAM (the input is masked).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .models.resnet import ResNetClassifier, StageView
from .scorecam_tuning import feature_network, scoring_network

Network = Callable[[torch.Tensor], torch.Tensor]


def resnet_and_target(model: nn.Module) -> tuple[ResNetClassifier, int]:
    """The ResNet behind a Score-CAM model and its target stage (4: the last).

    Parameters
    ----------
    model : torch.nn.Module
        A :class:`~napari_artseg.models.resnet.ResNetClassifier` or a
        :class:`~napari_artseg.models.resnet.StageView` of one.

    Returns
    -------
    tuple
        (the ResNet, the stage whose activations are Score-CAM's maps).

    Raises
    ------
    ValueError
        For any other model (masking inside needs the ResNet's stages).
    """
    if isinstance(model, StageView):
        return model.net, model.stage
    if isinstance(model, ResNetClassifier):
        return model, len(model.stages)
    raise ValueError(f"mask_stage > 0 needs a ResNetClassifier or a StageView of one, "
                     f"got {type(model).__name__}")


def check_mask_stage(model: nn.Module, mask_stage: int, score_scale: float) -> None:
    """Raise ``ValueError`` unless ``mask_stage`` fits ``model`` and the other options.

    ``mask_stage`` must be an integer from 0 (exact) to the target stage; above 0
    it needs a ResNet and cannot be combined with ``score_scale`` < 1.
    """
    if isinstance(mask_stage, bool) or not isinstance(mask_stage, int) or mask_stage < 0:
        raise ValueError(f"mask_stage must be an integer >= 0, got {mask_stage!r}")
    if mask_stage == 0:
        return
    _net, target = resnet_and_target(model)
    if mask_stage > target:
        raise ValueError(f"mask_stage must be at most the target stage {target}, "
                         f"got {mask_stage}")
    if score_scale != 1.0:
        raise ValueError("mask_stage > 0 and score_scale < 1 cannot be combined")


class _Prefix(nn.Module):
    """The stem and the first ``stage`` stages of a ResNet: ``h_s(x)``."""

    def __init__(self, net: ResNetClassifier, stage: int) -> None:
        super().__init__()
        self.net = net
        self.stage = stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Activations after stage ``stage``."""
        x = self.net.stem(x)
        for index in range(self.stage):  # indexed, not sliced: torch.fx can trace it
            x = self.net.stages[index](x)
        return x


class _Stages(nn.Module):
    """Stages ``first + 1`` to ``last`` of a ResNet, and its head when ``head`` is true."""

    def __init__(self, net: ResNetClassifier, first: int, last: int, head: bool) -> None:
        super().__init__()
        self.net = net
        self.first = first
        self.last = last
        self.with_head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Activations after stage ``last``, or the logits with the head."""
        for index in range(self.first, self.last):
            x = self.net.stages[index](x)
        return self.net.head(x) if self.with_head else x


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def masking_networks(model: nn.Module, mask_stage: int, fold_batch_norm: bool = True,
                     channels_last: bool = False) -> tuple[Network, Network, nn.Module]:
    """The three networks of Score-CAM masking after ``mask_stage``.

    Parameters
    ----------
    model : torch.nn.Module
        The Score-CAM model (a ResNet or a stage view of one when ``mask_stage`` > 0),
        in eval mode; never modified.
    mask_stage : int
        0: the input is masked (exact Score-CAM); s > 0: the activations after stage s.
    fold_batch_norm, channels_last : bool
        As in :func:`~napari_artseg.scorecam_tuning.scoring_network`.

    Returns
    -------
    tuple
        ``(prefix, features, scoring)``: ``prefix(x)`` is what gets masked (``x``
        itself for stage 0), ``features(prefix(x))`` the activation maps, and
        ``scoring(masked)`` the logits of masked prefixes.
    """
    if mask_stage == 0:
        return (_identity, feature_network(model, fold_batch_norm, channels_last),
                scoring_network(model, fold_batch_norm, channels_last))
    net, target = resnet_and_target(model)
    prefix = scoring_network(_Prefix(net, mask_stage), fold_batch_norm, channels_last)
    features: Network = _identity
    if target > mask_stage:
        features = scoring_network(_Stages(net, mask_stage, target, head=False),
                                   fold_batch_norm, channels_last)
    scoring = scoring_network(_Stages(net, mask_stage, len(net.stages), head=True),
                              fold_batch_norm, channels_last)
    return prefix, features, scoring
