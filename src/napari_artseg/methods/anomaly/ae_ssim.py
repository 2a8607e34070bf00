"""AE-SSIM (Bergmann et al. 2019): a patch autoencoder trained with an SSIM loss on clean
images; the anomaly map is ``1 - SSIM(image, reconstruction)``.

The image is reconstructed tile by tile (overlapping tiles of the autoencoder's patch
size, blended with :func:`napari_artseg.tiling.predict_tiled`), then the local SSIM map
is computed once over the whole image.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from ...tiling import predict_tiled
from ...training.events import ProgressEvent
from .base import (
    AnomalyDetector,
    DetectorParamsError,
    ParamSpec,
    check_image,
    load_module,
    module_shapes,
    module_tensors,
)
from .networks import ConvAutoencoder
from .patches import CropSampler, pad_to_at_least
from .ssim import zscore_ssim_map

#: Parameters of the autoencoder training shared by AE-SSIM and PaDiM's clean-only backbone.
AE_TRAINING_SPECS = {
    "epochs": ("int", 1),
    "steps_per_epoch": ("int", 1),
    "batch_size": ("int", 1),
    "learning_rate": ("float", 1e-12),
    "weight_decay": ("float", 0.0),
    "augment": ("bool", None),
    "ssim_window": ("int", 1),
    "ssim_sigma": ("float", 1e-3),
    "ssim_data_range": ("float", 1e-6),
}


def check_autoencoder_params(params: dict[str, Any], patch_key: str) -> None:
    """Raise DetectorParamsError for an autoencoder patch size that is not 8 times a power
    of two, or an even SSIM window."""
    patch = params[patch_key]
    if patch % 8 or (patch // 8) & (patch // 8 - 1):
        raise DetectorParamsError(
            f"parameter {patch_key!r} must be 8 times a power of two, e.g. 32, 64 or 128 "
            f"(got {patch})"
        )
    if params["ssim_window"] % 2 == 0:
        raise DetectorParamsError(
            f"parameter 'ssim_window' must be odd (got {params['ssim_window']})"
        )


def seeded_module(seed: int, factory, *args) -> torch.nn.Module:
    """Build ``factory(*args)`` with torch's CPU generator seeded, without touching the
    caller's global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(*args)


def train_autoencoder(
    model: ConvAutoencoder,
    sampler: CropSampler,
    params: dict[str, Any],
    device: torch.device,
    stage: str,
) -> Generator[ProgressEvent, None, list[dict[str, float]]]:
    """Train ``model`` in place on random clean crops with the loss ``1 - mean SSIM``.

    Adam with ``learning_rate`` and ``weight_decay``; an epoch is ``steps_per_epoch``
    batches of ``batch_size`` crops of the model's patch size.

    Yields
    ------
    ProgressEvent
        A ``step`` event per batch and an ``epoch`` event (``metrics``: epoch,
        train_loss) per epoch.

    Returns
    -------
    list of dict
        One row per epoch: ``epoch``, ``train_loss``.
    """
    epochs, steps = params["epochs"], params["steps_per_epoch"]
    optimizer = torch.optim.Adam(
        model.parameters(), lr=params["learning_rate"], weight_decay=params["weight_decay"]
    )
    history: list[dict[str, float]] = []
    total = epochs * steps
    model.train()
    for epoch in range(1, epochs + 1):
        losses = []
        for step in range(steps):
            batch = sampler.crops(params["batch_size"], model.patch, params["augment"])
            batch = batch.to(device)
            optimizer.zero_grad(set_to_none=True)
            similarity = zscore_ssim_map(
                batch, model(batch), params["ssim_data_range"], params["ssim_window"],
                params["ssim_sigma"],
            )
            loss = 1.0 - similarity.mean()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            done = (epoch - 1) * steps + step + 1
            yield ProgressEvent(stage, done, total, loss=losses[-1],
                                message=f"epoch {epoch}/{epochs}")
        row = {"epoch": epoch, "train_loss": float(np.mean(losses))}
        history.append(row)
        yield ProgressEvent(stage, epoch * steps, total, kind="epoch", loss=row["train_loss"],
                            metrics=dict(row),
                            message=f"epoch {epoch}/{epochs} loss {row['train_loss']:.4f}")
    model.eval()
    return history


