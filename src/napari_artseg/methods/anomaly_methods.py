"""AE-SSIM, PaDiM and PatchSVDD as methods: adapters around the ``methods.anomaly`` detectors.

A detector is trained on the clean-labelled images of the training split only.
Its raw anomaly score (unbounded, higher = more anomalous) becomes a probability
by a monotone calibration fitted on the clean images of the validation split:
``p = sigmoid((s - c) / t)`` with ``c`` the ``anomaly_calibration_percentile``
percentile of their pixel scores and ``t = (c - median) / 4``, so a clean
pixel's median score maps to about 0.018 and ``c`` to 0.5. Artifact-labelled
images are used only on the validation split, to choose the gate and mask
thresholds (without any, the calibration's 0.5 is the threshold). There is no
classifier gate: the gate score is the maximum of the calibrated map. The calibration
sees at most about :data:`CALIBRATION_PIXELS` clean pixels, a seeded random share of each
image in proportion to its size (:func:`clean_calibration_scores`).

PaDiM's backbone is by default an autoencoder trained on the clean images. With
``anomaly_params={"padim": {"backbone": "classifier"}}`` the project's classifier,
trained first in the same run on the image labels of both classes, is the
backbone instead (so that option needs image labels).
"""

from __future__ import annotations

import math
import os
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ArtSegConfig
from ..errors import ArtSegError, ModelFileError
from ..model_files import load_tensors
from ..predictor import ArtSegModel, MapAsLogits
from ..training.classifier import train_classifier
from ..training.data import (
    TrainingItem,
    check_label_counts,
    count_on_disk,
    load_training_items,
    stratified_split,
)
from ..training.events import ProgressEvent
from ..training.spill import TensorSpill
from .base import Method, label_counts
from .common import MethodRun, choose_thresholds, manifest

#: Smallest image side the detectors take; smaller images are padded (reflect) and cropped.
MIN_SIDE = 32
#: At most this many clean validation pixels fit the calibration (a seeded subsample).
CALIBRATION_PIXELS = 2_000_000


def detector_class(name: str) -> type:
    """The detector class of an anomaly method (from :mod:`napari_artseg.methods.anomaly`).

    Raises
    ------
    ArtSegError
        The detector package is missing or does not provide ``name``.
    """
    try:
        from .anomaly import DETECTORS
    except ImportError as exc:
        raise ArtSegError(f"method {name} needs napari_artseg.methods.anomaly ({exc})") from None
    if name not in DETECTORS:
        raise ArtSegError(f"method {name}: no such detector in napari_artseg.methods.anomaly")
    return DETECTORS[name]


def pad_to_min(image: torch.Tensor, side: int = MIN_SIDE) -> torch.Tensor:
    """``image`` (1, h, w) padded at the bottom/right to at least ``side`` x ``side``."""
    _, h, w = image.shape
    pad_h, pad_w = max(0, side - h), max(0, side - w)
    if not (pad_h or pad_w):
        return image
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return torch.nn.functional.pad(image[None], (0, pad_w, 0, pad_h), mode=mode)[0]


def raw_scores(detector: Any, image: torch.Tensor) -> torch.Tensor:
    """The detector's raw (h, w) score map of a prepared (1, h, w) image of any size."""
    _, h, w = image.shape
    scores = detector.score_map(pad_to_min(image.float().cpu()))
    return scores[:h, :w].float().cpu()


def clean_calibration_scores(
    detector: Any, items: Sequence[TrainingItem], seed: int,
) -> Generator[ProgressEvent, None, np.ndarray]:
    """Raw scores of clean validation pixels for the calibration, about
    :data:`CALIBRATION_PIXELS` of them at most.

    Each image gives a seeded random share of its pixels in proportion to its size (all of
    them when the images hold :data:`CALIBRATION_PIXELS` or fewer), drawn as its map is made,
    so the maps are never held together. A ``calibration`` event per image.
    """
    sizes = [int(np.prod(item.image.shape[-2:])) for item in items]
    total = max(1, sum(sizes))
    rng = np.random.default_rng(seed)
    parts = []
    for done, (item, size) in enumerate(zip(items, sizes, strict=True), start=1):
        scores = raw_scores(detector, item.image).numpy().ravel()
        quota = math.ceil(CALIBRATION_PIXELS * size / total)
        if scores.size > quota:
            scores = rng.choice(scores, quota, replace=False)
        parts.append(scores)
        yield ProgressEvent("calibration", done, len(items), message=item.key)
    return np.concatenate(parts)


