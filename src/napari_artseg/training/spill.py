"""Training images that do not fit in memory: kept on disk, memory-mapped.

Training holds every labelled image at the processing scale, and its U-Net target
of the same size, for the whole run, and for a while what it derives from them
(the classifier's views, Score-CAM maps, the rasters saved with the model;
docs/performance.md, "Training throughput"). A screen of many or large images can
hold more than the machine's memory. A :class:`TensorSpill` counts the bytes each
image takes with its target and derived data and, when they would pass
``memory_budget_gb`` (by default a quarter of the memory available when training
starts, within a container's or job's cgroup limit), keeps that image's tensors in
``.npy`` files memory-mapped back: the values are the same, so training gives the
same model, and the operating system pages them in and out as they are read.

The files live in a hidden folder beside the model folder (``.<model>.spill-<pid>``),
on the same disk, never in a RAM-backed temporary folder; :meth:`TensorSpill.close`
deletes it when the run ends, fails or is cancelled, and the next run beside it
deletes one whose process no longer exists (a killed run's).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from ..errors import ArtSegError

#: Share of the available memory the in-memory images may take when no budget is set.
AUTO_BUDGET_SHARE = 0.25
MEMINFO = Path("/proc/meminfo")
PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: cgroup v1 writes "no limit" as a number near 2**63.
UNLIMITED = 1 << 62
#: Between the model folder's name and the process id in a spill folder's name.
MARK = ".spill-"


def _read_int(path: Path) -> int | None:
    """An integer file's value (None when missing, unreadable or ``max``)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def cgroup_memory_room(proc_cgroup: Path = PROC_CGROUP,
                       root: Path = CGROUP_ROOT) -> int | None:
    """Bytes this process's control group may still allocate: its limit minus its usage.

    Containers and batch schedulers (Docker, Kubernetes, Slurm) cap memory with a
    cgroup, which ``/proc/meminfo`` does not show. Reads cgroup v2
    (``memory.max``, ``memory.current``) and v1 (``memory.limit_in_bytes``,
    ``memory.usage_in_bytes``), at the path ``/proc/self/cgroup`` names and, as
    seen from inside a container, at the hierarchy's root. None without a limit.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, path = parts[1].split(","), parts[2].lstrip("/")
        if parts[0] == "0" and parts[1] == "":
            places = [root / path, root / "unified" / path, root]  # v2, or hybrid's v2 part
            files = ("memory.max", "memory.current")
        elif "memory" in controllers:
            places = [root / "memory" / path, root / "memory"]
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        for place in places:
            limit = _read_int(place / files[0])
            if limit is not None and limit < UNLIMITED:
                rooms.append(max(0, limit - (_read_int(place / files[1]) or 0)))
                break
    return min(rooms) if rooms else None


def available_memory_bytes() -> int | None:
    """Memory available to new allocations: the least of ``MemAvailable`` (/proc/meminfo, else
    psutil's) and what this process's cgroup may still allocate.

    Returns None when nothing can tell (then nothing is spilled by default).
    """
    found = None
    with contextlib.suppress(OSError, ValueError):
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found = int(line.split()[1]) * 1024
    if found is None:
        with contextlib.suppress(ImportError):
            import psutil

            found = int(psutil.virtual_memory().available)
    room = cgroup_memory_room()
    if room is not None:
        found = room if found is None else min(found, room)
    return found


def process_exists(pid: int) -> bool | None:
    """Whether process ``pid`` runs on this machine; None when that cannot be told."""
    if os.name == "posix":
        try:
            os.kill(pid, 0)  # signal 0: only checks
        except ProcessLookupError:
            return False
        except OSError:  # e.g. another user's process
            return True
        return True
    try:
        import psutil
    except ImportError:
        return None
    return bool(psutil.pid_exists(pid))


def remove_orphans(folder: str | os.PathLike) -> list[Path]:
    """Delete the spill folders in ``folder`` whose process no longer exists."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in Path(folder).iterdir():
            name = entry.name
            pid = name.rsplit(MARK, 1)[-1]
            if (name.startswith(".") and MARK in name and pid.isdigit() and entry.is_dir()
                    and process_exists(int(pid)) is False):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def budget_bytes(memory_budget_gb: float | None) -> int | None:
    """The in-memory byte budget in bytes: the setting (GB), else a quarter of the available
    memory, else None (no limit)."""
    if memory_budget_gb is not None:
        return int(memory_budget_gb * 1e9)
    available = available_memory_bytes()
    return None if available is None else int(available * AUTO_BUDGET_SHARE)


class TensorSpill:
    """Decides which training images stay in memory and keeps the others on disk.

    Parameters
    ----------
    folder : path-like
        Where spilled tensors go (created on first use, deleted by :meth:`close`).
    budget : int or None
        Bytes the in-memory images, their targets and what training derives from
        them may take; None: no limit.
    """

    def __init__(self, folder: str | os.PathLike, budget: int | None) -> None:
        self.folder = Path(folder)
        self.budget = budget
        self.in_memory = 0
        self.spilled = 0
        self._count = 0
        self._files: dict[object, Path] = {}

    @classmethod
    def beside(cls, out: str | os.PathLike, memory_budget_gb: float | None) -> TensorSpill:
        """A spill for a run writing the model folder ``out`` (its folder beside ``out``).

        Spill folders of runs whose process is gone are deleted first.
        """
        out = Path(out)
        remove_orphans(out.parent)
        return cls(out.parent / f".{out.name}{MARK}{os.getpid()}", budget_bytes(memory_budget_gb))

    def fits(self, image: torch.Tensor, extra: int = 0) -> bool:
        """Whether an image, a target of its size and ``extra`` bytes derived from it stay in
        memory; counts them if so."""
        need = 2 * image.numel() * image.element_size() + extra
        if self.budget is not None and self.in_memory + need > self.budget:
            return False
        self.in_memory += need
        return True

    def keep(self, tensor: torch.Tensor, slot: object) -> torch.Tensor:
        """``tensor``'s values in a memory-mapped file (a new tensor backed by it).

        Parameters
        ----------
        tensor : torch.Tensor
            Values to keep (copied to the file).
        slot : hashable
            What the tensor is (e.g. an image's key and ``"target"``): the file an
            earlier tensor of the same slot had is deleted (its mapping stays valid
            for whoever still holds it).

        Raises
        ------
        ArtSegError
            The file cannot be written (disk full, no permission), naming the folder.
        """
        array = tensor.detach().cpu().contiguous().numpy()
        # temporary file, then rename, as atomic.atomic_write does, but without its fsyncs:
        # these are scratch copies of data in memory, deleted when the run ends
        self._count += 1
        path = self.folder / f"{self._count}.npy"
        temporary = self.folder / f".{self._count}.npy.tmp"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(temporary, "wb") as handle:
                np.save(handle, array, allow_pickle=False)
            os.replace(temporary, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise ArtSegError(f"{self.folder}: cannot keep training images on disk "
                              f"({exc.strerror or exc}); free disk space there or raise "
                              "memory_budget_gb") from None
        self.spilled += 1
        old = self._files.pop(slot, None)
        if old is not None:
            with contextlib.suppress(OSError):
                old.unlink()
        self._files[slot] = path
        return torch.from_numpy(np.load(path, mmap_mode="c", allow_pickle=False))

    def close(self) -> None:
        """Delete the folder and everything in it (tensors mapped from it stay readable)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> TensorSpill:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
