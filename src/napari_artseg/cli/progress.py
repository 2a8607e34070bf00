"""Progress bars for the command line (tqdm on stderr), fed by ProgressEvents."""

from __future__ import annotations

import sys
from collections.abc import Generator, Iterator
from typing import Any

from tqdm import tqdm

from ..training.events import ProgressEvent


def run_with_progress(generator: Generator[Any, None, Any], quiet: bool = False) -> Any:
    """Drive a progress generator to its end with one bar per stage; return its result.

    Epoch events are printed as a line (losses and validation metrics). On
    KeyboardInterrupt the generator is closed (so it can save a partial result)
    and the interrupt propagates.
    """
    bar: tqdm | None = None
    stage = None
    try:
        while True:
            try:
                event = next(generator)
            except StopIteration as stop:
                return stop.value
            if not isinstance(event, ProgressEvent) or quiet:
                continue
            if event.stage != stage or bar is None:
                if bar is not None:
                    bar.close()
                stage = event.stage
                bar = tqdm(total=event.total or None, desc=stage, file=sys.stderr,
                           mininterval=0.5, leave=False, dynamic_ncols=True)
            if event.total and bar.total != event.total:
                bar.total = event.total
            bar.n = event.step
            if event.kind == "validation":
                bar.set_postfix_str(event.message, refresh=False)
            elif event.loss is not None:
                bar.set_postfix(loss=f"{event.loss:.4f}", refresh=False)
            bar.refresh()
            if event.kind in ("epoch", "stage", "info") and event.message:
                bar.write(f"[{event.stage}] {format_event(event)}", file=sys.stderr)
    except BaseException:
        generator.close()
        raise
    finally:
        if bar is not None:
            bar.close()


def format_event(event: ProgressEvent) -> str:
    """A one-line description of an epoch, stage or info event."""
    parts = [event.message]
    for key in ("val_loss", "val_f1", "val_iou", "pseudo_label_threshold",
                "pseudo_mask_mean_fraction"):
        if key in event.metrics and event.metrics[key] is not None and key not in event.message:
            parts.append(f"{key} {event.metrics[key]:.4f}")
    return "  ".join(parts)


def counted(iterable: Iterator[Any], total: int, desc: str, quiet: bool = False) -> Iterator[Any]:
    """Wrap a plain iterator in a progress bar."""
    return iter(tqdm(iterable, total=total, desc=desc, file=sys.stderr, disable=quiet,
                     mininterval=0.5, dynamic_ncols=True))
