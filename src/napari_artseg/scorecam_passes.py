"""Score-CAM's masked passes, run chunk by chunk and, on a CPU, in parallel.

:class:`MaskedPasses` scores the masked inputs of one image after another
through reused buffers, so memory does not grow with the number of channels.

On a CPU with several threads the passes are independent work: each of
``workers`` threads (:class:`CpuWorkers`) runs its share of the channels with one
torch thread of its own, instead of every small convolution being split over
the threads. Measured on this project's 2-core machine (docs/performance.md),
two one-thread workers scored the ``fast`` classifier's masked inputs 8-9 % faster
than one pass stream with two threads (whose OpenMP threads synchronise on every
small operation, the likely cost). Each masked input is scored exactly as in one
stream, so the logits do not depend on the number of workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from .device import passes_autocast
from .scorecam import EPS, upsample_to

T = TypeVar("T")
R = TypeVar("R")


def resolve_workers(workers: int | str, device: torch.device, passes: int) -> int:
    """How many threads run the masked passes.

    Parameters
    ----------
    workers : int or "auto"
        ``"auto"``: on a CPU, one worker per torch thread of the caller
        (``torch.get_num_threads()``); elsewhere 1. An integer is used as given
        on a CPU (an accelerator always gets 1: its passes are batched instead).
    device : torch.device
        Where the passes run.
    passes : int
        Masked passes per image; there are never more workers than passes.

    Returns
    -------
    int
        At least 1.

    Raises
    ------
    ValueError
        For anything but ``"auto"`` or an integer >= 1.
    """
    if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int)
                              or workers < 1):
        raise ValueError(f"workers must be an integer >= 1 or 'auto', got {workers!r}")
    if device.type != "cpu":
        return 1
    count = torch.get_num_threads() if workers == "auto" else int(workers)
    return max(1, min(count, passes))


class CpuWorkers:
    """``count`` threads, each running torch with its share of the caller's threads.

    With ``count`` == 1 nothing is started: work runs in the calling thread.
    Use as a context manager, or call :meth:`close`. Work runs under
    ``torch.inference_mode`` (a thread-local mode, so it is entered in each
    worker).

    Torch keeps one process-wide thread count that new threads start from;
    setting it in the workers changes that default, so :meth:`close` sets it
    back to what the creating thread had (the creating thread's own count is
    never changed).

    Parameters
    ----------
    count : int
        Worker threads.
    """

    def __init__(self, count: int) -> None:
        self.count = max(1, count)
        self._caller_threads = torch.get_num_threads()
        self._executor: ThreadPoolExecutor | None = None
        if self.count > 1:
            each = max(1, self._caller_threads // self.count)
            self._executor = ThreadPoolExecutor(
                self.count, thread_name_prefix="artseg-scorecam",
                initializer=torch.set_num_threads, initargs=(each,))

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``[fn(item) for item in items]``, run in the workers under inference mode."""
        if self._executor is None:
            return [self._run(fn, item) for item in items]
        return list(self._executor.map(lambda item: self._run(fn, item), items))

    @staticmethod
    def _run(fn: Callable[[T], R], item: T) -> R:
        with torch.inference_mode():
            return fn(item)

    def seconds_per_input(self, measure: Callable[[], float]) -> float:
        """Seconds per input of the whole pool when every worker runs ``measure`` at once.

        ``measure()`` returns one worker's seconds per input; the slowest worker
        counts, divided among the workers that ran side by side.
        """
        return max(self.map(lambda _: measure(), range(self.count))) / self.count

    def close(self) -> None:
        """Stop the threads and restore the process-wide torch thread count."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
            torch.set_num_threads(self._caller_threads)

    def __enter__(self) -> CpuWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    """Scores masked inputs in chunks through reused (batch, C, h, w) buffers.

    At most ``batch`` masked inputs (and their masks) exist at a time per worker,
    whatever the number of channels.

    Parameters
    ----------
    network : torch.nn.Module
        The network the passes run through
        (:func:`~napari_artseg.scorecam_tuning.scoring_network`).
    channels : int
        Image channels C.
    size : tuple of int
        (h, w) at which masked inputs are scored.
    batch : int
        Masked inputs per forward pass.
    like : torch.Tensor
        Gives the buffers' dtype and device.
    amp, channels_last : bool
        bf16 autocast (on CUDA and on CPUs with bf16 units,
        :func:`~napari_artseg.device.passes_autocast`); ``channels_last`` buffers.
    workers : CpuWorkers, optional
        Threads that share each image's passes (default: the calling thread).
    base : torch.Tensor, optional
        (channels, h, w): what a mask of 0 blends towards (``mask_stage`` > 0: the
        masked stage's activations of an all-zero input); None for 0 (the input
        is masked, towards the image mean).
    """

    def __init__(self, network: nn.Module, channels: int, size: tuple[int, int], batch: int,
                 like: torch.Tensor, amp: bool, channels_last: bool,
                 workers: CpuWorkers | None = None, base: torch.Tensor | None = None) -> None:
        self.network = network
        self.base = base
        self.size = size
        self.amp = amp
        self.device = like.device
        self.workers = workers or CpuWorkers(1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.buffers = [torch.empty((batch, channels, *size), dtype=like.dtype,
                                    device=like.device, memory_format=memory_format)
                        for _ in range(self.workers.count)]
        self._zero: torch.Tensor | None = None

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        with passes_autocast(self.device, self.amp):
            return self.network(batch).double().reshape(-1)

    def zero_logit(self) -> torch.Tensor:
        """The logit of an all-zero (= image mean) input at the scoring size, computed once."""
        if self._zero is None:
            zeros = self.buffers[0][:1].zero_()
            if self.base is not None:
                zeros.copy_(self.base[None])
            self._zero = self._forward(zeros).reshape(())
        return self._zero

    def _score(self, buffer: torch.Tensor, small: torch.Tensor, acts: torch.Tensor,
               constant: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """float64 logits of ``small`` masked by ``acts[rows]``, ``buffer``-sized chunks."""
        out = torch.empty(rows.numel(), dtype=torch.float64, device=small.device)
        chunk = buffer.shape[0]
        for start in range(0, rows.numel(), chunk):
            part = rows[start : start + chunk]
            masked = buffer[: part.numel()]
            masks = masks_in_place(acts[part], constant[part], self.size)[:, None]
            if self.base is None:
                torch.mul(small[None], masks, out=masked)
            else:
                torch.addcmul(self.base[None], small[None], masks, out=masked)
            out[start : start + part.numel()] = self._forward(masked)
        return out

    def logits(self, image: torch.Tensor, acts: torch.Tensor, constant: torch.Tensor,
               rows: torch.Tensor) -> torch.Tensor:
        """float64 logits of ``image`` (C, H, W) masked by the maps ``acts[rows]``.

        With a ``base``, ``image`` is the masked stage's activations and each masked
        input is ``base + mask * (image - base)``. The rows are split into one
        contiguous share per worker.
        """
        small = image
        if self.base is not None:
            small = image - self.base
        elif tuple(image.shape[-2:]) != self.size:
            small = F.interpolate(image[None], size=self.size, mode="area")[0]
        shares = torch.tensor_split(rows, len(self.buffers))
        return torch.cat(self.workers.map(
            lambda job: self._score(job[0], small, acts, constant, job[1]),
            zip(self.buffers, shares, strict=True)))
