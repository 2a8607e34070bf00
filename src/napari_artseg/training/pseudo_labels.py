"""Score-CAM pseudo-labels: saliency maps of artifact images, binarised.

The threshold is a setting (the paper used 0.05 on its normalisation). When it is
left unset, ``pseudo_label_rule`` chooses it from the training data's maps:

- ``"otsu"`` (default): Otsu's threshold of all the artifact images' saliency
  values pooled together. It needs no masks and no classifier calls.
- ``"deletion"``: a deletion test on the validation artifact images: for each,
  the largest threshold whose above-threshold region, replaced by the image
  mean, turns the classifier's call to clean; the median over images.

With ``pseudo_label_per_image`` every artifact image gets its own deletion-test
threshold, falling back to the global threshold when no candidate flips the call.

Measured on two saved ``fast`` runs (the 100 artifact images of ``artseg synth
--n 200 --size 512 --seed 1``, pseudo-mask IoU against the true masks pooled over
the images, ``benchmarks/bench_pseudo_threshold.py``): per-image deletion
thresholds 0.017 and 0.162, pooled Otsu 0.169 and 0.343, the best fixed threshold
in hindsight 0.174 and 0.364. The deletion test keeps the smallest region that flips the call, which
on a hesitant classifier is a few pixels; Otsu does not depend on the classifier's
confidence.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
import torch
from skimage.filters import threshold_otsu

from ..config import ArtSegConfig
from ..models import ResNetClassifier
from ..normalize import resize
from ..saliency import scorecam_runner
from .data import TrainingItem, global_view
from .ddp import gather_dict, split
from .events import ProgressEvent
from .saliency_cache import SaliencyCache

#: Candidate pseudo-label thresholds for the deletion test, largest first.
DELETION_CANDIDATES = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05, 0.02)
FALLBACK_THRESHOLD = 0.5


def saliency_maps(
    classifier: ResNetClassifier,
    items: list[TrainingItem],
    indices: list[int],
    config: ArtSegConfig,
    device: torch.device,
    cache: SaliencyCache | None = None,
) -> Generator[ProgressEvent, None, dict[int, torch.Tensor]]:
    """Score-CAM maps of the chosen items at the classifier's view size (S, S).

    Yields one progress event per image; returns ``{index: map}`` on the CPU.
    In a process group each rank computes a share of the maps and all ranks
    return all of them (:mod:`.ddp`). The map of an item kept on disk is kept
    there too (:meth:`.data.TrainingItem.hold`). With a ``cache`` (made for this
    classifier and config) a map found there is used as it is and a computed
    one is stored.
    """
    maps: dict[int, torch.Tensor] = {}
    mine = split(indices)
    runner = None  # built at the first map computed: none when the cache holds every map
    for done, index in enumerate(mine, start=1):
        key = items[index].key
        found = cache.load(key) if cache is not None else None
        hit = found is not None
        if not hit:
            runner = runner or scorecam_runner(classifier, config)
            view = global_view(items[index].image, config.input_size)[None].to(device)
            found = runner(view)[0].float().cpu()
            if cache is not None:
                cache.store(key, found)
        maps[index] = items[index].hold(found, "saliency")
        yield ProgressEvent("pseudo_labels", done, len(mine),
                            message=f"{key} (cached)" if hit else key)
    gathered = gather_dict(maps)  # the other ranks' maps are held here too
    return {index: maps[index] if index in maps else items[index].hold(gathered[index],
                                                                        "saliency")
            for index in indices}


def to_item_scale(saliency: torch.Tensor, item: TrainingItem) -> torch.Tensor:
    """Resize an (S, S) map to the item's processing-scale shape, as (1, h, w)."""
    return resize(saliency[None, None], tuple(item.image.shape[-2:]))[0]


