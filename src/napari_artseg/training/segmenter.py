"""Training the U-Net on pixel targets (pseudo-labels, curated masks, zeros for clean)."""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ArtSegConfig
from ..device import autocast
from ..models import UNet
from ..tiling import predict_tiled
from .data import TrainingItem, d4, epoch_order, random_crop
from .ddp import gather_dict, local_batch, rank_generator, rank_share, split
from .events import ProgressEvent
from .loop import FitResult, Validation, fit


def build_unet(config: ArtSegConfig) -> UNet:
    """The U-Net described by ``config``."""
    return UNet(
        width=config.unet_width, levels=config.unet_levels,
        convs_per_level=config.unet_convs_per_level, downsample=config.unet_downsample,
    )


@torch.inference_mode()
def unet_probability(
    model: UNet, image: torch.Tensor, config: ArtSegConfig, device: torch.device,
    batch_size: int = 4,
) -> torch.Tensor:
    """The U-Net's artifact probability (h, w) for a (1, h, w) image, tiled as configured."""
    model.eval()

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with autocast(device, config.amp):
            return torch.sigmoid(model(batch).float())

    prob = predict_tiled(forward, image.to(device), tile=config.unet_size, halo=config.tile_halo,
                         divisor=model.divisor, batch_size=batch_size)
    return prob[0]


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, dice_weight: float = 0.0
) -> torch.Tensor:
    """Pixel-weighted binary cross-entropy plus an optional soft Dice term.

    Parameters
    ----------
    logits, target, weight : torch.Tensor
        (B, 1, H, W); ``weight`` is 0 on padding and larger on curated pixels.
    dice_weight : float
        Weight of ``1 - soft Dice`` computed over the batch's foreground (the
        generalised-Dice idea against class imbalance).
    """
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
    loss = bce / weight.sum().clamp_min(1.0)
    if dice_weight > 0:
        prob = torch.sigmoid(logits) * (weight > 0)
        inter = (prob * target).sum()
        dice = (2 * inter + 1.0) / (prob.sum() + target.sum() + 1.0)
        loss = loss + dice_weight * (1 - dice)
    return loss


def judged_validation(items: list[TrainingItem], val_idx: list[int], enabled: bool) -> list[int]:
    """The validation images whose targets judge the U-Net's epochs.

    When the validation split holds a curated mask of an artifact image, only the
    images whose targets come from a person judge: curated masks and images
    labelled clean (their zero target is a label). Pseudo-labels, and the parent
    model's own masks, would otherwise pull the chosen epoch back toward the model
    that made them. Without such a mask, or with ``enabled`` false, all of them.

    Parameters
    ----------
    items : list of TrainingItem
        All training items.
    val_idx : list of int
        The validation split.
    enabled : bool
        ``config.curated_validation``.

    Returns
    -------
    list of int
        Indices into ``items``.
    """
    if enabled and any(items[i].curated and items[i].label == 1 for i in val_idx):
        return [i for i in val_idx if items[i].curated or items[i].label == 0]
    return list(val_idx)


def corrections_unjudged(items: list[TrainingItem], train_idx: list[int],
                         val_idx: list[int]) -> bool:
    """Whether curated artifact masks train while none is in the validation split.

    The validation targets of the artifact images are then pseudo-labels or a
    parent model's own masks, which cannot tell whether the U-Net learnt what the
    corrections teach (``config.fine_tune_schedule``).
    """
    def has_curated(indices: list[int]) -> bool:
        return any(items[i].curated and items[i].label == 1 for i in indices)

    return has_curated(train_idx) and not has_curated(val_idx)


