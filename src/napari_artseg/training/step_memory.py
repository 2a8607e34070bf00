"""The memory one training step takes on the CPU, and the micro-batches that fit it.

On CUDA a step that does not fit raises an out-of-memory error and
:func:`~napari_artseg.training.loop.train_step` retries it in smaller micro-batches.
A CPU gives no such error: the operating system kills the process that asks for
too much (the training child of the napari widget, or the whole CLI run), after
whatever training came before. So before the first step on a CPU,
:func:`plan_step` estimates what one step will hold and splits each batch into
as many micro-batches as it needs to fit the memory available then (gradients
summed, as on CUDA: the same step except that batch norm sees the smaller
micro-batches), or stops with a message naming the sizes to lower when one image
alone does not fit.

The estimate comes from two probe steps (forward, a mean loss, backward) of a copy
of the network on small inputs, with every tensor torch allocates counted by
:class:`AllocationTracker` (a dispatch mode that sees each operator's outputs and
their release), fitted as a constant plus a term per pixel and extrapolated to the
batch's size; Adam's two state tensors per weight are added. Temporaries an
operator frees before it returns are not seen, nor the allocator's own overhead:
measured peaks of the process were 0.9-2.1x the estimate
(``benchmarks/bench_step_memory.py``), so micro-batches are sized for
:data:`HEADROOM` times the estimate.
"""

from __future__ import annotations

import copy
import math
import os
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..errors import ArtSegError
from ..scorecam_tuning import model_signature
from .spill import available_memory_bytes

#: Micro-batches are sized so that this many times the estimated step fits the memory.
HEADROOM = 2.0
#: Images in each probe step (batch norm needs more than one value per channel).
PROBE_BATCH = 2
#: Stride of a network without a ``divisor`` attribute (the ResNet classifiers: 32 at most).
DEFAULT_DIVISOR = 32

_PER_IMAGE: dict[tuple, tuple[float, float]] = {}


class AllocationTracker(TorchDispatchMode):
    """Counts the bytes of the tensors torch operators return while they are alive.

    Attributes
    ----------
    current : int
        Bytes of the tracked storages alive now.
    peak : int
        The most bytes alive at once since the tracker was made.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._alive: dict[int, weakref.ref] = {}

    def _released(self, key: int, size: int) -> None:
        if self._alive.pop(key, None) is not None:
            self.current -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        """Run the operator and count the storages it returns that are new."""
        result = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(result):
            if not isinstance(leaf, torch.Tensor) or leaf.device.type != "cpu":
                continue
            storage = leaf.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or key in self._alive:
                continue
            self._alive[key] = weakref.ref(
                storage, lambda _ref, key=key, size=size: self._released(key, size))
            self.current += size
            self.peak = max(self.peak, self.current)
        return result


def _probe_peak(network: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """Peak tracked bytes of one forward, mean-loss and backward step on ``shape``."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(shape, generator=generator)
    network.zero_grad(set_to_none=True)
    tracker = AllocationTracker()
    with tracker:
        output = network(inputs)
        output.float().mean().backward()
        del output
    network.zero_grad(set_to_none=True)
    return tracker.peak


def _probe_sides(network: torch.nn.Module, height: int, width: int) -> tuple[int, ...]:
    """Square sides to probe at: two small multiples of the network's stride, or the batch's own."""
    divisor = getattr(network, "divisor", DEFAULT_DIVISOR)
    sides = (2 * divisor, 4 * divisor)
    return sides if sides[1] ** 2 < height * width else ()


def gradient_bytes(network: torch.nn.Module) -> int:
    """Bytes of the gradients of ``network``'s trainable weights (as large as the weights)."""
    return sum(p.numel() * p.element_size() for p in network.parameters() if p.requires_grad)