@torch.inference_mode()
def deletion_threshold(
    classifier: ResNetClassifier, view: torch.Tensor, saliency: torch.Tensor,
    device: torch.device, candidates: tuple[float, ...] = DELETION_CANDIDATES,
) -> float | None:
    """The largest threshold whose region, set to the mean (0), makes the view look clean.

    Returns None when no candidate flips the classifier's call.
    """
    classifier.eval()
    keep = torch.stack([(saliency < t).float() for t in candidates])[:, None]
    probs = torch.sigmoid(classifier((view[None] * keep).to(device)).float()).cpu()
    flipped = [t for t, p in zip(candidates, probs.tolist(), strict=True) if p < 0.5]
    return flipped[0] if flipped else None


def choose_pseudo_threshold(
    classifier: ResNetClassifier, items: list[TrainingItem], maps: dict[int, torch.Tensor],
    val_idx: list[int], config: ArtSegConfig, device: torch.device,
) -> Generator[ProgressEvent, None, tuple[float, dict[str, float]]]:
    """Choose the pseudo-label threshold on the validation artifact images.

    A generator: a ``pseudo_thresholds`` event per image tested. Returns the threshold
    and a small report (``n_images``, ``n_flipped``).
    """
    found = []
    candidates = [i for i in val_idx if items[i].label == 1 and i in maps]
    for done, index in enumerate(candidates, start=1):
        view = global_view(items[index].image, config.input_size)
        value = deletion_threshold(classifier, view, maps[index], device)
        if value is not None:
            found.append(value)
        yield ProgressEvent("pseudo_thresholds", done, len(candidates), message=items[index].key)
    threshold = float(np.median(found)) if found else FALLBACK_THRESHOLD
    return threshold, {"n_images": len(candidates), "n_flipped": len(found)}


def otsu_pseudo_threshold(maps: dict[int, torch.Tensor]) -> tuple[float, dict[str, float]]:
    """Otsu's threshold of every map's values pooled together.

    Falls back to :data:`FALLBACK_THRESHOLD` when there are no maps or all values
    are equal. Returns the threshold and a small report (``n_images``).
    """
    if not maps:
        return FALLBACK_THRESHOLD, {"n_images": 0}
    values = torch.cat([m.flatten().float() for m in maps.values()]).numpy()
    if not np.isfinite(values).all() or values.max() <= values.min():
        return FALLBACK_THRESHOLD, {"n_images": len(maps)}
    return float(threshold_otsu(values)), {"n_images": len(maps)}


def per_image_thresholds(
    classifier: ResNetClassifier, items: list[TrainingItem], maps: dict[int, torch.Tensor],
    config: ArtSegConfig, device: torch.device,
) -> Generator[ProgressEvent, None, dict[int, float | None]]:
    """The deletion-test threshold of every image with a map (None where nothing flips).

    Shared out over the ranks of a process group like :func:`saliency_maps`.
    """
    found: dict[int, float | None] = {}
    mine = split(list(maps))
    for done, index in enumerate(mine, start=1):
        view = global_view(items[index].image, config.input_size)
        found[index] = deletion_threshold(classifier, view, maps[index], device)
        yield ProgressEvent("pseudo_thresholds", done, len(mine), message="deletion test")
    gathered = gather_dict(found)
    return {index: gathered[index] for index in maps}


def assign_targets(
    items: list[TrainingItem], maps: dict[int, torch.Tensor], threshold: float,
    per_image: dict[int, float | None] | None = None,
) -> dict[str, float]:
    """Give every item without a curated mask its U-Net target.

    Clean images get zeros; artifact images get their saliency map binarised at
    their own threshold from ``per_image`` when there is one, else at
    ``threshold``. Returns pseudo-mask statistics (mean area fraction).
    """
    fractions = []
    for index, item in enumerate(items):
        if item.curated:
            continue
        if item.label == 0:
            item.target = torch.zeros_like(item.image)
            continue
        own = (per_image or {}).get(index)
        cut = own if own is not None else threshold
        binary = (to_item_scale(maps[index], item) >= cut).float()
        item.target = binary
        fractions.append(float(binary.mean()))
    return {
        "pseudo_mask_mean_fraction": float(np.mean(fractions)) if fractions else 0.0,
        "pseudo_mask_images": len(fractions),
    }
