"""The epoch loop shared by the classifier and the U-Net.

Adam, ReduceLROnPlateau on the validation loss, early stopping, best weights kept
(or, with ``keep_last``, a cosine-annealed learning rate and the last weights);
DistributedDataParallel when a process group is initialised (see :mod:`.ddp`).
Batches are prepared one thread ahead of training, pinned when training on CUDA
(:mod:`.prefetch`). On a CPU the first batch's step is planned to fit the memory
available (:mod:`.step_memory`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import math
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import ArtSegConfig
from ..device import autocast, release_memory
from ..errors import ArtSegError
from .events import ProgressEvent, as_events
from .prefetch import pin_batch, pin_memory_for, prefetch, prefetch_depth
from .step_memory import StepPlan, gigabytes, plan_step

Batch = tuple[torch.Tensor, ...]
#: What a validation generator yields after each image or batch: (done, of).
Validation = Generator[tuple[int, int], None, dict[str, float]]


@dataclass
class FitResult:
    """What a finished (or stopped) fit produced.

    Attributes
    ----------
    history : list of dict
        One row per epoch: epoch, train_loss, val_loss, lr and validation metrics.
    best_epoch : int
        The epoch whose weights were kept (1-based; 0 when no epoch ran).
    best_val_loss : float
        Its validation loss.
    stopped_early : bool
        True when early stopping ended the fit.
    micro_batches : int
        The most micro-batches a batch was planned in (more than 1 when a CPU step
        was planned not to fit the memory in one).
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stopped_early: bool = False
    micro_batches: int = 1


def _backward_in_chunks(
    model: torch.nn.Module, batch: Batch, loss_fn, device: torch.device, amp: bool, chunks: int
) -> float:
    """Forward and backward one batch split into ``chunks`` micro-batches (gradients summed).

    Under DistributedDataParallel only the last micro-batch synchronises gradients
    across ranks, so every rank takes exactly one synchronised step per batch.
    """
    size = len(batch[0])
    bounds = [b for b in dict.fromkeys(round(i * size / chunks) for i in range(chunks + 1))]
    total = 0.0
    pairs = list(itertools.pairwise(bounds))
    for index, (start, stop) in enumerate(pairs):
        part = tuple(t[start:stop] for t in batch)
        last = index == len(pairs) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") \
            else model.no_sync()
        with sync:
            with autocast(device, amp):
                output = model(part[0])
            loss = loss_fn(output.float(), part) * ((stop - start) / size)
            loss.backward()
        total += float(loss.detach())
    return total


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, loss_fn,
    device: torch.device, amp: bool, chunks: int = 1,
) -> float:
    """One optimiser step in ``chunks`` micro-batches; on accelerator out-of-memory, in more.

    Raises
    ------
    ArtSegError
        Still out of memory with micro-batches of one image, with advice.
    """
    chunks = max(1, min(chunks, len(batch[0])))
    while True:
        optimizer.zero_grad(set_to_none=True)
        try:
            loss = _backward_in_chunks(model, batch, loss_fn, device, amp, chunks)
        except torch.OutOfMemoryError:
            optimizer.zero_grad(set_to_none=True)
            release_memory(device)
            if chunks >= len(batch[0]):
                raise ArtSegError(
                    f"out of {device.type} memory even with one image per step; lower "
                    "input_size (--set input_size=...) or train with --device cpu"
                ) from None
            chunks = min(len(batch[0]), chunks * 2)
            continue
        optimizer.step()
        return loss


def _validation_event(stage: str, epoch: int, epochs: int, step: int, total: int, done: int,
                      of: int) -> ProgressEvent:
    """The event of ``done`` of ``of`` validation images judged after ``epoch``."""
    return ProgressEvent(stage, step, total, kind="validation",
                         metrics={"validated": done, "of": of},
                         message=f"epoch {epoch}/{epochs}: validating {done}/{of}")


#: What the messages call each network that trains here.
NETWORK_NAMES = {"ResNetClassifier": "the classifier", "UNet": "the U-Net"}


def _planned_event(stage: str, step: int, total: int, plan: StepPlan,
                   batch: int) -> ProgressEvent:
    """The note that a CPU step runs in micro-batches, with the estimate behind it."""
    return ProgressEvent(
        stage, step, total, kind="info",
        metrics={"micro_batches": plan.chunks, "step_bytes": plan.step_bytes(batch),
                 "available_bytes": plan.available},
        message=(f"a step on {batch} images needs about {gigabytes(plan.step_bytes(batch))} "
                 f"and {gigabytes(plan.available or 0)} is available: each batch trains in "
                 f"{plan.chunks} micro-batches"))


