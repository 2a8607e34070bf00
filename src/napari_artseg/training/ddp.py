"""Training on several GPUs (or CPU processes) with PyTorch's DistributedDataParallel.

Run the usual ``artseg train`` options under ``torchrun`` (entry module
:mod:`napari_artseg.training.torchrun`)::

    torchrun --nproc_per_node 4 -m napari_artseg.training.torchrun \\
        --images IMAGES --labels labels.csv --out MODEL --preset paper

Every process (rank) runs the same training pipeline. When a process group is
initialised the training code does the rest itself:

- :func:`napari_artseg.training.loop.fit` wraps the network in
  ``DistributedDataParallel`` (gradients averaged over ranks); each rank trains
  on its share of every epoch (:func:`rank_share`, a ``DistributedSampler``
  over the epoch's order) with ``batch_size / world`` images per step, so the
  global batch stays ``batch_size``. Rank 0 validates and sends the metrics to
  the others, so all ranks take the same learning-rate and early-stopping steps.
- Score-CAM pseudo-labels, their per-image thresholds and the self-training
  targets are computed for a share of the images on each rank and gathered
  (:func:`split`, :func:`gather_dict`).
- Only rank 0 prints progress and writes the model folder; the others wait for it.

The backend is NCCL when CUDA is available (each rank uses GPU ``LOCAL_RANK``),
gloo otherwise. Outside a process group every function here is a no-op and the
training is exactly the single-process one.

``ARTSEG_SYNC_BATCHNORM=1`` in the environment makes :func:`wrap` train with
``torch.nn.SyncBatchNorm`` (batch statistics over all ranks' images) on CUDA;
on the CPU (gloo), which has no SyncBatchNorm, it is ignored with a note. The
saved network keeps plain BatchNorm layers (:func:`with_sync_batchnorm`).
"""

from __future__ import annotations

import copy
import itertools
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist

#: Environment variable that asks for SyncBatchNorm in distributed CUDA training ("1": yes).
SYNC_BATCHNORM_ENV = "ARTSEG_SYNC_BATCHNORM"
_noted: set[str] = set()


def world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_distributed() -> bool:
    """True inside a process group of more than one rank."""
    return world()[1] > 1


def is_rank_zero() -> bool:
    """True on rank 0 and outside a process group (the process that writes files)."""
    return world()[0] == 0


def barrier() -> None:
    """Wait for every rank (a no-op outside a process group)."""
    if is_distributed():
        dist.barrier()


def rank_share(order: Sequence[int]) -> list[int]:
    """This rank's part of an epoch's order (a ``DistributedSampler``, no shuffling).

    Every rank gets ``ceil(len(order) / world)`` items (the first ones repeat to
    even out), so all ranks take the same number of steps.
    """
    rank, size = world()
    if size == 1:
        return list(order)
    sampler = torch.utils.data.DistributedSampler(list(order), num_replicas=size, rank=rank,
                                                  shuffle=False)
    return [order[i] for i in sampler]


def local_batch(batch_size: int) -> int:
    """Images per step on this rank: the global batch split over the ranks (at least 1)."""
    return max(1, batch_size // world()[1])


def rank_generator(shared: torch.Generator, seed: int) -> torch.Generator:
    """The generator for augmentation draws: ``shared`` in one process, else one per rank.

    The epoch order must be drawn identically on all ranks (from ``shared``);
    augmentation draws differ between ranks so their crops and flips do too.
    """
    rank, size = world()
    if size == 1:
        return shared
    return torch.Generator().manual_seed(seed + 7919 * (rank + 1))


def split(indices: Sequence[int]) -> list[int]:
    """This rank's slice (``indices[rank::world]``) of work shared out by rank."""
    rank, size = world()
    return list(indices[rank::size])


def gather_dict(local: dict) -> dict:
    """Merge the dicts of all ranks (CPU objects); the local dict when not distributed."""
    if not is_distributed():
        return local
    parts: list[Any] = [None] * world()[1]
    dist.all_gather_object(parts, local)
    merged: dict = {}
    for part in parts:
        merged.update(part)
    return merged


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (itself when not distributed)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_batchnorm_requested(environ: Mapping[str, str] | None = None) -> bool:
    """True when :data:`SYNC_BATCHNORM_ENV` asks for SyncBatchNorm (``1``, ``true``, ``yes``)."""
    value = (os.environ if environ is None else environ).get(SYNC_BATCHNORM_ENV, "")
    return value.strip().lower() in ("1", "true", "yes")


def use_sync_batchnorm(requested: bool, distributed: bool, device: torch.device) -> bool:
    """Whether to train with SyncBatchNorm: asked for, in a process group, on CUDA.

    gloo (the CPU backend) has no SyncBatchNorm, and one process has nothing to sync.
    """
    return requested and distributed and device.type == "cuda"


def with_sync_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """``model``'s layers with every BatchNorm as a ``SyncBatchNorm`` sharing its tensors.

    The copy holds the very parameter and buffer tensors of ``model`` (only the
    module objects are new), so training the copy trains ``model``, including
    its running statistics, while ``model`` itself keeps plain BatchNorm layers
    and the same ``state_dict`` keys for saving. ``model`` is not changed.
    """
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    clone = copy.deepcopy(model, memo=shared)
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(clone)


def _note_once(text: str) -> None:
    """Print a note on rank 0, once per process."""
    if text not in _noted and is_rank_zero():
        _noted.add(text)
        print(f"note: {text}", file=sys.stderr)


def wrap(model: torch.nn.Module, device: torch.device,
         sync_batchnorm: bool | None = None) -> torch.nn.Module:
    """The module to train: ``DistributedDataParallel(model)`` in a process group, else it.

    Parameters
    ----------
    model : torch.nn.Module
        The network; it keeps its plain BatchNorm layers (save this one).
    device : torch.device
        This rank's device.
    sync_batchnorm : bool, optional
        Train with SyncBatchNorm (see :func:`with_sync_batchnorm`); default: the
        :data:`SYNC_BATCHNORM_ENV` environment variable. Applies only on CUDA.
    """
    if not is_distributed():
        return model
    requested = sync_batchnorm_requested() if sync_batchnorm is None else sync_batchnorm
    if use_sync_batchnorm(requested, True, device):
        model = with_sync_batchnorm(model)
    elif requested:
        _note_once(f"{SYNC_BATCHNORM_ENV}: SyncBatchNorm needs CUDA (NCCL); "
                   f"training on {device.type} with per-rank BatchNorm statistics")
    ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
