"""The methods built on the image-level classifier: ScoreCAM-U-Net and Score-CAM alone."""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import torch

from ..config import ArtSegConfig
from ..model_files import load_weights
from ..normalize import resize
from ..predictor import ArtSegModel, MapAsLogits
from ..training.classifier import build_classifier, train_classifier
from ..training.data import (
    check_label_counts,
    count_on_disk,
    global_view,
    load_training_items,
    stratified_split,
)
from ..training.events import ProgressEvent
from ..training.spill import TensorSpill
from .base import Method
from .common import MethodRun, best_row, choose_thresholds, manifest


class ScoreCAMUNet(Method):
    """ScoreCAM-U-Net (Ali et al. 2022); the run is :func:`.pipeline.train_scorecam_unet`."""

    name = "scorecam_unet"
    title = "ScoreCAM-U-Net"
    description = ("A ResNet classifier trained on image labels; its Score-CAM maps, binarised, "
                   "are pseudo-labels for a U-Net; the classifier gates the U-Net's map.")
    supervision = "image_labels"
    can_fine_tune = True

    def train(self, images_dir, labels, out, config, masks_dir=None, init=None):
        """Train ScoreCAM-U-Net (the pipeline's own checks and messages)."""
        from ..training.pipeline import train_scorecam_unet

        return (yield from train_scorecam_unet(images_dir, labels, out, config,
                                               masks_dir=masks_dir, init=init))


class ScoreCAMModel(ArtSegModel):
    """Score-CAM alone: the classifier's saliency map is the probability map, classifier-gated.

    The map is Score-CAM of the classifier's whole-image view, resized to the
    image; for tiling code (``unet``) it is Score-CAM of each tile's view.
    """

    def __init__(self, document: dict[str, Any], classifier: torch.nn.Module,
                 device: torch.device, folder: Path | None = None) -> None:
        super().__init__(document, classifier, None, device, folder)
        self.unet = MapAsLogits(self._tile_map)

    def _compute_map(self, prepared: torch.Tensor, batch_size: int) -> torch.Tensor:
        config = self.config
        view = global_view(prepared.float().cpu(), config.input_size)[None].to(self.device)
        cam = self.scorecam_views(view)
        return resize(cam[:, None].float().cpu(), tuple(prepared.shape[-2:]))[0, 0]

    def _tile_map(self, tile: torch.Tensor) -> torch.Tensor:
        return self._compute_map(tile, 1).clamp(0, 1)


class ScoreCAMAlone(Method):
    """Score-CAM alone: the classifier's saliency map is the prediction."""

    name = "scorecam"
    title = "Score-CAM"
    description = ("The ResNet classifier of ScoreCAM-U-Net alone: its Score-CAM saliency map "
                   "(at the classifier's view size, resized) is the probability map, gated by "
                   "the classifier.")
    supervision = "image_labels"
    can_fine_tune = True

    def load(self, folder: Path, document: dict[str, Any], device: torch.device) -> ArtSegModel:
        """The classifier as a :class:`ScoreCAMModel`."""
        self.check_complete(folder, document)
        classifier = build_classifier(document["config"])
        load_weights(folder, "classifier", classifier)
        return ScoreCAMModel(document, classifier, device, folder)

    def train(
        self,
        images_dir: str | os.PathLike,
        labels: dict[str, str],
        out: str | os.PathLike,
        config: ArtSegConfig,
        masks_dir: str | os.PathLike | None = None,
        init: str | os.PathLike | None = None,
    ) -> Generator[ProgressEvent, None, Path]:
        """Train the classifier and choose the thresholds of its Score-CAM maps.

        ``init`` may be a ``scorecam`` model (its classifier is fine-tuned).
        Curated masks, when given, only choose the mask threshold.
        """
        run = MethodRun(out, config)
        yield run.started()
        with TensorSpill.beside(out, config.memory_budget_gb) as spill:  # images past the budget
            return (yield from self._train(run, images_dir, labels, config, masks_dir, init,
                                           spill))

    def _train(self, run: MethodRun, images_dir: str | os.PathLike, labels: dict[str, str],
               config: ArtSegConfig, masks_dir: str | os.PathLike | None,
               init: str | os.PathLike | None,
               spill: TensorSpill) -> Generator[ProgressEvent, None, Path]:
        """:meth:`train` with the spill for its images made."""
        items, pixel_size = yield from load_training_items(images_dir, labels, config, masks_dir,
                                                           spill)
        counts = check_label_counts(items)
        train_idx, val_idx = stratified_split([i.label for i in items], config.val_fraction,
                                              config.seed)
        classifier = build_classifier(config)
        if run.parent_of(init, self.name) is not None:
            load_weights(Path(init), "classifier", classifier)
        run.metadata.update(label_counts=counts, pixel_size_um=pixel_size or config.pixel_size_um,
                            n_curated_masks=sum(i.curated for i in items),
                            n_images_on_disk=count_on_disk(items))
        try:
            yield ProgressEvent("classifier", kind="stage", message="training the classifier")
            classifier, fit = yield from train_classifier(
                items, train_idx, val_idx, config, run.device, classifier,
                config.start_learning_rate(bool(init)))
            run.networks["classifier"] = classifier
            run.tables["history_classifier"] = fit.history
            run.tables["manifest"] = manifest(items, val_idx)
            yield ProgressEvent("thresholds", kind="stage", message="choosing thresholds")
            model = ScoreCAMModel(run.document(), classifier, run.device)
            thresholds, report = yield from choose_thresholds(model, items, val_idx, config)
            run.metadata.update(thresholds=thresholds, validation_metrics={
                "classifier": best_row(fit.history, fit.best_epoch), **report})
            yield from run.saving()
            return run.out
        finally:
            run.close()