def fit(
    stage: str,
    model: torch.nn.Module,
    config: ArtSegConfig,
    epochs: int,
    device: torch.device,
    batches: Callable[[int], Iterable[Batch]],
    n_batches: int,
    loss_fn: Callable[[torch.Tensor, Batch], torch.Tensor],
    validate: Callable[[torch.nn.Module], Validation],
    learning_rate: float | None = None,
    prefetch_batches: int | None = None,
    keep_last: bool = False,
) -> Generator[ProgressEvent, None, FitResult]:
    """Train ``model`` in place for up to ``epochs`` epochs, keeping the best weights.

    Parameters
    ----------
    stage : str
        Stage name in the progress events.
    model : torch.nn.Module
        The network, already on ``device``.
    config : ArtSegConfig
        Learning rate, schedule and early-stopping settings.
    epochs : int
        Maximum number of epochs.
    device : torch.device
        Where batches are moved.
    batches : callable
        ``batches(epoch)`` returns the epoch's batches (tensors on the CPU; the
        first is the network input).
    n_batches : int
        Batches per epoch (for progress).
    loss_fn : callable
        ``loss_fn(output, batch)`` with the batch already on ``device``.
    validate : callable
        ``validate(model)`` is a generator that yields ``(done, of)`` after each image or
        batch it judged and returns a dict with ``val_loss`` and other metrics; each
        count becomes a ``validation`` event, so a long validation shows its progress
        and can be stopped between images.
    learning_rate : float, optional
        Overrides ``config.learning_rate`` (fine-tuning uses a smaller one).
    prefetch_batches : int, optional
        Batches prepared ahead in a background thread (default
        :func:`~napari_artseg.training.prefetch.prefetch_depth`: 2, or 0 on a CPU
        whose cores torch's threads all use; 0: none). The batches are the same
        either way; closing this generator stops the thread.
    keep_last : bool
        Run every epoch with the learning rate cosine-annealed to 0 and keep the last
        weights (validation is still run and recorded, but chooses nothing): for when
        the validation targets cannot judge what the training teaches.

    Yields
    ------
    ProgressEvent
        ``step`` events per batch, ``validation`` events while the epoch is judged
        (at the epoch's last step), an ``epoch`` event per epoch and, when a CPU step
        is planned in micro-batches, an ``info`` event saying so (the first batch is
        planned, and any larger one again).

    Returns
    -------
    FitResult
        History and the chosen epoch; the model holds the best weights.

    Raises
    ------
    ArtSegError
        On a CPU, when one image alone is estimated not to fit the memory available
        (:func:`~napari_artseg.training.step_memory.plan_step`; before the first step).

    Notes
    -----
    Inside a ``torch.distributed`` process group (:mod:`napari_artseg.training.ddp`)
    the model is trained wrapped in ``DistributedDataParallel``; ``batches`` then
    gives this rank's share of the epoch. Rank 0 validates and broadcasts the
    metrics, so every rank takes the same scheduler and early-stopping steps.
    """
    from .ddp import broadcast, is_rank_zero, wrap

    trained = wrap(model, device)  # DistributedDataParallel inside a process group
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate or config.learning_rate)
    if keep_last:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    else:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=config.lr_factor, patience=config.lr_patience
        )
    result = FitResult()
    best_state = copy.deepcopy(model.state_dict())
    stale = 0
    total = epochs * n_batches
    depth = prefetch_depth(device) if prefetch_batches is None else prefetch_batches
    pin = pin_batch if pin_memory_for(device) else None
    plan: StepPlan | None = None
    planned = 0  # elements of the largest batch planned for
    name = NETWORK_NAMES.get(type(model).__name__, f"the {stage} network")
    for epoch in range(1, epochs + 1):
        model.train()
        losses = []
        with contextlib.closing(prefetch(batches(epoch), depth, pin,
                                         name=f"artseg-{stage}-batches")) as stream:
            for index, batch in enumerate(stream):
                if batch[0].numel() > planned:  # the first (or a larger) batch: will it fit?
                    # A larger batch later is planned against the memory available before
                    # the first step (the heap now holds the freed steps for reuse).
                    chunks, available = (1, None) if plan is None else (plan.chunks,
                                                                        plan.available)
                    plan = plan_step(model, tuple(batch[0].shape), device, name, available)
                    planned = batch[0].numel()
                    result.micro_batches = max(result.micro_batches, plan.chunks)
                    if plan.chunks > 1 and plan.chunks != chunks:
                        yield _planned_event(stage, (epoch - 1) * n_batches + index, total,
                                             plan, len(batch[0]))
                batch = tuple(t.to(device, non_blocking=True) for t in batch)
                losses.append(train_step(trained, optimizer, batch, loss_fn, device, config.amp,
                                         plan.chunks))
                step = (epoch - 1) * n_batches + index + 1
                yield ProgressEvent(stage, step, total, loss=losses[-1],
                                    message=f"epoch {epoch}/{epochs}")
        model.eval()
        metrics = None
        if is_rank_zero():  # the other ranks wait in broadcast: same steps on all
            metrics = yield from as_events(validate(model), functools.partial(
                _validation_event, stage, epoch, epochs, epoch * n_batches, total))
        metrics = broadcast(metrics)
        val_loss = float(metrics["val_loss"])
        if keep_last:
            scheduler.step()
        else:
            scheduler.step(val_loss)
        row = {"epoch": epoch, "train_loss": sum(losses) / max(1, len(losses)),
               "lr": optimizer.param_groups[0]["lr"], **metrics}
        result.history.append(row)
        if keep_last:
            result.best_val_loss, result.best_epoch, stale = val_loss, epoch, 0
            best_state = None
        elif val_loss < result.best_val_loss - 1e-7:
            result.best_val_loss, result.best_epoch, stale = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        yield ProgressEvent(stage, epoch * n_batches, total, kind="epoch",
                            loss=row["train_loss"], metrics=dict(row),
                            message=f"epoch {epoch}/{epochs} val_loss {val_loss:.4f}")
        if stale >= config.early_stop_patience:
            result.stopped_early = True
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result
