"""The small progress report every training and prediction generator yields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
