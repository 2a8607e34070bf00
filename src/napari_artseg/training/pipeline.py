"""The whole training run, as one generator: :func:`train_pipeline`.

:func:`train_pipeline` trains the method ``config.method`` names (see
:mod:`napari_artseg.methods`); this module holds the ScoreCAM-U-Net run,
:func:`train_scorecam_unet`. Its stages: read data, train the classifier,
Score-CAM pseudo-labels, train the U-Net, choose thresholds on the validation
split, save the model folder. Score-CAM maps are cached on disk when the model folder
is in a project (:mod:`.saliency_cache`), so a run with the same classifier reuses them.
Closing the generator (cancel) between yields saves what was trained so far as a
``partial`` model when the classifier had finished, and never touches any other
model folder.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ArtSegConfig
from ..device import release_memory, resolve_device
from ..model_files import read_model_document, save_model
from ..process_memory import heap_reuse
from ..training.classifier import (
    build_classifier,
    counted_probabilities,
    global_views,
    train_classifier,
)
from ..training.data import (
    TrainingItem,
    check_label_counts,
    count_on_disk,
    curated_to_training,
    load_training_items,
    stratified_split,
)
from ..training.pseudo_labels import (
    assign_targets,
    choose_pseudo_threshold,
    otsu_pseudo_threshold,
    per_image_thresholds,
    saliency_maps,
)
from ..training.segmenter import (
    build_unet,
    corrections_unjudged,
    refresh_pseudo_targets,
    train_unet,
    unet_probability,
)
from ..training.thresholds import (
    MaskStatistics,
    choose_gate_and_mask_from,
    extent_and_fallback,
)
from .ddp import is_rank_zero
from .events import ProgressEvent, as_events
from .saliency_cache import SaliencyCache, default_cache_folder
from .saving import save_events, saved_event
from .spill import TensorSpill


class TrainingCancelled(Exception):
    """Raised to a caller that asked for a result of a run it cancelled."""


def _init_networks(init: Path | None, config: ArtSegConfig):
    """Networks for the run: fresh, or loaded from a parent model (fine-tuning).

    Returns the classifier, the U-Net, the parent's model id (None without one) and
    whether the U-Net's weights came from the parent.
    """
    from ..model_files import load_weights

    classifier, unet = build_classifier(config), build_unet(config)
    parent, parent_unet = None, False
    if init is not None:
        document = read_model_document(init)
        parent = document.get("model_id")
        load_weights(init, "classifier", classifier)
        if "unet" in document.get("components", []):
            load_weights(init, "unet", unet)
            parent_unet = True
    return classifier, unet, parent, parent_unet


def _manifest(items: list[TrainingItem], val_idx: list[int],
              cuts: dict[int, float] | None = None) -> list[dict[str, Any]]:
    """One row per training image: label, what supervised it, its split and pseudo threshold."""
    val = set(val_idx)
    rows = []
    for index, item in enumerate(items):
        kind = "curated" if item.curated else ("pseudo" if item.label else "zero")
        rows.append({"image": item.key, "label": "artifact" if item.label else "clean",
                     "target": kind, "split": "val" if index in val else "train",
                     "pseudo_threshold": (cuts or {}).get(index, "")})
    return rows


def _rasters(items: list[TrainingItem], maps: dict[int, torch.Tensor]) -> dict[str, np.ndarray]:
    """Score-CAM maps (uint8 0-255) and pseudo-labels (uint8 0/1) as TIFFs for the folder.

    Those of an item kept on disk are kept there too (:meth:`.data.TrainingItem.hold`).
    """
    out: dict[str, np.ndarray] = {}
    for index, saliency in maps.items():
        item = items[index]
        stem = Path(item.key).with_suffix("").as_posix()
        out[f"saliency/{stem}.tif"] = item.hold_array(
            (saliency.numpy() * 255).round().astype(np.uint8), "saliency_raster")
        if item.target is not None and not item.curated:
            out[f"pseudo_labels/{stem}.tif"] = item.hold_array(
                (item.target[0].numpy() >= 0.5).astype(np.uint8), "pseudo_label_raster")
    return out


def _saliency_cache(out: Path, classifier, config: ArtSegConfig, images_dir,
                    device: torch.device) -> SaliencyCache | None:
    """The on-disk cache of this run's Score-CAM maps (None: switched off, or no folder known)."""
    folder = default_cache_folder(out) if config.pseudo_label_cache else None
    if folder is None:
        return None
    return SaliencyCache(folder, classifier, config, images_dir, device)


