"""Retrain from corrections (the MDL step of the human-in-the-loop loop), with a fixed held-out set.

A project's curated masks supervise their images pixel by pixel; with
ScoreCAM-U-Net the other artifact images get the current model's own masks when it
is fine-tuned (``parent_mask_targets``; Score-CAM pseudo-labels from scratch or where
its map is empty), the clean ones zero targets (all through
:func:`~napari_artseg.training.train_pipeline`,
which trains any method: with ``cdl`` the detector labels the images without a
curated mask, ``supervised_unet`` trains on the curated masks and the clean
images). Fine-tuning keeps the current model's method; a model whose method
cannot be fine-tuned (anomaly detectors, ensembles) is replaced by a new one
trained from scratch with the chosen method. Curated pixels weigh
more (``curated_weight``) and a soft-Dice term fights class imbalance
(``dice_weight``); while they are few, the curated masks all train, half the
artifact crops come from them and the fine-tune keeps its last, annealed epoch
(``curated_validation_min``, ``curated_share``, ``fine_tune_schedule``). The current
model is fine-tuned unless ``from_scratch``.
When the image labels are exactly those the parent was trained on (its
``manifest.csv``), its classifier is kept (``classifier_epochs=0``): only
the U-Net learns from the corrections, and the Score-CAM maps of the unchanged
classifier come from the project's pseudo-label cache instead of being
recomputed.

When the project has enough curated masks, a share of them is held out: the
held-out images are chosen once and stored in ``project.json``
(``settings["held_out_masks"]``), never train, and are predicted by the model
before and after retraining, so successive retrains are compared on the same
masks. The new model folder gets ``retrain_report.json`` (before/after numbers)
and ``masks_manifest.csv`` (every curated mask with its SHA-256, provenance and
role), beside the pipeline's ``manifest.csv``. GUI-free.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_text
from .config import ArtSegConfig
from .errors import ArtSegError
from .export import current_model_folder
from .image_files import read_image, read_mask
from .model_files import read_model_document, rows_to_csv
from .process_memory import heap_reuse
from .provenance import ProvenanceTable
from .training.data import LABEL_VALUES, mask_path_for
from .training.events import ProgressEvent
from .training_job import TrainingJob

HELD_OUT_SETTING = "held_out_masks"
#: Fewer curated masks than this: none is held out (all of them train).
MIN_CURATED_FOR_HOLDOUT = 5
HOLDOUT_FRACTION = 0.2
#: Retraining uses at least these loss settings (curated pixels count more; a Dice term).
CURATED_WEIGHT = 4.0
DICE_WEIGHT = 1.0
#: Settings that must match the parent when fine-tuning (the method, the networks, their input).
ARCHITECTURE_FIELDS = ("method", "resnet_depth", "resnet_width", "resnet_stem_pool", "resnet_pool",
                       "unet_width", "unet_levels", "unet_convs_per_level", "unet_downsample",
                       "input_size", "unet_input_size", "scale", "normalization", "tile_halo")
#: Thresholds of the precision-recall sweep (log-spaced like the threshold slider, plus 0.5).
PR_THRESHOLDS = np.unique(np.concatenate([np.logspace(-4, 0, 41), [0.5]]))


def curated_images(project: Any) -> list[str]:
    """The project's labelled (clean or artifact) images that have a curated mask, sorted."""
    labels = project.labels.labels
    return sorted(k for k, v in labels.items() if v in ("clean", "artifact")
                  and mask_path_for(project.masks_dir, k).is_file()
                  and project.image_path(k).is_file())


def held_out_set(project: Any, fraction: float = HOLDOUT_FRACTION,
                 minimum: int = MIN_CURATED_FOR_HOLDOUT, seed: int = 0) -> list[str]:
    """The fixed held-out curated images of a project (chosen once, then kept in project.json).

    Parameters
    ----------
    project : napari_artseg.project.Project
        The project (its settings are saved when the set is chosen or shrinks).
    fraction : float
        Share of the curated masks to hold out when choosing (at least one).
    minimum : int
        With fewer curated masks than this, nothing is held out (and nothing saved).
    seed : int
        Seed of the choice.

    Returns
    -------
    list of str
        Held-out image keys. A saved set is kept as it is (images whose mask was
        deleted are dropped from it); new masks always train.
    """
    curated = curated_images(project)
    saved = project.settings.get(HELD_OUT_SETTING)
    if isinstance(saved, list) and saved:
        kept = [k for k in saved if k in curated]
        if kept != saved:
            project.settings[HELD_OUT_SETTING] = kept
            project.save()
        if kept:
            return kept
    if len(curated) < minimum:
        return []
    n = min(len(curated) - 1, max(1, round(fraction * len(curated))))
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(curated, size=n, replace=False).tolist())
    project.settings[HELD_OUT_SETTING] = chosen
    project.save()
    return chosen


