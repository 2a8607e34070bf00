"""The small progress report every training and prediction generator yields."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class ProgressEvent:
    """One step of progress.

    Attributes
    ----------
    stage : str
        ``data``, ``classifier``, ``pseudo_labels``, ``unet``, ``thresholds``,
        ``save``, ``predict`` ...
    step : int
        Steps done in this stage.
    total : int
        Steps in this stage (0 when unknown).
    kind : str
        ``step`` (inside an epoch), ``epoch`` (an epoch ended: ``metrics`` holds
        ``epoch``, ``train_loss``, ``val_loss`` and the validation metrics),
        ``validation`` (the epoch's validation images are being judged: ``metrics``
        holds ``validated`` and ``of``; ``step`` stays at the epoch's end), ``stage``
        (a stage started or ended) or ``info``.
    loss : float or None
        The latest training loss.
    metrics : dict
        Extra numbers.
    message : str
        Human-readable text.
    """

    stage: str
    step: int = 0
    total: int = 0
    kind: str = "step"
    loss: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str = ""

    @property
    def fraction(self) -> float:
        """Share of the stage done, in [0, 1] (0 when the total is unknown)."""
        return min(1.0, self.step / self.total) if self.total else 0.0


def as_events(counts: Generator[tuple[int, int], None, T],
              event: Callable[[int, int], ProgressEvent]) -> Generator[ProgressEvent, None, T]:
    """Drive a generator that yields ``(done, of)`` counts, yielding ``event(done, of)`` for each.

    Returns what ``counts`` returns; closing this generator closes ``counts``.
    """
    with contextlib.closing(counts):
        while True:
            try:
                done, of = next(counts)
            except StopIteration as stop:
                return stop.value
            yield event(done, of)
