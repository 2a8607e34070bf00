"""Read the next images ahead of the user, in background threads, within a byte budget.

:class:`ReadAhead` keeps a small cache of decoded images. The caller says which
images it wants next, in order of priority (:meth:`ReadAhead.want`); worker
threads read them and compute display contrast limits from a subsample, so the
thread that draws only has to hand a ready array to the screen. The cache is
bounded in bytes, not in images: a folder of 2048 x 2048 images and a folder
of 512 x 512 images both stay within the same memory.

The module imports no GUI toolkit. ``on_ready`` callbacks run in a worker
thread; a GUI forwards them to its own thread (a Qt signal does that).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ArtSegError
from .image_files import LoadedImage, read_image

#: Default byte budget for cached images (about 16 images of 2048 x 2048 float32).
DEFAULT_MAX_BYTES = 256 * 1024**2
#: Nice value added to the reading threads on Linux (see :func:`_lower_priority`).
READER_NICENESS = 10
#: Pixels sampled to estimate contrast limits.
CONTRAST_SAMPLE = 256 * 256


@dataclass
class CachedImage:
    """An image ready for display, or the reason it could not be read.

    Attributes
    ----------
    path : pathlib.Path
        The image file.
    data : numpy.ndarray or None
        (H, W) float32 pixels; None when reading failed.
    contrast_limits : tuple of float
        Low and high display limits (percentiles of a subsample).
    dtype : str
        The dtype stored in the file.
    error : str or None
        One-line message when the file could not be read.
    notes : list of str
        Conversions applied while reading.
    """

    path: Path
    data: np.ndarray | None
    contrast_limits: tuple[float, float] = (0.0, 1.0)
    dtype: str = ""
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        """Memory held by the pixels."""
        return 0 if self.data is None else int(self.data.nbytes)


def contrast_limits(
    data: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)
) -> tuple[float, float]:
    """Display limits from percentiles of a regular subsample of ``data``.

    A strided subsample of about :data:`CONTRAST_SAMPLE` pixels keeps this to
    about a millisecond on a 2048 x 2048 image; the limits differ from the full
    percentiles by far less than a grey level on natural images.
    """
    step = max(1, int(np.sqrt(data.size / CONTRAST_SAMPLE)))
    sample = data[::step, ::step] if data.ndim == 2 else data.ravel()[::step * step]
    low, high = (float(v) for v in np.percentile(sample, percentiles))
    if not high > low:
        low, high = float(data.min()), float(data.max())
    if not high > low:
        high = low + 1.0
    return low, high


def _lower_priority() -> None:
    """Run this reading thread at a lower CPU priority than the drawing thread (Linux).

    On Linux a thread is a task with its own nice value, so the reads ahead yield
    the CPU to the GUI thread that is drawing the current image. Elsewhere this
    does nothing.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), READER_NICENESS)


def load_for_display(path: Path, reader: Callable[[Path], LoadedImage] = read_image) -> CachedImage:
    """Read one image and compute its contrast limits; errors become a message."""
    try:
        loaded = reader(path)
    except (ArtSegError, OSError) as exc:
        return CachedImage(path, None, error=str(exc))
    return CachedImage(
        path,
        loaded.data,
        contrast_limits(loaded.data),
        dtype=loaded.dtype,
        notes=list(loaded.notes),
    )


