"""Predictions of a project's images, cached on disk per model, and the generator that makes them.

Layout (the file names follow ``artseg predict``)::

    <project>/predictions/<model_id>/
        <key>_prob.tif       float32 0-1, gated (all zero when the classifier said clean)
        <key>_mask.tif       uint8 0/1 at the model's threshold and minimum size
        <key>_ungated.tif    float32 U-Net map regardless of the gate (only when the gate failed)
        <key>_saliency.tif   float32 Score-CAM map of the classifier (when asked for)
        <key>.json           score, gate_passed, threshold, fallback, min_size_px, model_id,
                             image, saved_at

``<key>`` is the image path relative to the image folder without its extension.
GUI-free: the predict widget runs :func:`predict_images` in a worker thread.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_text
from .errors import ArtSegError, first_line
from .image_files import image_key, read_image, read_mask, write_tiff
from .process_memory import heap_reuse
from .provenance import utc_now


@dataclass
class CachedPrediction:
    """Everything the predict widget shows for one image.

    Attributes
    ----------
    image : str
        Image path relative to the image folder.
    probability : numpy.ndarray
        (H, W) float32 gated probability.
    ungated : numpy.ndarray or None
        (H, W) float32 map regardless of the gate (None when it equals ``probability``).
    saliency : numpy.ndarray or None
        (H, W) float32 Score-CAM map.
    score : float
        The classifier's P(artifact).
    gate_passed : bool
        Whether the score reached the gate.
    threshold, min_size_px
        The model's mask settings.
    model_id : str
        The model that made it.
    pixel_size_um : float or None
        From the image file.
    fallback : float or None
        The model's empty-mask fallback threshold (None: it has none).
    """

    image: str
    probability: np.ndarray
    ungated: np.ndarray | None
    saliency: np.ndarray | None
    score: float
    gate_passed: bool
    threshold: float
    min_size_px: int
    model_id: str
    pixel_size_um: float | None = None
    fallback: float | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the image."""
        return tuple(self.probability.shape)

    def mask(self) -> np.ndarray:
        """The mask at the model's settings (its empty-mask fallback included)."""
        from .postprocess import final_mask, mask_cuts

        return final_mask(self.probability, mask_cuts(self.threshold, self.fallback),
                          self.min_size_px)

    def map(self, gated: bool = True) -> np.ndarray:
        """The gated map, or the un-gated one (the same when the gate passed)."""
        if gated or self.ungated is None:
            return self.probability
        return self.ungated


class PredictionCache:
    """The cached predictions of one model in a project.

    Parameters
    ----------
    predictions_dir : path-like
        The project's ``predictions/`` folder.
    model_id : str
        The model's id (the hash of its weights).
    """

    def __init__(self, predictions_dir: str | os.PathLike, model_id: str) -> None:
        self.folder = Path(predictions_dir) / model_id
        self.model_id = model_id

    def _path(self, image: str, suffix: str) -> Path:
        return self.folder / f"{image_key(Path(image), Path())}{suffix}"

    def has(self, image: str) -> bool:
        """True when ``image`` has a complete cached prediction."""
        return self._path(image, ".json").is_file() and self._path(image, "_prob.tif").is_file()

    def save(self, item: CachedPrediction, mask: np.ndarray) -> None:
        """Write the maps, the mask and the json (json last: it marks the entry complete)."""
        pixel = item.pixel_size_um
        write_tiff(self._path(item.image, "_prob.tif"), item.probability.astype(np.float32), pixel)
        write_tiff(self._path(item.image, "_mask.tif"), mask.astype(np.uint8), pixel)
        if item.ungated is not None:
            write_tiff(self._path(item.image, "_ungated.tif"), item.ungated.astype(np.float32),
                       pixel)
        if item.saliency is not None:
            write_tiff(self._path(item.image, "_saliency.tif"), item.saliency.astype(np.float32),
                       pixel)
        info = {"image": item.image, "model_id": item.model_id, "score": item.score,
                "gate_passed": item.gate_passed, "threshold": item.threshold,
                "fallback": item.fallback, "min_size_px": item.min_size_px,
                "pixel_size_um": pixel, "saved_at": utc_now()}
        atomic_write_text(self._path(item.image, ".json"), json.dumps(info, indent=2) + "\n")

    def load(self, image: str) -> CachedPrediction | None:
        """The cached prediction of ``image``, or None (missing or unreadable)."""
        if not self.has(image):
            return None
        try:
            info = json.loads(self._path(image, ".json").read_text(encoding="utf-8"))
            prob = read_image(self._path(image, "_prob.tif")).data.astype(np.float32)
            optional = {}
            for name in ("ungated", "saliency"):
                path = self._path(image, f"_{name}.tif")
                optional[name] = read_image(path).data.astype(np.float32) if path.is_file() \
                    else None
        except (ArtSegError, OSError, ValueError, KeyError):
            return None
        return CachedPrediction(image, prob, optional["ungated"], optional["saliency"],
                                float(info["score"]), bool(info["gate_passed"]),
                                float(info["threshold"]), int(info["min_size_px"]),
                                str(info.get("model_id", self.model_id)),
                                info.get("pixel_size_um"), info.get("fallback"))

    def load_mask(self, image: str, shape: tuple[int, int]) -> np.ndarray | None:
        """The cached mask of ``image`` (bool), or None."""
        path = self._path(image, "_mask.tif")
        return read_mask(path, shape) if path.is_file() else None


