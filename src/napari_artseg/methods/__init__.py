"""Artifact-segmentation methods behind one interface (see docs/methods.md).

Every method declares its supervision, trains through a progress generator and
loads as an :class:`~napari_artseg.predictor.ArtSegModel`::

    from napari_artseg.methods import get_method, list_methods, train_method

    for method in list_methods():
        print(method.name, method.supervision, method.title)
    folder = train_method("ae_ssim", "images/", "labels.csv", "models/ae")

:func:`~napari_artseg.training.train_pipeline` trains the method
``config.method`` names; ``ArtSegModel.load(folder)`` loads any method's folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import METHODS, ArtSegConfig
from ..errors import ArtSegError
from ..training.events import ProgressEvent
from .anomaly_methods import ANOMALY
from .base import SUPERVISIONS, Method
from .classifier_methods import ScoreCAMAlone, ScoreCAMUNet
from .ensemble import Ensemble
from .unet_methods import CDL, SupervisedUNet

_REGISTRY: dict[str, Method] = {m.name: m for m in [
    ScoreCAMUNet(), SupervisedUNet(), ScoreCAMAlone(), *ANOMALY, Ensemble(), CDL()]}

__all__ = ["SUPERVISIONS", "Method", "get_method", "list_methods", "train_method"]


def get_method(name: str) -> Method:
    """The method called ``name``.

    Raises
    ------
    ArtSegError
        An unknown name (the message lists the known ones).
    """
    if name not in _REGISTRY:
        raise ArtSegError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return _REGISTRY[name]


def list_methods() -> list[Method]:
    """Every method, in the order of :data:`napari_artseg.config.METHODS`."""
    return [_REGISTRY[name] for name in METHODS]


def train_method(
    method: str,
    images_dir: str | os.PathLike,
    labels: dict[str, str] | str | os.PathLike | None,
    out: str | os.PathLike,
    config: ArtSegConfig | None = None,
    masks_dir: str | os.PathLike | None = None,
    init: str | os.PathLike | None = None,
    progress: Callable[[ProgressEvent], Any] | None = None,
    **settings: Any,
) -> Path:
    """Train ``method`` on a folder and return the model folder (for scripts and benchmarks).

    Parameters
    ----------
    method : str
        A name from :data:`napari_artseg.config.METHODS`.
    images_dir : path-like
        The image folder.
    labels : dict, path-like or None
        Image -> label, or a labels CSV file; None for none (``cdl`` then uses
        every image of the folder).
    out : path-like
        The model folder to create.
    config : ArtSegConfig, optional
        Settings (default: the ``fast`` preset); ``method`` is set to ``method``.
    masks_dir, init : path-like, optional
        Pixel masks; a model to fine-tune.
    progress : callable, optional
        Called with every progress event.
    **settings
        Config fields to change, e.g. ``unet_epochs=5``.
    """
    from ..config import preset
    from ..labels_file import read_labels_csv
    from ..training import train_pipeline

    if labels is None:
        labels = {}
    elif not isinstance(labels, dict):
        labels = read_labels_csv(labels).labels
    config = (config or preset("fast")).replace(method=get_method(method).name, **settings)
    generator = train_pipeline(images_dir, labels, out, config, masks_dir=masks_dir, init=init)
    while True:
        try:
            event = next(generator)
        except StopIteration as stop:
            return Path(stop.value)
        if progress is not None:
            progress(event)