class AESSIM(AnomalyDetector):
    """Autoencoder with SSIM loss; anomaly map ``1 - SSIM(x, AE(x))`` (higher = anomalous).

    Parameters
    ----------
    params : dict, optional
        Overrides of :meth:`default_params` (see docs/anomaly-detectors.md).
    device : torch.device or str
        Where training and scoring run.
    seed : int
        Seeds the network initialisation and the crop sampling.
    """

    NAME = "ae_ssim"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "patch_size": 64,
        "width": 32,
        "latent": 100,
        "epochs": 20,
        "steps_per_epoch": 100,
        "batch_size": 16,
        "learning_rate": 1e-3,
        "weight_decay": 1e-5,
        "augment": True,
        "ssim_window": 11,
        "ssim_sigma": 1.5,
        "ssim_data_range": 8.0,
        "tile_overlap": 0.25,
        "score_batch_size": 16,
    }
    SPECS: ClassVar[dict[str, ParamSpec]] = {
        "patch_size": ("int", 16),
        "width": ("int", 1),
        "latent": ("int", 1),
        **AE_TRAINING_SPECS,
        "tile_overlap": ("float", 0.0),
        "score_batch_size": ("int", 1),
    }

    def __init__(
        self, params: dict | None = None, device: torch.device | str = "cpu", seed: int = 0
    ) -> None:
        super().__init__(params, device, seed)
        self.model = self._new_model()

    @classmethod
    def _check_combination(cls, params: dict) -> None:
        check_autoencoder_params(params, "patch_size")
        if params["tile_overlap"] >= 0.5:
            raise DetectorParamsError(
                f"parameter 'tile_overlap' must be below 0.5 (got {params['tile_overlap']})"
            )

    def _new_model(self) -> ConvAutoencoder:
        p = self.params
        model = seeded_module(self.seed, ConvAutoencoder, p["patch_size"], p["width"], p["latent"])
        return model.to(self.device).eval()

    def _halo(self) -> int:
        """Overlap margin of the scoring tiles in pixels."""
        return int(self.params["tile_overlap"] * self.params["patch_size"])

    def fit(self, images: Sequence[torch.Tensor]) -> Generator[ProgressEvent, None, dict]:
        """Train the autoencoder on random crops of clean images.

        Parameters
        ----------
        images : list of torch.Tensor
            Clean, z-scored (1, h, w) images at the processing scale, each at least
            ``patch_size`` px on each side (sizes may differ).

        Yields
        ------
        ProgressEvent
            Stage ``ae_ssim``: ``step`` and ``epoch`` events with the loss. Closing the
            generator early leaves the detector unfitted.

        Returns
        -------
        dict
            ``{"history": [{"epoch", "train_loss"}, ...]}``.
        """
        self.fitted = False
        sampler = CropSampler(images, np.random.default_rng(self.seed))
        sampler.image_indices(1, self.params["patch_size"])  # fails early on small images
        self.model = self._new_model()
        self.history = yield from train_autoencoder(
            self.model, sampler, self.params, self.device, self.NAME
        )
        self.fitted = True
        return {"history": list(self.history)}

    def reconstruct(self, image: torch.Tensor) -> torch.Tensor:
        """The autoencoder's blended reconstruction of a (1, h, w) image, same shape, CPU."""
        self._require_fitted()
        check_image(image)
        _, h, w = image.shape
        x = pad_to_at_least(image.to(self.device, torch.float32), self.params["patch_size"])
        return self._reconstruct(x)[:, :h, :w].cpu()

    def _reconstruct(self, padded: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        with torch.inference_mode():
            return predict_tiled(
                self.model, padded, self.params["patch_size"], self._halo(),
                batch_size=self.params["score_batch_size"],
            )

    def score_map(self, image: torch.Tensor) -> torch.Tensor:
        """``1 - SSIM(image, reconstruction)`` per pixel.

        Parameters
        ----------
        image : torch.Tensor
            z-scored (1, h, w) image, h and w >= 32; padded internally (reflect) to at
            least the patch size.

        Returns
        -------
        torch.Tensor
            (h, w) float32 on the CPU, in [0, 2]; higher = more anomalous.
        """
        self._require_fitted()
        check_image(image)
        _, h, w = image.shape
        p = self.params
        x = pad_to_at_least(image.to(self.device, torch.float32), p["patch_size"])
        with torch.inference_mode():
            recon = self._reconstruct(x)
            similarity = zscore_ssim_map(
                x[None], recon[None], p["ssim_data_range"], p["ssim_window"], p["ssim_sigma"]
            )
            return (1.0 - similarity)[0, 0, :h, :w].to("cpu", torch.float32).clone()

    def _tensors(self) -> dict[str, torch.Tensor]:
        return module_tensors("ae.", self.model)

    def _expected_shapes(self, tensors) -> dict:
        return module_shapes("ae.", self.model)

    def _load(self, tensors: dict[str, torch.Tensor]) -> None:
        load_module("ae.", self.model, tensors)
        self.model.eval()
