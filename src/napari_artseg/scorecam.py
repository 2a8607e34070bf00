"""Score-CAM saliency maps for the single-logit ResNet classifier.

Score-CAM (Wang et al., 2020): the K activation maps ``A_k`` of the last
convolutional stage are upsampled to the input size and min-max normalised;
the input is multiplied by each normalised map and scored by the classifier;
the scores weight the (un-normalised, upsampled) activation maps:
``map = ReLU(sum_k w_k * up(A_k))``, finally min-max normalised to [0, 1].

:func:`scorecam` is the fast, memory-bounded implementation used in training;
:func:`scorecam_reference` is the plain one-forward-pass-per-channel loop that
defines the expected result (tests and benchmarks compare the two).

Speed and memory of :func:`scorecam` (exact unless stated)
----------------------------------------------------------
- Constant channels get no masked pass (they share one all-zero pass).
- Masks are built chunk by chunk into one reused buffer of ``batch_size``
  masked inputs, so memory does not grow with K.
- Masked passes run through a copy of the classifier with batch norms folded
  into the convolutions and ``channels_last`` weights (float rounding only).
- On a CPU with several torch threads, each thread becomes a worker that runs
  its share of the channels single-threaded (:mod:`napari_artseg.scorecam_passes`).
- ``batch_size="auto"`` measures the fastest batch size once per process
  (:mod:`napari_artseg.scorecam_tuning`); on CUDA the batch is capped by free
  memory.
- Approximations, off by default: ``max_channels`` (top-N channels by
  variance, Faster-Score-CAM), ``score_scale`` (masked inputs scored at a
  reduced resolution), ``mask_stage`` (the activations after an early stage
  are masked instead of the input, :mod:`napari_artseg.scorecam_inside`) and
  ``amp`` (masked passes in bf16 on CUDA and on CPUs with bf16 units).

Definitions shared by both functions
------------------------------------
- A channel is *constant* when ``max(A_k) - min(A_k) < 1e-12`` on the
  low-resolution activation (this includes dead channels, all zero after the
  ReLU). Its normalised map is all zero, so its masked input is all zero and
  its score is the score of an all-zero (= image mean) input. The test is made
  on the low-resolution map because bilinear upsampling of a constant map is
  constant mathematically, but not always bit-exactly in floating point; testing
  the upsampled map would normalise rounding noise into a full [0, 1] mask.
- A non-constant channel whose upsampled range is still < 1e-12 also gets an
  all-zero normalised map (never NaN).
- Bilinear upsampling uses ``align_corners=False``.
- The weighted sum is accumulated in float64; the result is float32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from napari_artseg.models.resnet import ResNetClassifier
from napari_artseg.scorecam_inside import Network, check_mask_stage, masking_networks

if TYPE_CHECKING:
    from napari_artseg.scorecam_passes import MaskedPasses

WEIGHTINGS: tuple[str, ...] = ("probability", "softmax", "baseline")
"""Accepted values of the ``weighting`` argument."""

EPS = 1e-12
"""Range below which a map counts as constant."""


def upsample_to(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly upsample maps to ``size`` (``align_corners=False``).

    Parameters
    ----------
    maps : torch.Tensor
        Shape (N, K, h, w) or (K, h, w).
    size : tuple of int
        Target (H, W).

    Returns
    -------
    torch.Tensor
        Shape (N, K, H, W) or (K, H, W), same dtype as ``maps``.
    """
    if maps.dim() == 3:
        return upsample_to(maps.unsqueeze(0), size).squeeze(0)
    if maps.dim() != 4:
        raise ValueError(f"maps must have shape (N, K, h, w) or (K, h, w), got {tuple(maps.shape)}")
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map (the last two dimensions) to [0, 1].

    Parameters
    ----------
    maps : torch.Tensor
        Shape (..., H, W).

    Returns
    -------
    torch.Tensor
        Same shape; a map whose range is below 1e-12 becomes all zero (no NaN).
    """
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    valid = span >= EPS
    scaled = (maps - low) / torch.where(valid, span, torch.ones_like(span))
    return torch.where(valid, scaled, torch.zeros_like(scaled))


def constant_channels(acts: torch.Tensor) -> torch.Tensor:
    """Which activation maps are constant (range < 1e-12), dead ones included.

    Parameters
    ----------
    acts : torch.Tensor
        Activations, shape (K, h, w).

    Returns
    -------
    torch.Tensor
        Boolean, shape (K,).
    """
    return (acts.amax(dim=(-2, -1)) - acts.amin(dim=(-2, -1))) < EPS


def _weights(logits: torch.Tensor, weighting: str, zero_logit: torch.Tensor | None) -> torch.Tensor:
    """Channel weights (float64) from the masked-input logits (float64)."""
    if weighting == "probability":
        return torch.sigmoid(logits)
    if weighting == "softmax":
        return torch.softmax(logits, dim=0)
    assert zero_logit is not None
    return torch.sigmoid(logits) - torch.sigmoid(zero_logit)


def _finalise(cam_low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Upsample a low-resolution weighted sum, ReLU, normalise; float32 (H, W)."""
    cam = upsample_to(cam_low[None, None], size)[0, 0]
    return normalise_maps(torch.relu(cam)).float()


