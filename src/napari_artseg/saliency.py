"""Score-CAM maps with a config's settings: one place for the target stage and the options."""

from __future__ import annotations

import torch

from .config import ArtSegConfig
from .models.resnet import ResNetClassifier, cam_target
from .scorecam import scorecam


def config_scorecam(classifier: ResNetClassifier, views: torch.Tensor,
                    config: ArtSegConfig) -> torch.Tensor:
    """Score-CAM maps of ``views`` as the config asks.

    Parameters
    ----------
    classifier : ResNetClassifier
        The trained classifier.
    views : torch.Tensor
        (N, 1, S, S) zero-centred whole-image views on the classifier's device.
    config : ArtSegConfig
        Uses ``scorecam_stage`` (the target stage: 4 is the last, as in the paper;
        3 has a twice finer grid), ``scorecam_weighting``, ``scorecam_batch_size``
        (an integer, or ``"auto"``: measured once per process), ``scorecam_max_channels``
        and ``scorecam_score_scale`` (scoring at a reduced resolution; 1.0 is exact).

    Returns
    -------
    torch.Tensor
        (N, S, S) maps in [0, 1], float32.
    """
    return scorecam(cam_target(classifier, config.scorecam_stage), views,
                    batch_size=config.scorecam_batch_size, weighting=config.scorecam_weighting,
                    max_channels=config.scorecam_max_channels,
                    score_scale=config.scorecam_score_scale)
