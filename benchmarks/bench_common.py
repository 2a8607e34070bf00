"""Helpers shared by the benchmark scripts (run them as ``python benchmarks/<script>.py``)."""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import torch


def machine() -> dict:
    """What the numbers were measured on: CPU, cores, torch, threads, load, GPU."""
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def run_report(args, **fields) -> dict:
    """The head of a results JSON, the command as typed, :func:`machine` and the
    arguments, followed by ``fields``."""
    return {"command": shlex.join(["python", *sys.argv]), "machine": machine(),
            "args": vars(args), **fields}


def drain(generator):
    """Run a progress generator to its end; its return value."""
    while True:
        try:
            next(generator)
        except StopIteration as stop:
            return stop.value


def run_main(main) -> None:
    """Exit with ``main()``'s status; a project error ends in its one-line message, no traceback."""
    import sys

    from napari_artseg.errors import ArtSegError

    try:
        sys.exit(main())
    except ArtSegError as exc:
        sys.exit(f"error: {exc}")


@contextlib.contextmanager
def memory_capped(command: list[str], limit_gb: float | None, name: str) -> Iterator[list[str]]:
    """``command`` run inside a new cgroup v1 memory group capped at ``limit_gb`` GB.

    Yields the command to run (``command`` itself when ``limit_gb`` is None); the
    group (``/sys/fs/cgroup/memory/<name>-<pid>``; Linux, root) is removed on exit.
    """
    if limit_gb is None:
        yield command
        return
    group = Path(f"/sys/fs/cgroup/memory/{name}-{os.getpid()}")
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(int(limit_gb * 1e9)))
        yield ["sh", "-c", f"echo $$ > {group}/cgroup.procs && exec \"$@\"", "sh", *command]
    finally:
        group.rmdir()
