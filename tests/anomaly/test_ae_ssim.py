"""AE-SSIM: the map is 1 - SSIM against the tiled reconstruction, training is seeded,
artifact pixels rank above clean ones."""

from __future__ import annotations

import json

import torch
from anomaly_helpers import TINY_PARAMS

from napari_artseg.methods.anomaly import AESSIM
from napari_artseg.methods.anomaly.networks import ConvAutoencoder
from napari_artseg.methods.anomaly.ssim import zscore_ssim_map


def test_autoencoder_shapes_and_paper_size():
    paper = ConvAutoencoder(patch=128, width=32, latent=100)
    x = torch.randn(2, 1, 128, 128)
    assert paper(x).shape == x.shape
    assert paper.to_latent(paper.features(x)[-1]).shape == (2, 100, 1, 1)
    assert [f.shape[-1] for f in paper.features(x)] == [64, 32, 16, 8]


def test_map_is_one_minus_ssim_of_the_reconstruction(fitted, artifact_images):
    detector, _ = fitted("ae_ssim")
    image = artifact_images[1][0][:, :75, :101]
    recon = detector.reconstruct(image)
    assert recon.shape == image.shape
    p = detector.params
    expected = 1 - zscore_ssim_map(image[None], recon[None], p["ssim_data_range"],
                                   p["ssim_window"], p["ssim_sigma"])[0, 0]
    torch.testing.assert_close(detector.score_map(image), expected)
    assert detector.reconstruct(image[:, :33, :40]).shape == (1, 33, 40)  # padded inside
    # an image of exactly one patch is reconstructed in one pass
    patch = image[:, :32, :32]
    with torch.inference_mode():
        direct = detector.model(patch[None])[0]
    torch.testing.assert_close(detector.reconstruct(patch), direct)


def test_fit_is_seeded(fitted, clean_images):
    detector, _ = fitted("ae_ssim")
    again = AESSIM(json.loads(json.dumps(TINY_PARAMS["ae_ssim"])), seed=0)
    list(again.fit(clean_images))
    other = AESSIM(TINY_PARAMS["ae_ssim"], seed=1)
    list(other.fit(clean_images))
    mine, same, different = detector.state_tensors(), again.state_tensors(), other.state_tensors()
    assert all(torch.equal(mine[k], same[k]) for k in mine)
    assert not all(torch.equal(mine[k], different[k]) for k in mine)


def test_ae_ssim_ranks_artifact_pixels_higher(fitted, artifact_images, pixel_auroc):
    detector, _ = fitted("ae_ssim")
    assert pixel_auroc(detector, artifact_images) > 0.75


def test_images_smaller_than_the_patch_are_padded(clean_images):
    detector = AESSIM({"patch_size": 64, "width": 4, "latent": 8, "epochs": 1,
                       "steps_per_epoch": 1, "batch_size": 2})
    list(detector.fit(clean_images))
    image = clean_images[0][:, :40, :45]
    assert detector.reconstruct(image).shape == (1, 40, 45)
    scores = detector.score_map(image)
    assert scores.shape == (40, 45) and torch.isfinite(scores).all()