def _cache_report(cache: SaliencyCache | None) -> dict[str, Any]:
    """How many maps came from the cache (and why it could not be written); prunes old keys."""
    if cache is None:
        return {}
    if is_rank_zero():
        cache.prune()
    report: dict[str, Any] = {"saliency_cached": cache.hits}
    if cache.write_error:
        report["saliency_cache_error"] = cache.write_error
    return report


def _choose_thresholds(classifier, unet, items, val_idx, config, device, pseudo, own_targets):
    """Gate, mask and minimum-size settings chosen on the validation split.

    A generator: a ``thresholds`` event after each chunk of gate scores (counted per view)
    and after each validation image's U-Net map (``2 * len(val_idx)`` steps in all), so the
    stage shows progress and can be stopped between images; returns ``(thresholds, report)``.

    ``own_targets``: the pseudo-labelled images' targets are the U-Net's own masks
    (self-training or a parent's masks), which moves ties toward a mask threshold of 0.5
    and, with ``mask_fallback``, makes a lower chosen threshold the empty-mask fallback.
    """
    val_items = [items[i] for i in val_idx]
    labels = np.array([item.label for item in val_items])
    total = 2 * len(val_items)
    scores = yield from as_events(
        counted_probabilities(classifier, len(val_items),
                              lambda start, stop: global_views(val_items[start:stop], config),
                              device, amp=config.amp, symmetries=config.gate_symmetries),
        lambda done, _of: ProgressEvent("thresholds", done, total, message="gate scores"))
    statistics = MaskStatistics()  # each map reduced as it is made, never all held at once
    for done, item in enumerate(val_items, start=len(val_items) + 1):
        statistics.add(unet_probability(unet, item.image, config, device).cpu().numpy(),
                       item.target[0].numpy() >= 0.5)
        yield ProgressEvent("thresholds", done, total, message=item.key)
    curated = np.array([item.curated for item in val_items])
    gate, threshold, fraction, report = choose_gate_and_mask_from(
        statistics, scores, labels, curated, config.gate_rule, config.gate_threshold,
        own_targets)
    fallback = None
    if config.mask_threshold is not None:
        threshold = config.mask_threshold
    elif config.mask_fallback:
        threshold, fallback = extent_and_fallback(threshold, own_targets, bool(curated.any()))
    median_area = float(np.median([np.prod(item.full_shape) for item in items]))
    min_size = config.min_size_px
    if min_size is None:
        min_size = int(round(fraction * median_area))
    thresholds = {"pseudo_label": pseudo, "gate": float(gate), "mask": float(threshold),
                  "min_size_px": int(min_size)}
    if fallback is not None:
        thresholds["fallback"] = fallback
    return thresholds, {**report, "val_gate_f1": _f1(scores >= gate, labels)}


def targets_are_own(pseudo_report: dict[str, Any]) -> bool:
    """Whether the pseudo-labelled images' targets became the U-Net's own masks cut at 0.5.

    True after a self-training round or when fine-tuning started from a parent's masks;
    read from the pseudo-label report a training run stores in ``config.json``
    (``pseudo_labels``), so a saved model answers the same as the run did.
    """
    return "self_training_updated" in pseudo_report or "parent_mask_targets" in pseudo_report


def _f1(pred: np.ndarray, truth: np.ndarray) -> float:
    from ..metrics import classification_counts

    return float(classification_counts(pred, truth.astype(bool))["f1"])


