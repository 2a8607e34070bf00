"""The live loss / validation-metric plot of the training widget (matplotlib in the dock).

matplotlib draws into an off-screen Agg figure in a helper thread
(:func:`~napari_artseg.training_curves.render_curves`); the GUI thread only puts
the finished pixels on a label, so drawing ticks and text (50-700 ms on a busy
2-core machine) never stalls napari.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer, Signal
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QLabel, QSizePolicy

from ..training_curves import render_curves

RESIZE_DELAY_MS = 150


class LossPlot(QLabel):
    """Training and validation loss and the validation metric per epoch.

    Re-rendered only when an epoch ends (:meth:`add_row`) or the widget is
    resized, and kept after the run ends.

    Attributes
    ----------
    rows : list of dict
        The curve rows (see :func:`~napari_artseg.training_curves.curve_row`).
    points : int
        Points in the last finished picture.
    redraws : int
        Pictures finished so far.
    """

    _rendered = Signal(object, int)

    def __init__(self) -> None:
        super().__init__()
        self.setMinimumSize(200, 160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.rows: list[dict[str, Any]] = []
        self.points = 0
        self.redraws = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="artseg-plot")
        self._busy = False  # a render is out; only the GUI thread reads or sets this
        self._again = False
        self._rendered.connect(self._show_pixels)
        self._resize_timer = QTimer(self)
        self._resize_timer.setSingleShot(True)
        self._resize_timer.setInterval(RESIZE_DELAY_MS)
        self._resize_timer.timeout.connect(self.redraw)
        self.redraw()

    def clear(self) -> None:
        """Forget the curves (a new run starts)."""
        self.rows = []
        self.redraw()

    def add_row(self, row: dict[str, Any]) -> None:
        """Add one epoch's numbers and re-render."""
        self.rows.append(row)
        self.redraw()

    def redraw(self) -> None:
        """Render :attr:`rows` in the helper thread (one render at a time, the latest wins).

        While a render is out, a request only marks that another is needed; the
        finished render's hand-over (:meth:`_show_pixels`, GUI thread) starts it,
        so no request is lost however the two threads interleave.
        """
        if self._busy:
            self._again = True
            return
        rows = list(self.rows)
        width, height = max(self.width(), 200), max(self.height(), 160)
        try:
            self._executor.submit(self._render, rows, width, height)
        except RuntimeError:  # the renderer was closed: the widget is going away
            return
        self._busy = True

    def _render(self, rows: list[dict[str, Any]], width: int, height: int) -> None:
        """Helper thread: draw, then hand the pixels to the GUI thread by a queued signal.

        Always hands something over (None when drawing failed), so the GUI
        thread always learns that the render is finished.
        """
        try:
            pixels = render_curves(rows, width, height)
        except Exception:  # a plot is never worth an error dialog; the next epoch redraws
            pixels = None
        points = sum(
            1 for r in rows for key in ("train_loss", "val_loss", "val_metric")
            if r.get(key) is not None)
        self._rendered.emit(pixels, points)

    def _show_pixels(self, pixels: np.ndarray | None, points: int) -> None:
        self._busy = False
        if pixels is not None:
            height, width = pixels.shape[:2]
            image = QImage(pixels.data, width, height, 4 * width, QImage.Format.Format_RGBA8888)
            self.setPixmap(QPixmap.fromImage(image.copy()))
            self.points = points
            self.redraws += 1
        if self._again:
            self._again = False
            self.redraw()

    def resizeEvent(self, event: Any) -> None:
        """Re-render at the new size once resizing settles."""
        super().resizeEvent(event)
        self._resize_timer.start()

    def close_renderer(self) -> None:
        """Stop the helper thread (after the render in progress)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
