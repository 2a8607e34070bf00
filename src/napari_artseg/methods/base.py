"""The method interface: what every artifact-segmentation method declares and does.

A method says which supervision it needs (:data:`SUPERVISIONS`), trains from the
inputs :func:`~napari_artseg.training.train_pipeline` takes (image folder, labels,
model folder, config, optional curated masks, optional model to fine-tune) through
a generator that yields :class:`~napari_artseg.training.events.ProgressEvent` and
returns the model folder, and loads that folder as an
:class:`~napari_artseg.predictor.ArtSegModel`, which predicts a probability map of
any image size and an image-level gate score.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import torch

from ..config import ArtSegConfig
from ..errors import ArtSegError, ModelFileError
from ..model_files import METHOD_COMPONENTS, load_weights
from ..predictor import ArtSegModel
from ..training.data import mask_path_for
from ..training.events import ProgressEvent

#: Supervision kinds and what each needs, in words.
SUPERVISIONS: dict[str, str] = {
    "image_labels": "image labels (at least 2 clean and 2 artifact images)",
    "clean_images": "images labelled clean (at least 2; artifact labels only choose thresholds)",
    "pixel_masks": "pixel masks (at least 2 labelled images with a mask <image>.tif)",
    "none": "no human labels (every image of the folder)",
}


def label_counts(labels: dict[str, str]) -> dict[str, int]:
    """Number of ``clean`` and ``artifact`` labels."""
    words = list(labels.values())
    return {"clean": words.count("clean"), "artifact": words.count("artifact")}


def count_masked(labels: dict[str, str], masks_dir: str | os.PathLike | None) -> int:
    """Labelled (clean or artifact) images that have a mask file in ``masks_dir``."""
    if masks_dir is None or not Path(masks_dir).is_dir():
        return 0
    return sum(1 for key, word in labels.items() if word in ("clean", "artifact")
               and mask_path_for(Path(masks_dir), key).is_file())


class Method(abc.ABC):
    """One artifact-segmentation method (subclasses fill in the class attributes).

    Attributes
    ----------
    name : str
        The name used in configs, model folders and ``artseg train --method``.
    title : str
        A short human title.
    description : str
        One or two sentences.
    supervision : str
        One of :data:`SUPERVISIONS`.
    can_fine_tune : bool
        Whether ``init`` (a model folder of the same method) is accepted.
    """

    name = ""
    title = ""
    description = ""
    supervision = ""
    can_fine_tune = False

    @property
    def components(self) -> tuple[str, ...]:
        """The weight files of a complete model folder of this method."""
        return METHOD_COMPONENTS[self.name]

    def missing_inputs(self, labels: dict[str, str], masks_dir: str | os.PathLike | None = None,
                       config: ArtSegConfig | None = None) -> str:
        """'' when the inputs suffice for this method, else one line saying what is missing.

        Parameters
        ----------
        labels : dict
            Image -> ``clean`` / ``artifact`` / ``unsure``.
        masks_dir : path-like, optional
            The folder of pixel masks.
        config : ArtSegConfig, optional
            The run's settings (an ensemble checks its members' needs with them).
        """
        counts = label_counts(labels)
        if self.supervision == "image_labels" and min(counts.values()) < 2:
            return (f"{self.title} needs at least 2 clean and 2 artifact images; got "
                    f"{counts['clean']} clean and {counts['artifact']} artifact: label more "
                    "images of the missing class")
        if self.supervision == "clean_images" and counts["clean"] < 2:
            return (f"{self.title} trains on clean images only and needs at least 2 images "
                    f"labelled clean; got {counts['clean']}: label clean images")
        if self.supervision == "pixel_masks" and count_masked(labels, masks_dir) < 2:
            return (f"{self.title} needs pixel masks: at least 2 labelled images with a mask "
                    f"<image>.tif in {masks_dir or 'a masks folder'}; found "
                    f"{count_masked(labels, masks_dir)}")
        return ""

    def check_inputs(self, labels: dict[str, str], masks_dir: str | os.PathLike | None = None,
                     config: ArtSegConfig | None = None) -> None:
        """Raise :class:`ArtSegError` with :meth:`missing_inputs` when something is missing."""
        message = self.missing_inputs(labels, masks_dir, config)
        if message:
            raise ArtSegError(message)

    def check_init(self, init: str | os.PathLike | None) -> None:
        """Refuse ``init`` for a method that cannot fine-tune."""
        if init is not None and not self.can_fine_tune:
            raise ArtSegError(f"{self.name} cannot fine-tune a model ({init}); train it from "
                              "scratch")

    @abc.abstractmethod
    def train(
        self,
        images_dir: str | os.PathLike,
        labels: dict[str, str],
        out: str | os.PathLike,
        config: ArtSegConfig,
        masks_dir: str | os.PathLike | None = None,
        init: str | os.PathLike | None = None,
    ) -> Generator[ProgressEvent, None, Path]:
        """Train into the new model folder ``out``; yields progress, returns ``out``.

        Parameters are those of :func:`~napari_artseg.training.train_pipeline`.
        Closing the generator between yields cancels the run.
        """

    def load(self, folder: Path, document: dict[str, Any], device: torch.device) -> ArtSegModel:
        """The loaded model of a folder whose ``config.json`` is ``document``.

        This default builds the classifier and the U-Net the method's components
        name; methods with other parts override it.
        """
        from ..training.classifier import build_classifier
        from ..training.segmenter import build_unet

        self.check_complete(folder, document)
        config = document["config"]
        classifier = unet = None
        if "classifier" in self.components:
            classifier = build_classifier(config)
            load_weights(folder, "classifier", classifier)
        if "unet" in self.components:
            unet = build_unet(config)
            load_weights(folder, "unet", unet)
        return ArtSegModel(document, classifier, unet, device, folder)

    def check_complete(self, folder: Path, document: dict[str, Any]) -> None:
        """Refuse a partial model that lacks a part needed to predict."""
        missing = [c for c in self.components if c not in document.get("components", [])]
        if missing:
            raise ModelFileError(f"{folder}: partial {self.name} model without "
                                 f"{', '.join(missing)}; it cannot predict")

    def __repr__(self) -> str:
        return f"<method {self.name}: {self.supervision}>"
