"""This process's resident memory, as the memory benchmarks and tests measure it.

Peak memory is Linux's ``VmHWM`` (``/proc/self/status``): it counts torch's CPU tensors,
and unlike ``ru_maxrss`` it does not survive ``execve``, so a child process started from a
large parent (pytest, a benchmark driver) reports its own peak, not the parent's.
"""

from __future__ import annotations

import resource
from pathlib import Path

STATUS = Path("/proc/self/status")


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