def train_pipeline(
    images_dir: str | os.PathLike,
    labels: dict[str, str],
    out: str | os.PathLike,
    config: ArtSegConfig,
    masks_dir: str | os.PathLike | None = None,
    init: str | os.PathLike | None = None,
) -> Generator[ProgressEvent, None, Path]:
    """Train the method ``config.method`` names; yields progress, returns the model folder.

    Parameters are those of :func:`train_scorecam_unet` (every method takes them;
    what each needs is in docs/methods.md). Closing the generator cancels the run.
    """
    from ..methods import get_method

    # freed activations are reused by the next step, not mapped again; when the run ends, however
    # it ends, its images and activations, freed by now, go back to the system
    with heap_reuse():
        return (yield from get_method(config.method).train(images_dir, labels, out, config,
                                                            masks_dir=masks_dir, init=init))


def train_scorecam_unet(
    images_dir: str | os.PathLike,
    labels: dict[str, str],
    out: str | os.PathLike,
    config: ArtSegConfig,
    masks_dir: str | os.PathLike | None = None,
    init: str | os.PathLike | None = None,
) -> Generator[ProgressEvent, None, Path]:
    """Train ScoreCAM-U-Net from image-level labels (and optional curated masks).

    Parameters
    ----------
    images_dir : path-like
        Folder the label keys are relative to.
    labels : dict
        Image path -> ``clean`` / ``artifact`` / ``unsure`` (unsure is skipped).
    out : path-like
        The model folder to create (must not exist).
    config : ArtSegConfig
        Every setting.
    masks_dir : path-like, optional
        Curated masks ``<key>.tif`` that supervise their images directly.
    init : path-like, optional
        A model folder to fine-tune from (its id is recorded as ``parent``).

    Yields
    ------
    ProgressEvent
        Per batch, epoch and image; ``stage`` events at stage boundaries.

    Returns
    -------
    pathlib.Path
        The model folder.

    Notes
    -----
    Images that do not fit ``config.memory_budget_gb`` are kept on disk,
    memory-mapped, in a folder beside ``out`` that is deleted when the run ends
    (:mod:`napari_artseg.training.spill`).
    """
    out = Path(out)
    if out.exists():
        from ..errors import ArtSegError

        raise ArtSegError(f"{out}: already exists; choose a new model folder")
    config.validate()
    with TensorSpill.beside(out, config.memory_budget_gb) as spill:
        return (yield from _train_scorecam_unet(images_dir, labels, out, config, masks_dir,
                                                init, spill))


