"""Training with Score-CAM on the last stage (``paper``; ``fast`` and ``tiny`` use the third).

The third stage is what every other training test runs; this one keeps the paper's
last stage trained end to end."""

from __future__ import annotations

import json

import numpy as np
import tifffile

from generator_helpers import drain
from napari_artseg.config import preset
from napari_artseg.labels_file import read_labels_csv
from napari_artseg.predictor import ArtSegModel
from napari_artseg.training import train_pipeline


def test_training_with_scorecam_stage_4(tiny_dataset, tmp_path):
    labels = read_labels_csv(tiny_dataset / "labels.csv").labels
    config = preset("tiny", scorecam_stage=4, self_training_rounds=0)
    folder = drain(train_pipeline(tiny_dataset / "images", labels, tmp_path / "m", config))
    document = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert document["config"]["scorecam_stage"] == 4
    maps = sorted((folder / "saliency").rglob("*.tif"))
    assert maps and all(np.isfinite(tifffile.imread(p)).all() for p in maps)
    model = ArtSegModel.load(folder, device="cpu")
    image = tifffile.imread(next((tiny_dataset / "images").glob("*.tif")))
    saliency = model.saliency(image)
    assert saliency.shape == image.shape and 0 <= saliency.min() <= saliency.max() <= 1
