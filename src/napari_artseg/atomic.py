"""Atomic file and folder writes: a crash never leaves half a file.

Every file the package writes goes through these helpers: the content is written
to a temporary file in the destination folder, flushed and fsynced, then renamed
over the destination (``os.replace`` is atomic on POSIX and Windows when both
paths are on the same file system). Folders (model folders) are built under a
temporary name, every file in them fsynced, then renamed into place.

A process killed with SIGKILL (or a power cut) can leave temporary files
(``.<name>.<random>.tmp``) and folders (``.<name>.<random>.partial``) behind;
they never carry a final name, so they cannot be mistaken for a complete file.
:func:`remove_stale_temporaries` deletes them later. Files get the usual
permissions (``0o666`` less the umask), not ``mkstemp``'s private ``0o600``, so
a project folder shared with colleagues stays readable.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


def _read_umask() -> int:
    """The process umask (read once; ``os.umask`` can only be read by setting it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
#: Suffixes of the temporary names written by this module.
TEMP_FILE_SUFFIX = ".tmp"
TEMP_FOLDER_SUFFIX = ".partial"


def _fsync_dir(folder: Path) -> None:
    """Flush a directory entry so a rename survives power loss (POSIX only)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """Flush every file and folder below ``folder`` to disk (files written by other libraries)."""
    for current, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(current, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(current))


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write a file atomically through a callback.

    Parameters
    ----------
    path : path-like
        Destination. Its folder is created when missing.
    write : callable
        Called with a binary file object open for writing; it writes the content.

    Returns
    -------
    pathlib.Path
        The destination path.
    """
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        write(handle)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write by name; rename it to ``path`` when the block ends.

    For libraries that want a file name rather than a file object. The
    temporary file is fsynced before the rename and removed if the block raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_FILE_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        if os.name == "posix":
            os.chmod(tmp, 0o666 & ~_UMASK)
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8 by default) and return the path."""
    return atomic_write_bytes(path, text.encode(encoding))


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it into place when complete.

    Parameters
    ----------
    path : path-like
        The final folder. It must not exist unless ``overwrite`` is true.
    overwrite : bool
        Replace an existing folder (the old one is removed only after the new one
        is complete).

    Yields
    ------
    pathlib.Path
        The temporary folder to fill. If the block raises, it is removed and
        ``path`` is left as it was.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMP_FOLDER_SUFFIX,
                                dir=path.parent))
    try:
        if os.name == "posix":
            os.chmod(tmp, 0o777 & ~_UMASK)
        yield tmp
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_temporaries(folder: str | os.PathLike, age_s: float = 60.0) -> list[Path]:
    """Clean up after writers that were killed mid-write in ``folder`` (not recursive).

    Temporary files (``.<name>.*.tmp``) and temporary folders (``.<name>.*.partial``)
    older than ``age_s`` seconds are deleted. A folder moved aside by
    :func:`atomic_folder` with ``overwrite`` (``.<name>.old-<pid>``) whose
    replacement never arrived is renamed back to ``<name>``; one whose
    replacement is in place is deleted.

    Parameters
    ----------
    folder : path-like
        The folder to clean (a missing folder is ignored).
    age_s : float
        Minimum age: younger temporaries may belong to a writer still running.

    Returns
    -------
    list of pathlib.Path
        What was removed or restored.
    """
    folder = Path(folder)
    done: list[Path] = []
    now = time.time()
    try:
        entries = [p for p in folder.iterdir() if p.name.startswith(".")]
    except OSError:
        return done
    for entry in entries:
        name = entry.name
        with contextlib.suppress(OSError):
            if now - entry.lstat().st_mtime <= age_s:
                continue
            if name.endswith(TEMP_FILE_SUFFIX) and entry.is_file():
                entry.unlink()
                done.append(entry)
            elif name.endswith(TEMP_FOLDER_SUFFIX) and entry.is_dir():
                shutil.rmtree(entry)
                done.append(entry)
            elif ".old-" in name and entry.is_dir():
                final = folder / name[1:].rsplit(".old-", 1)[0]
                if final.exists():
                    shutil.rmtree(entry)
                else:
                    os.replace(entry, final)
                done.append(entry)
    return done
