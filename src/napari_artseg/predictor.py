"""Inference with a trained model: gate, tiled U-Net, threshold, size filter.

``ArtSegModel.load(folder).predict(array)`` works on numpy arrays of any size;
the CLI and the widgets are thin layers over it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ArtSegConfig
from .device import autocast, resolve_device
from .model_files import load_weights, read_model_document
from .models import ResNetClassifier, UNet
from .normalize import prepare_image, resize
from .postprocess import clean_mask
from .tiling import predict_tiled
from .training.data import global_view


@dataclass
class Prediction:
    """The result for one image.

    Attributes
    ----------
    probability : numpy.ndarray
        (H, W) float32 artifact probability, all zero when the gate called the
        image clean.
    mask : numpy.ndarray
        (H, W) bool final mask (threshold and minimum size applied).
    score : float
        The classifier's P(artifact).
    gate_passed : bool
        Whether the score reached the gate threshold.
    ungated : numpy.ndarray or None
        The U-Net map regardless of the gate (computed on request, or whenever
        the gate passed), so a gate error can be seen.
    """

    probability: np.ndarray
    mask: np.ndarray
    score: float
    gate_passed: bool
    ungated: np.ndarray | None = None

    @property
    def artifact_fraction(self) -> float:
        """Share of the image's pixels in the mask."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def n_objects(self) -> int:
        """Connected objects in the mask (4-connected)."""
        from scipy import ndimage

        return int(ndimage.label(self.mask)[1]) if self.mask.any() else 0


class ArtSegModel:
    """A loaded ScoreCAM-U-Net model ready to predict.

    Use :meth:`load`; the constructor takes already-built networks.
    """

    def __init__(self, document: dict[str, Any], classifier: ResNetClassifier, unet: UNet,
                 device: torch.device, folder: Path | None = None) -> None:
        self.document = document
        self.config: ArtSegConfig = document["config"]
        self.classifier = classifier.to(device).eval()
        self.unet = unet.to(device).eval()
        self.device = device
        self.folder = folder

    @classmethod
    def load(cls, folder: str | os.PathLike, device: str = "auto") -> ArtSegModel:
        """Load a model folder (safetensors weights; no code is executed).

        Raises
        ------
        ModelFileError
            A missing, partial-without-U-Net, newer or mismatching model.
        """
        from .errors import ModelFileError
        from .training.classifier import build_classifier
        from .training.segmenter import build_unet

        folder = Path(folder)
        document = read_model_document(folder)
        config = document["config"]
        if "unet" not in document.get("components", []):
            raise ModelFileError(f"{folder}: partial model without a U-Net; it cannot predict")
        classifier, unet = build_classifier(config), build_unet(config)
        load_weights(folder, "classifier", classifier)
        load_weights(folder, "unet", unet)
        return cls(document, classifier, unet, resolve_device(device), folder)

    @property
    def model_id(self) -> str:
        """The hash of the weights."""
        return str(self.document.get("model_id", ""))

    @property
    def thresholds(self) -> dict[str, float]:
        """The chosen ``gate``, ``mask``, ``min_size_px`` and ``pseudo_label`` settings."""
        return dict(self.document.get("thresholds", {}))

    def min_size_for(self, pixel_size_um: float | None) -> int:
        """Minimum object size in full-resolution pixels (from um^2 when both are known)."""
        um2 = self.config.min_size_um2
        if um2 and pixel_size_um:
            return int(round(um2 / pixel_size_um**2))
        return int(self.thresholds.get("min_size_px", 0))

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """The normalised (1, h, w) tensor at the processing scale."""
        return prepare_image(image, self.config.scale, self.config.normalization)

    @torch.inference_mode()
    def artifact_score(self, prepared: torch.Tensor) -> float:
        """The classifier's P(artifact) for a prepared image."""
        view = global_view(prepared, self.config.input_size)[None].to(self.device)
        with autocast(self.device, self.config.amp):
            logit = self.classifier(view)
        return float(torch.sigmoid(logit.float())[0])

    @torch.inference_mode()
    def unet_map(self, prepared: torch.Tensor, shape: tuple[int, int],
                 batch_size: int = 4) -> np.ndarray:
        """The U-Net probability at full resolution ``shape`` for a prepared image."""

        def forward(batch: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, self.config.amp):
                return torch.sigmoid(self.unet(batch).float())

        prob = predict_tiled(forward, prepared.to(self.device), tile=self.config.input_size,
                             halo=self.config.tile_halo, divisor=self.unet.divisor,
                             batch_size=batch_size)
        full = resize(prob[None].float(), tuple(shape))[0, 0]
        return full.clamp_(0, 1).cpu().numpy().astype(np.float32, copy=False)

    def saliency(self, image: np.ndarray) -> np.ndarray:
        """The classifier's Score-CAM map of an image at full resolution, in [0, 1].

        Uses the model's Score-CAM settings (weighting, batch size, channel limit).
        """
        from .scorecam import scorecam

        prepared = self.prepare(np.asarray(image))
        view = global_view(prepared, self.config.input_size)[None].to(self.device)
        cam = scorecam(self.classifier, view, batch_size=self.config.scorecam_batch_size,
                       weighting=self.config.scorecam_weighting,
                       max_channels=self.config.scorecam_max_channels)
        full = resize(cam[:, None].float().cpu(), tuple(np.shape(image)))[0, 0]
        return full.clamp_(0, 1).numpy().astype(np.float32, copy=False)

    def predict(self, image: np.ndarray, threshold: float | None = None,
                min_size_px: int | None = None, gate: bool = True, keep_ungated: bool = False,
                pixel_size_um: float | None = None) -> Prediction:
        """Predict the artifact probability and mask of a 2-D image.

        Parameters
        ----------
        image : numpy.ndarray
            (H, W) pixels of any real dtype and size.
        threshold : float, optional
            Mask threshold; default the model's chosen one.
        min_size_px : int, optional
            Minimum object size in pixels; default the model's.
        gate : bool
            Apply the classifier gate (an image called clean gets an empty map).
        keep_ungated : bool
            Also compute the U-Net map when the gate says clean.
        pixel_size_um : float, optional
            Used with ``min_size_um2`` in the config.
        """
        image = np.asarray(image)
        if image.ndim != 2:
            raise ValueError(f"expected a 2-D image, got shape {image.shape}")
        prepared = self.prepare(image)
        score = self.artifact_score(prepared)
        passed = (score >= float(self.thresholds.get("gate", 0.5))) or not gate
        ungated = self.unet_map(prepared, image.shape) if (passed or keep_ungated) else None
        probability = ungated if passed else np.zeros(image.shape, dtype=np.float32)
        cut = float(self.thresholds.get("mask", 0.5)) if threshold is None else threshold
        size = self.min_size_for(pixel_size_um) if min_size_px is None else min_size_px
        mask = clean_mask(probability, cut, size) if passed else np.zeros(image.shape, bool)
        return Prediction(probability, mask, score, passed, ungated)
