"""The training widget's loss plot: rendered off the GUI thread, no request ever lost."""

from __future__ import annotations

import threading
import time

from napari_artseg._widgets import loss_plot
from napari_artseg._widgets.loss_plot import LossPlot


def _row(epoch: int) -> dict:
    return {"stage": "classifier", "epoch": epoch, "train_loss": 0.5, "val_loss": 0.6,
            "val_metric": 0.7, "metric_name": "val_f1"}


def test_every_row_added_during_slow_renders_reaches_the_picture(qtbot, monkeypatch):
    real = loss_plot.render_curves
    threads = []

    def slow(rows, width, height):
        threads.append(threading.current_thread().name)
        time.sleep(0.05)  # rows keep arriving while a render is out
        return real(rows, width, height)

    monkeypatch.setattr(loss_plot, "render_curves", slow)
    plot = LossPlot()
    qtbot.addWidget(plot)
    for epoch in range(1, 13):
        plot.add_row(_row(epoch))
        qtbot.wait(7 * (epoch % 3))  # requests land before, during and after renders
    qtbot.waitUntil(lambda: plot.points == 3 * 12, timeout=10000)
    assert all(name.startswith("artseg-plot") for name in threads)
    assert 1 <= plot.redraws < 13  # requests made during a render share the next one
    plot.close_renderer()


def test_a_failed_render_does_not_stop_later_ones(qtbot, monkeypatch):
    real = loss_plot.render_curves
    calls = []

    def flaky(rows, width, height):
        calls.append(len(rows))
        if len(calls) == 1:
            raise ValueError("matplotlib could not draw")
        return real(rows, width, height)

    monkeypatch.setattr(loss_plot, "render_curves", flaky)
    plot = LossPlot()  # its first render (no rows) fails
    qtbot.addWidget(plot)
    qtbot.waitUntil(lambda: len(calls) == 1)
    qtbot.wait(50)
    plot.add_row(_row(1))
    qtbot.waitUntil(lambda: plot.points == 3, timeout=10000)
    plot.close_renderer()
