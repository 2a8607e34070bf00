"""Training the image-level ResNet classifier (clean = 0, artifact = 1)."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ArtSegConfig
from ..device import autocast
from ..metrics import classification_counts
from ..models import ResNetClassifier
from .data import TrainingItem, d4, epoch_order, global_view, random_scale, symmetry_mean
from .ddp import local_batch, rank_generator, rank_share
from .events import ProgressEvent
from .loop import FitResult, Validation, fit

#: Validation views judged between two progress events (one event per chunk).
VALIDATION_CHUNK = 16


def build_classifier(config: ArtSegConfig) -> ResNetClassifier:
    """The classifier network described by ``config``."""
    return ResNetClassifier(
        depth=config.resnet_depth, width=config.resnet_width, stem_pool=config.resnet_stem_pool,
        pool=config.resnet_pool,
    )


def global_views(items: list[TrainingItem], config: ArtSegConfig) -> list[torch.Tensor]:
    """The classifier views (1, S, S) of some items, one per item.

    An item kept on disk (past the memory budget) keeps its view there too,
    memory-mapped (:meth:`.data.TrainingItem.hold`).
    """
    return [item.hold(global_view(item.image, config.input_size), "view") for item in items]


def _stack(views: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """(N, C, S, S) from a stack or from a sequence of (C, S, S) views."""
    return views if isinstance(views, torch.Tensor) else torch.stack(list(views))


@torch.inference_mode()
def classifier_probabilities(
    model: ResNetClassifier, views: Sequence[torch.Tensor] | torch.Tensor, device: torch.device,
    batch_size: int = 16, amp: bool = True, symmetries: int = 1,
) -> np.ndarray:
    """P(artifact) for views (N, 1, S, S), computed in batches.

    ``views`` is a stack or a sequence of (1, S, S) views (:func:`global_views`);
    only one batch of them is stacked at a time. With ``symmetries`` > 1 each
    view's P(artifact) is the mean over that many of the square's symmetries (the
    gate's test-time augmentation, ``gate_symmetries``).
    """
    model.eval()

    def probability(batch: torch.Tensor) -> torch.Tensor:
        with autocast(device, amp):
            return torch.sigmoid(model(batch.to(device)).float())

    out = []
    for start in range(0, len(views), batch_size):
        batch = _stack(views[start:start + batch_size])
        out.append(symmetry_mean(probability, batch, symmetries).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def counted_probabilities(
    model: ResNetClassifier, count: int,
    views_of: Callable[[int, int], Sequence[torch.Tensor]], device: torch.device,
    amp: bool = True, symmetries: int = 1,
) -> Generator[tuple[int, int], None, np.ndarray]:
    """:func:`classifier_probabilities` of ``count`` views, :data:`VALIDATION_CHUNK` at a time.

    ``views_of(start, stop)`` makes the views of one chunk (so they need not all be made
    at once); yields ``(done, count)`` after each chunk and returns the probabilities.
    """
    chunks = []
    for start in range(0, count, VALIDATION_CHUNK):
        stop = min(count, start + VALIDATION_CHUNK)
        chunks.append(classifier_probabilities(model, views_of(start, stop), device, amp=amp,
                                               symmetries=symmetries))
        yield stop, count
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


def train_classifier(
    items: list[TrainingItem],
    train_idx: list[int],
    val_idx: list[int],
    config: ArtSegConfig,
    device: torch.device,
    model: ResNetClassifier | None = None,
    learning_rate: float | None = None,
) -> Generator[ProgressEvent, None, tuple[ResNetClassifier, FitResult]]:
    """Train the classifier on image-level labels; yields progress, returns model and fit.

    Class imbalance is handled by balanced sampling (each epoch draws as many
    images as the training split holds, both classes equally likely) when
    ``config.balance_classes``; augmentation draws one of the 8 square symmetries
    per image, and with ``config.classifier_scale_augment`` < 1 half the batches are shrunk
    (:func:`.data.random_scale`). In a process group each rank trains on its share of every epoch
    (:mod:`.ddp`).
    """
    torch.manual_seed(config.seed)
    model = (model or build_classifier(config)).to(device)
    views = global_views(items, config)
    labels = torch.tensor([float(item.label) for item in items])
    train_labels = [items[i].label for i in train_idx]
    generator = torch.Generator().manual_seed(config.seed)
    augmenter = rank_generator(generator, config.seed)
    per_step = local_batch(config.batch_size)
    n_batches = max(1, -(-len(rank_share(train_idx)) // per_step))

    def batches(epoch: int):
        order = epoch_order(train_idx, train_labels, config.balance_classes, generator)
        order = rank_share(order)  # this rank's part (all of it in one process)
        for start in range(0, len(order), per_step):
            chosen = order[start:start + per_step]
            x = torch.stack([views[i] for i in chosen])
            if config.augment:
                ks = torch.randint(0, 8, (len(chosen),), generator=augmenter).tolist()
                x = torch.stack([d4(v, k) for v, k in zip(x, ks, strict=True)])
            yield random_scale(x, config.classifier_scale_augment, augmenter), labels[chosen]

    def loss_fn(logits: torch.Tensor, batch) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, batch[1])

    def validate(net: torch.nn.Module) -> Validation:
        probs = yield from counted_probabilities(
            net, len(val_idx), lambda start, stop: [views[i] for i in val_idx[start:stop]],
            device, amp=config.amp)
        truth = labels[val_idx].numpy()
        clipped = np.clip(probs, 1e-7, 1 - 1e-7)
        loss = float(-np.mean(truth * np.log(clipped) + (1 - truth) * np.log(1 - clipped)))
        counts = classification_counts(probs >= 0.5, truth > 0.5)
        return {"val_loss": loss, "val_f1": counts["f1"], "val_accuracy": counts["accuracy"]}

    result = yield from fit(
        "classifier", model, config, config.classifier_epochs, device, batches, n_batches,
        loss_fn, validate, learning_rate,
    )
    return model, result
