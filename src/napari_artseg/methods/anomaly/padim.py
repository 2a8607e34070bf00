"""PaDiM (Defard et al. 2021): a Gaussian per position of multi-layer CNN embeddings of
clean crops; the anomaly map is the Mahalanobis distance to it.

Per-position statistics need a fixed grid, so PaDiM is fitted on crops of
``crop_size`` px and scores an image crop by crop (overlapping tiles, blended, the
border padded). The backbone is trained here (no ImageNet weights): by default an
autoencoder on the clean crops, optionally the project's classifier.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Generator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ...models import ResNetClassifier
from ...tiling import predict_tiled
from ...training.events import ProgressEvent
from . import encoders
from .ae_ssim import (
    AE_TRAINING_SPECS,
    check_autoencoder_params,
    seeded_module,
    train_autoencoder,
)
from .base import (
    AnomalyDetector,
    DetectorParamsError,
    DetectorStateError,
    ParamSpec,
    check_image,
    load_module,
    module_shapes,
    module_tensors,
)
from .gaussians import GaussianAccumulator, choose_channels, mahalanobis_map
from .networks import ConvAutoencoder
from .patches import CropSampler, pad_to_at_least
from .ssim import gaussian_blur


class PaDiM(AnomalyDetector):
    """Patch distribution modelling with a backbone trained here.

    Parameters
    ----------
    params : dict, optional
        Overrides of :meth:`default_params` (see docs/anomaly-detectors.md).
    device : torch.device or str
        Where training and scoring run.
    seed : int
        Seeds the backbone initialisation, the crops and the channel subsampling.
    classifier : ResNetClassifier, optional
        Trained classifier whose stages are the backbone when ``backbone`` is
        ``"classifier"`` (a frozen copy is kept); also settable with
        :meth:`attach_classifier`.
    """

    NAME = "padim"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "backbone": "autoencoder",
        "layers": [1, 2, 3],
        "d": 64,
        "crop_size": 64,
        "n_crops": 1000,
        "eps": 0.01,
        "smooth_sigma": 2.0,
        "tile_overlap": 0.25,
        "score_batch_size": 16,
        "ae_patch_size": 64,
        "ae_width": 32,
        "ae_latent": 100,
        "epochs": 10,
        "steps_per_epoch": 100,
        "batch_size": 16,
        "learning_rate": 1e-3,
        "weight_decay": 1e-5,
        "augment": True,
        "ssim_window": 11,
        "ssim_sigma": 1.5,
        "ssim_data_range": 8.0,
    }
    SPECS: ClassVar[dict[str, ParamSpec]] = {
        "backbone": ("choice", ("autoencoder", "classifier")),
        "layers": ("ints", 1),
        "d": ("int", 1),
        "crop_size": ("int", 8),
        "n_crops": ("int", 2),
        "eps": ("float", 1e-12),
        "smooth_sigma": ("float", 0.0),
        "tile_overlap": ("float", 0.0),
        "score_batch_size": ("int", 1),
        "ae_patch_size": ("int", 16),
        "ae_width": ("int", 1),
        "ae_latent": ("int", 1),
        **AE_TRAINING_SPECS,
    }

    def __init__(
        self,
        params: dict | None = None,
        device: torch.device | str = "cpu",
        seed: int = 0,
        classifier: ResNetClassifier | None = None,
    ) -> None:
        super().__init__(params, device, seed)
        self.backbone: torch.nn.Module | None = None
        if self.params["backbone"] == "autoencoder":
            self.backbone = self._new_autoencoder()
            self._check_backbone(self.backbone)
        elif classifier is not None:
            self.attach_classifier(classifier)
        self.channels = torch.zeros(0, dtype=torch.int64)
        self.mean = torch.zeros(0)
        self.cov_inv = torch.zeros(0)

    @classmethod
    def _check_combination(cls, params: dict) -> None:
        layers = params["layers"]
        if any(b <= a for a, b in itertools.pairwise(layers)):
            raise DetectorParamsError(f"parameter 'layers' must be increasing (got {layers})")
        if params["tile_overlap"] >= 0.5:
            raise DetectorParamsError(
                f"parameter 'tile_overlap' must be below 0.5 (got {params['tile_overlap']})"
            )
        check_autoencoder_params(params, "ae_patch_size")

    def _new_autoencoder(self) -> ConvAutoencoder:
        p = self.params
        model = seeded_module(
            self.seed, ConvAutoencoder, p["ae_patch_size"], p["ae_width"], p["ae_latent"]
        )
        return model.to(self.device).eval()

    def _check_backbone(self, backbone: torch.nn.Module, error=DetectorParamsError) -> None:
        """Raise ``error`` when layers, crop size or d do not suit ``backbone``."""
        p = self.params
        problem = encoders.backbone_problem(backbone, p["layers"], p["crop_size"], p["d"])
        if problem:
            raise error(f"{p['backbone']} backbone: {problem}")

    def attach_classifier(self, classifier: ResNetClassifier) -> None:
        """Use a frozen copy of a trained ``classifier`` as the backbone.

        Raises
        ------
        DetectorParamsError
            When ``backbone`` is not ``"classifier"``, the model is not a
            ResNetClassifier, or layers / crop size / d do not suit it.
        """
        if self.params["backbone"] != "classifier":
            raise DetectorParamsError("attach_classifier needs parameter backbone='classifier'")
        if not isinstance(classifier, ResNetClassifier):
            raise DetectorParamsError(
                f"the PaDiM backbone must be a ResNetClassifier (got {type(classifier).__name__})"
            )
        self._check_backbone(classifier)
        backbone = copy.deepcopy(classifier).to(self.device).eval()
        backbone.requires_grad_(False)
        self.backbone = backbone
        self.fitted = False

    def _grid_for(self, backbone: torch.nn.Module) -> tuple[int, int]:
        """(h, w) positions of the per-position Gaussians with ``backbone``."""
        p = self.params
        side = p["crop_size"] // encoders.layer_strides(backbone, p["layers"])[0]
        return side, side

    def _halo(self) -> int:
        """Overlap margin of the scoring tiles in pixels."""
        return int(self.params["tile_overlap"] * self.params["crop_size"])

    def fit(self, images: Sequence[torch.Tensor]) -> Generator[ProgressEvent, None, dict]:
        """Train the backbone (autoencoder only) and fit the per-position Gaussians.

        Parameters
        ----------
        images : list of torch.Tensor
            Clean, z-scored (1, h, w) images at the processing scale, each at least
            ``crop_size`` (and ``ae_patch_size``) px on each side.

        Yields
        ------
        ProgressEvent
            Stage ``padim_backbone`` (``step``/``epoch`` events with the SSIM loss; the
            autoencoder backbone only), then ``padim_statistics`` (``step`` per batch of
            crops). Closing the generator early leaves the detector unfitted.

        Returns
        -------
        dict
            ``{"history": [...], "n_crops": int}``.
        """
        self.fitted = False
        p = self.params
        rng = np.random.default_rng(self.seed)
        sampler = CropSampler(images, rng)
        sampler.image_indices(1, p["crop_size"])
        self.history = []
        if p["backbone"] == "autoencoder":
            sampler.image_indices(1, p["ae_patch_size"])
            self.backbone = self._new_autoencoder()
            self.history = yield from train_autoencoder(
                self.backbone, sampler, p, self.device, "padim_backbone"
            )
        elif self.backbone is None:
            raise DetectorParamsError(
                "PaDiM with backbone 'classifier' needs a trained classifier: pass "
                "classifier=... or call attach_classifier() before fit"
            )
        total = sum(encoders.layer_channels(self.backbone, p["layers"]))
        self.channels = choose_channels(total, p["d"], self.seed)
        yield from self._fit_gaussians(sampler)
        self.fitted = True
        return {"history": list(self.history), "n_crops": p["n_crops"]}

    def _fit_gaussians(self, sampler: CropSampler) -> Generator[ProgressEvent, None, None]:
        """Mean and regularised inverse covariance per position from ``n_crops`` crops."""
        p = self.params
        h, w = self._grid_for(self.backbone)
        n = p["n_crops"]
        stats = GaussianAccumulator(h * w, p["d"], self.device)
        self.backbone.eval()
        while stats.count < n:
            crops = sampler.crops(min(p["score_batch_size"], n - stats.count), p["crop_size"])
            with torch.inference_mode():
                stats.add(encoders.embed(self.backbone, crops.to(self.device), p["layers"],
                                         self.channels))
            yield ProgressEvent("padim_statistics", stats.count, n,
                                message=f"{stats.count}/{n} crops")
        mean, cov_inv = stats.finish(p["eps"])
        self.mean = mean.reshape(h, w, p["d"])
        self.cov_inv = cov_inv.reshape(h, w, p["d"], p["d"])

    def _crop_scores(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, T) crops -> (B, 1, T, T) Mahalanobis maps, upsampled bilinearly."""
        p = self.params
        e = encoders.embed(self.backbone, batch, p["layers"], self.channels)
        dist = mahalanobis_map(e, self.mean, self.cov_inv)
        return F.interpolate(dist[:, None], size=batch.shape[-2:], mode="bilinear",
                             align_corners=False)

    def score_map(self, image: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance map, crop by crop, smoothed with ``smooth_sigma``.

        Parameters
        ----------
        image : torch.Tensor
            z-scored (1, h, w) image, h and w >= 32 (padded internally).

        Returns
        -------
        torch.Tensor
            (h, w) float32 on the CPU, >= 0; higher = more anomalous.
        """
        self._require_fitted()
        check_image(image)
        _, h, w = image.shape
        p = self.params
        x = pad_to_at_least(image.to(self.device, torch.float32), p["crop_size"])
        self.backbone.eval()
        with torch.inference_mode():
            dist = predict_tiled(self._crop_scores, x, p["crop_size"], self._halo(),
                                 batch_size=p["score_batch_size"])
            dist = gaussian_blur(dist[None], p["smooth_sigma"])[0, 0]
            return dist[:h, :w].to("cpu", torch.float32).clone()

    # ------------------------------------------------------------------ state

    def _tensors(self) -> dict[str, torch.Tensor]:
        out = {"mean": self.mean, "cov_inv": self.cov_inv, "channels": self.channels}
        out.update(module_tensors("backbone.", self.backbone))
        if isinstance(self.backbone, ResNetClassifier):
            out["classifier_arch"] = encoders.classifier_arch(self.backbone)
        return out

    def _expected_shapes(self, tensors) -> dict:
        if self.params["backbone"] == "classifier":
            try:
                candidate = encoders.classifier_from_arch(tensors.get("classifier_arch"))
            except ValueError as error:
                message = f"padim state: tensor 'classifier_arch' {error}"
                raise DetectorStateError(message) from None
            self._check_backbone(candidate, DetectorStateError)
        else:
            candidate = self._new_autoencoder()
        self._candidate = candidate
        h, w = self._grid_for(candidate)
        d = self.params["d"]
        shapes = {
            "mean": ((h, w, d), torch.float32),
            "cov_inv": ((h, w, d, d), torch.float32),
            "channels": ((d,), torch.int64),
            **module_shapes("backbone.", candidate),
        }
        if self.params["backbone"] == "classifier":
            shapes["classifier_arch"] = ((4,), torch.int64)
        return shapes

    def _load(self, tensors: dict[str, torch.Tensor]) -> None:
        backbone = self._candidate
        load_module("backbone.", backbone, tensors)
        total = sum(encoders.layer_channels(backbone, self.params["layers"]))
        channels = tensors["channels"]
        if channels.min() < 0 or channels.max() >= total:
            raise DetectorStateError(f"padim state: 'channels' must index 0 to {total - 1}")
        backbone.requires_grad_(False)
        self.backbone = backbone.to(self.device).eval()
        self.channels = channels.clone()
        self.mean = tensors["mean"].to(self.device)
        self.cov_inv = tensors["cov_inv"].to(self.device)
