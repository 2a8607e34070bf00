"""Training curves: loss and validation metric per epoch, drawn with matplotlib (no GUI).

The training widget draws :func:`draw_curves` into the figure of its dock canvas;
:func:`save_curves` writes the same picture (``training_curves.png``) and the
numbers (``training_curves.csv``) into the model folder, from any thread (a
fresh Agg figure, no pyplot).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from .atomic import atomic_write_bytes, atomic_write_text
from .training.events import ProgressEvent

CURVES_PNG = "training_curves.png"
CURVES_CSV = "training_curves.csv"
CURVE_COLUMNS = ("stage", "epoch", "train_loss", "val_loss", "val_metric", "metric_name")
#: The validation metric plotted per stage, first present wins.
STAGE_METRIC = {"classifier": ("val_f1", "val_accuracy"), "unet": ("val_iou",)}
STAGE_STYLE = {"classifier": ("Classifier", "#1f77b4"), "unet": ("U-Net", "#d62728")}


#: Stages drawn on another stage's curve (the fine-tuning rounds continue the U-Net's).
CURVE_OF_STAGE = {"unet_finetune": "unet"}


def curve_row(event: ProgressEvent) -> dict[str, Any] | None:
    """The curve row of an ``epoch`` event (None for other events)."""
    if event.kind != "epoch":
        return None
    stage = CURVE_OF_STAGE.get(event.stage, event.stage)
    metrics = event.metrics
    name = next((m for m in STAGE_METRIC.get(stage, ()) if m in metrics), "")
    return {"stage": stage, "epoch": int(metrics.get("epoch", event.step)),
            "train_loss": metrics.get("train_loss", event.loss),
            "val_loss": metrics.get("val_loss"), "val_metric": metrics.get(name),
            "metric_name": name}


class CurveRecorder:
    """Turns epoch events into curve rows, numbering epochs on across repeated stages.

    A stage that runs again (the U-Net's self-training rounds restart at epoch 1)
    continues the x axis where its previous run ended instead of drawing back.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._last: dict[str, int] = {}
        self._offset: dict[str, int] = {}

    def add(self, event: ProgressEvent) -> dict[str, Any] | None:
        """The row of an ``epoch`` event (also kept in :attr:`rows`); None for other events."""
        row = curve_row(event)
        if row is None:
            return None
        stage = row["stage"]
        if row["epoch"] + self._offset.get(stage, 0) <= self._last.get(stage, 0):
            self._offset[stage] = self._last[stage]
        row["epoch"] += self._offset.get(stage, 0)
        self._last[stage] = row["epoch"]
        self.rows.append(row)
        return row


def curves_csv(rows: list[dict[str, Any]]) -> str:
    """The curve rows as CSV text (header :data:`CURVE_COLUMNS`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CURVE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: ("" if row.get(c) is None else row[c]) for c in CURVE_COLUMNS}
                     for row in rows)
    return buffer.getvalue()


def _series(rows: list[dict[str, Any]], stage: str, key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["epoch"], float(r[key])) for r in rows
             if r["stage"] == stage and r.get(key) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def setup_axes(figure: Any) -> tuple[Any, Any]:
    """Two side-by-side axes (loss, validation metric) on ``figure``, labelled."""
    figure.clear()
    figure.subplots_adjust(left=0.12, right=0.98, bottom=0.2, top=0.86, wspace=0.35)
    loss_ax, metric_ax = figure.subplots(1, 2)
    loss_ax.set_title("loss (— train, - - val)", fontsize=8)
    metric_ax.set_title("validation F1 / IoU", fontsize=8)
    for ax in (loss_ax, metric_ax):
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    metric_ax.set_ylim(-0.02, 1.02)
    return loss_ax, metric_ax


def draw_curves(figure: Any, rows: list[dict[str, Any]]) -> int:
    """Draw the curves of ``rows`` on ``figure`` (cleared first); returns the points drawn."""
    loss_ax, metric_ax = setup_axes(figure)
    points = 0
    for stage, (label, colour) in STAGE_STYLE.items():
        for ax, key, style in ((loss_ax, "train_loss", "-"), (loss_ax, "val_loss", "--"),
                               (metric_ax, "val_metric", "-")):
            x, y = _series(rows, stage, key)
            if x:
                ax.plot(x, y, style, color=colour, marker=".", markersize=4,
                        label=label if key != "val_loss" else None)
                points += len(x)
    if points:
        loss_ax.legend(fontsize=7, loc="upper right")
    return points


def save_curves(rows: list[dict[str, Any]], folder: str | Path) -> tuple[Path, Path]:
    """Write :data:`CURVES_PNG` and :data:`CURVES_CSV` into ``folder`` (atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    folder = Path(folder)
    csv_path = atomic_write_text(folder / CURVES_CSV, curves_csv(rows))
    figure = Figure(figsize=(6.4, 2.6), dpi=100)
    FigureCanvasAgg(figure)
    draw_curves(figure, rows)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(folder / CURVES_PNG, buffer.getvalue()), csv_path


def render_curves(rows: list[dict[str, Any]], width: int, height: int, dpi: int = 80) -> Any:
    """The curves drawn into an RGBA ``(height, width, 4)`` uint8 array (Agg, any thread).

    The training widget renders off the GUI thread and only shows the pixels, so
    drawing text and ticks never stalls napari.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(width, 50) / dpi, max(height, 50) / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(figure)
    draw_curves(figure, rows)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()
