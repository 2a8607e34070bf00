"""Run a progress generator in a child process and relay its events.

Training is a Python loop around torch calls. Run in a thread of the napari
process, that loop competes with napari's GUI thread for the interpreter lock,
and on a 2-core machine the event loop then stalls for 100 ms and more. Run in a
child process it cannot: the GUI process only reads events from a queue.

:func:`run_in_subprocess` wraps any top-level generator function (for example
:func:`napari_artseg.training.pipeline.train_pipeline`) so that it runs in a
``spawn`` child process (never ``fork``: the parent has Qt and torch threads)
while the parent iterates a generator with the same events and the same return
value. Closing the parent generator (a Cancel button, ``worker.quit()``) asks
the child to stop at its next event: the child closes its generator (so its own
``finally`` clean-up runs, e.g. saving a partial model) and exits; the parent
waits for that, then kills the child if it does not end in time. An exception
in the child is raised again in the parent as the same class with its first
line when that class is loaded in the parent (it is looked up, never unpickled),
else as :class:`SubprocessJobError` with its class name and first line.
GUI-free.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue as queue_module
import sys
import traceback
from collections.abc import Callable, Generator
from typing import Any

from .errors import ArtSegError, first_line
from .training.events import ProgressEvent

#: Seconds the parent waits for a cancelled child to finish its clean-up.
CANCEL_GRACE_S = 120.0
#: Seconds between checks that the child is still alive while no event arrives.
POLL_S = 0.2


class SubprocessJobError(ArtSegError):
    """An exception in the child that could not be sent back as itself."""


def _describe(exc: BaseException) -> tuple[str, str, str]:
    """What the parent needs to raise the exception again: module, class name, first line."""
    text = first_line(exc) if str(exc).strip() else ""
    return type(exc).__module__, type(exc).__qualname__, text


def _rebuild(module: str, name: str, text: str) -> BaseException:
    """The child's exception as the same class when that class is already loaded here.

    Only classes of modules this process has imported are looked up (nothing is
    imported, nothing is unpickled); anything else becomes a SubprocessJobError.
    """
    found: Any = sys.modules.get(module)
    for part in name.split("."):
        found = getattr(found, part, None)
    if isinstance(found, type) and issubclass(found, Exception):
        try:
            return found(text)
        except Exception:  # a constructor that wants other arguments
            pass
    return SubprocessJobError(f"{name}: {text}" if text else name)


def _child_main(events: Any, cancel: Any, factory: Callable[..., Generator],
                args: tuple, kwargs: dict, threads: int | None, nice: int = 0) -> None:
    """The child process: run the generator, send events, stop when asked."""
    if nice > 0 and hasattr(os, "nice"):
        with contextlib.suppress(OSError):
            os.nice(nice)
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        generator = factory(*args, **kwargs)
        while True:
            try:
                event = next(generator)
            except StopIteration as stop:
                events.put(("done", stop.value))
                return
            events.put(("event", event))
            if cancel.is_set():
                generator.close()
                events.put(("cancelled", None))
                return
    except BaseException as exc:  # everything goes back to the parent
        events.put(("error", (*_describe(exc), traceback.format_exc())))
    finally:
        events.close()
        events.join_thread()


def run_in_subprocess(
    factory: Callable[..., Generator[ProgressEvent, None, Any]],
    *args: Any,
    threads: int | None = None,
    nice: int = 0,
    **kwargs: Any,
) -> Generator[ProgressEvent, None, Any]:
    """Iterate ``factory(*args, **kwargs)`` in a child process; yield its events here.

    Parameters
    ----------
    factory : callable
        A generator function defined at module level (it is pickled by name);
        its arguments must be picklable.
    *args, **kwargs
        Passed to ``factory`` in the child.
    threads : int, optional
        ``torch.set_num_threads`` in the child.
    nice : int
        Lower the child's CPU priority by this much (``os.nice``, POSIX; 0 leaves
        it), so that a GUI process waiting for its events gets the CPU first.

    Yields
    ------
    ProgressEvent
        The child's events, in order.

    Returns
    -------
    Any
        The child generator's return value.

    Raises
    ------
    BaseException
        The child's exception (or :class:`SubprocessJobError` with its text);
        :class:`ArtSegError` when the child dies without a word (killed, out of
        memory).
    """
    context = multiprocessing.get_context("spawn")
    events = context.Queue()
    cancel = context.Event()
    child = context.Process(target=_child_main, name="artseg-job", daemon=True,
                            args=(events, cancel, factory, args, kwargs, threads, nice))
    child.start()
    finished = False
    try:
        while True:
            kind, payload = _receive(child, events)
            if kind == "event":
                yield payload
                continue
            finished = True
            child.join(timeout=CANCEL_GRACE_S)
            if kind == "error":
                *described, text = payload
                error = _rebuild(*described)
                error.add_note(f"in the background job process:\n{text}")
                raise error
            if kind == "cancelled":
                raise ArtSegError("the background job was cancelled")
            return payload
    finally:
        if not finished:
            _stop(child, cancel, events)


def _receive(child: Any, events: Any) -> tuple[str, Any]:
    """The child's next message; a clear error when it died without one."""
    while True:
        try:
            return events.get(timeout=POLL_S)
        except queue_module.Empty:
            if child.is_alive():
                continue
        try:  # the child may have exited right after its last message
            return events.get(timeout=POLL_S)
        except queue_module.Empty:
            raise ArtSegError(
                f"the background job process ended unexpectedly (exit code {child.exitcode}); "
                "it may have run out of memory") from None


def _stop(child: Any, cancel: Any, events: Any) -> None:
    """Ask the child to stop at its next event, drain its queue, kill it if it lingers."""
    cancel.set()
    waited = 0.0
    while child.is_alive() and waited < CANCEL_GRACE_S:
        with contextlib.suppress(queue_module.Empty):  # keep the pipe from filling up
            while True:
                events.get_nowait()
        child.join(timeout=POLL_S)
        waited += POLL_S
    if child.is_alive():
        child.kill()
        child.join(timeout=10)
    events.cancel_join_thread()
    events.close()
