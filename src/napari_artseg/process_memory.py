"""This process's resident memory, as the memory benchmarks and tests measure it, and
giving freed heap memory back to the system.

Peak memory is Linux's ``VmHWM`` (``/proc/self/status``): it counts torch's CPU tensors,
and unlike ``ru_maxrss`` it does not survive ``execve``, so a child process started from a
large parent (pytest, a benchmark driver) reports its own peak, not the parent's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
from pathlib import Path

STATUS = Path("/proc/self/status")


def _find_malloc_trim():
    """glibc's ``malloc_trim`` (None elsewhere: macOS, Windows, musl)."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


#: glibc's ``malloc_trim``, or None; a benchmark sets it to None to measure without it.
MALLOC_TRIM = _find_malloc_trim()


def status_kib(field: str) -> int | None:
    """A memory field of ``/proc/self/status`` (e.g. ``"VmRSS"``, ``"VmHWM"``) in KiB.

    Returns None where ``/proc`` is absent (not Linux).
    """
    if not STATUS.is_file():
        return None
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def peak_rss_kib() -> int:
    """This process's peak resident memory in KiB: VmHWM, or ``ru_maxrss`` without /proc."""
    peak = status_kib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak_rss() -> None:
    """Reset the peak (VmHWM) to the current resident size (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def trim_heap() -> bool:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim(0)``).

    Memory torch frees on the CPU goes back to glibc's heaps, which keep it for reuse;
    tensors freed by another thread than the one that made them (training's batch
    thread) stay in that thread's heap. Called when a training run has ended and after
    prediction, so a long-lived process (napari) does not keep a finished job's memory
    (docs/performance.md, "Training throughput", measured there).

    Returns
    -------
    bool
        True when glibc gave pages back; False when it had none or this is not glibc.
    """
    return bool(MALLOC_TRIM(0)) if MALLOC_TRIM is not None else False
