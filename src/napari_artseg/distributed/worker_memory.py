"""Local Dask workers keep freed heap memory for the next image, as the serial loop does.

``artseg predict`` on a folder runs inside
:func:`~napari_artseg.process_memory.heap_reuse`, so an image's activations reuse the
memory the previous image freed instead of the kernel zero-filling it afresh
(docs/performance.md, "Folder prediction"). A worker process of the local cluster
that ``artseg predict --dask`` starts does nothing but predict, so it holds the same
setting from its start to its end. Workers of a cluster given by address are left
as they are: they may run other work.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from distributed import WorkerPlugin

from ..process_memory import heap_reuse


class HeapReusePlugin(WorkerPlugin):
    """Holds :func:`~napari_artseg.process_memory.heap_reuse` in each worker process it is on."""

    name = "napari-artseg-heap-reuse"

    def __init__(self) -> None:
        self._held: ExitStack | None = None

    def setup(self, worker: Any) -> None:
        """Set the thresholds in the worker process (glibc only; elsewhere nothing happens)."""
        self._held = ExitStack()
        self._held.enter_context(heap_reuse())

    def teardown(self, worker: Any) -> None:
        """The worker is closing: restore the thresholds and trim the heap."""
        if self._held is not None:
            self._held.close()
            self._held = None
