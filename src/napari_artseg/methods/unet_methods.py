"""The U-Net-only methods: fully supervised on pixel masks, and CDL on a detector's labels.

Neither has a classifier: the gate score is the maximum of the U-Net's map.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import numpy as np
import torch

from ..config import ArtSegConfig
from ..conventional import ConventionalDetector
from ..errors import ArtSegError
from ..image_files import discover_images, read_image, read_mask
from ..model_files import load_weights
from ..normalize import mask_to_scale, prepare_image
from ..predictor import ArtSegModel
from ..training.data import (
    TrainingItem,
    count_on_disk,
    load_training_items,
    mask_path_for,
    spill_report,
    stratified_split,
)
from ..training.events import ProgressEvent
from ..training.segmenter import build_unet, train_unet
from ..training.spill import TensorSpill
from .base import Method
from .common import MethodRun, best_row, choose_thresholds, manifest


def train_unet_run(
    run: MethodRun, items: list[TrainingItem], init: str | os.PathLike | None,
    method: str, targets: dict[int, str],
) -> Generator[ProgressEvent, None, Path]:
    """Split, train a U-Net on the items' targets, choose thresholds, save ``run``.

    Raises
    ------
    ArtSegError
        No target marks an artifact pixel, or too few images to validate on.
    """
    config = run.config
    if not any(bool((item.target >= 0.5).any()) for item in items):
        raise ArtSegError(f"{method}: no training target marks an artifact pixel; nothing to "
                          "learn (give masks with artifacts, or lower cdl_threshold for cdl)")
    train_idx, val_idx = stratified_split([i.label for i in items], config.val_fraction,
                                          config.seed)
    if not val_idx or not train_idx:
        raise ArtSegError(f"{method}: {len(items)} usable image(s) are too few to keep one for "
                          "validation; add images")
    unet = build_unet(config)
    if run.parent_of(init, method) is not None:
        load_weights(Path(init), "unet", unet)
    run.metadata["label_counts"] = {"clean": sum(1 for i in items if not i.label),
                                    "artifact": sum(i.label for i in items)}
    try:
        yield ProgressEvent("unet", kind="stage", message="training the U-Net")
        unet, fit = yield from train_unet(items, train_idx, val_idx, config, run.device, unet,
                                          config.start_learning_rate(bool(init)))
        run.networks["unet"] = unet
        run.tables["history_unet"] = fit.history
        run.tables["manifest"] = manifest(items, val_idx, targets)
        yield ProgressEvent("thresholds", kind="stage", message="choosing thresholds")
        model = ArtSegModel(run.document(), None, unet, run.device)
        thresholds, report = yield from choose_thresholds(model, items, val_idx, config)
        run.metadata.update(thresholds=thresholds, validation_metrics={
            "unet": best_row(fit.history, fit.best_epoch), **report})
        yield from run.saving()
        return run.out
    finally:
        run.close()


class SupervisedUNet(Method):
    """A U-Net trained on true pixel masks (the papers' fully supervised reference)."""

    name = "supervised_unet"
    title = "U-Net (pixel masks)"
    description = ("A U-Net trained on pixel masks (<image>.tif in the masks folder; an image "
                   "labelled clean counts as an empty mask). No classifier: the gate is the "
                   "maximum of the map.")
    supervision = "pixel_masks"
    can_fine_tune = True

    def train(
        self,
        images_dir: str | os.PathLike,
        labels: dict[str, str],
        out: str | os.PathLike,
        config: ArtSegConfig,
        masks_dir: str | os.PathLike | None = None,
        init: str | os.PathLike | None = None,
    ) -> Generator[ProgressEvent, None, Path]:
        """Train on the labelled images that have a mask, and on the clean ones.

        Artifact images without a mask are skipped (listed nowhere but counted
        in ``n_skipped_no_mask``).
        """
        self.check_inputs(labels, masks_dir)
        run = MethodRun(out, config)
        yield run.started()
        with TensorSpill.beside(out, config.memory_budget_gb) as spill:  # images past the budget
            loaded, pixel_size = yield from load_training_items(images_dir, labels, config,
                                                                masks_dir, spill)
            items = []
            for item in loaded:
                if not item.curated and item.label == 0:  # a clean label is an empty mask
                    item.target, item.curated = torch.zeros_like(item.image), True
                if item.curated:
                    items.append(item)
            run.metadata.update(pixel_size_um=pixel_size or config.pixel_size_um,
                                n_curated_masks=len(items),
                                n_skipped_no_mask=len(loaded) - len(items),
                                n_images_on_disk=count_on_disk(items))
            return (yield from train_unet_run(run, items, init, self.name, {}))


class CDL(Method):
    """CDL (Garcia Santa Cruz et al. 2022): a U-Net trained on a conventional detector's labels."""

    name = "cdl"
    title = "CDL (conventional labels + U-Net)"
    description = ("No human labels: the conventional detector (background correction, "
                   "difference of Gaussians, hysteresis threshold, size filter; cdl_* settings) "
                   "labels every image and a U-Net learns from those labels. Curated masks, "
                   "when given, replace the detector's labels of their images.")
    supervision = "none"
    can_fine_tune = True

    def train(
        self,
        images_dir: str | os.PathLike,
        labels: dict[str, str],
        out: str | os.PathLike,
        config: ArtSegConfig,
        masks_dir: str | os.PathLike | None = None,
        init: str | os.PathLike | None = None,
    ) -> Generator[ProgressEvent, None, Path]:
        """Label every image with the detector, then train the U-Net on those labels.

        The images are the keys of ``labels`` (any label, ``unsure`` too; the
        labels themselves are not used), or every image of ``images_dir`` when
        ``labels`` is empty. The detector's labels are saved in the model folder
        as ``cdl_labels/<image>.tif`` at the processing scale.
        """
        images_dir = Path(images_dir)
        keys = list(labels) or [p.relative_to(images_dir).as_posix()
                                for p in discover_images(images_dir)]
        if len(keys) < 2:
            raise ArtSegError(f"{images_dir}: cdl needs at least 2 images; found {len(keys)}")
        run = MethodRun(out, config)
        yield run.started()
        with TensorSpill.beside(out, config.memory_budget_gb) as spill:  # images past the budget
            return (yield from self._train(run, images_dir, keys, config, masks_dir, init, spill))

    def _train(self, run: MethodRun, images_dir: Path, keys: list[str], config: ArtSegConfig,
               masks_dir: str | os.PathLike | None, init: str | os.PathLike | None,
               spill: TensorSpill) -> Generator[ProgressEvent, None, Path]:
        """:meth:`train` with its images read and their spill made."""
        detector = ConventionalDetector.from_config(config)
        items, targets, pixel_size = [], {}, None
        masks = Path(masks_dir) if masks_dir is not None else None
        for done, key in enumerate(keys, start=1):
            loaded = read_image(images_dir / key)
            pixel_size = pixel_size or loaded.pixel_size_um
            curated = masks is not None and mask_path_for(masks, key).is_file()
            mask = (read_mask(mask_path_for(masks, key), shape=loaded.data.shape) if curated
                    else detector.predict(loaded.data))
            image = prepare_image(loaded.data, config.scale, config.normalization)
            target = (mask_to_scale(mask, tuple(image.shape[-2:])) >= 0.5).float()
            item = TrainingItem(key, int(bool(target.any())), image, loaded.data.shape, target,
                                curated)
            if not spill.fits(image, image.shape[-2] * image.shape[-1]):  # + the uint8 raster
                item.move_to(spill)
            items.append(item)
            if not curated:
                targets[len(items) - 1] = "cdl"
                stem = Path(key).with_suffix("").as_posix()
                run.rasters[f"cdl_labels/{stem}.tif"] = item.hold_array(
                    target[0].numpy().astype(np.uint8), "cdl_raster")
            yield ProgressEvent("cdl_labels", done, len(keys), message=key)
        yield from spill_report(items, spill)
        run.metadata.update(pixel_size_um=pixel_size or config.pixel_size_um,
                            cdl_detector=detector.to_dict(),
                            n_curated_masks=len(items) - len(targets),
                            n_images_on_disk=count_on_disk(items))
        return (yield from train_unet_run(run, items, init, self.name, targets))
