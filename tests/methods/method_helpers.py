"""Helpers of the method tests: AUROC of a model's maps, and a detector
that follows the contract of ``napari_artseg.methods.anomaly``.

``LocalStatsDetector`` follows the detector contract (``__init__(params, device, seed)``,
``default_params``, ``fit`` generator, ``score_map``, ``state_tensors`` /
``load_state_tensors``). The adapter tests use the real detectors when the package provides
them and this one otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_artseg.training.events import ProgressEvent

ANOMALY = ("ae_ssim", "padim", "patchsvdd")
#: Small, fast parameters for the real detectors (tiny images: 48 px at the processing scale).
TINY_DETECTOR_PARAMS = {
    "ae_ssim": {"patch_size": 32, "width": 8, "latent": 16, "epochs": 3, "steps_per_epoch": 8,
                "batch_size": 8},
    "padim": {"crop_size": 32, "ae_patch_size": 32, "ae_width": 8, "ae_latent": 16, "d": 12,
              "layers": [1, 2],
              "n_crops": 64, "epochs": 3, "steps_per_epoch": 8, "batch_size": 8},
    "patchsvdd": {"patch_sizes": [32], "width": 8, "dim": 16, "epochs": 3,
                  "steps_per_epoch": 8, "batch_size": 16, "memory_size": 512},
}


class LocalStatsDetector:
    """Mahalanobis distance of (local mean, local standard deviation) from clean pixels."""

    def __init__(self, params: dict | None = None, device="cpu", seed: int = 0) -> None:
        self.params = {**self.default_params(), **(params or {})}
        self.device = torch.device(device)
        self.seed = seed
        self.mean = self.cov_inv = None

    @classmethod
    def default_params(cls) -> dict:
        return {"window": 5}

    def _features(self, image: torch.Tensor) -> torch.Tensor:
        k = self.params["window"]
        x = image[None].double()
        mean = F.avg_pool2d(x, k, 1, k // 2, count_include_pad=False)
        square = F.avg_pool2d(x * x, k, 1, k // 2, count_include_pad=False)
        std = (square - mean**2).clamp_min(0).sqrt()
        return torch.stack([mean[0, 0], std[0, 0]], -1).reshape(-1, 2)

    def fit(self, images):
        features = []
        for done, image in enumerate(images, start=1):
            features.append(self._features(image))
            yield ProgressEvent("detector", done, len(images))
        stacked = torch.cat(features)
        self.mean = stacked.mean(0)
        self.cov_inv = torch.linalg.inv(torch.cov(stacked.T) + 1e-6 * torch.eye(2,
                                                                             dtype=torch.float64))

    def score_map(self, image: torch.Tensor) -> torch.Tensor:
        d = self._features(image) - self.mean
        return ((d @ self.cov_inv) * d).sum(1).sqrt().float().reshape(image.shape[-2:])

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean.float(), "cov_inv": self.cov_inv.float()}

    def load_state_tensors(self, tensors) -> None:
        for name, shape in (("mean", (2,)), ("cov_inv", (2, 2))):
            if name not in tensors or tuple(tensors[name].shape) != shape:
                raise ValueError(f"tensor {name!r} is missing or has the wrong shape")
        self.mean, self.cov_inv = tensors["mean"].double(), tensors["cov_inv"].double()


def real_detectors() -> dict | None:
    """The package's detectors when they exist."""
    try:
        from napari_artseg.methods.anomaly import DETECTORS
    except ImportError:
        return None
    return DETECTORS if set(ANOMALY) <= set(DETECTORS) else None


def anomaly_params() -> dict:
    """``anomaly_params`` that keep the real detectors tiny (empty for the contract detector)."""
    detectors = real_detectors()
    if detectors is None:
        return {}
    return {name: dict(TINY_DETECTOR_PARAMS[name]) for name in ANOMALY}


def map_auroc(model, folder: Path) -> float:
    """Pixel AUROC of a model's ungated maps over a set's images, pooled."""
    from napari_artseg.image_files import read_image, read_mask
    from napari_artseg.metrics import pixel_auroc

    scores, truths = [], []
    for path in sorted((folder / "images").iterdir()):
        image = read_image(path).data
        prediction = model.predict(image, gate=False)
        assert prediction.probability.shape == image.shape
        scores.append(prediction.probability.ravel())
        truths.append(read_mask(folder / "masks" / path.name).ravel())
    return pixel_auroc(np.concatenate(scores), np.concatenate(truths))

