"""Book-keeping every method's training run shares: folder, device, thresholds, saving."""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ArtSegConfig
from ..device import release_memory, resolve_device
from ..errors import ArtSegError
from ..model_files import read_model_document, save_model
from ..predictor import ArtSegModel
from ..training.data import TrainingItem
from ..training.ddp import is_rank_zero
from ..training.events import ProgressEvent
from ..training.saving import save_events, saved_event
from ..training.thresholds import MaskStatistics, choose_gate_and_mask_from, f1_score

#: The minimum size (share of the image area) used when no validation image shows an artifact.
FALLBACK_MIN_SIZE_FRACTION = 0.0005


class MethodRun:
    """One training run's model folder, device and what will be saved.

    Parameters
    ----------
    out : path-like
        The model folder to create (must not exist).
    config : ArtSegConfig
        The run's settings (validated here).

    Attributes
    ----------
    networks : dict
        Component name -> network or dict of tensors, saved as safetensors.
    metadata, tables, rasters, members
        As :func:`~napari_artseg.model_files.save_model` takes them.
    """

    def __init__(self, out: str | os.PathLike, config: ArtSegConfig) -> None:
        self.out = Path(out)
        if self.out.exists():
            raise ArtSegError(f"{self.out}: already exists; choose a new model folder")
        self.config = config.validate()
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        self.metadata: dict[str, Any] = {"parent": None}
        self.tables: dict[str, list[dict[str, Any]]] = {}
        self.networks: dict[str, Any] = {}
        self.rasters: dict[str, np.ndarray] = {}
        self.members: dict[str, Path] = {}
        self.finished = False

    def started(self) -> ProgressEvent:
        """The first event of the run (names the device, for the widget and the curves)."""
        return ProgressEvent("data", kind="stage", message=f"reading images on {self.device}",
                             metrics={"device": str(self.device)})

    def parent_of(self, init: str | os.PathLike | None, method: str) -> dict[str, Any] | None:
        """The document of the model to fine-tune (same method required); records its id."""
        if init is None:
            return None
        document = read_model_document(init)
        if document["method"] != method:
            raise ArtSegError(f"{init}: a {document['method']} model cannot start a {method} "
                              "run; choose a model of the same method or none")
        self.metadata["parent"] = document.get("model_id")
        return document

    def document(self) -> dict[str, Any]:
        """A config.json-like document for building an in-memory model before saving."""
        return {"method": self.config.method, "config": self.config, "thresholds": {},
                **self.metadata}

    def saving(self) -> Generator[ProgressEvent, None, Path]:
        """Write the complete model folder, a ``save`` step per file, and mark the run finished."""
        yield from save_events(self.out, self.config, self.networks, self.metadata, self.tables,
                               self.rasters, self.members)
        self.finished = True
        yield saved_event(self.out)
        return self.out

    def close(self) -> None:
        """At the end however it ends: save a ``partial`` model when a network exists."""
        try:
            if not self.finished and self.networks and not self.out.exists() and is_rank_zero():
                save_model(self.out, self.config, self.networks, self.metadata, self.tables,
                           status="partial", rasters=self.rasters, members=self.members)
        finally:
            release_memory(self.device)


def choose_thresholds(
    model: ArtSegModel, items: list[TrainingItem], val_idx: list[int], config: ArtSegConfig,
) -> Generator[ProgressEvent, None, tuple[dict[str, float], dict[str, Any]]]:
    """Gate, mask and minimum-size settings of any method, chosen on the validation split.

    The gate, mask threshold and minimum size are searched together as in
    :func:`~napari_artseg.training.thresholds.choose_gate_and_mask` (``gate_rule``
    in the config; items without a ``target`` take no part in the IoU). Settings
    given in ``config`` win. Without an artifact image among the validation labels the gate and the
    mask threshold fall back to 0.5 (the calibration's midpoint).

    A generator: a ``thresholds`` event after each validation image, so the stage shows
    progress and can be stopped between images; returns ``(thresholds, report)``.
    """
    val_items = [items[i] for i in val_idx]
    labels = np.array([item.label for item in val_items], dtype=bool)
    scores = []
    statistics = MaskStatistics()  # each map reduced as it is made, never all held at once
    try:
        for done, item in enumerate(val_items, start=1):
            # score then map of one image: one pass for map-gated methods
            scores.append(model.artifact_score(item.image))
            prob = model.processing_map(item.image).numpy()
            if labels.any():
                statistics.add(prob, None if item.target is None
                               else item.target[0].numpy() >= 0.5)
            yield ProgressEvent("thresholds", done, len(val_items), message=item.key)
    finally:
        model.clear_cache()
    scores = np.array(scores)
    report: dict[str, Any] = {}
    if labels.any():
        curated = np.array([item.curated for item in val_items])
        gate, threshold, fraction, report = choose_gate_and_mask_from(
            statistics, scores, labels, curated, config.gate_rule, config.gate_threshold)
    else:
        gate, threshold, fraction = 0.5, 0.5, FALLBACK_MIN_SIZE_FRACTION
        report["note"] = "no artifact image in the validation split: calibration defaults"
        gate = gate if config.gate_threshold is None else config.gate_threshold
    threshold = threshold if config.mask_threshold is None else config.mask_threshold
    median_area = float(np.median([np.prod(item.full_shape) for item in items]))
    min_size = config.min_size_px
    if min_size is None:
        min_size = int(round(fraction * median_area))
    report["val_gate_f1"] = f1_score(scores >= gate, labels)
    return {"gate": float(gate), "mask": float(threshold), "min_size_px": int(min_size)}, report


def manifest(items: list[TrainingItem], val_idx: list[int],
             targets: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """One row per image: its label, what supervised it and its split."""
    val = set(val_idx)
    rows = []
    for index, item in enumerate(items):
        target = (targets or {}).get(index) or ("curated" if item.curated else "none")
        rows.append({"image": item.key, "label": "artifact" if item.label else "clean",
                     "target": target, "split": "val" if index in val else "train"})
    return rows


def best_row(history: list[dict[str, Any]], best_epoch: int) -> dict[str, Any]:
    """The history row of the kept epoch ({} when none ran)."""
    return history[best_epoch - 1] if history and best_epoch else {}
