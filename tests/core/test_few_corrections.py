"""A fine-tune from a few corrections: they train, and the schedule runs to its end."""

import csv
import shutil

import pytest

from generator_helpers import drain
from napari_artseg.config import preset
from napari_artseg.labels_file import read_labels_csv
from napari_artseg.training import train_pipeline
from napari_artseg.training.data import stratified_split


@pytest.fixture
def corrections(tiny_dataset, tmp_path):
    """Curated (true) masks for one validation and two training artifact images."""
    labels = read_labels_csv(tiny_dataset / "labels.csv").labels
    keys = list(labels)
    values = [1 if labels[k] == "artifact" else 0 for k in keys]
    train, val = stratified_split(values, preset("tiny").val_fraction, 0)
    chosen = ([keys[i] for i in val if values[i]][:1]
              + [keys[i] for i in train if values[i]][:2])
    masks = tmp_path / "masks"
    masks.mkdir()
    for key in chosen:
        shutil.copy(tiny_dataset / "masks" / key, masks / key)
    return labels, masks, chosen


def rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_few_curated_masks_train_and_the_fine_tune_keeps_its_last_cosine_epoch(
        tiny_dataset, tiny_model, corrections, tmp_path):
    labels, masks, chosen = corrections
    config = preset("tiny", unet_epochs=3, fine_tune_schedule="cosine", curated_share=0.5)
    folder = drain(train_pipeline(tiny_dataset / "images", labels, tmp_path / "m", config,
                                  masks_dir=masks, init=tiny_model))
    split = {row["image"]: row["split"] for row in rows(folder / "manifest.csv")}
    assert all(split[key] == "train" for key in chosen)  # 1 < curated_validation_min = 20
    history = rows(folder / "history_unet.csv")
    first = [row for row in history if not row["round"]]
    assert len(first) == 3  # every epoch ran
    assert float(first[-1]["lr"]) == pytest.approx(0.0, abs=1e-12)  # annealed to 0


def test_with_enough_curated_masks_in_validation_they_stay_and_judge(
        tiny_dataset, tiny_model, corrections, tmp_path):
    labels, masks, chosen = corrections
    config = preset("tiny", unet_epochs=3, fine_tune_schedule="cosine", curated_validation_min=1)
    folder = drain(train_pipeline(tiny_dataset / "images", labels, tmp_path / "m", config,
                                  masks_dir=masks, init=tiny_model))
    split = {row["image"]: row["split"] for row in rows(folder / "manifest.csv")}
    assert [split[key] for key in chosen] == ["val", "train", "train"]
    history = rows(folder / "history_unet.csv")
    # a curated mask judges: the plateau rule as in any training (the rate is not annealed)
    assert float([row for row in history if not row["round"]][-1]["lr"]) > 0
