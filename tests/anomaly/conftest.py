"""Tiny synthetic data for the anomaly-detector tests: clean training images and held-out
artifact images with their true masks, z-scored at the processing scale (0.5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from anomaly_helpers import TINY_PARAMS

from napari_artseg.methods.anomaly import DETECTORS
from napari_artseg.normalize import mask_to_scale, prepare_image
from napari_artseg.synth import generate_sample, image_rng

SCALE = 0.5


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run these small-tensor tests on one thread: on a CPU shared with other jobs, two
    threads made a 65k-element multiply 1000x slower (thread hand-off), one is steady."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _prepared(
    seed: int, n: int, size: int, artifact: bool
) -> list[tuple[torch.Tensor, np.ndarray]]:
    out = []
    for i in range(n):
        sample = generate_sample(image_rng(seed, i), size, artifact)
        image = prepare_image(sample.image, SCALE)
        mask = mask_to_scale(sample.mask.astype(bool), tuple(image.shape[1:]))[0].numpy() > 0.5
        out.append((image, mask))
    return out


@pytest.fixture(scope="session")
def clean_images() -> list[torch.Tensor]:
    """Eight clean 128 x 128 training images (synthetic 256 px fields at scale 0.5)."""
    return [image for image, _ in _prepared(11, 8, 256, artifact=False)]


@pytest.fixture(scope="session")
def artifact_images() -> list[tuple[torch.Tensor, np.ndarray]]:
    """Six held-out artifact images (1, 128, 128) with their (128, 128) boolean masks."""
    return _prepared(12, 6, 256, artifact=True)


@pytest.fixture(scope="session")
def pixel_auroc():
    """``pixel_auroc(detector, artifact_images)``: pooled pixel AUROC of the detector's maps
    against the true masks (rank-based, ties averaged)."""
    from napari_artseg.methods.anomaly.patches import auroc

    def compute(detector, images) -> float:
        scores = [detector.score_map(image).numpy().ravel() for image, _ in images]
        masks = [mask.ravel() for _, mask in images]
        return auroc(np.concatenate(scores), np.concatenate(masks))

    return compute


@pytest.fixture(scope="session")
def fitted(clean_images):
    """``fitted(name)``: ``(detector, fit events)`` for a detector with :data:`TINY_PARAMS`
    fitted on ``clean_images`` (seed 0), once per session; tests must not modify it."""
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            detector = DETECTORS[name](TINY_PARAMS[name], seed=0)
            cache[name] = (detector, list(detector.fit(clean_images)))
        return cache[name]

    return get