def bytes_per_image(network: torch.nn.Module, image_shape: tuple[int, ...]) -> float:
    """Estimated bytes one image of ``image_shape`` (C, H, W) adds to a training step.

    Measured on a CPU copy of ``network`` (its weights and statistics are not
    touched) at two small square sizes and extrapolated linearly in pixels, or at
    ``image_shape`` itself when that is as small; the fit is cached per network shape
    (and such a small size).

    Parameters
    ----------
    network : torch.nn.Module
        The network as it will train (a U-Net's ``divisor`` sets the probe sizes).
    image_shape : tuple of int
        (channels, height, width) of one input.

    Returns
    -------
    float
        Bytes, at least 0.
    """
    channels, height, width = image_shape
    sides = _probe_sides(network, height, width)
    key = (*model_signature(network), channels, *(sides or (height, width)))
    if key not in _PER_IMAGE:
        probe = copy.deepcopy(network).cpu().train()
        gradients = gradient_bytes(probe)
        if sides:
            small, large = ((_probe_peak(probe, (PROBE_BATCH, channels, side, side)) - gradients)
                            / PROBE_BATCH for side in sides)
            per_pixel = max(0.0, (large - small) / (sides[1] ** 2 - sides[0] ** 2))
            constant = max(0.0, small - per_pixel * sides[0] ** 2)
        else:
            constant = (_probe_peak(probe, (PROBE_BATCH, *image_shape)) - gradients) / PROBE_BATCH
            per_pixel = 0.0
        _PER_IMAGE[key] = (constant, per_pixel)
    constant, per_pixel = _PER_IMAGE[key]
    return max(0.0, constant + per_pixel * height * width)


def fixed_bytes(network: torch.nn.Module) -> int:
    """Bytes a step holds whatever the batch: the gradients and Adam's two moments."""
    return 3 * gradient_bytes(network)


def local_ranks() -> int:
    """Training processes sharing this machine's memory (``LOCAL_WORLD_SIZE`` under torchrun)."""
    value = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return int(value) if value.isdigit() and int(value) > 0 else 1


@dataclass(frozen=True)
class StepPlan:
    """How one training step runs: in how many micro-batches, and why.

    Attributes
    ----------
    chunks : int
        Micro-batches per batch (1: the whole batch at once).
    image_bytes : float
        Estimated bytes per image of the batch (0 when not estimated).
    fixed_bytes : int
        Gradients and optimiser state.
    available : int or None
        Bytes available when planned (None: unknown, or not a CPU).
    """

    chunks: int = 1
    image_bytes: float = 0.0
    fixed_bytes: int = 0
    available: int | None = None

    def step_bytes(self, images: int) -> float:
        """Estimated bytes of a step on ``images`` images."""
        return self.fixed_bytes + images * self.image_bytes


def gigabytes(size: float) -> str:
    """``size`` bytes as a short figure: "2.46 GB", or "46.2 MB" below 0.1 GB."""
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def plan_step(network: torch.nn.Module, batch_shape: tuple[int, ...], device: torch.device,
              what: str, available: int | None = None) -> StepPlan:
    """The micro-batches a step on ``batch_shape`` needs to fit the memory available.

    Parameters
    ----------
    network : torch.nn.Module
        The network to train (not a distributed wrapper).
    batch_shape : tuple of int
        (batch, channels, height, width) of a training batch.
    device : torch.device
        Where training runs; only a CPU is planned (CUDA retries on out-of-memory).
    what : str
        What trains, for the message ("the classifier", "the U-Net").
    available : int, optional
        Bytes available; default: :func:`~napari_artseg.training.spill.available_memory_bytes`
        shared among :func:`local_ranks`.

    Returns
    -------
    StepPlan
        One chunk when the device is not a CPU or the memory cannot be read.

    Raises
    ------
    ArtSegError
        When one image alone is estimated not to fit.
    """
    if device.type != "cpu" or len(batch_shape) != 4:
        return StepPlan()
    if available is None:
        free = available_memory_bytes()
        if free is None:
            return StepPlan()
        available = free // local_ranks()
    batch, channels, height, width = batch_shape
    image = bytes_per_image(network, (channels, height, width))
    fixed = fixed_bytes(network)
    if fixed + image > available:
        raise ArtSegError(
            f"training {what} needs about {gigabytes(fixed + image)} for one image of "
            f"{height} x {width} px and {gigabytes(available)} is available; lower the "
            "input size (input_size, unet_input_size or scale), close other programs, or "
            "train on a GPU")
    room = max(0.0, available / HEADROOM - fixed)
    per_chunk = max(1, min(batch, int(room // image) if image > 0 else batch))
    return StepPlan(math.ceil(batch / per_chunk), image, fixed, available)


def clear_cache() -> None:
    """Forget the per-image estimates measured in this process."""
    _PER_IMAGE.clear()