@dataclass
class Calibration:
    """``p = sigmoid((score - center) / scale)``: monotone, 0.5 at ``center``."""

    center: float
    scale: float
    percentile: float

    @classmethod
    def fit(cls, clean_scores: np.ndarray, percentile: float) -> Calibration:
        """Fit on raw scores of clean pixels: ``center`` their percentile, see module doc."""
        clean_scores = np.asarray(clean_scores, dtype=np.float64).ravel()
        center = float(np.percentile(clean_scores, percentile))
        spread = (center - float(np.median(clean_scores))) / 4.0
        return cls(center, max(spread, 1e-6 * max(1.0, abs(center))), float(percentile))

    @classmethod
    def from_dict(cls, data: Any, source: str) -> Calibration:
        """Read ``config.json``'s ``calibration``; ModelFileError when malformed."""
        try:
            calibration = cls(float(data["center"]), float(data["scale"]),
                              float(data["percentile"]))
        except (TypeError, KeyError, ValueError):
            raise ModelFileError(f"{source}: calibration must hold numbers center, scale and "
                                 "percentile") from None
        if not (math.isfinite(calibration.center) and math.isfinite(calibration.scale)
                and calibration.scale > 0):
            raise ModelFileError(f"{source}: calibration needs a finite center and scale > 0")
        return calibration

    def apply(self, scores: torch.Tensor) -> torch.Tensor:
        """Probabilities of raw scores."""
        return torch.sigmoid((scores.double() - self.center) / self.scale).float()

    def to_dict(self) -> dict[str, float]:
        """For ``config.json``."""
        return asdict(self)


class AnomalyModel(ArtSegModel):
    """A detector with its calibration; the gate is the maximum of the calibrated map."""

    def __init__(self, document: dict[str, Any], detector: Any, calibration: Calibration,
                 device: torch.device, folder: Path | None = None) -> None:
        super().__init__(document, None, None, device, folder)
        self.detector = detector
        self.calibration = calibration
        self.unet = MapAsLogits(self._tile_map)

    def _compute_map(self, prepared: torch.Tensor, batch_size: int) -> torch.Tensor:
        return self.calibration.apply(raw_scores(self.detector, prepared))

    def _tile_map(self, tile: torch.Tensor) -> torch.Tensor:
        return self._compute_map(tile, 1)


