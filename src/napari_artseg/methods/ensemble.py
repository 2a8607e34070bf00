"""Ensembles: the weighted mean of member methods' probability maps.

Members are method names, trained in the same run on the same inputs (so they
share the validation split), or existing model folders. Either way each member
is copied into the ensemble's folder as ``members/<name>/`` (config, weights and
tables only), so the folder is self-contained; loading reads only JSON and
safetensors there. Members must share the ensemble's ``scale`` and
``normalization`` (one prepared image serves all). The ensemble's gate score is
the weighted mean of the members' gate scores; its gate, mask and minimum-size
thresholds are chosen on the validation split like every method's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import TEMP_FOLDER_SUFFIX
from ..config import METHODS, ArtSegConfig
from ..errors import ArtSegError, ModelFileError
from ..model_files import load_tensors, member_folder, read_model_document
from ..predictor import ArtSegModel, MapAsLogits
from ..training.data import count_on_disk, load_training_items, stratified_split
from ..training.events import ProgressEvent
from ..training.spill import TensorSpill
from .base import Method, label_counts
from .common import MethodRun, choose_thresholds, manifest


class EnsembleModel(ArtSegModel):
    """Members' maps averaged with weights; gate score = weighted mean of their scores."""

    def __init__(self, document: dict[str, Any], members: list[ArtSegModel],
                 weights: list[float], device: torch.device, folder: Path | None = None) -> None:
        super().__init__(document, None, None, device, folder)
        total = float(sum(weights))
        self.members = members
        self.weights = [float(w) / total for w in weights]
        self.unet = MapAsLogits(self._tile_map)

    def artifact_score(self, prepared: torch.Tensor) -> float:
        """The weighted mean of the members' gate scores."""
        return float(sum(w * m.artifact_score(prepared)
                         for w, m in zip(self.weights, self.members, strict=True)))

    def _compute_map(self, prepared: torch.Tensor, batch_size: int) -> torch.Tensor:
        return sum(w * m.processing_map(prepared, batch_size)
                   for w, m in zip(self.weights, self.members, strict=True))

    def _tile_map(self, tile: torch.Tensor) -> torch.Tensor:
        return self._compute_map(tile, 1)

    def clear_cache(self) -> None:
        """Forget the kept maps, the members' too."""
        super().clear_cache()
        for member in self.members:
            member.clear_cache()

    def saliency(self, image: np.ndarray) -> np.ndarray | None:
        """The Score-CAM map of the first member with a classifier (None without one)."""
        for member in self.members:
            if member.has_classifier:
                return member.saliency(image)
        return None


def check_compatible(config: ArtSegConfig, member: ArtSegConfig, where: str) -> None:
    """Members must prepare images as the ensemble does (same scale and normalisation)."""
    for name in ("scale", "normalization"):
        if getattr(member, name) != getattr(config, name):
            raise ArtSegError(f"{where}: ensemble member has {name} {getattr(member, name)!r}, "
                              f"the ensemble {getattr(config, name)!r}; members must share it")


def member_names(entries: list[str]) -> list[str]:
    """A unique folder name per member entry (method name or model folder name)."""
    names: list[str] = []
    for entry in entries:
        base = entry if entry in METHODS else Path(entry).name
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