@dataclass
class MaskEvaluation:
    """A model's measures on curated masks.

    Attributes
    ----------
    model : str
        The model folder's name.
    summary : dict
        ``pixel_iou``, ``pixel_f1``, ``pixel_precision``, ``pixel_recall``,
        ``object_f1``, ``mean_image_iou``, ``n_images`` (see :mod:`napari_artseg.metrics`).
    per_image : list of dict
        One row per image.
    curve : dict
        Precision-recall sweep of the probability maps: ``thresholds``,
        ``precision``, ``recall``, ``f1``, ``iou`` (lists).
    threshold : float
        The model's mask threshold (where ``summary`` was measured).
    """

    model: str
    summary: dict[str, float]
    per_image: list[dict[str, Any]]
    curve: dict[str, list[float]]
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (NaN as None)."""
        return _json_safe(asdict(self))


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def evaluate_on_masks(
    model_folder: str | os.PathLike, project: Any, images: Sequence[str], device: str = "auto",
    stage: str = "evaluate",
) -> Generator[ProgressEvent, None, MaskEvaluation]:
    """Predict ``images`` with a model and measure it against their curated masks.

    Parameters
    ----------
    model_folder : path-like
        A complete model folder.
    project : napari_artseg.project.Project
        Where the images and masks are.
    images : sequence of str
        Image keys with curated masks.
    device : str
        Compute device.
    stage : str
        Stage name of the progress events.

    Returns
    -------
    MaskEvaluation
        Pixel and object measures at the model's threshold, and the PR sweep.
    """
    from .metrics import evaluate_dataset, precision_recall_curve
    from .predictor import ArtSegModel

    model = ArtSegModel.load(model_folder, device=device)
    pairs, maps = [], []
    try:
        with heap_reuse():  # freed memory is kept for the next image, not mapped again
            for index, image in enumerate(images, start=1):
                loaded = read_image(project.image_path(image))
                truth = read_mask(mask_path_for(project.masks_dir, image), loaded.data.shape)
                result = model.predict(loaded.data, pixel_size_um=loaded.pixel_size_um)
                pairs.append((image, result.mask, truth))
                maps.append((result.probability, truth))
                yield ProgressEvent(stage, index, len(images), message=image)
    finally:
        from .device import release_memory

        release_memory(model.device)
    evaluation = evaluate_dataset(pairs)
    curve = precision_recall_curve(maps, PR_THRESHOLDS)
    curve_lists = {k: np.asarray(curve[k], dtype=float).tolist()
                   for k in ("thresholds", "precision", "recall", "f1", "iou")}
    summary = {k: v for k, v in evaluation.summary().items() if not k.startswith("cls_")}
    return MaskEvaluation(Path(model_folder).name, summary, evaluation.per_image, curve_lists,
                          float(model.thresholds.get("mask", 0.5)))


@dataclass
class RetrainReport:
    """What a retrain did and whether the new model is better on the held-out masks.

    Attributes
    ----------
    model : pathlib.Path
        The new model folder.
    parent : str or None
        The folder name of the model it was fine-tuned from (None: from scratch).
    previous : str or None
        The model that was current before (evaluated as "before").
    held_out : list of str
        The held-out curated images.
    n_curated_train : int
        Curated masks that trained the new model.
    before, after : MaskEvaluation or None
        Measures on the held-out masks (None when nothing is held out or there
        was no previous model).
    note : str
        Why there are no before/after numbers, when there are none.
    """

    model: Path
    parent: str | None
    previous: str | None
    held_out: list[str] = field(default_factory=list)
    n_curated_train: int = 0
    before: MaskEvaluation | None = None
    after: MaskEvaluation | None = None
    note: str = ""

    @property
    def improved(self) -> bool | None:
        """True when the held-out pixel IoU went up (None when it cannot be told)."""
        if self.before is None or self.after is None:
            return None
        return self.after.summary["pixel_iou"] > self.before.summary["pixel_iou"]

    def text(self) -> str:
        """One or two lines for the user."""
        lines = [f"Model {self.model.name}: {self.n_curated_train} curated mask(s) trained it "
                 + (f"(fine-tuned from {self.parent})" if self.parent else "(from scratch)")]
        if self.after is not None:
            after = self.after.summary
            part = f"held-out IoU ({len(self.held_out)} masks): "
            if self.before is not None:
                b = self.before.summary
                verdict = "better" if self.improved else "not better"
                part += (f"before {b['pixel_iou']:.3f} -> after {after['pixel_iou']:.3f} "
                         f"({verdict}); object F1 {b['object_f1']:.3f} -> "
                         f"{after['object_f1']:.3f}")
            else:
                part += f"{after['pixel_iou']:.3f} (no previous model to compare)"
            lines.append(part)
        if self.note:
            lines.append(self.note.strip())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (what ``retrain_report.json`` holds)."""
        return _json_safe({
            "model": self.model.name, "parent": self.parent, "previous": self.previous,
            "held_out": self.held_out, "n_curated_train": self.n_curated_train,
            "improved": self.improved, "note": self.note,
            "before": self.before.to_dict() if self.before else None,
            "after": self.after.to_dict() if self.after else None,
        })