def _check_args(images: torch.Tensor, weighting: str) -> None:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")


class _EvalMode:
    """Context manager: eval mode inside, every module's training flag restored after."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flags: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self.flags = [(module, module.training) for module in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        for module, flag in self.flags:
            module.training = flag


def scoring_size(shape: tuple[int, int], score_scale: float) -> tuple[int, int]:
    """(H, W) at which masked inputs are scored: ``round(shape * score_scale)``, at least 1."""
    return max(1, round(shape[0] * score_scale)), max(1, round(shape[1] * score_scale))


def _select_channels(acts: torch.Tensor, max_channels: int | None) -> torch.Tensor:
    """Indices (ascending) of the channels to use: all, or the top-N by spatial variance."""
    count = acts.shape[0]
    if max_channels is None or max_channels >= count:
        return torch.arange(count, device=acts.device)
    variance = acts.flatten(1).var(dim=1, correction=0)
    return torch.topk(variance, max_channels).indices.sort().values


def _scorecam_one(networks: tuple[Network, Network, nn.Module], image: torch.Tensor,
                  passes: MaskedPasses, weighting: str, skip_dead: bool,
                  max_channels: int | None) -> torch.Tensor:
    """Fast Score-CAM of one image (C, H, W) -> (H, W) float32.

    ``networks`` are (prefix, features, scoring): the passes mask ``prefix(image)``
    (the image itself unless ``mask_stage`` > 0) and the maps are
    ``features(prefix(image))``.
    """
    prefix, features, _scoring = networks
    size = (image.shape[-2], image.shape[-1])
    masked = prefix(image[None])
    acts = features(masked)[0].float().contiguous()
    kept = acts[_select_channels(acts, max_channels)]
    constant = constant_channels(kept)
    rows = torch.nonzero(~constant).flatten() if skip_dead else torch.arange(kept.shape[0])
    rows = rows.to(image.device)
    logits = torch.empty(kept.shape[0], dtype=torch.float64, device=image.device)
    logits[rows] = passes.logits(masked[0], kept, constant, rows)
    if skip_dead and bool(constant.any()):
        logits[constant] = passes.zero_logit()
    base = passes.zero_logit() if weighting == "baseline" else None
    weights = _weights(logits, weighting, base)
    # Bilinear upsampling is linear: sum_k w_k up(A_k) == up(sum_k w_k A_k).
    cam_low = torch.einsum("k,khw->hw", weights, kept.double())
    return _finalise(cam_low, size)


def _check_options(batch_size: int | str, max_channels: int | None, score_scale: float) -> None:
    if batch_size != "auto" and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                 or batch_size < 1):
        raise ValueError(f"batch_size must be an integer >= 1 or 'auto', got {batch_size!r}")
    if max_channels is not None and max_channels < 1:
        raise ValueError(f"max_channels must be >= 1 or None, got {max_channels}")
    if not 0 < score_scale <= 1:
        raise ValueError(f"score_scale must be in (0, 1], got {score_scale}")


class ScoreCam:
    """Score-CAM of one classifier, image after image, with its fixed costs paid once.

    Calling it gives the maps of :func:`scorecam` (same options, same result).
    The networks the passes run through (batch norms folded, ``channels_last``
    copies, :func:`~napari_artseg.scorecam_tuning.scoring_network` and
    :func:`~napari_artseg.scorecam_tuning.feature_network`) are built on the
    first call and kept, so a loop over a screen's images builds them once
    instead of once per image (on the ``fast`` classifier that build costs about
    as much as the features pass of an image; docs/performance.md). The kept
    copies do not follow later changes of the classifier's weights or device:
    make a new ``ScoreCam`` after training or moving it.

    Parameters
    ----------
    model : ResNetClassifier
        Classifier with ``features`` (target layer), ``forward`` (logits) and
        ``num_feature_channels``; never modified. Each call puts it in eval
        mode and restores every module's training flag afterwards.
    batch_size, weighting, skip_dead, max_channels, score_scale, mask_stage, \
