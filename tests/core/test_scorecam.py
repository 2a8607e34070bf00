"""Tests of Score-CAM: the fast implementation must match the reference loop."""

from __future__ import annotations

import pytest
import torch

from napari_artseg.models import ResNetClassifier
from napari_artseg.scorecam import (
    WEIGHTINGS,
    constant_channels,
    scorecam,
    scorecam_reference,
    upsample_to,
)

ATOL = 1e-5


def _randomise_batch_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BN random affine parameters and running statistics.

    A freshly initialised ResNet has zero-gamma residual branches and identity
    running stats; randomising them gives varied, partly dead activation maps.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.3)
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)


def _model(depth: int = 18, stem_pool: bool = True, seed: int = 0) -> ResNetClassifier:
    torch.manual_seed(seed)
    model = ResNetClassifier(depth=depth, width=4, stem_pool=stem_pool)
    _randomise_batch_norms(model, seed)
    with torch.no_grad():  # logits grow with activation: masking changes the score
        model.fc.weight.abs_().mul_(0.02)
        model.fc.bias.fill_(-1.0)
    return model.eval()


def _images(n: int = 1, size: tuple[int, int] = (64, 64), seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 1, *size, generator=gen)
    images[..., 10:30, 20:40] += 2.0
    return images - images.mean(dim=(-2, -1), keepdim=True)


def _force_channels(model: ResNetClassifier, dead: list[int], constant: dict[int, float]) -> None:
    """Make ``dead`` channels of the last stage all zero and ``constant`` ones constant.

    Every block of the last stage but the last gets gamma 0 and a huge negative
    beta for those channels (output 0 whatever the shortcut carries); in the
    last block the identity shortcut then carries 0, so beta alone sets the
    output: negative -> 0 after the ReLU, positive c -> constant c.
    """
    blocks = list(model.stages[-1])
    forced = dead + list(constant)
    with torch.no_grad():
        for block in blocks[:-1]:
            block.last_bn.weight[forced] = 0.0
            block.last_bn.bias[forced] = -1e4
        last = blocks[-1].last_bn
        last.weight[forced] = 0.0
        last.bias[dead] = -1.0
        for channel, value in constant.items():
            last.bias[channel] = value


def _check_maps(maps: torch.Tensor, shape: tuple[int, ...]) -> None:
    assert maps.shape == shape
    assert maps.dtype == torch.float32
    assert not torch.isnan(maps).any()
    assert maps.min() >= 0.0 and maps.max() <= 1.0


@pytest.mark.parametrize(
    "depth, stem_pool, size",
    [(18, True, (64, 64)), (18, False, (64, 96)), (50, True, (64, 64)), (50, False, (48, 64))],
)
def test_fast_matches_reference(depth: int, stem_pool: bool, size: tuple[int, int]) -> None:
    model = _model(depth, stem_pool)
    images = _images(1, size)
    for weighting in WEIGHTINGS:
        ref = scorecam_reference(model, images, weighting=weighting)
        _check_maps(ref, (1, *size))
        assert ref.max() == 1.0  # a non-trivial map
        for batch_size in (1, 3, 64):
            fast = scorecam(model, images, batch_size=batch_size, weighting=weighting)
            _check_maps(fast, (1, *size))
            torch.testing.assert_close(fast, ref, atol=ATOL, rtol=0)


def test_dead_and_constant_channels_match_reference() -> None:
    model = _model(18)
    dead, constant = [0, 3, 5, 17], {2: 0.7, 9: 1.3, 30: 0.05}
    _force_channels(model, dead, constant)
    images = _images(2)
    with torch.no_grad():
        feats = model.features(images)
    assert (feats[:, dead] == 0).all()
    for channel, value in constant.items():
        assert torch.allclose(feats[:, channel], torch.full_like(feats[:, channel], value))
    alive = [k for k in range(feats.shape[1]) if k not in dead and k not in constant]
    assert (feats[0, alive].flatten(1).std(dim=1) > 0).any()

    for weighting in WEIGHTINGS:
        ref = scorecam_reference(model, images, weighting=weighting)
        for skip_dead in (True, False):
            for batch_size in (1, 3, 64):
                fast = scorecam(
                    model, images, batch_size=batch_size, weighting=weighting, skip_dead=skip_dead
                )
                _check_maps(fast, (2, 64, 64))
                torch.testing.assert_close(fast, ref, atol=ATOL, rtol=0)


