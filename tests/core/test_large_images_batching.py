"""The streamed path's tiled U-Net: inference copy, batches bounded on the CPU, same result."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import napari_artseg.device as device_module
from napari_artseg.config import preset
from napari_artseg.large_images import tiled_probability
from napari_artseg.predictor import ArtSegModel
from napari_artseg.tiling import predict_tiled
from napari_artseg.training.classifier import build_classifier
from napari_artseg.training.segmenter import build_unet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(**overrides) -> ArtSegModel:
    """An untrained model of the ``tiny`` preset with varied batch-norm statistics."""
    config = preset("tiny", **overrides)
    torch.manual_seed(0)
    unet = build_unet(config)
    with torch.no_grad():
        for module in unet.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    document = {"config": config, "thresholds": {"gate": 0.5, "mask": 0.5, "min_size_px": 0}}
    return ArtSegModel(document, build_classifier(config), unet, torch.device("cpu"))


def _reference(model: ArtSegModel, image: np.ndarray) -> np.ndarray:
    """The original (unfolded, contiguous) U-Net through predict_tiled."""
    def forward(batch: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(model.unet(batch))

    result = predict_tiled(forward, torch.from_numpy(image)[None], tile=model.config.input_size,
                           halo=model.config.tile_halo, divisor=model.unet.divisor, batch_size=1)
    return result[0].numpy()


@pytest.mark.parametrize("shape", [(150, 230), (40, 170), (50, 60)])
def test_tiled_probability_equals_the_original_network(shape):
    model = _model()
    image = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    result = tiled_probability(model, image.copy(), batch_size=3)
    assert result.shape == shape and result.dtype == np.float32
    np.testing.assert_allclose(result, _reference(model, image), atol=1e-5)
    # the loaded model itself is unchanged (its copy was prepared)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.unet.modules())


def test_cpu_batches_hold_at_most_one_large_tile(monkeypatch):
    model = _model(input_size=1024, tile_halo=64, unet_width=2, unet_levels=1,
                   unet_convs_per_level=1)
    batches: list[int] = []
    # the network the streamed path runs: the model's inference copy (made once)
    model.inference_unet.register_forward_pre_hook(
        lambda m, args: batches.append(args[0].shape[0]))
    image = np.random.default_rng(2).normal(size=(1100, 1100)).astype(np.float32)
    result = tiled_probability(model, image.copy(), batch_size=4)
    assert batches == [1, 1, 1, 1]  # four 1024 px tiles, one per pass on the CPU
    batches.clear()
    tiled_probability(model, image.copy(), batch_size=4, max_batch_pixels=2 * 1024 * 1024)
    assert batches == [2, 2]
    np.testing.assert_allclose(result, _reference(model, image), atol=1e-5)


def test_inference_copy_passes_modules_without_convolutions_through():
    class MapFunction(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    module = MapFunction()
    assert device_module.inference_copy(module) is module
