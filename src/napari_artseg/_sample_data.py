"""napari sample data: a synthetic brightfield image with artifacts and its true mask."""

from __future__ import annotations

import numpy as np


def sample_brightfield(seed: int = 7, size: int = 512) -> list[tuple]:
    """A seeded synthetic brightfield field of view with artifacts, plus the true mask.

    Returns napari layer-data tuples: the image (uint16) and a Labels layer of the
    exact artifact mask (hidden by default).
    """
    from .synth import ARTIFACT_KINDS, generate_sample

    sample = generate_sample(np.random.default_rng(seed), size=size, artifact=True)
    kinds = sorted({ARTIFACT_KINDS[k - 1] for k in np.unique(sample.kinds) if k})
    return [
        (sample.image, {"name": "brightfield (synthetic)",
                        "metadata": {"artifact_kinds": kinds}}, "image"),
        (sample.mask.astype(np.uint8), {"name": "true artifact mask", "opacity": 0.5,
                                        "visible": False}, "labels"),
    ]
