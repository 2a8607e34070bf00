"""Cancelling training at random points; refusing data that cannot train.

The training generator is closed at random events (as the widget's Cancel and
the CLI's Ctrl-C do). Afterwards the other model folders are byte-identical,
the new folder is absent or a readable ``partial`` model, and no thread the run
started is still alive.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import threading

import pytest

from napari_artseg.config import preset
from napari_artseg.errors import ArtSegError
from napari_artseg.labels_file import read_labels_csv
from napari_artseg.model_files import read_model_document
from napari_artseg.training import train_pipeline


def tree_digest(folder):
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def labels(tiny_dataset):
    return read_labels_csv(tiny_dataset / "labels.csv").labels


def test_cancel_at_random_points_keeps_other_models_and_leaves_no_threads(
        tiny_dataset, tiny_model, labels, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_model, models / "previous")
    before = tree_digest(models / "previous")
    threads_before = set(threading.enumerate())
    n_events = 0
    for _ in train_pipeline(tiny_dataset / "images", labels, models / "full", preset("tiny")):
        n_events += 1
    rng = random.Random(3)
    for trial, stop_at in enumerate(sorted(rng.sample(range(1, n_events), 3))):
        out = models / f"cancelled{trial}"
        generator = train_pipeline(tiny_dataset / "images", labels, out, preset("tiny"))
        for index, _event in enumerate(generator):
            if index == stop_at:
                break
        generator.close()
        if out.exists():
            document = read_model_document(out)
            assert document["status"] in ("partial", "complete")
        assert tree_digest(models / "previous") == before
        assert not [p for p in models.iterdir() if p.name.startswith(".")]
    leftover = [t for t in set(threading.enumerate()) - threads_before if t.is_alive()]
    assert leftover == []


@pytest.mark.parametrize("keep", [{"clean": 99, "artifact": 0}, {"clean": 1, "artifact": 1},
                                  {"clean": 1, "artifact": 99}])
def test_too_few_images_of_a_class_is_refused_with_advice(tiny_dataset, labels, tmp_path, keep):
    chosen, counts = {}, {"clean": 0, "artifact": 0}
    for image, word in labels.items():
        if counts[word] < keep[word]:
            chosen[image] = word
            counts[word] += 1
    with pytest.raises(ArtSegError, match="label more images of the missing class"):
        for _ in train_pipeline(tiny_dataset / "images", chosen, tmp_path / "m", preset("tiny")):
            pass
    assert not (tmp_path / "m").exists()


def test_only_unsure_labels_is_refused(tiny_dataset, labels, tmp_path):
    with pytest.raises(ArtSegError, match="at least 2 clean and 2 artifact"):
        for _ in train_pipeline(tiny_dataset / "images", dict.fromkeys(labels, "unsure"),
                                tmp_path / "m", preset("tiny")):
            pass
