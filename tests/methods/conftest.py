"""Fixtures of the method tests: the tiny labels, an evaluation set, detectors."""

from __future__ import annotations

from pathlib import Path

import pytest
from method_helpers import LocalStatsDetector, real_detectors


@pytest.fixture
def detectors(monkeypatch):
    """Real detectors, or the contract detector patched in for all three names."""
    if real_detectors() is None:
        from napari_artseg.methods import anomaly_methods

        monkeypatch.setattr(anomaly_methods, "detector_class", lambda name: LocalStatsDetector)
    return real_detectors()


@pytest.fixture(scope="session")
def labels(tiny_dataset) -> dict[str, str]:
    from napari_artseg.labels_file import read_labels_csv

    return read_labels_csv(tiny_dataset / "labels.csv").labels


@pytest.fixture(scope="session")
def eval_set(tmp_path_factory) -> Path:
    """6 artifact images (96 px) the models never saw, with true masks."""
    from napari_artseg.synth import write_dataset

    out = tmp_path_factory.mktemp("eval_set")
    for _ in write_dataset(out, n=6, size=96, artifact_fraction=1.0, seed=7):
        pass
    return out