def test_skip_dead_saves_passes_and_bounds_batches() -> None:
    model = _model(18)
    _force_channels(model, dead=list(range(4)), constant={4: 0.5, 5: 0.5, 6: 2.0})
    images = _images(1)
    with torch.no_grad():
        n_constant = int(constant_channels(model.features(images)[0]).sum())
    assert n_constant >= 7  # the forced ones, maybe some dead by chance
    batches: list[int] = []
    handle = model.register_forward_hook(lambda m, inp, out: batches.append(inp[0].shape[0]))
    try:
        scorecam(model, images, batch_size=5, skip_dead=True)
        with_skip = list(batches)
        batches.clear()
        scorecam(model, images, batch_size=5, skip_dead=False)
        without_skip = list(batches)
    finally:
        handle.remove()
    k = model.num_feature_channels
    # forward() calls only (features() does not trigger the hook): masked passes + 1 zero pass.
    assert max(with_skip) <= 5 and max(without_skip) <= 5
    assert sum(with_skip) == (k - n_constant) + 1
    assert sum(without_skip) == k


def test_all_zero_image_gives_no_nan() -> None:
    model = _model(18)
    images = torch.zeros(2, 1, 64, 64)
    for weighting in WEIGHTINGS:
        fast = scorecam(model, images, weighting=weighting)
        _check_maps(fast, (2, 64, 64))
        ref = scorecam_reference(model, images[0], weighting=weighting)
        _check_maps(ref, (64, 64))
        torch.testing.assert_close(fast[0], ref, atol=ATOL, rtol=0)


def test_all_dead_network_gives_zero_maps() -> None:
    model = _model(18)
    _force_channels(model, dead=list(range(model.num_feature_channels)), constant={})
    fast = scorecam(model, _images(1), weighting="softmax")
    _check_maps(fast, (1, 64, 64))
    assert (fast == 0).all()


def test_max_channels() -> None:
    model = _model(18)
    images = _images(2)
    k = model.num_feature_channels
    exact = scorecam(model, images)
    torch.testing.assert_close(scorecam(model, images, max_channels=k), exact, atol=0, rtol=0)
    torch.testing.assert_close(scorecam(model, images, max_channels=10 * k), exact, atol=0, rtol=0)
    approx = scorecam(model, images, max_channels=4, weighting="softmax")
    _check_maps(approx, (2, 64, 64))


def test_output_shape_device_and_training_flag_restored() -> None:
    model = _model(18)
    model.train()
    model.stages[0].eval()  # a mixed state must come back as it was
    images = _images(2, (64, 96))
    maps = scorecam(model, images, batch_size=8)
    _check_maps(maps, (2, 64, 96))
    assert maps.device == images.device
    assert not maps.is_inference()
    assert model.training and not model.stages[0].training and model.stages[1].training
    # batched images give the same maps as images one at a time
    torch.testing.assert_close(maps[1:], scorecam(model, images[1:]), atol=ATOL, rtol=0)


def test_invalid_arguments() -> None:
    model = _model(18)
    images = _images(1)
    with pytest.raises(ValueError, match="weighting"):
        scorecam(model, images, weighting="gradcam")
    with pytest.raises(ValueError, match="batch_size"):
        scorecam(model, images, batch_size=0)
    with pytest.raises(ValueError, match="max_channels"):
        scorecam(model, images, max_channels=0)
    with pytest.raises(ValueError, match="shape"):
        scorecam(model, images[0])


def test_upsample_to_shapes() -> None:
    maps = torch.rand(2, 3, 4, 6)
    assert upsample_to(maps, (64, 96)).shape == (2, 3, 64, 96)
    assert upsample_to(maps[0], (8, 12)).shape == (3, 8, 12)
    const = torch.full((1, 1, 2, 3), 5.0)
    torch.testing.assert_close(upsample_to(const, (64, 96)), torch.full((1, 1, 64, 96), 5.0))

