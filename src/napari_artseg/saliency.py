"""Score-CAM maps with a config's settings: one place for the target stage and the options."""

from __future__ import annotations

from .config import ArtSegConfig
from .models.resnet import ResNetClassifier, cam_target
from .scorecam import ScoreCam


def scorecam_runner(classifier: ResNetClassifier, config: ArtSegConfig) -> ScoreCam:
    """A :class:`~napari_artseg.scorecam.ScoreCam` of ``classifier`` with the config's settings.

    Make one per trained classifier and call it on every image: its networks
    are built once (not per image).

    Parameters
    ----------
    classifier : ResNetClassifier
        The trained classifier (its weights must not change while the runner is used).
    config : ArtSegConfig
        Uses ``scorecam_stage`` (the target stage: 4 is the last, as in the paper;
        3 has a twice finer grid), ``scorecam_weighting``, ``scorecam_batch_size``
        (an integer, or ``"auto"``: measured once per process), ``scorecam_max_channels``,
        ``scorecam_score_scale`` (scoring at a reduced resolution; 1.0 is exact),
        ``scorecam_mask_stage`` (masking after an early stage; 0 is exact) and
        ``scorecam_amp`` (bf16 masked passes where the device computes bf16 natively).

    Returns
    -------
    ScoreCam
        Call it with (N, 1, S, S) zero-centred whole-image views on the
        classifier's device; it returns (N, S, S) maps in [0, 1], float32.
    """
    return ScoreCam(cam_target(classifier, config.scorecam_stage),
                    batch_size=config.scorecam_batch_size, weighting=config.scorecam_weighting,
                    max_channels=config.scorecam_max_channels,
                    score_scale=config.scorecam_score_scale,
                    mask_stage=config.scorecam_mask_stage, amp=config.scorecam_amp)