class Ensemble(Method):
    """The weighted mean of member methods' maps (``ensemble_members``, ``ensemble_weights``)."""

    name = "ensemble"
    title = "Ensemble (mean of maps)"
    description = ("The weighted mean of the probability maps of the methods or model folders "
                   "in ensemble_members (default ScoreCAM-U-Net + AE-SSIM, the thesis's best); "
                   "members are trained in the run or copied in.")
    supervision = "image_labels"

    def missing_inputs(self, labels: dict[str, str], masks_dir: str | os.PathLike | None = None,
                       config: ArtSegConfig | None = None) -> str:
        """Image labels for the thresholds, and what every member method needs."""
        from . import get_method

        own = super().missing_inputs(labels, masks_dir)
        if own or config is None:
            return own
        for entry in config.ensemble_members:
            if entry in METHODS:
                message = get_method(entry).missing_inputs(labels, masks_dir)
                if message:
                    return f"Ensemble member {message}"
        return ""

    def load(self, folder: Path, document: dict[str, Any], device: torch.device) -> ArtSegModel:
        """Load every member from ``members/<name>/`` (no nesting, ids checked)."""
        from . import get_method

        self.check_complete(folder, document)
        path = folder / "config.json"
        entries = document.get("members")
        if not isinstance(entries, list) or not entries or not all(isinstance(e, dict)
                                                                   for e in entries):
            raise ModelFileError(f"{path}: an ensemble needs a non-empty members list")
        weights = load_tensors(folder, "ensemble").get("weights")
        if (weights is None or weights.ndim != 1 or len(weights) != len(entries)
                or not bool(torch.isfinite(weights).all()) or bool((weights < 0).any())
                or float(weights.sum()) <= 0):
            raise ModelFileError(f"{folder / 'ensemble.safetensors'}: weights must be "
                                 f"{len(entries)} finite non-negative numbers, not all 0")
        members = []
        for entry in entries:
            sub = member_folder(folder, entry.get("name"))
            sub_document = read_model_document(sub)
            if sub_document["method"] == "ensemble":
                raise ModelFileError(f"{sub}: an ensemble cannot be a member of an ensemble")
            if sub_document.get("model_id") != entry.get("model_id"):
                raise ModelFileError(f"{sub}: model id {sub_document.get('model_id')!r} differs "
                                     f"from the ensemble's record {entry.get('model_id')!r}")
            try:
                check_compatible(document["config"], sub_document["config"], str(sub))
            except ArtSegError as exc:
                raise ModelFileError(str(exc)) from None
            members.append(get_method(sub_document["method"]).load(sub, sub_document, device))
        return EnsembleModel(document, members, weights.tolist(), device, folder)

    def train(
        self,
        images_dir: str | os.PathLike,
        labels: dict[str, str],
        out: str | os.PathLike,
        config: ArtSegConfig,
        masks_dir: str | os.PathLike | None = None,
        init: str | os.PathLike | None = None,
    ) -> Generator[ProgressEvent, None, Path]:
        """Train (or take) the members, choose the ensemble's thresholds, save it all."""
        from . import get_method

        self.check_init(init)
        self.check_inputs(labels, masks_dir, config.validate())
        entries = list(config.ensemble_members)
        weights = list(config.ensemble_weights) or [1.0] * len(entries)
        for entry in entries:
            if entry not in METHODS and not Path(entry).is_dir():
                raise ArtSegError(f"ensemble member {entry!r}: neither a method "
                                  f"({', '.join(m for m in METHODS if m != 'ensemble')}) nor a "
                                  "model folder")
        run = MethodRun(out, config)
        yield run.started()
        run.out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{run.out.name}.members.",
                                        suffix=TEMP_FOLDER_SUFFIX, dir=run.out.parent))
        try:
            models, records = [], []
            for index, (name, entry) in enumerate(zip(member_names(entries), entries,
                                                      strict=True)):
                yield ProgressEvent("members", index, len(entries), kind="stage",
                                    message=f"member {index + 1} of {len(entries)}: {name}")
                if entry in METHODS:
                    folder = yield from get_method(entry).train(
                        images_dir, labels, staging / name, config.replace(method=entry),
                        masks_dir=masks_dir)
                else:
                    folder = Path(entry)
                document = read_model_document(folder)
                if document["method"] == "ensemble" or document.get("status") != "complete":
                    raise ArtSegError(f"{folder}: an ensemble member must be a complete model "
                                      "of another method")
                check_compatible(config, document["config"], str(folder))
                models.append(get_method(document["method"]).load(folder, document, run.device))
                run.members[name] = folder
                records.append({"name": name, "method": document["method"], "source": entry,
                                "model_id": document.get("model_id"),
                                "weight": float(weights[index])})
            yield from self._finish(run, models, records, weights, images_dir, labels, masks_dir)
            return run.out
        finally:
            run.close()
            shutil.rmtree(staging, ignore_errors=True)

    def _finish(self, run: MethodRun, models: list[ArtSegModel], records: list[dict[str, Any]],
                weights: list[float], images_dir: Any, labels: dict[str, str],
                masks_dir: Any) -> Generator[ProgressEvent, None, None]:
        """Thresholds on the validation split, then save the folder with its members."""
        config = run.config
        with TensorSpill.beside(run.out, config.memory_budget_gb) as spill:
            items, pixel_size = yield from load_training_items(images_dir, labels, config,
                                                               masks_dir, spill)
            _, val_idx = stratified_split([i.label for i in items], config.val_fraction,
                                          config.seed)
            run.networks["ensemble"] = {"weights": torch.tensor(weights, dtype=torch.float32)}
            run.metadata.update(members=records, label_counts=label_counts(labels),
                                pixel_size_um=pixel_size or config.pixel_size_um,
                                n_images_on_disk=count_on_disk(items))
            yield ProgressEvent("thresholds", kind="stage", message="choosing thresholds")
            model = EnsembleModel(run.document(), models, weights, run.device)
            thresholds, report = yield from choose_thresholds(model, items, val_idx, config)
        run.metadata.update(thresholds=thresholds, validation_metrics=report)
        run.tables["manifest"] = manifest(items, val_idx)
        yield from run.saving()