def inherit_architecture(config: ArtSegConfig, parent: ArtSegConfig) -> ArtSegConfig:
    """``config`` with the parent's network and input settings (so its weights fit)."""
    return config.replace(**{name: getattr(parent, name) for name in ARCHITECTURE_FIELDS})


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def masks_manifest(project: Any, train: Sequence[str], held_out: Sequence[str]) -> list[dict]:
    """One row per curated mask: image, mask file, SHA-256, provenance, its model, role."""
    table = ProvenanceTable(project.masks_dir / "provenance.csv")
    rows = []
    for role, images in (("train", train), ("held_out", held_out)):
        for image in images:
            path = mask_path_for(project.masks_dir, image)
            row = table.get(image)
            rows.append({"image": image, "label": project.labels.get(image) or "",
                         "mask_file": path.relative_to(project.folder).as_posix(),
                         "sha256": _sha256(path), "provenance": row.provenance if row else "",
                         "mask_model_id": row.model_id if row else "", "role": role})
    return rows


def retrain(
    project: Any,
    config: ArtSegConfig,
    out: str | os.PathLike,
    from_scratch: bool = False,
    holdout_fraction: float = HOLDOUT_FRACTION,
    min_holdout: int = MIN_CURATED_FOR_HOLDOUT,
    init: str | os.PathLike | None = None,
) -> Generator[ProgressEvent, None, RetrainReport]:
    """Retrain a project's model from its curated masks; measure before and after.

    Parameters
    ----------
    project : napari_artseg.project.Project
        The project (labels, ``masks/``, current model).
    config : ArtSegConfig
        Settings of the run. ``curated_weight`` and ``dice_weight`` are raised to
        at least :data:`CURATED_WEIGHT` and :data:`DICE_WEIGHT`; when fine-tuning,
        the network settings come from the parent (:data:`ARCHITECTURE_FIELDS`).
    out : path-like
        The new model folder (must not exist).
    from_scratch : bool
        Train new networks instead of fine-tuning the current model.
    holdout_fraction, min_holdout
        See :func:`held_out_set`.
    init : path-like, optional
        Fine-tune this model instead of the current one.

    Yields
    ------
    ProgressEvent
        ``evaluate_before``, then the training pipeline's events, then ``evaluate_after``.

    Returns
    -------
    RetrainReport
        Also written as ``retrain_report.json`` in the model folder, with
        ``masks_manifest.csv``. The caller decides whether to make it current.
    """
    from .methods import get_method
    from .training import train_pipeline

    held = held_out_set(project, holdout_fraction, min_holdout, config.seed)
    curated = curated_images(project)
    labels = {k: v for k, v in project.labels.labels.items()
              if k not in held and project.image_path(k).is_file()}
    previous = current_model_folder(project)
    parent = None if from_scratch else (Path(init) if init else previous)
    scratch_note = ""
    if parent is not None:
        parent_config = read_model_document(parent)["config"]
        if get_method(parent_config.method).can_fine_tune:
            config = inherit_architecture(config, parent_config)
        else:
            scratch_note = (f"{parent.name} ({parent_config.method}) cannot be fine-tuned: a new "
                            f"{config.method} model was trained from scratch. ")
            parent = None
    method = get_method(config.method)
    if method.supervision == "none":
        labels = {k: labels.get(k, "unsure") for k in project.images() if k not in held}
    elif method.supervision == "image_labels":
        require_labels(labels)
    method.check_inputs(labels, project.masks_dir, config)
    config = config.replace(curated_weight=max(config.curated_weight, CURATED_WEIGHT),
                            dice_weight=max(config.dice_weight, DICE_WEIGHT))
    keep_note = ""
    if (parent is not None and "classifier" in method.components and config.classifier_epochs
            and trained_labels(parent) == usable_labels(labels)):
        config = config.replace(classifier_epochs=0)
        keep_note = (f"The image labels are those {parent.name} was trained on: its classifier "
                     "was kept (classifier_epochs=0) and only the U-Net was fine-tuned. ")
    train_masks = [k for k in curated if k not in held and k in labels]
    report = RetrainReport(Path(out), parent.name if parent else None,
                           previous.name if previous else None, held, len(train_masks))
    report.note = scratch_note + keep_note
    if not held:
        report.note += (f"No held-out masks: {len(curated)} curated mask(s), fewer than "
                        f"{min_holdout}; all of them train (no before/after comparison).")
    if held and previous is not None:
        yield ProgressEvent("evaluate_before", 0, len(held), kind="stage",
                            message=f"measuring {previous.name} on {len(held)} held-out mask(s)")
        report.before = yield from evaluate_on_masks(previous, project, held, config.device,
                                                     "evaluate_before")
    folder = yield from train_pipeline(project.image_folder, labels, out, config,
                                       masks_dir=project.masks_dir, init=parent)
    if held:
        yield ProgressEvent("evaluate_after", 0, len(held), kind="stage",
                            message=f"measuring the new model on {len(held)} held-out mask(s)")
        report.after = yield from evaluate_on_masks(folder, project, held, config.device,
                                                    "evaluate_after")
    atomic_write_text(Path(folder) / "masks_manifest.csv",
                      rows_to_csv(masks_manifest(project, train_masks, held)) if curated
                      else "image,label,mask_file,sha256,provenance,mask_model_id,role\n")
    atomic_write_text(Path(folder) / "retrain_report.json",
                      json.dumps(report.to_dict(), indent=2) + "\n")
    yield ProgressEvent("evaluate_after", 1, 1, kind="stage", message=report.text())
    return report


