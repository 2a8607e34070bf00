"""Preparing training batches ahead: a background thread, and pinned memory on CUDA.

:func:`prefetch` runs a batch iterator in one background thread and hands its
batches over through a bounded queue, so the next batch is cropped and
augmented while the current one trains. The batches and their order are those
of the iterator run in the foreground (the thread draws from the same random
generators, in the same order, and an epoch's thread ends before the next
epoch starts). Closing the generator :func:`prefetch` returns (as
:func:`~napari_artseg.training.loop.fit` does when its own generator is closed)
stops the thread and waits for it, so a cancelled run leaves no thread behind.

On a CPU the thread only helps when it has a core of its own:
:func:`prefetch_depth` turns it off when torch's threads already take every core
(measured on a 2-core machine, ``benchmarks/bench_training.py``: with one torch
thread prefetching made a U-Net epoch 1.04-1.06x faster, with two 0.89-0.93x as fast).

A thread rather than ``DataLoader`` worker processes: the batches come from
tensors already in memory (:class:`~napari_artseg.training.data.TrainingItem`)
and from closures over ``torch.Generator`` states, which worker processes would
have to pickle and would draw from in another order.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Generator, Iterable
from typing import Any

import torch

#: Batches prepared ahead of the one training (0: no background thread).
PREFETCH_BATCHES = 2
_POLL_S = 0.05


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def prefetch_depth(device: torch.device) -> int:
    """Batches to prepare ahead when training on ``device``.

    :data:`PREFETCH_BATCHES` on an accelerator (the host prepares the next batch
    while the device computes) and on a CPU where torch's threads leave a core
    free; 0 on a CPU whose cores torch's threads all use, where the thread would
    take a core from them (the batches are the same either way).
    """
    if torch.device(device).type == "cpu" and torch.get_num_threads() >= usable_cores():
        return 0
    return PREFETCH_BATCHES


def pin_memory_for(device: torch.device) -> bool:
    """Whether batches assembled on the host should be pinned before moving to ``device``.

    True for CUDA only: a pinned batch is copied asynchronously
    (``non_blocking=True``); on the CPU and on MPS pinning buys nothing.
    """
    return torch.device(device).type == "cuda"


def pin_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The batch's tensors in page-locked host memory (needs CUDA)."""
    return tuple(t.pin_memory() for t in batch)


class _Failure:
    """An exception raised in the producer thread, to re-raise in the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


def _produce(source: Iterable[Any], transform: Callable[[Any], Any] | None,
             out: queue.Queue, stop: threading.Event) -> None:
    """Thread body: put ``transform(item)`` of every item, then the end marker."""
    iterator = iter(source)

    def put(value: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(value, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    try:
        for item in iterator:
            if stop.is_set() or not put(transform(item) if transform else item):
                return
        put(_END)
    except BaseException as error:  # handed to the consumer, which re-raises it
        put(_Failure(error))
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()  # a generator source is closed in the thread that ran it


def prefetch(source: Iterable[Any], depth: int = PREFETCH_BATCHES,
             transform: Callable[[Any], Any] | None = None,
             name: str = "artseg-prefetch") -> Generator[Any, None, None]:
    """Yield the items of ``source``, computed up to ``depth`` ahead in a background thread.

    Parameters
    ----------
    source : iterable
        The batches (e.g. one epoch's batch generator). It is iterated, and
        closed when it is a generator, in the background thread only.
    depth : int
        Items prepared ahead. 0 iterates ``source`` here, without a thread.
    transform : callable, optional
        Applied to every item in the background thread (e.g. :func:`pin_batch`).
    name : str
        The thread's name.

    Yields
    ------
    object
        The items of ``source`` in order (transformed).

    Raises
    ------
    BaseException
        Whatever ``source`` or ``transform`` raised, re-raised here.

    Notes
    -----
    Close the returned generator when stopping early (``contextlib.closing``):
    closing it stops the thread and joins it.
    """
    if depth <= 0:
        for item in source:
            yield transform(item) if transform else item
        return
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    thread = threading.Thread(target=_produce, args=(source, transform, out, stop),
                              name=name, daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = out.get(timeout=_POLL_S)
            except queue.Empty:
                if not thread.is_alive() and out.empty():
                    raise RuntimeError("the batch thread ended without a result") from None
                continue
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:  # make room so a producer blocked on a full queue sees the stop
                while True:
                    out.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=_POLL_S)