fold_batch_norm, amp, channels_last, workers
        See :func:`scorecam`.

    Raises
    ------
    ValueError
        For a bad ``weighting``, ``batch_size``, ``max_channels``, ``score_scale``
        or ``mask_stage`` (a bad ``workers`` on the first call).
    """

    def __init__(self, model: ResNetClassifier, batch_size: int | str = 32,
                 weighting: str = "probability", skip_dead: bool = True,
                 max_channels: int | None = None, score_scale: float = 1.0,
                 mask_stage: int = 0, fold_batch_norm: bool = True, amp: bool = False,
                 channels_last: bool = True, workers: int | str = "auto") -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        _check_options(batch_size, max_channels, score_scale)
        check_mask_stage(model, mask_stage, score_scale)
        self.model = model
        self.batch_size = batch_size
        self.weighting = weighting
        self.skip_dead = skip_dead
        self.max_channels = max_channels
        self.score_scale = score_scale
        self.mask_stage = mask_stage
        self.fold_batch_norm = fold_batch_norm
        self.amp = amp
        self.channels_last = channels_last
        self.workers = workers
        self._networks: tuple[Network, Network, nn.Module] | None = None
        self._bases: dict[tuple, torch.Tensor] = {}

    def networks(self) -> tuple[Network, Network, nn.Module]:
        """(prefix, features, scoring network) of the passes, built on first use and kept.

        See :func:`~napari_artseg.scorecam_inside.masking_networks`. Build them
        under the classifier's eval mode (a call does).
        """
        if self._networks is None:
            self._networks = masking_networks(self.model, self.mask_stage,
                                              self.fold_batch_norm, self.channels_last)
        return self._networks

    def _base(self, images: torch.Tensor) -> torch.Tensor | None:
        """``prefix(0)`` for images of this shape (None when the input itself is masked).

        What an all-zero (image-mean) input gives after ``mask_stage``: the masked
        activations blend towards it. Computed once per image shape and device.
        """
        if self.mask_stage == 0:
            return None
        key = (tuple(images.shape[1:]), str(images.device), images.dtype)
        if key not in self._bases:
            prefix = self.networks()[0]
            self._bases[key] = prefix(torch.zeros_like(images[:1]))[0].contiguous()
        return self._bases[key]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Maps in [0, 1], shape (N, H, W), float32, on ``images.device`` (see :func:`scorecam`).

        Parameters
        ----------
        images : torch.Tensor
            Shape (N, C, H, W), float, on the model's device, zero-centred per image.
        """
        from .scorecam_passes import CpuWorkers, MaskedPasses, resolve_workers
        from .scorecam_tuning import resolve_batch_size

        _check_args(images, self.weighting)
        n, channels, height, width = images.shape
        k = self.model.num_feature_channels if self.max_channels is None else min(
            self.max_channels, self.model.num_feature_channels)
        count = resolve_workers(self.workers, images.device, k)
        with _EvalMode(self.model), CpuWorkers(count) as pool:
            networks = self.networks()
            with torch.inference_mode():
                base = self._base(images)
                # what one masked pass scores: (C, h, w) of the image or of the masked stage
                sample = (tuple(base.shape) if base is not None
                          else (channels, *scoring_size((height, width), self.score_scale)))
                batch = resolve_batch_size(self.batch_size, networks[2], sample, k,
                                           images.device, self.amp, self.channels_last,
                                           self.model, pool)
                passes = MaskedPasses(networks[2], sample[0], sample[1:], batch, images,
                                      self.amp, self.channels_last, pool, base=base)
                maps = [_scorecam_one(networks, images[i], passes, self.weighting,
                                      self.skip_dead, self.max_channels) for i in range(n)]
                result = (
                    torch.stack(maps)
                    if maps
                    else torch.zeros((0, height, width), dtype=torch.float32,
                                     device=images.device)
                )
        return result.clone()


