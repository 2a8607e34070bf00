"""Score-CAM's masked passes: the scoring network, the batch size, the chunked runner.

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
  the free memory, from the measured peak memory of a pass with one input.
- :class:`MaskedPasses`: runs the masked passes chunk by chunk through one
  reused buffer, so memory does not grow with the number of channels.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .device import autocast
from .scorecam import EPS, upsample_to

#: Batch sizes tried by :func:`choose_batch_size` (capped at the number of passes).
CANDIDATES: tuple[int, ...] = (1, 4, 16, 64)
#: Share of the free CUDA memory one batch of masked passes may use.
CUDA_MEMORY_FRACTION = 0.5

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
    with torch.inference_mode(), autocast(device, amp):
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
        with torch.inference_mode(), autocast(device, amp):
            network(_sample(sample_shape, 1, device, False))
        _synchronize(device)
        per_input = max(1, torch.cuda.max_memory_allocated(device) - base)
        free, _total = torch.cuda.mem_get_info(device)
        _CUDA_LIMITS[key] = max(1, int(free * fraction // per_input))
    return _CUDA_LIMITS[key]


def choose_batch_size(network: nn.Module, sample_shape: tuple[int, ...], passes: int,
                      device: torch.device, amp: bool = False, channels_last: bool = False,
                      candidates: Sequence[int] = CANDIDATES,
                      measure: Measure | None = None, signature: tuple | None = None,
                      rounds: int = 2) -> int:
    """The fastest batch size for ``passes`` masked inputs of ``sample_shape``, measured once.

    Each candidate (capped at ``passes`` and, on CUDA, at :func:`cuda_batch_limit`)
    is timed with :func:`time_batch_size` on ``network`` in ``rounds`` interleaved
    rounds (on a shared machine the load changes between measurements); the
    fewest seconds per input over the rounds wins (the smaller batch on a tie).
    The choice is cached per (device, network, input shape, passes, amp,
    channels_last) for the process.

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
    limit = min(passes, cuda_batch_limit(network, sample_shape, device, amp))
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


def masks_in_place(acts: torch.Tensor, constant: torch.Tensor,
                   size: tuple[int, int]) -> torch.Tensor:
    """Upsampled, normalised maps (B, H, W) of ``acts`` (B, h, w); one (B, H, W) allocation.

    Same arithmetic as :func:`~napari_artseg.scorecam.normalise_maps`; constant
    channels (``constant`` True) give all-zero maps.
    """
    maps = upsample_to(acts, size)
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    valid = (span >= EPS) & ~constant[:, None, None]
    return maps.sub_(low).div_(torch.where(valid, span, torch.ones_like(span))).mul_(valid)


class MaskedPasses:
    """Scores masked inputs in chunks through one reused (batch, C, h, w) buffer.

    At most ``batch`` masked inputs (and their masks) exist at a time, whatever
    the number of channels.

    Parameters
    ----------
    network : torch.nn.Module
        The network the passes run through (:func:`scoring_network`).
    channels : int
        Image channels C.
    size : tuple of int
        (h, w) at which masked inputs are scored.
    batch : int
        Masked inputs per forward pass.
    like : torch.Tensor
        Gives the buffer's dtype and device.
    amp, channels_last : bool
        bf16 autocast on CUDA; ``channels_last`` buffer.
    """

    def __init__(self, network: nn.Module, channels: int, size: tuple[int, int], batch: int,
                 like: torch.Tensor, amp: bool, channels_last: bool) -> None:
        self.network = network
        self.size = size
        self.amp = amp
        self.device = like.device
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.buffer = torch.empty((batch, channels, *size), dtype=like.dtype,
                                  device=like.device, memory_format=memory_format)
        self._zero: torch.Tensor | None = None

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.amp):
            return self.network(batch).double().reshape(-1)

    def zero_logit(self) -> torch.Tensor:
        """The logit of an all-zero (= image mean) input at the scoring size, computed once."""
        if self._zero is None:
            zeros = self.buffer[:1].zero_()
            self._zero = self._forward(zeros).reshape(())
        return self._zero

    def logits(self, image: torch.Tensor, acts: torch.Tensor, constant: torch.Tensor,
               rows: torch.Tensor) -> torch.Tensor:
        """float64 logits of ``image`` (C, H, W) masked by the maps ``acts[rows]``."""
        small = image
        if tuple(image.shape[-2:]) != self.size:
            small = F.interpolate(image[None], size=self.size, mode="area")[0]
        out = torch.empty(rows.numel(), dtype=torch.float64, device=image.device)
        chunk = self.buffer.shape[0]
        for start in range(0, rows.numel(), chunk):
            part = rows[start : start + chunk]
            masked = self.buffer[: part.numel()]
            torch.mul(small[None], masks_in_place(acts[part], constant[part], self.size)[:, None],
                      out=masked)
            out[start : start + part.numel()] = self._forward(masked)
        return out
