"""Saving a trained model folder as progress events, one step per file written."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ArtSegConfig
from ..model_files import write_model
from .ddp import barrier, is_rank_zero
from .events import ProgressEvent, as_events


def save_events(
    out: Path,
    config: ArtSegConfig,
    networks: dict[str, torch.nn.Module],
    metadata: dict[str, Any],
    tables: dict[str, list[dict[str, Any]]] | None = None,
    rasters: dict[str, np.ndarray] | None = None,
    members: dict[str, Path] | None = None,
) -> Generator[ProgressEvent, None, Path]:
    """Write the complete model folder ``out``: a ``save`` stage event, then a step per file.

    The parameters are those of :func:`~napari_artseg.model_files.write_model`.
    Under torchrun only rank 0 writes and the other ranks wait until the folder
    exists. The caller marks its run finished and yields the closing
    ``saved`` event itself, so that a run closed at that event is not saved
    again as ``partial``. Closing this generator before its end writes nothing.
    """
    yield ProgressEvent("save", kind="stage", message=f"saving {out}")
    if is_rank_zero():
        yield from as_events(
            write_model(out, config, networks, metadata, tables, "complete", rasters, members),
            lambda done, of: ProgressEvent("save", done, of, message=f"{done}/{of} files"))
    barrier()
    return Path(out)


def saved_event(out: Path) -> ProgressEvent:
    """The event that closes the ``save`` stage of a finished run."""
    return ProgressEvent("save", 1, 1, kind="stage", message=f"saved {out}")