def usable_labels(labels: dict[str, str]) -> dict[str, str]:
    """The ``clean`` / ``artifact`` labels of a label table (what trains a classifier)."""
    return {k: v for k, v in labels.items() if v in LABEL_VALUES}


def trained_labels(model_folder: str | os.PathLike) -> dict[str, str] | None:
    """The image labels that trained a model, from its ``manifest.csv`` (None: unknown)."""
    import csv

    try:
        with open(Path(model_folder) / "manifest.csv", newline="", encoding="utf-8") as handle:
            return {row["image"]: row["label"] for row in csv.DictReader(handle)}
    except (OSError, KeyError, ValueError, csv.Error):
        return None


def read_report(model_folder: str | os.PathLike) -> dict[str, Any] | None:
    """The ``retrain_report.json`` of a model folder, or None."""
    path = Path(model_folder) / "retrain_report.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def require_labels(labels: dict[str, str]) -> None:
    """Refuse to start without 2 clean and 2 artifact training images (one line, what to do)."""
    words = list(labels.values())
    clean, artifact = words.count("clean"), words.count("artifact")
    if min(clean, artifact) < 2:
        raise ArtSegError(
            f"retraining needs at least 2 clean and 2 artifact images outside the held-out set; "
            f"got {clean} clean and {artifact} artifact: label more images")


class RetrainJob(TrainingJob):
    """A retrain of a project, driven like a :class:`~napari_artseg.training_job.TrainingJob`.

    Parameters
    ----------
    project : napari_artseg.project.Project
        The project.
    config : ArtSegConfig
        Settings of the run.
    from_scratch : bool
        Train new networks instead of fine-tuning the current model.

    Attributes
    ----------
    report : RetrainReport or None
        Set when the run has finished.
    """

    def __init__(self, project: Any, config: ArtSegConfig, from_scratch: bool = False) -> None:
        held = held_out_set(project, seed=config.seed)
        labels = {k: v for k, v in project.labels.labels.items()
                  if k not in held and project.image_path(k).is_file()}
        super().__init__(project.image_folder, labels, project.models_dir, config,
                         project.masks_dir)
        self.project = project
        self.from_scratch = from_scratch
        self.report: RetrainReport | None = None

    def _pipeline(self) -> Generator[ProgressEvent, None, RetrainReport]:
        """The MDL retrain generator (see :func:`retrain`)."""
        if self.in_subprocess:  # the child opens the project from its folder
            return self._run(retrain_project_folder, self.project.folder, self.config, self.out,
                             self.from_scratch)
        return retrain(self.project, self.config, self.out, self.from_scratch)

    def _finish(self, result: RetrainReport) -> Path:
        """Keep the report; the model folder is its ``model``."""
        self.report = result
        return result.model


def retrain_project_folder(
    folder: str | os.PathLike, config: ArtSegConfig, out: Path, from_scratch: bool = False
) -> Generator[ProgressEvent, None, RetrainReport]:
    """:func:`retrain` of the project in ``folder`` (opened here: for a child process)."""
    from .project import Project

    return (yield from retrain(Project.open(folder), config, out, from_scratch))