def _train_scorecam_unet(images_dir, labels, out: Path, config: ArtSegConfig, masks_dir, init,
                         spill: TensorSpill) -> Generator[ProgressEvent, None, Path]:
    """:func:`train_scorecam_unet` with its spill made."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    yield ProgressEvent("data", kind="stage", message=f"reading images on {device}",
                        metrics={"device": str(device)})
    items, pixel_size = yield from load_training_items(images_dir, labels, config, masks_dir,
                                                       spill)
    counts = check_label_counts(items)
    train_idx, val_idx = stratified_split([i.label for i in items], config.val_fraction,
                                          config.seed)
    train_idx, val_idx = curated_to_training(items, train_idx, val_idx,
                                             config.curated_validation_min)
    classifier, unet, parent, parent_unet = _init_networks(Path(init) if init else None, config)
    fine_tune_lr = config.start_learning_rate(bool(init))
    metadata: dict[str, Any] = {"parent": parent, "label_counts": counts,
                                "pixel_size_um": pixel_size or config.pixel_size_um,
                                "n_curated_masks": sum(i.curated for i in items),
                                "n_images_on_disk": count_on_disk(items)}
    tables: dict[str, list[dict[str, Any]]] = {}
    networks: dict[str, torch.nn.Module] = {}
    rasters: dict[str, np.ndarray] = {}
    cuts: dict[int, float] = {}
    finished = False
    try:
        yield ProgressEvent("classifier", kind="stage", message="training the classifier")
        classifier, fit_c = yield from train_classifier(items, train_idx, val_idx, config, device,
                                                        classifier, fine_tune_lr)
        networks["classifier"] = classifier
        tables["history_classifier"] = fit_c.history
        need = [i for i, item in enumerate(items) if item.label == 1 and not item.curated]
        yield ProgressEvent("pseudo_labels", 0, len(need), kind="stage",
                            message="Score-CAM pseudo-labels")
        cache = _saliency_cache(out, classifier, config, images_dir, device) if need else None
        maps = yield from saliency_maps(classifier, items, need, config, device, cache)
        pseudo = config.pseudo_label_threshold
        pseudo_report: dict[str, Any] = {}
        if pseudo is None and config.pseudo_label_rule == "otsu":
            pseudo, pseudo_report = otsu_pseudo_threshold(maps)
        elif pseudo is None:
            yield ProgressEvent("pseudo_thresholds", kind="stage",
                                message="pseudo-label threshold (deletion test, validation)")
            pseudo, pseudo_report = yield from choose_pseudo_threshold(classifier, items, maps,
                                                                       val_idx, config, device)
        own = None
        if config.pseudo_label_per_image:
            yield ProgressEvent("pseudo_thresholds", 0, len(maps), kind="stage",
                                message="per-image pseudo-label thresholds (deletion test)")
            own = yield from per_image_thresholds(classifier, items, maps, config, device)
            pseudo_report["n_own_threshold"] = sum(v is not None for v in own.values())
        pseudo_report.update(assign_targets(items, maps, pseudo, own))
        pseudo_report.update(_cache_report(cache))
        cuts = {i: (own or {}).get(i) or pseudo for i in maps}
        rasters = _rasters(items, maps)
        if parent_unet and config.parent_mask_targets and maps:
            # fine-tuning: images nobody corrected start from the parent's own masks, which the
            # parent's training (self-training included) made better than raw Score-CAM masks
            yield ProgressEvent("self_training", kind="stage",
                                message="targets from the parent model's masks")
            unet.to(device)
            found = yield from refresh_pseudo_targets(unet, items, config, device)
            pseudo_report["parent_mask_targets"] = found["self_training_updated"]
        yield ProgressEvent("unet", kind="stage", message="training the U-Net",
                            metrics={"pseudo_label_threshold": pseudo, **pseudo_report})
        keep_last = (parent_unet and config.fine_tune_schedule == "cosine"
                     and corrections_unjudged(items, train_idx, val_idx))
        unet, fit_u = yield from train_unet(items, train_idx, val_idx, config, device, unet,
                                            fine_tune_lr, keep_last=keep_last)
        tables["history_unet"] = fit_u.history
        rounds = config.self_training_rounds if maps else 0  # nothing pseudo-labelled: skip
        for round_ in range(1, rounds + 1):
            yield ProgressEvent("self_training", kind="stage",
                                message=f"self-training round {round_}: U-Net targets")
            pseudo_report.update((yield from refresh_pseudo_targets(unet, items, config, device)))
            yield ProgressEvent("unet_finetune", kind="stage",
                                message=f"fine-tuning the U-Net, round {round_}")
            tuned = config.replace(unet_epochs=max(1, config.unet_epochs // 2))
            unet, fit_r = yield from train_unet(items, train_idx, val_idx, tuned, device, unet,
                                                config.learning_rate * 0.1, stage="unet_finetune",
                                                keep_last=keep_last)
            offset = len(tables["history_unet"])
            tables["history_unet"] += [{**row, "epoch": row["epoch"] + offset, "round": round_}
                                       for row in fit_r.history]
            fit_u = fit_r
        networks["unet"] = unet
        yield ProgressEvent("thresholds", kind="stage", message="choosing thresholds")
        thresholds, report = yield from _choose_thresholds(
            classifier, unet, items, val_idx, config, device, pseudo,
            targets_are_own(pseudo_report))
        metadata.update(thresholds=thresholds, pseudo_labels=pseudo_report,
                        validation_metrics={
                            "classifier": fit_c.history[fit_c.best_epoch - 1] if fit_c.history
                            else {},
                            "unet": fit_u.history[fit_u.best_epoch - 1] if fit_u.history else {},
                            **report})
        tables["manifest"] = _manifest(items, val_idx, cuts)
        yield from save_events(out, config, networks, metadata, tables, rasters)
        finished = True
        yield saved_event(out)
        return out
    finally:
        if not finished and "classifier" in networks and is_rank_zero():
            tables["manifest"] = _manifest(items, val_idx, cuts)
            save_model(out, config, networks, metadata, tables, status="partial", rasters=rasters)
        release_memory(device)