def scorecam(
    model: ResNetClassifier,
    images: torch.Tensor,
    batch_size: int | str = 32,
    weighting: str = "probability",
    skip_dead: bool = True,
    max_channels: int | None = None,
    score_scale: float = 1.0,
    mask_stage: int = 0,
    fold_batch_norm: bool = True,
    amp: bool = False,
    channels_last: bool = True,
    workers: int | str = "auto",
) -> torch.Tensor:
    """Score-CAM saliency maps of the artifact class, memory-bounded and batched.

    One call builds the networks it needs and drops them; to map many images
    one call at a time, make one :class:`ScoreCam` and call it instead.

    Parameters
    ----------
    model : ResNetClassifier
        Classifier with ``features`` (target layer), ``forward`` (logits) and
        ``num_feature_channels``. It is put in eval mode for the call; every
        module's training flag is restored afterwards. It is never modified.
    images : torch.Tensor
        Shape (N, C, H, W), float, on the model's device, already zero-centred
        per image (masking then blends towards the image mean, 0).
    batch_size : int or "auto"
        Masked inputs scored per forward pass; at most ``batch_size`` masked
        inputs exist at a time (one reused buffer), so memory does not grow
        with K. ``"auto"`` times a few batch sizes on this model, device and
        size once per process and uses the fastest
        (:func:`~napari_artseg.scorecam_tuning.choose_batch_size`). On CUDA the
        batch is also capped to fit half the free memory.
    weighting : {"probability", "softmax", "baseline"}
        ``"probability"``: ``w_k = sigmoid(logit_k)`` (ArtSeg paper).
        ``"softmax"``: softmax of the masked logits over the channels (Score-CAM
        paper). ``"baseline"``: ``sigmoid(logit_k) - sigmoid(logit(zeros))``.
    skip_dead : bool
        Constant channels (dead ones included) get no masked pass of their own:
        their masked input is all zero, so they share one all-zero pass per
        call. This is exact (same result as ``False``), only faster.
    max_channels : int or None
        Approximation: keep only the ``max_channels`` channels with the largest
        spatial variance of ``A_k`` (Faster-Score-CAM); the others are dropped
        from the sum and from the softmax. ``None`` or >= K is exact.
    score_scale : float
        Approximation: score the masked inputs at ``score_scale`` times the
        image size (image area-averaged, maps upsampled to that size); the
        activation maps and the result stay at full size. 1.0 is exact.
    mask_stage : int
        Approximation: 0 (exact) masks the input; s from 1 to the target stage
        masks the activations after stage s instead (blending towards those of an
        all-zero input), so the masked passes run only the later stages and the
        head (:mod:`napari_artseg.scorecam_inside`). Needs a ResNet classifier;
        cannot be combined with ``score_scale`` < 1.
    fold_batch_norm : bool
        Run the features pass and the masked passes through copies of the
        classifier with batch norms folded into the convolutions (same
        activations and logits up to float rounding).
    amp : bool
        Approximation: the masked passes run under bf16 autocast on CUDA and on a
        CPU that computes bf16 natively
        (:func:`~napari_artseg.device.native_bf16_cpu`: AVX512-BF16 or AMX);
        ignored elsewhere. The features pass and the weighted sum stay fp32; only
        the channel weights see the rounding (maps within 0.016 of fp32 on three
        ``fast`` classifiers, 1.7-1.8x faster on a CPU; docs/performance.md).
    channels_last : bool
        Features pass and masked passes in ``channels_last`` memory format (a
        copy of the weights; measured faster on this project's CPU,
        docs/performance.md).
    workers : int or "auto"
        On a CPU, threads that share each image's masked passes, each with its
        share of the caller's torch threads (``"auto"``: one per torch thread,
        so each runs single-threaded); elsewhere ignored. The logits do not
        depend on it. See :mod:`napari_artseg.scorecam_passes`.

    Returns
    -------
    torch.Tensor
        Maps in [0, 1], shape (N, H, W), float32, on ``images.device``. An
        all-zero map stays all zero (never NaN). Not an inference tensor.

    Raises
    ------
    ValueError
        For a bad ``weighting``, ``batch_size``, ``max_channels``,
        ``score_scale``, ``mask_stage`` or ``workers``, or ``images`` that are not 4-D.
    """
    return ScoreCam(model, batch_size=batch_size, weighting=weighting, skip_dead=skip_dead,
                    max_channels=max_channels, score_scale=score_scale,
                    mask_stage=mask_stage,
                    fold_batch_norm=fold_batch_norm, amp=amp, channels_last=channels_last,
                    workers=workers)(images)


