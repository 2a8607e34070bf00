"""Showing the demo's results in napari (imported only when a display is available)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def show_demo(data: Path, predictions: Path, n_images: int = 8) -> None:
    """Open napari with test images, their probability maps, predicted and true masks.

    Parameters
    ----------
    data : pathlib.Path
        A synthetic data set folder (``images/``, ``masks/``).
    predictions : pathlib.Path
        The folder written by ``artseg predict``.
    n_images : int
        How many images to stack (the first ones with artifacts first).
    """
    import napari

    from .image_files import discover_images, image_key, read_image, read_mask

    paths = discover_images(data / "images")
    with_artifacts = [p for p in paths if read_mask(data / "masks" / p.name).any()]
    chosen = (with_artifacts + [p for p in paths if p not in with_artifacts])[:n_images]
    keys = [image_key(p, data / "images") for p in chosen]
    images = np.stack([read_image(p).data for p in chosen])
    probs = np.stack([read_image(predictions / f"{k}_prob.tif").data for k in keys])
    masks = np.stack([read_mask(predictions / f"{k}_mask.tif") for k in keys]).astype(np.uint8)
    truth = np.stack([read_mask(data / "masks" / p.name) for p in chosen]).astype(np.uint8)
    viewer = napari.Viewer(title="napari-artseg demo")
    viewer.add_image(images, name="brightfield")
    viewer.add_image(probs, name="artifact probability", colormap="inferno", opacity=0.5,
                     blending="additive", contrast_limits=(0, 1))
    viewer.add_labels(truth, name="true mask", opacity=0.4, visible=False)
    viewer.add_labels(masks, name="predicted mask", opacity=0.5)
    napari.run()
