"""Which image to look at next: the ones the model is least sure about (active selection).

- Unlabelled images are ordered by the classifier's uncertainty,
  ``1 - |2 p - 1|`` for its P(artifact) ``p`` (1 at p = 0.5, 0 at p = 0 or 1).
- Predicted masks are ordered by how much a correction would teach the U-Net:
  the disagreement between the Score-CAM map and the U-Net's probability map
  (``1 - soft Dice`` of the two maps), plus the mean binary entropy of the
  probability map (how many pixels sit near 0.5), plus the classifier's
  uncertainty (a gate near its threshold). Each term lies in [0, 1].

Whether this beats a random order is measured by
``benchmarks/bench_corrections.py`` (docs/loop.md gives the result). GUI-free.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtSegError
from .image_files import read_image
from .training.events import ProgressEvent

#: Weights of the mask-uncertainty terms: Score-CAM/U-Net disagreement, entropy, classifier.
MASK_WEIGHTS = {"disagreement": 1.0, "entropy": 1.0, "classifier": 0.5}
_EPS = 1e-6


def classifier_uncertainty(score: float, gate: float = 0.5) -> float:
    """Uncertainty of an image-level call, 1 at the gate threshold and 0 at 0 or 1.

    Parameters
    ----------
    score : float
        The classifier's P(artifact).
    gate : float
        The decision threshold (0.5 for a label; the model's gate for a prediction).
    """
    score = float(np.clip(score, 0.0, 1.0))
    gate = float(np.clip(gate, _EPS, 1 - _EPS))
    distance = (score - gate) / gate if score < gate else (score - gate) / (1 - gate)
    return float(1.0 - abs(distance))


def mean_entropy(probability: np.ndarray) -> float:
    """Mean binary entropy (bits) of a probability map, in [0, 1]."""
    p = np.clip(np.asarray(probability, dtype=np.float64), _EPS, 1 - _EPS)
    return float(np.mean(-(p * np.log2(p) + (1 - p) * np.log2(1 - p))))


def map_disagreement(probability: np.ndarray, saliency: np.ndarray) -> float:
    """``1 - soft Dice`` between the U-Net map and the Score-CAM map (0 when both are empty)."""
    p = np.asarray(probability, dtype=np.float64)
    s = np.asarray(saliency, dtype=np.float64)
    if p.shape != s.shape:
        raise ValueError(f"map shapes differ: {p.shape} and {s.shape}")
    total = p.sum() + s.sum()
    if total < _EPS * p.size:
        return 0.0
    return float(1.0 - 2.0 * (p * s).sum() / total)


def mask_uncertainty(probability: np.ndarray, saliency: np.ndarray | None = None,
                     score: float | None = None, gate: float = 0.5,
                     weights: Mapping[str, float] | None = None) -> float:
    """How uncertain a predicted mask is (higher: more worth correcting).

    Parameters
    ----------
    probability : numpy.ndarray
        The U-Net's (un-gated) probability map.
    saliency : numpy.ndarray, optional
        The Score-CAM map (same shape); without it the disagreement term is left out.
    score : float, optional
        The classifier's P(artifact); without it the classifier term is left out.
    gate : float
        The model's gate threshold.
    weights : mapping, optional
        Term weights (default :data:`MASK_WEIGHTS`).

    Returns
    -------
    float
        The weighted mean of the available terms, in [0, 1].
    """
    weights = dict(weights or MASK_WEIGHTS)
    terms = {"entropy": mean_entropy(probability)}
    if saliency is not None:
        terms["disagreement"] = map_disagreement(probability, saliency)
    if score is not None:
        terms["classifier"] = classifier_uncertainty(score, gate)
    total = sum(weights[k] for k in terms)
    return float(sum(weights[k] * v for k, v in terms.items()) / total) if total else 0.0


def rank(scores: Mapping[str, float]) -> list[str]:
    """Images by uncertainty, highest first (ties: by name)."""
    return sorted(scores, key=lambda image: (-scores[image], image))


def next_most_useful(ranking: Sequence[str], skip: Iterable[str] = ()) -> str | None:
    """The first image of ``ranking`` not in ``skip`` (done already), or None."""
    done = set(skip)
    return next((image for image in ranking if image not in done), None)


def score_unlabelled(
    get_model: Callable[[], Any], image_folder: str | os.PathLike, images: Sequence[str],
) -> Generator[ProgressEvent, None, dict[str, float]]:
    """Classifier uncertainty of each image (run it on unlabelled images).

    Parameters
    ----------
    get_model : callable
        Returns the loaded :class:`~napari_artseg.predictor.ArtSegModel` (called
        in the thread that runs the generator).
    image_folder : path-like
        Folder the image keys are relative to.
    images : sequence of str
        Image keys.

    Returns
    -------
    dict
        Image -> uncertainty; unreadable images are left out.
    """
    model = get_model()
    out: dict[str, float] = {}
    for index, image in enumerate(images, start=1):
        try:
            data = read_image(Path(image_folder) / image).data
            out[image] = classifier_uncertainty(model.artifact_score(model.prepare(data)))
        except (ArtSegError, OSError, ValueError):
            pass
        yield ProgressEvent("active_selection", index, len(images), message=image)
    return out


def score_predictions(
    predictions_dir: str | os.PathLike, model_id: str, images: Sequence[str], gate: float = 0.5,
) -> Generator[ProgressEvent, None, dict[str, float]]:
    """Mask uncertainty of each image with a cached prediction of ``model_id``.

    Images without a cached prediction are left out (predict them first).
    """
    from .prediction_cache import PredictionCache

    cache = PredictionCache(predictions_dir, model_id)
    out: dict[str, float] = {}
    for index, image in enumerate(images, start=1):
        item = cache.load(image)
        if item is not None:
            out[image] = mask_uncertainty(item.map(gated=False), item.saliency, item.score, gate)
        yield ProgressEvent("active_selection", index, len(images), message=image)
    return out
