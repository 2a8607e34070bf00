"""Shared fixtures: a tiny synthetic data set and a tiny trained model (session-wide)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """16 synthetic 96 px images (half with artifacts) with labels and true masks."""
    from napari_artseg.synth import write_dataset

    out = tmp_path_factory.mktemp("tiny_dataset")
    for _ in write_dataset(out, n=16, size=96, artifact_fraction=0.5, seed=5):
        pass
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_dataset, tmp_path_factory) -> Path:
    """A model folder trained with the ``tiny`` preset (2 epochs each) on ``tiny_dataset``."""
    from napari_artseg.config import preset
    from napari_artseg.labels_file import read_labels_csv
    from napari_artseg.training import train_pipeline

    out = tmp_path_factory.mktemp("models") / "tiny"
    labels = read_labels_csv(tiny_dataset / "labels.csv").labels
    generator = train_pipeline(tiny_dataset / "images", labels, out, preset("tiny"))
    for _ in generator:
        pass
    return out


@pytest.fixture
def one_torch_thread():
    """Run the test with one torch thread, the previous count restored after.

    Tiny tensors run faster on one thread: on a shared 2-core machine two OpenMP
    threads wait for each other on every small operation (measured 10-40x slower).
    Modules use it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
