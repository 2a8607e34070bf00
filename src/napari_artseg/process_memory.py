"""This process's resident memory, as the memory benchmarks and tests measure it; giving
freed heap memory back to the system, and keeping it for reuse while a job runs.

Peak memory is Linux's ``VmHWM`` (``/proc/self/status``): it counts torch's CPU tensors,
and unlike ``ru_maxrss`` it does not survive ``execve``, so a child process started from a
large parent (pytest, a benchmark driver) reports its own peak, not the parent's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import threading
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path

STATUS = Path("/proc/self/status")


def _find_glibc(symbol: str, argtypes: list):
    """A glibc function (None elsewhere: macOS, Windows, musl)."""
    name = ctypes.util.find_library("c")
    try:
        function = getattr(ctypes.CDLL(name), symbol) if name else None
    except (OSError, AttributeError):
        return None
    if function is not None:
        function.argtypes, function.restype = argtypes, ctypes.c_int
    return function


#: glibc's ``malloc_trim``, or None; a benchmark sets it to None to measure without it.
MALLOC_TRIM = _find_glibc("malloc_trim", [ctypes.c_size_t])
#: glibc's ``mallopt``, or None; set to None to run jobs with glibc's own thresholds.
MALLOPT = _find_glibc("mallopt", [ctypes.c_int, ctypes.c_int])
#: ``mallopt`` parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: While a job runs: blocks up to 32 MiB (the most glibc's own adaptive rule reaches) come
#: from the heaps, and up to 512 MiB of free heap top is kept for the next step.
JOB_MMAP_THRESHOLD = 32 << 20
JOB_TRIM_THRESHOLD = 512 << 20
#: After the last job: free heap top beyond twice the mmap threshold goes back to the system,
#: as glibc's adaptive rule has it.
IDLE_TRIM_THRESHOLD = 2 * JOB_MMAP_THRESHOLD

_jobs = 0
_jobs_lock = threading.Lock()


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


@contextmanager
def heap_reuse() -> Generator[bool, None, None]:
    """Keep freed heap memory for reuse while the block runs (glibc only).

    By default glibc maps large blocks fresh and gives a heap's free top back
    soon, so a training step or an image's prediction that frees and allocates
    the same activations again has the kernel zero-fill the same amount of
    memory every time (millions of page faults in a short ``fast`` run;
    docs/performance.md, "Training throughput" and "Folder prediction", measures
    them). Training (``train_pipeline``), ``artseg predict`` on a folder, the
    viewer's prediction job, export and the retrain evaluation run inside it.
    Inside the block, blocks up to :data:`JOB_MMAP_THRESHOLD` come from the heaps and up to
    :data:`JOB_TRIM_THRESHOLD` of free heap top is kept. When a block ends,
    however it ends, the heap is trimmed (:func:`trim_heap`: the job's freed
    memory goes back to the system); when the last of the process's blocks (jobs
    in several threads count together) ends, the trim threshold also drops to
    :data:`IDLE_TRIM_THRESHOLD`. The mmap threshold stays at 32 MiB, where glibc's
    adaptive rule also ends up.

    Yields
    ------
    bool
        Whether the thresholds were set (False where the C library is not glibc).
    """
    global _jobs
    active = MALLOPT is not None
    if active:
        with _jobs_lock:
            _jobs += 1
            MALLOPT(M_MMAP_THRESHOLD, JOB_MMAP_THRESHOLD)
            MALLOPT(M_TRIM_THRESHOLD, JOB_TRIM_THRESHOLD)
    try:
        yield active
    finally:
        if active:
            with _jobs_lock:
                _jobs -= 1
                if _jobs == 0:
                    MALLOPT(M_TRIM_THRESHOLD, IDLE_TRIM_THRESHOLD)
        trim_heap()
