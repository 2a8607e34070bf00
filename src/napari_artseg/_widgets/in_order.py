"""Running a widget's signal handlers one after another, in the order the signals came.

napari's activity-dock progress bars call ``QApplication.processEvents()`` when one
is made or moved. A handler that moves such a bar therefore lets Qt deliver the
signals queued behind the one it is handling (the next progress events, a worker's
``returned`` and ``finished``) inside itself: the later handlers run first, and the
earlier one then finishes last, leaving its older bar value and text on screen.
:class:`InOrder` queues a call made while another is running and runs it after.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QTimer


class InOrder:
    """Runs the calls given to it one at a time, in the order they were given."""

    def __init__(self) -> None:
        self._queue: deque[tuple[Callable[..., Any], tuple]] = deque()
        self._running = False

    def __call__(self, function: Callable[..., Any], *args: Any) -> None:
        """Run ``function(*args)`` now, or after the call now running and those before it.

        Parameters
        ----------
        function : callable
            A handler.
        *args
            Its arguments.
        """
        self._queue.append((function, args))
        if not self._running:
            self._drain()

    def _drain(self) -> None:
        """Run the queued calls; a call that raises leaves the rest for the next event loop."""
        self._running = True
        try:
            while self._queue:
                function, args = self._queue.popleft()
                function(*args)
        finally:
            self._running = False
            if self._queue:
                QTimer.singleShot(0, self._drain)