def scorecam_reference(
    model: ResNetClassifier, image: torch.Tensor, weighting: str = "probability"
) -> torch.Tensor:
    """Plain Score-CAM: one forward pass per channel, no skipping, no batching.

    Slow; defines the result :func:`scorecam` must reproduce (tests, benchmarks).
    Each channel is upsampled on its own and the weighted sum is taken over the
    upsampled maps, as in the paper.

    Parameters
    ----------
    model : ResNetClassifier
        Classifier; put in eval mode for the call, training flags restored after.
    image : torch.Tensor
        One image (C, H, W) or a batch (N, C, H, W), zero-centred per image.
    weighting : {"probability", "softmax", "baseline"}
        See :func:`scorecam`.

    Returns
    -------
    torch.Tensor
        Maps in [0, 1], float32: (H, W) for a 3-D input, (N, H, W) for 4-D.
    """
    if image.dim() == 3:
        return scorecam_reference(model, image[None], weighting)[0]
    _check_args(image, weighting)
    size = (image.shape[-2], image.shape[-1])
    out = []
    with _EvalMode(model), torch.inference_mode():
        zero_logit = model(torch.zeros_like(image[:1])).double()[0]
        for one in image:
            acts = model.features(one[None])[0]
            constant = constant_channels(acts)
            logits = []
            ups = []
            for k in range(acts.shape[0]):
                up = upsample_to(acts[k : k + 1], size)
                mask = normalise_maps(up)
                if constant[k]:
                    mask = torch.zeros_like(mask)
                logits.append(model((one * mask)[None]).double()[0])
                ups.append(up[0].double())
            weights = _weights(torch.stack(logits), weighting, zero_logit)
            cam = torch.zeros(size, dtype=torch.float64, device=image.device)
            for w, up in zip(weights, ups, strict=True):
                cam += w * up
            out.append(normalise_maps(torch.relu(cam)).float())
    return torch.stack(out).clone()
