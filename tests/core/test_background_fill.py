"""Polynomial background fill: untouched outside the mask, background-like noise inside."""

from __future__ import annotations

import numpy as np
import pytest

from napari_artseg.background_fill import dilate, fill_artifacts, fill_folder, fit_background
from napari_artseg.image_files import read_image, write_tiff


def _scene(seed: int = 0, noise: float = 2.0):
    """A quadratic background with Gaussian noise and a bright square artifact."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:80, 0:96] / 80.0
    background = 100 + 20 * xx - 10 * yy + 15 * xx * yy - 8 * xx**2 + 5 * yy**2
    image = background + rng.normal(0, noise, background.shape)
    mask = np.zeros(image.shape, bool)
    mask[20:45, 30:60] = True
    image[mask] = 400.0
    return image.astype(np.float32), mask, background


def test_fit_recovers_a_quadratic_surface():
    image, mask, truth = _scene(noise=0.0)
    background, residuals = fit_background(image, mask)
    assert np.abs(background - truth).max() < 1e-3
    assert np.abs(residuals).max() < 1e-3


def test_fill_leaves_other_pixels_and_matches_background_noise():
    image, mask, truth = _scene(noise=2.0)
    filled = fill_artifacts(image, mask, seed=3)
    assert filled.dtype == np.float32
    np.testing.assert_array_equal(filled[~mask], image[~mask])
    inside = filled[mask] - truth[mask]
    assert abs(inside.mean()) < 0.5  # zero-centred noise around the background
    assert 1.5 < inside.std() < 2.5  # the background's own noise level (sigma 2)
    assert filled[mask].max() < 150  # the artifact (400) is gone


def test_dilation_fills_a_margin_and_empty_mask_is_a_copy():
    image, mask, _ = _scene()
    filled = fill_artifacts(image, mask, dilate_px=2)
    changed = filled != image
    assert (changed & ~mask).any()  # a margin around the artifact was filled too
    assert not (changed & ~dilate(mask, 2)).any()  # and nothing beyond it
    same = fill_artifacts(image, np.zeros_like(mask))
    np.testing.assert_array_equal(same, image)


def test_too_few_background_pixels_is_an_error():
    image = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="too few"):
        fill_artifacts(image, np.ones((4, 4), bool) ^ np.eye(4, dtype=bool))


def test_fill_folder_keeps_dtype_pixel_size_and_skips_empty(tmp_path):
    image, mask, _ = _scene()
    write_tiff(tmp_path / "img" / "a.tif", image.astype(np.uint16), 0.5)
    write_tiff(tmp_path / "img" / "b.tif", image.astype(np.uint16), 0.5)
    write_tiff(tmp_path / "masks" / "a.tif", mask.astype(np.uint8))
    write_tiff(tmp_path / "masks" / "b.tif", np.zeros_like(mask, np.uint8))
    gen = fill_folder(tmp_path / "img", ["a.tif", "b.tif", "c.tif"], tmp_path / "masks",
                      tmp_path / "out")
    events = []
    try:
        while True:
            events.append(next(gen))
    except StopIteration as stop:
        result = stop.value
    assert result.written == {"a.tif": "a.tif"}
    assert sorted(result.skipped) == ["b.tif", "c.tif"] and not result.errors
    assert events[-1].step == events[-1].total == 3
    out = read_image(tmp_path / "out" / "a.tif")
    assert out.dtype == "uint16" and out.pixel_size_um == pytest.approx(0.5)
    np.testing.assert_array_equal(out.data[~mask], image.astype(np.uint16)[~mask])
