"""Score-CAM's masked passes: the scoring network and the batch size.

Score-CAM spends nearly all its time in masked forward passes through the
classifier. Two things make those passes faster without changing their result
beyond float rounding, and one chooses how many run at a time:

- :func:`scoring_network`: an eval-mode copy of the classifier with every batch
  norm folded into the convolution before it (:func:`fold_batch_norms`) and,
  optionally, weights in ``channels_last`` memory format.
- :func:`choose_batch_size`: times a few candidate batch sizes on the actual
  network, device and input size once and remembers the fastest for the process
  (batching helps or hurts depending on size: on a 2-core CPU a small ResNet was
  faster batched at 256 px and slower at 512 px). Explicit batch sizes never
  trigger any timing.
- :func:`cuda_batch_limit`: on CUDA, the largest batch that fits in a share of
  the free memory, from the measured peak memory of a pass with one input;
  elsewhere :func:`host_batch_limit` bounds the batches ``"auto"`` tries by
  their pixels.

The passes themselves run in :mod:`napari_artseg.scorecam_passes`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from .device import passes_autocast

if TYPE_CHECKING:
    from .scorecam_passes import CpuWorkers

#: Batch sizes tried by :func:`choose_batch_size` (capped at the number of passes).
CANDIDATES: tuple[int, ...] = (1, 4, 16, 64)
#: Share of the free CUDA memory one batch of masked passes may use.
CUDA_MEMORY_FRACTION = 0.5
#: Pixels of masked input per batch that ``"auto"`` tries at most off CUDA: 16 inputs of
#: 512 x 512 (the largest batch it tries for the ``fast`` classifier's view with two
#: workers), 4 of 1024 x 1024. On a CPU larger batches were slower (docs/performance.md)
#: and their activations grow with the batch: 64 ``paper`` views would need many GB.
HOST_AUTO_BATCH_PIXELS = 16 * 512 * 512

_CHOSEN: dict[tuple, int] = {}
_CUDA_LIMITS: dict[tuple, int] = {}

Measure = Callable[[int], float]


def clear_cache() -> None:
    """Forget every measured batch size and memory limit of this process."""
    _CHOSEN.clear()
    _CUDA_LIMITS.clear()


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """A traced copy of an eval-mode ``model`` with each batch norm folded into its convolution.

    A ``BatchNorm2d`` whose only input is a ``Conv2d`` used nowhere else becomes
    part of that convolution's weights and bias; the output changes only by
    float rounding. ``model`` is not modified.

    Raises
    ------
    Exception
        Whatever ``torch.fx.symbolic_trace`` raises for a model it cannot trace.
    """
    from torch.fx import symbolic_trace
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    traced = symbolic_trace(copy.deepcopy(model))
    modules = dict(traced.named_modules())
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        source = node.args[0]
        if (not isinstance(source, torch.fx.Node) or source.op != "call_module"
                or not isinstance(modules[source.target], nn.Conv2d) or len(source.users) != 1):
            continue
        fused = fuse_conv_bn_eval(modules[source.target], modules[node.target])
        parent, _, name = source.target.rpartition(".")
        setattr(traced.get_submodule(parent) if parent else traced, name, fused)
        node.replace_all_uses_with(source)
        traced.graph.erase_node(node)
    traced.graph.lint()
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced


def scoring_network(model: nn.Module, fold_batch_norm: bool = True,
                    channels_last: bool = False) -> nn.Module:
    """The network to run the masked passes with (``model`` itself when nothing changes).

    Parameters
    ----------
    model : torch.nn.Module
        The classifier, in eval mode.
    fold_batch_norm : bool
        Use :func:`fold_batch_norms` (the logits change only by float rounding).
        A model ``torch.fx`` cannot trace is used unfolded.
    channels_last : bool
        Put the copy's 4-D weights in ``channels_last`` memory format.

    Returns
    -------
    torch.nn.Module
        ``model`` or a copy; ``model`` is never modified.
    """
    network = model
    if fold_batch_norm:
        try:
            with torch.no_grad():
                network = fold_batch_norms(model)
        except Exception:  # any tracing failure (custom control flow): use the model as is
            network = model
    if channels_last:
        if network is model:
            network = copy.deepcopy(model)
        network = network.to(memory_format=torch.channels_last)
    return network



class _Features(nn.Module):
    """``model.features`` as a module's ``forward`` (so it can be traced and folded)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's target-layer activations."""
        return self.model.features(x)


def feature_network(model: nn.Module, fold_batch_norm: bool = True,
                    channels_last: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """What computes Score-CAM's activation maps: ``model.features``, or a faster copy.

    Parameters
    ----------
    model : torch.nn.Module
        The classifier (with ``features``), in eval mode.
    fold_batch_norm, channels_last : bool
        As in :func:`scoring_network`; with both false, ``model.features`` itself
        (the reference's arithmetic).

    Returns
    -------
    callable
        ``features(x) -> activations``, equal to ``model.features(x)`` up to float
        rounding; ``model`` is never modified.
    """
    if not (fold_batch_norm or channels_last):
        return model.features
    return scoring_network(_Features(model), fold_batch_norm, channels_last)


def model_signature(model: nn.Module) -> tuple:
    """What makes two models cost the same per pass: class and parameter shapes."""
    return (type(model).__name__, tuple(tuple(p.shape) for p in model.parameters()))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sample(shape: tuple[int, ...], batch: int, device: torch.device,
            channels_last: bool) -> torch.Tensor:
    x = torch.randn((batch, *shape), device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def time_batch_size(network: nn.Module, sample_shape: tuple[int, ...], batch: int,
                    device: torch.device, amp: bool = False, channels_last: bool = False,
                    min_samples: int = 8) -> float:
    """Seconds per masked input when scoring ``batch`` inputs per forward pass.

    One warm-up pass, then passes until at least ``max(batch, min_samples)``
    inputs were scored.
    """
    x = _sample(sample_shape, batch, device, channels_last)
    calls = max(1, math.ceil(min_samples / batch))
    with torch.inference_mode(), passes_autocast(device, amp):
        network(x)
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            network(x)
        _synchronize(device)
    return (time.perf_counter() - start) / (calls * batch)


def cuda_batch_limit(network: nn.Module, sample_shape: tuple[int, ...], device: torch.device,
                     amp: bool = False, fraction: float = CUDA_MEMORY_FRACTION) -> int:
    """The largest batch of masked passes that fits in ``fraction`` of the free CUDA memory.

    Measured once per (device, network shapes, input shape, amp) from the peak
    memory of a pass with one input; 0 is never returned. On other devices the
    limit is unbounded (``sys.maxsize``-like large number).
    """
    if device.type != "cuda":
        return 1 << 30
    key = (str(device), model_signature(network), tuple(sample_shape), amp)
    if key not in _CUDA_LIMITS:
        _synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.inference_mode(), passes_autocast(device, amp):
            network(_sample(sample_shape, 1, device, False))
        _synchronize(device)
        per_input = max(1, torch.cuda.max_memory_allocated(device) - base)
        free, _total = torch.cuda.mem_get_info(device)
        _CUDA_LIMITS[key] = max(1, int(free * fraction // per_input))
    return _CUDA_LIMITS[key]


def host_batch_limit(sample_shape: Sequence[int], device: torch.device,
                     pixels: int = HOST_AUTO_BATCH_PIXELS) -> int:
    """The largest batch ``"auto"`` tries off CUDA: ``pixels`` // (H x W), at least 1.

    On CUDA the limit is unbounded here (:func:`cuda_batch_limit` measures one).
    """
    if device.type == "cuda":
        return 1 << 30
    height, width = sample_shape[-2:]
    return max(1, pixels // max(1, height * width))


def choose_batch_size(network: nn.Module, sample_shape: tuple[int, ...], passes: int,
                      device: torch.device, amp: bool = False, channels_last: bool = False,
                      candidates: Sequence[int] = CANDIDATES,
                      measure: Measure | None = None, signature: tuple | None = None,
                      rounds: int = 2) -> int:
    """The fastest batch size for ``passes`` masked inputs of ``sample_shape``, measured once.

    Each candidate (capped at ``passes``, on CUDA at :func:`cuda_batch_limit` and
    elsewhere at :func:`host_batch_limit`) is timed with :func:`time_batch_size`
    on ``network`` in ``rounds`` interleaved rounds (on a shared machine the load
    changes between measurements); the fewest seconds per input over the rounds
    wins (the smaller batch on a tie). The choice is cached per (device, network,
    input shape, passes, amp, channels_last) for the process.

    Parameters
    ----------
    network : torch.nn.Module
        The network the masked passes run through (see :func:`scoring_network`).
    sample_shape : tuple of int
        (C, H, W) of one masked input.
    passes : int
        Masked inputs per image (K, or the kept channels).
    device : torch.device
        Where the passes run.
    amp, channels_last : bool
        As the passes will run.
    candidates : sequence of int
        Batch sizes to try.
    measure : callable, optional
        ``measure(batch) -> seconds per input``; default times ``network``.
    signature : tuple, optional
        Cache key of the network (default: its class and parameter shapes).
    rounds : int
        Measurements of each candidate; the fastest counts.

    Returns
    -------
    int
        A batch size >= 1.
    """
    if passes < 1:
        return 1
    limit = min(passes, cuda_batch_limit(network, sample_shape, device, amp),
                host_batch_limit(sample_shape, device))
    sizes = sorted({max(1, min(int(c), limit)) for c in candidates})
    key = (str(device), signature or model_signature(network), tuple(sample_shape), passes, amp,
           channels_last, tuple(sizes))
    if key not in _CHOSEN:
        if measure is None:
            def measure(batch: int) -> float:
                return time_batch_size(network, tuple(sample_shape), batch, device, amp,
                                       channels_last, min_samples=16)
        seconds = {size: float("inf") for size in sizes}
        for _ in range(max(1, rounds)):
            for size in sizes:
                seconds[size] = min(seconds[size], measure(size))
        _CHOSEN[key] = min(sizes, key=lambda size: (seconds[size], size))
    return _CHOSEN[key]


def resolve_batch_size(batch_size: int | str, network: nn.Module, sample_shape: tuple[int, ...],
                       passes: int, device: torch.device, amp: bool, channels_last: bool,
                       model: nn.Module, workers: CpuWorkers) -> int:
    """Masked inputs per forward pass in :func:`~napari_artseg.scorecam.scorecam`.

    ``"auto"``: :func:`choose_batch_size`, timed with all ``workers`` running
    side by side (as the passes will run) and cached per worker count. An
    integer is capped at ``passes`` and, on CUDA, at :func:`cuda_batch_limit`.

    Parameters
    ----------
    batch_size : int or "auto"
        As given to ``scorecam``.
    network : torch.nn.Module
        The scoring network.
    sample_shape : tuple of int
        (C, H, W) of one masked input.
    passes : int
        Masked inputs per image.
    device : torch.device
        Where the passes run.
    amp, channels_last : bool
        As the passes will run.
    model : torch.nn.Module
        The classifier (its parameter shapes key the cache).
    workers : CpuWorkers
        The threads the passes will run in.

    Returns
    -------
    int
        At least 1.
    """
    if batch_size != "auto":
        return max(1, min(int(batch_size), passes,
                          cuda_batch_limit(network, sample_shape, device, amp)))
    share = max(1, math.ceil(passes / workers.count))

    def measure(batch: int) -> float:
        return workers.seconds_per_input(lambda: time_batch_size(
            network, tuple(sample_shape), batch, device, amp, channels_last, min_samples=16))

    return choose_batch_size(network, sample_shape, share, device, amp, channels_last,
                             measure=measure,
                             signature=(model_signature(model), workers.count))