def train_unet(
    items: list[TrainingItem],
    train_idx: list[int],
    val_idx: list[int],
    config: ArtSegConfig,
    device: torch.device,
    model: UNet | None = None,
    learning_rate: float | None = None,
    stage: str = "unet",
    keep_last: bool = False,
) -> Generator[ProgressEvent, None, tuple[UNet, FitResult]]:
    """Train the U-Net on the items' ``target`` maps; yields progress, returns model and fit.

    Each epoch draws as many random ``unet_input_size`` crops as there are training
    images, artifact images as often as clean ones when ``config.balance_classes``.
    Curated targets weigh ``config.curated_weight`` times more than pseudo-labels, and
    ``config.curated_share`` of the artifact crops come from them (when above 0).
    Validation runs the tiled prediction over the whole validation images (only
    those with targets a person gave once a curated artifact mask is among them:
    :func:`judged_validation`). ``keep_last``: see :func:`~.loop.fit`.
    """
    missing = [items[i].key for i in (*train_idx, *val_idx) if items[i].target is None]
    if missing:
        raise ValueError(f"items without a pixel target: {missing[:3]}")
    torch.manual_seed(config.seed + 1)
    model = (model or build_unet(config)).to(device)
    generator = torch.Generator().manual_seed(config.seed + 1)
    augmenter = rank_generator(generator, config.seed + 1)
    train_labels = [items[i].label for i in train_idx]
    train_curated = [items[i].curated for i in train_idx]
    per_step = local_batch(config.batch_size)
    n_batches = max(1, -(-len(rank_share(train_idx)) // per_step))

    def sample(index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        item = items[index]
        image, target, weight = random_crop(item.image, item.target, config.unet_size, augmenter)
        if item.curated:
            weight = weight * config.curated_weight
        if config.augment:
            k = int(torch.randint(0, 8, (1,), generator=augmenter))
            image, target, weight = d4(image, k), d4(target, k), d4(weight, k)
        return image, target, weight

    def batches(epoch: int):
        order = epoch_order(train_idx, train_labels, config.balance_classes, generator,
                            train_curated, config.curated_share)
        order = rank_share(order)  # this rank's part (all of it in one process)
        for start in range(0, len(order), per_step):
            crops = [sample(i) for i in order[start:start + per_step]]
            yield tuple(torch.stack(parts) for parts in zip(*crops, strict=True))

    def loss_fn(logits: torch.Tensor, batch) -> torch.Tensor:
        return segmentation_loss(logits, batch[1], batch[2], config.dice_weight)

    judged = judged_validation(items, val_idx, config.curated_validation)

    def validate(net: torch.nn.Module) -> Validation:
        losses, inter, union = [], 0.0, 0.0
        for done, i in enumerate(judged, start=1):
            prob = unet_probability(net, items[i].image, config, device).cpu().clamp(1e-6, 1 - 1e-6)
            target = items[i].target[0]
            bce = -(target * prob.log() + (1 - target) * (1 - prob).log()).mean()
            losses.append(float(bce))
            pred, truth = prob >= 0.5, target >= 0.5
            inter += float((pred & truth).sum())
            union += float((pred | truth).sum())
            yield done, len(judged)
        iou = inter / union if union else 1.0
        return {"val_loss": float(np.mean(losses)), "val_iou": iou}

    result = yield from fit(
        stage, model, config, config.unet_epochs, device, batches, n_batches, loss_fn, validate,
        learning_rate, keep_last=keep_last,
    )
    return model, result


def refresh_pseudo_targets(
    model: UNet, items: list[TrainingItem], config: ArtSegConfig, device: torch.device,
    threshold: float = 0.5,
) -> Generator[ProgressEvent, None, dict[str, float]]:
    """Self-training: replace pseudo-labels by the U-Net's own thresholded predictions.

    Only artifact images supervised by pseudo-labels change; an image whose
    prediction is empty keeps its previous target. Returns the share of images
    updated and their mean mask area.
    """
    chosen = [i for i, item in enumerate(items) if item.label == 1 and not item.curated]
    mine = split(chosen)  # in a process group each rank predicts a share; results gathered
    found: dict[int, np.ndarray] = {}
    for done, index in enumerate(mine, start=1):
        item = items[index]
        prob = unet_probability(model, item.image, config, device).cpu()
        binary = (prob >= threshold).numpy().astype(np.uint8)
        if binary.any():
            found[index] = binary
        yield ProgressEvent("self_training", done, len(mine), message=item.key)
    found = gather_dict(found)
    fractions = []
    for index, binary in found.items():
        items[index].target = torch.from_numpy(binary).float()[None]
        fractions.append(float(items[index].target.mean()))
    return {"self_training_updated": len(found) / max(1, len(chosen)),
            "self_training_mean_fraction": float(np.mean(fractions)) if fractions else 0.0}
