"""Which image to look at next (active selection).

- Unlabelled images are ordered by the classifier's uncertainty,
  ``1 - |2 p - 1|`` for its P(artifact) ``p`` (1 at p = 0.5, 0 at p = 0 or 1).
- Predicted masks are ordered by how many pixels a correction would fix: the
  expected number of wrong pixels of the mask shown, reading the U-Net's
  un-gated probability map as calibrated (:func:`expected_errors`). Large,
  unsure artifacts (and artifact images the gate dropped) come first; a faint
  speck the model doubts counts only its few pixels.

An earlier rule ordered masks by mean uncertainty (Score-CAM/U-Net disagreement,
mean entropy, classifier uncertainty); it chose masks whose correction fixed fewer
pixels than a random choice did, and its retrains scored below random ones.
``benchmarks/bench_corrections.py`` measures both against a random order
(docs/loop.md gives the results). GUI-free.
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


def expected_errors(probability: np.ndarray, mask: np.ndarray) -> float:
    """Expected number of wrong pixels in ``mask``, reading ``probability`` as calibrated.

    A pixel inside the mask is wrong with probability ``1 - p``, one outside it
    with probability ``p``: the sum is how many pixels a person correcting the
    mask should expect to change.

    Parameters
    ----------
    probability : numpy.ndarray
        The U-Net's un-gated probability map, values in [0, 1].
    mask : numpy.ndarray
        The mask shown (same shape; gated, thresholded), boolean or 0/1.

    Returns
    -------
    float
        Expected wrong pixels, >= 0.

    Raises
    ------
    ValueError
        When the shapes differ.
    """
    p = np.clip(np.asarray(probability, dtype=np.float64), 0.0, 1.0)
    inside = np.asarray(mask).astype(bool)
    if p.shape != inside.shape:
        raise ValueError(f"map and mask shapes differ: {p.shape} and {inside.shape}")
    return float(np.where(inside, 1.0 - p, p).sum())


def rank(scores: Mapping[str, float]) -> list[str]:
    """Images by score (uncertainty or expected wrong pixels), highest first (ties: by name)."""
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
    predictions_dir: str | os.PathLike, model_id: str, images: Sequence[str],
) -> Generator[ProgressEvent, None, dict[str, float]]:
    """Expected wrong pixels of each image's mask with a cached prediction of ``model_id``.

    The mask is the one at the model's settings (:meth:`CachedPrediction.mask`),
    the map the un-gated one, so an artifact image the gate called clean counts
    the U-Net's whole expected artifact area. Images without a cached prediction
    are left out (predict them first).
    """
    from .prediction_cache import PredictionCache

    cache = PredictionCache(predictions_dir, model_id)
    out: dict[str, float] = {}
    for index, image in enumerate(images, start=1):
        item = cache.load(image)
        if item is not None:
            out[image] = expected_errors(item.map(gated=False), item.mask())
        yield ProgressEvent("active_selection", index, len(images), message=image)
    return out