class ReadAhead:
    """A byte-bounded cache of images read ahead by a thread pool.

    Parameters
    ----------
    max_bytes : int
        Budget for the decoded pixels held (done and being read).
    workers : int
        Number of reading threads.
    reader : callable
        Reads a path into a :class:`~napari_artseg.image_files.LoadedImage`.
    on_ready : callable, optional
        Called with the path of each image as soon as it is cached (from a
        worker thread).

    Notes
    -----
    Images wanted are read in priority order while the running total of their
    sizes (known sizes, or the last seen size as an estimate) fits the budget;
    the wanted image with the highest priority is always allowed. Cached images
    that are no longer wanted are evicted, oldest use first, when space is
    needed.
    """

    def __init__(
        self,
        max_bytes: int = DEFAULT_MAX_BYTES,
        workers: int = 2,
        reader: Callable[[Path], LoadedImage] = read_image,
        on_ready: Callable[[Path], None] | None = None,
    ) -> None:
        self.max_bytes = int(max_bytes)
        self._reader = reader
        self._on_ready = on_ready
        self._pool = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="artseg-read", initializer=_lower_priority
        )
        self._lock = threading.Lock()
        self._cache: OrderedDict[Path, CachedImage] = OrderedDict()
        self._pending: dict[Path, Future] = {}
        self._wanted: list[Path] = []
        self._typical_bytes = 0
        self._closed = False

    # ------------------------------------------------------------------ queries
    @property
    def cached_bytes(self) -> int:
        """Bytes held by cached images."""
        with self._lock:
            return sum(item.nbytes for item in self._cache.values())

    def cached_paths(self) -> list[Path]:
        """Paths currently cached (oldest use first)."""
        with self._lock:
            return list(self._cache)

    def peek(self, path: str | Path) -> CachedImage | None:
        """The cached image for ``path`` without waiting, or None."""
        path = Path(path)
        with self._lock:
            item = self._cache.get(path)
            if item is not None:
                self._cache.move_to_end(path)
            return item

    def is_pending(self, path: str | Path) -> bool:
        """True while ``path`` is queued or being read."""
        with self._lock:
            return Path(path) in self._pending

    # ------------------------------------------------------------------ scheduling
    def want(self, paths: Sequence[str | Path]) -> None:
        """Declare the images needed next, most urgent first, and start reading them."""
        wanted = list(dict.fromkeys(Path(p) for p in paths))
        with self._lock:
            if self._closed:
                return
            self._wanted = wanted
            self._schedule_locked()

    def get(self, path: str | Path, timeout: float | None = None) -> CachedImage:
        """The image for ``path``: from the cache, waiting for a pending read, or read now."""
        path = Path(path)
        with self._lock:
            item = self._cache.get(path)
            future = self._pending.get(path)
            if item is not None:
                self._cache.move_to_end(path)
                return item
        if future is not None and not future.cancelled():
            future.result(timeout)
            item = self.peek(path)
            if item is not None:
                return item
        item = load_for_display(path, self._reader)
        self._store(item)
        return item

    def close(self) -> None:
        """Stop the threads (pending reads are cancelled) and drop the cache."""
        with self._lock:
            self._closed = True
            for future in self._pending.values():
                future.cancel()
            self._pending.clear()
            self._cache.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ internals
    def _schedule_locked(self) -> None:
        """Cancel reads no longer wanted, make room, and start the wanted ones."""
        allowed = self._allowed_locked()
        for path, future in list(self._pending.items()):
            if path not in allowed and future.cancel():
                del self._pending[path]
        self._evict_locked(keep=allowed)
        for path in allowed:
            if path not in self._cache and path not in self._pending:
                self._pending[path] = self._pool.submit(self._load, path)

    def _size_locked(self, path: Path) -> int:
        """Bytes ``path`` takes or will take (until one image is read: the whole budget)."""
        item = self._cache.get(path)
        if item is not None:
            return item.nbytes
        return self._typical_bytes or self.max_bytes

    def _allowed_locked(self) -> list[Path]:
        """The prefix of the wanted list that fits the byte budget (at least one)."""
        allowed: list[Path] = []
        total = 0
        for path in self._wanted:
            total += self._size_locked(path)
            if allowed and total > self.max_bytes:
                break
            allowed.append(path)
        return allowed

    def _evict_locked(self, keep: Sequence[Path]) -> None:
        """Drop unwanted cached images, oldest use first, until the budget holds."""
        keep_set = set(keep)
        reserved = self._typical_bytes * sum(1 for p in self._pending if p not in self._cache)
        total = sum(item.nbytes for item in self._cache.values()) + reserved
        for path in list(self._cache):
            if total <= self.max_bytes:
                break
            if path not in keep_set:
                total -= self._cache.pop(path).nbytes

    def _load(self, path: Path) -> None:
        """Worker: read one image and cache it."""
        item = load_for_display(path, self._reader)
        self._store(item)

    def _store(self, item: CachedImage) -> None:
        with self._lock:
            self._pending.pop(item.path, None)
            if self._closed:
                return
            if item.nbytes:
                self._typical_bytes = item.nbytes
            self._cache[item.path] = item
            self._cache.move_to_end(item.path)
            self._evict_locked(keep=[*self._allowed_locked(), item.path])
            self._schedule_locked()
        if self._on_ready is not None:
            self._on_ready(item.path)
