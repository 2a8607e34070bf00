"""ArtSegModel predicts through inference copies of its networks; the originals stay as loaded."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from napari_artseg.predictor import ArtSegModel


@pytest.fixture(scope="module")
def model(tiny_model):
    return ArtSegModel.load(tiny_model, device="cpu")


def _predict(model, image, copy):
    model.use_inference_copy = copy
    try:
        return model.predict(image, gate=False)
    finally:
        model.use_inference_copy = True


def test_predictions_with_and_without_the_copy_agree(model):
    rng = np.random.default_rng(3)
    for shape in [(96, 96), (150, 211)]:  # one tile, and several blended tiles
        image = rng.normal(1000, 50, shape).astype(np.float32)
        image[20:50, 30:70] += 400  # something for the networks to react to
        plain, fast = _predict(model, image, False), _predict(model, image, True)
        np.testing.assert_allclose(fast.probability, plain.probability, atol=1e-4)
        assert abs(fast.score - plain.score) < 1e-4
        assert plain.probability.std() > 0  # a real network output, not a constant


def test_copies_are_made_once_and_differ_from_the_loaded_networks(model):
    unet, classifier = model.inference_unet, model.inference_classifier
    assert model.inference_unet is unet and model.inference_classifier is classifier
    assert unet is not model.unet and classifier is not model.classifier
    folded = sum(isinstance(m, torch.nn.BatchNorm2d) for m in unet.modules())
    loaded = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.unet.modules())
    assert folded == 0 < loaded
    assert not any(p.requires_grad for p in unet.parameters())
    assert all(p.requires_grad for p in model.unet.parameters())


def test_loaded_networks_keep_the_saved_weights_after_predicting(model, tiny_model):
    model.predict(np.random.default_rng(4).normal(1000, 50, (96, 96)).astype(np.float32),
                  gate=False)
    for name in ("unet", "classifier"):
        saved = load_file(str(tiny_model / f"{name}.safetensors"))
        state = getattr(model, name).state_dict()
        assert set(state) == set(saved)  # batch norms still there, nothing renamed
        for key, value in saved.items():
            assert torch.equal(state[key].cpu(), value), key
            assert state[key].is_contiguous()  # not switched to channels_last


def test_a_new_network_gets_a_new_copy_and_the_switch_turns_it_off(model):
    old = model.unet
    first = model.inference_unet
    try:
        model.unet = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding=1),
                                         torch.nn.BatchNorm2d(1)).eval()
        model.unet.divisor = 1
        assert model.inference_unet is not first
        model.use_inference_copy = False
        assert model.inference_unet is model.unet
    finally:
        model.unet, model.use_inference_copy = old, True
        model.refresh_inference_copies()
    assert model.inference_unet is not first  # refreshed: made again from ``unet``


def test_a_map_function_is_used_as_it_is(tiny_model):
    from napari_artseg.predictor import MapAsLogits

    model = ArtSegModel.load(tiny_model, device="cpu")
    model.unet = MapAsLogits(lambda tile: torch.full(tile.shape[-2:], 0.25), divisor=1)
    assert model.inference_unet is model.unet
    result = model.predict(np.zeros((40, 40), np.float32), gate=False)
    np.testing.assert_allclose(result.probability, 0.25, atol=1e-5)


def test_the_scorecam_runner_is_kept_per_classifier(tiny_model):
    model = ArtSegModel.load(tiny_model, device="cpu")
    image = np.random.default_rng(5).normal(1000, 50, (96, 96)).astype(np.float32)
    first = model.saliency(image)
    runner = model._scorecam[1]
    np.testing.assert_array_equal(model.saliency(image), first)
    assert model._scorecam[1] is runner  # a second image reuses the built networks
    model.refresh_inference_copies()
    assert model._scorecam is None
    np.testing.assert_array_equal(model.saliency(image), first)
    assert model._scorecam[1] is not runner
