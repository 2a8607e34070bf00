"""Inference with a trained model of any method: gate, probability map, threshold, size filter.

``ArtSegModel.load(folder).predict(array)`` works on numpy arrays of any size
for every method in :mod:`napari_artseg.methods`; the CLI and the widgets are
thin layers over it. A method supplies the probability map at the processing
scale (:meth:`ArtSegModel.processing_map`) and, when it has a classifier, the
gate score; a method without a classifier gates on the maximum of its map.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ArtSegConfig
from .device import autocast, inference_copy, resolve_device
from .model_files import read_model_document
from .models import ResNetClassifier
from .normalize import prepare_image, resize
from .postprocess import chosen_cuts, final_mask
from .scorecam import ScoreCam
from .tiling import predict_tiled
from .training.classifier import classifier_probabilities
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
        The gate score: the classifier's P(artifact), or the maximum of the
        map for a method without a classifier.
    gate_passed : bool
        Whether the score reached the gate threshold.
    ungated : numpy.ndarray or None
        The method's map regardless of the gate (computed on request, or whenever
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
    """A loaded model ready to predict (any method; ScoreCAM-U-Net as built here).

    Use :meth:`load`; the constructor takes already-built networks. A method
    without a classifier passes ``classifier=None``: its gate score is then the
    maximum of its probability map. A method whose map is not a U-Net's
    overrides ``_compute_map`` and sets ``unet`` to a :class:`MapAsLogits` over
    it (so code that tiles ``unet`` itself keeps working).

    Predictions run through inference copies of the networks
    (:func:`~napari_artseg.device.inference_copy`: batch norms folded,
    ``channels_last``; outputs equal to float rounding, 1.5x faster per paper
    tile on a 2-core CPU), made once per network on first use. ``unet`` and
    ``classifier`` stay the networks as loaded, for training, saving, export
    and Score-CAM. Set ``use_inference_copy = False`` to predict with them
    instead; call :meth:`refresh_inference_copies` after changing their weights
    in place (assigning a new network is noticed by itself).
    """

    #: Predict through inference copies of the networks (see the class docstring).
    use_inference_copy: bool = True

    def __init__(self, document: dict[str, Any], classifier: ResNetClassifier | None,
                 unet: torch.nn.Module | None, device: torch.device,
                 folder: Path | None = None) -> None:
        self.document = document
        self.config: ArtSegConfig = document["config"]
        self.classifier = classifier.to(device).eval() if classifier is not None else None
        self.unet = unet.to(device).eval() if unet is not None else None
        self.device = device
        self.folder = folder
        self._memo: tuple[torch.Tensor, torch.Tensor] | None = None
        self._copies: dict[str, tuple[torch.nn.Module, torch.nn.Module]] = {}
        self._scorecam: tuple[torch.nn.Module, ScoreCam] | None = None

    @classmethod
    def load(cls, folder: str | os.PathLike, device: str = "auto") -> ArtSegModel:
        """Load a model folder of any method (safetensors weights; no code is executed).

        Raises
        ------
        ModelFileError
            A missing, partial, newer or mismatching model, or an unknown method.
        """
        from .methods import get_method

        folder = Path(folder)
        document = read_model_document(folder)
        return get_method(document["method"]).load(folder, document, resolve_device(device))

    @property
    def method(self) -> str:
        """The method's name (``scorecam_unet``, ``padim`` ...)."""
        return str(self.document.get("method", self.config.method))

    @property
    def has_classifier(self) -> bool:
        """Whether the gate score comes from a classifier (else from the map's maximum)."""
        return self.classifier is not None

    def _inference_network(self, name: str) -> torch.nn.Module | None:
        """``getattr(self, name)``, or its inference copy (made once per network object)."""
        network = getattr(self, name)
        if network is None or not self.use_inference_copy:
            return network
        kept = self._copies.get(name)
        if kept is None or kept[0] is not network:
            with torch.inference_mode(False):  # ordinary tensors, even when first used in one
                kept = (network, inference_copy(network))
            self._copies[name] = kept
        return kept[1]

    @property
    def inference_unet(self) -> torch.nn.Module | None:
        """The network :meth:`processing_map` tiles: an inference copy of ``unet``.

        ``unet`` itself when :attr:`use_inference_copy` is false or it holds no
        convolution (a :class:`MapAsLogits`).
        """
        return self._inference_network("unet")

    @property
    def inference_classifier(self) -> torch.nn.Module | None:
        """The network the gate runs: an inference copy of ``classifier`` (None without one)."""
        return self._inference_network("classifier")

    def refresh_inference_copies(self) -> None:
        """Forget the inference copies and the Score-CAM networks, e.g. after loading new
        weights into ``unet`` or ``classifier`` in place."""
        self._copies.clear()
        self._memo = None
        self._scorecam = None

    def scorecam_views(self, views: torch.Tensor) -> torch.Tensor:
        """Score-CAM maps of classifier views with the model's settings, (N, S, S) in [0, 1].

        The networks of the masked passes are built on first use and kept for
        this classifier object (:func:`~napari_artseg.saliency.scorecam_runner`).

        Parameters
        ----------
        views : torch.Tensor
            (N, 1, S, S) zero-centred whole-image views on the model's device.
        """
        from .saliency import scorecam_runner

        if self._scorecam is None or self._scorecam[0] is not self.classifier:
            self._scorecam = (self.classifier, scorecam_runner(self.classifier, self.config))
        return self._scorecam[1](views)

    @property
    def model_id(self) -> str:
        """The hash of the weights."""
        return str(self.document.get("model_id", ""))

    @property
    def thresholds(self) -> dict[str, float]:
        """The chosen ``gate``, ``mask``, ``min_size_px`` and ``pseudo_label`` settings."""
        return dict(self.document.get("thresholds", {}))

    def mask_cuts(self, threshold: float | None = None) -> tuple[float, ...]:
        """The thresholds a mask is tried at, in order (:func:`.postprocess.chosen_cuts`).

        Parameters
        ----------
        threshold : float, optional
            A threshold chosen by the user: that one alone. Default: the model's
            ``mask`` threshold, then its empty-mask ``fallback`` when it has one.
        """
        return chosen_cuts(self.thresholds, threshold)

    def min_size_for(self, pixel_size_um: float | None) -> int:
        """Minimum object size in full-resolution pixels (from um^2 when both are known)."""
        um2 = self.config.min_size_um2
        if um2 and pixel_size_um:
            return int(round(um2 / pixel_size_um**2))
        return int(self.thresholds.get("min_size_px", 0))

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """The normalised (1, h, w) tensor at the processing scale."""
        return prepare_image(image, self.config.scale, self.config.normalization)

    def artifact_score(self, prepared: torch.Tensor) -> float:
        """The gate score of a prepared image, in [0, 1].

        The classifier's P(artifact) when the method has one (the mean over
        ``gate_symmetries`` of the square's symmetries of its view), computed by
        the function that scores the validation images when the gate is chosen;
        otherwise the maximum of the method's probability map (a calibrated
        probability for every method).
        """
        if self.classifier is None:
            return float(self.processing_map(prepared).max())
        view = global_view(prepared, self.config.input_size)[None]
        return float(classifier_probabilities(self.inference_classifier, view, self.device,
                                              amp=self.config.amp,
                                              symmetries=self.config.gate_symmetries)[0])

    def processing_map(self, prepared: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
        """The method's artifact probability (h, w) at the processing scale, on the CPU.

        The last result is kept for the same ``prepared`` tensor, so the gate score
        and the map of one image cost one pass.
        """
        if self._memo is not None and self._memo[0] is prepared:
            return self._memo[1]
        with torch.inference_mode():
            result = self._compute_map(prepared, batch_size)
        result = result.float().clamp(0, 1).cpu()  # outside inference mode: an ordinary tensor
        self._memo = (prepared, result)
        return result

    def _compute_map(self, prepared: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The tiled U-Net probability (methods with another map override this; called in
        inference mode)."""

        unet = self.inference_unet

        def forward(batch: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, self.config.amp):
                return torch.sigmoid(unet(batch).float())

        return predict_tiled(forward, prepared.to(self.device), tile=self.config.unet_size,
                             halo=self.config.tile_halo, divisor=self.unet.divisor,
                             batch_size=batch_size)[0]

    def clear_cache(self) -> None:
        """Forget the kept map (:meth:`predict` does it after each image)."""
        self._memo = None

    def unet_map(self, prepared: torch.Tensor, shape: tuple[int, int],
                 batch_size: int = 4) -> np.ndarray:
        """The method's probability map at full resolution ``shape`` for a prepared image.

        (Named for ScoreCAM-U-Net, whose map is the U-Net's; every method has one.)
        """
        prob = self.processing_map(prepared, batch_size)
        full = resize(prob[None, None], tuple(shape))[0, 0]
        return full.clamp(0, 1).numpy().astype(np.float32, copy=False)

    def saliency(self, image: np.ndarray) -> np.ndarray | None:
        """The classifier's Score-CAM map of an image at full resolution, in [0, 1].

        Uses the model's Score-CAM settings (weighting, batch size, channel limit).
        None for a method without a classifier.
        """
        if self.classifier is None:
            return None
        prepared = self.prepare(np.asarray(image))
        view = global_view(prepared, self.config.input_size)[None].to(self.device)
        cam = self.scorecam_views(view)
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
            Mask threshold; default the model's chosen one, with its empty-mask
            fallback when it has one (an explicit threshold is used alone).
        min_size_px : int, optional
            Minimum object size in pixels; default the model's.
        gate : bool
            Apply the gate (an image called clean gets an empty map).
        keep_ungated : bool
            Also compute the map when the gate says clean.
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
        size = self.min_size_for(pixel_size_um) if min_size_px is None else min_size_px
        mask = (final_mask(probability, self.mask_cuts(threshold), size) if passed
                else np.zeros(image.shape, bool))
        self.clear_cache()
        return Prediction(probability, mask, score, passed, ungated)


class MapAsLogits(torch.nn.Module):
    """A probability-map function as a dense "network" of logits, for tiling code.

    ``forward`` maps a (B, 1, h, w) batch of prepared tiles to (B, 1, h, w) logits
    whose sigmoid is ``map_fn`` of each tile, so ``sigmoid(module(tiles))`` is
    what a U-Net would give.

    Parameters
    ----------
    map_fn : callable
        (1, h, w) prepared image -> (h, w) probability.
    divisor : int
        Tile sides must be multiples of this.
    """

    def __init__(self, map_fn: Any, divisor: int = 1) -> None:
        super().__init__()
        self.map_fn = map_fn
        self.divisor = divisor

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits of the map of every tile."""
        maps = [self.map_fn(tile).to(batch.device, torch.float32) for tile in batch]
        return torch.logit(torch.stack(maps)[:, None].clamp(1e-6, 1 - 1e-6))