class AnomalyMethod(Method):
    """One of the clean-only detectors (``name`` picks it from ``methods.anomaly.DETECTORS``)."""

    supervision = "clean_images"

    def __init__(self, name: str, title: str, description: str) -> None:
        self.name, self.title, self.description = name, title, description

    def uses_classifier(self, config: ArtSegConfig | None) -> bool:
        """Whether the run trains the project's classifier as the backbone (PaDiM option)."""
        params = config.anomaly_params.get(self.name, {}) if config is not None else {}
        return params.get("backbone") == "classifier"

    def missing_inputs(self, labels: dict[str, str], masks_dir: str | os.PathLike | None = None,
                       config: ArtSegConfig | None = None) -> str:
        """Clean images; image labels of both classes too with the classifier backbone."""
        message = super().missing_inputs(labels, masks_dir, config)
        counts = label_counts(labels)
        if not message and self.uses_classifier(config) and min(counts.values()) < 2:
            message = (f"{self.title} with the classifier backbone needs at least 2 clean and "
                       f"2 artifact images; got {counts['clean']} clean and "
                       f"{counts['artifact']} artifact")
        return message

    def load(self, folder: Path, document: dict[str, Any], device: torch.device) -> ArtSegModel:
        """The detector (its tensors, strictly checked) and the calibration."""
        self.check_complete(folder, document)
        path = folder / "config.json"
        params = document.get("detector_params")
        if not isinstance(params, dict):
            raise ModelFileError(f"{path}: detector_params must be an object")
        try:
            detector = detector_class(self.name)(params=params, device=device,
                                                 seed=document["config"].seed)
        except (ArtSegError, ValueError, TypeError) as exc:
            raise ModelFileError(f"{path}: {exc}") from None
        tensors = load_tensors(folder, "detector")
        try:
            detector.load_state_tensors(tensors)
        except (ValueError, TypeError, ArtSegError) as exc:
            raise ModelFileError(f"{folder / 'detector.safetensors'}: {exc}") from None
        calibration = Calibration.from_dict(document.get("calibration"), str(path))
        return AnomalyModel(document, detector, calibration, device, folder)

    def train(
        self,
        images_dir: str | os.PathLike,
        labels: dict[str, str],
        out: str | os.PathLike,
        config: ArtSegConfig,
        masks_dir: str | os.PathLike | None = None,
        init: str | os.PathLike | None = None,
    ) -> Generator[ProgressEvent, None, Path]:
        """Fit the detector on clean training images, calibrate, choose thresholds, save."""
        self.check_init(init)
        self.check_inputs(labels, masks_dir, config)
        run = MethodRun(out, config)
        yield run.started()
        with TensorSpill.beside(out, config.memory_budget_gb) as spill:  # images past the budget
            return (yield from self._train(run, images_dir, labels, config, masks_dir, spill))

    def _train(self, run: MethodRun, images_dir: str | os.PathLike, labels: dict[str, str],
               config: ArtSegConfig, masks_dir: str | os.PathLike | None,
               spill: TensorSpill) -> Generator[ProgressEvent, None, Path]:
        """:meth:`train` with the spill for its images made."""
        cls = detector_class(self.name)
        items, pixel_size = yield from load_training_items(images_dir, labels, config, masks_dir,
                                                           spill)
        train_idx, val_idx = stratified_split([i.label for i in items], config.val_fraction,
                                              config.seed)
        clean_train = [pad_to_min(items[i].image) for i in train_idx if items[i].label == 0]
        clean_val = [items[i] for i in val_idx if items[i].label == 0]
        detector = cls(params=dict(config.anomaly_params.get(self.name, {})), device=run.device,
                       seed=config.seed)
        run.metadata.update(label_counts=label_counts(labels), detector_params=detector.params,
                            pixel_size_um=pixel_size or config.pixel_size_um,
                            n_curated_masks=sum(i.curated for i in items),
                            n_images_on_disk=count_on_disk(items))
        try:
            if self.uses_classifier(config):
                check_label_counts(items)
                yield ProgressEvent("classifier", kind="stage",
                                    message=f"training the classifier ({self.title} backbone)")
                classifier, fit = yield from train_classifier(items, train_idx, val_idx, config,
                                                              run.device)
                run.tables["history_classifier"] = fit.history
                detector.attach_classifier(classifier)
            yield ProgressEvent(self.name, kind="stage",
                                message=f"training {self.title} on {len(clean_train)} clean images")
            yield from detector.fit(clean_train)
            run.networks["detector"] = detector.state_tensors()
            run.tables["manifest"] = manifest(items, val_idx, {
                i: "detector" for i in train_idx if items[i].label == 0})
            yield ProgressEvent("calibration", kind="stage",
                                message=f"calibrating on {len(clean_val)} clean validation images")
            pooled = yield from clean_calibration_scores(detector, clean_val, config.seed)
            calibration = Calibration.fit(pooled, config.anomaly_calibration_percentile)
            run.metadata["calibration"] = calibration.to_dict()
            yield ProgressEvent("thresholds", kind="stage", message="choosing thresholds")
            model = AnomalyModel(run.document(), detector, calibration, run.device)
            thresholds, report = yield from choose_thresholds(model, items, val_idx, config)
            run.metadata.update(thresholds=thresholds, validation_metrics=report)
            yield from run.saving()
            return run.out
        finally:
            run.close()


ANOMALY = [
    AnomalyMethod("ae_ssim", "AE-SSIM",
                  "A convolutional autoencoder trained on clean image patches; the anomaly map "
                  "is the SSIM residual between an image and its reconstruction (Bergmann et "
                  "al. 2019)."),
    AnomalyMethod("padim", "PaDiM",
                  "A Gaussian per position of multi-layer CNN embeddings of clean images; the "
                  "anomaly map is the Mahalanobis distance (Defard et al. 2021), with an "
                  "encoder trained here on clean images (no ImageNet weights)."),
    AnomalyMethod("patchsvdd", "PatchSVDD",
                  "A patch encoder trained on clean patches (SVDD and position-prediction "
                  "objectives); the anomaly score is the distance to the nearest clean patch "
                  "embedding, spread to pixels (Yi and Yoon 2020)."),
]