@dataclass
class PredictionStep:
    """What :func:`predict_images` yields per image: progress and the result (or the error)."""

    index: int
    total: int
    image: str
    result: CachedPrediction | None = None
    error: str = ""


def predict_one(model: Any, image_folder: Path, image: str, saliency: bool) -> CachedPrediction:
    """Run ``model`` (an :class:`~napari_artseg.predictor.ArtSegModel`) on one project image."""
    loaded = read_image(Path(image_folder) / image)
    result = model.predict(loaded.data, keep_ungated=True, pixel_size_um=loaded.pixel_size_um)
    ungated = None if result.gate_passed else result.ungated
    cam = model.saliency(loaded.data) if saliency else None
    cuts = model.mask_cuts()
    return CachedPrediction(image, result.probability, ungated, cam, result.score,
                            result.gate_passed, cuts[0], model.min_size_for(loaded.pixel_size_um),
                            model.model_id, loaded.pixel_size_um,
                            cuts[1] if len(cuts) > 1 else None)


def predict_images(
    get_model: Callable[[], Any],
    image_folder: str | os.PathLike,
    images: Sequence[str],
    predictions_dir: str | os.PathLike,
    saliency: bool = True,
) -> Generator[PredictionStep, None, int]:
    """Predict project images one at a time, caching each; one failure does not stop the rest.

    Parameters
    ----------
    get_model : callable
        Returns the loaded model (called once, in the calling thread, so loading
        happens in the worker too).
    image_folder : path-like
        The project's image folder.
    images : sequence of str
        Image paths relative to ``image_folder``.
    predictions_dir : path-like
        The project's ``predictions/``.
    saliency : bool
        Also compute the Score-CAM map.

    Yields
    ------
    PredictionStep
        One per image, with the result or the error message.

    Returns
    -------
    int
        The number of images predicted.
    """
    model = get_model()
    cache = PredictionCache(predictions_dir, model.model_id)
    done = 0
    with heap_reuse():  # freed memory is kept for the next image, not mapped again
        for index, image in enumerate(images):
            try:
                item = predict_one(model, Path(image_folder), image, saliency)
                cache.save(item, item.mask())
            except (ArtSegError, OSError, ValueError, RuntimeError, MemoryError) as exc:
                message = first_line(exc)
                yield PredictionStep(index + 1, len(images), image, error=message)
                continue
            done += 1
            yield PredictionStep(index + 1, len(images), image, result=item)
    return done


def complete_models(models_dir: str | os.PathLike) -> list[str]:
    """Names of the model folders in ``models_dir`` that can predict, newest first.

    Folder names start with a UTC timestamp, so name order is age order; partial
    and unreadable models are left out.
    """
    folder = Path(models_dir)
    names = []
    for child in sorted(folder.iterdir(), reverse=True) if folder.is_dir() else []:
        try:
            document = json.loads((child / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(document, dict) and document.get("status") == "complete":
            names.append(child.name)
    return names


class LoadedModel:
    """Keeps one loaded model, reloading only when the folder or device changes.

    :meth:`get` is what :func:`predict_images` calls in the worker thread.
    """

    def __init__(self) -> None:
        self.folder: Path | None = None
        self.device = "auto"
        self.model: Any = None

    def select(self, folder: str | os.PathLike | None, device: str = "auto") -> None:
        """Choose the model folder (loaded on the next :meth:`get`)."""
        folder = Path(folder) if folder is not None else None
        if folder != self.folder or device != self.device:
            self.release()
        self.folder, self.device = folder, device

    def get(self) -> Any:
        """The loaded :class:`~napari_artseg.predictor.ArtSegModel` (loads it when needed).

        Raises
        ------
        ArtSegError
            No model selected, or it cannot be loaded.
        """
        from .predictor import ArtSegModel

        if self.model is None:
            if self.folder is None:
                raise ArtSegError("no model selected: train one first")
            self.model = ArtSegModel.load(self.folder, device=self.device)
        return self.model

    def release(self) -> None:
        """Drop the loaded model and return its accelerator memory."""
        if self.model is not None:
            from .device import release_memory

            device = self.model.device
            self.model = None
            release_memory(device)
