"""Tests of Score-CAM: the fast implementation must match the reference loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_artseg.models import ResNetClassifier
from napari_artseg.scorecam import (
    WEIGHTINGS,
    constant_channels,
    normalise_maps,
    scorecam,
    scorecam_reference,
    scoring_size,
    upsample_to,
)

ATOL = 1e-5
CHANNELS_LAST_ATOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def _model(depth: int = 18, stem_pool: bool = True, seed: int = 0,
           width: int = 4) -> ResNetClassifier:
    torch.manual_seed(seed)
    model = ResNetClassifier(depth=depth, width=width, stem_pool=stem_pool)
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
    "depth, width, stem_pool, size",
    [(18, 4, True, (64, 64)), (18, 6, False, (48, 80)), (50, 2, True, (64, 64)),
     (50, 3, False, (48, 64))],
)
def test_fast_matches_reference(depth: int, width: int, stem_pool: bool,
                                size: tuple[int, int]) -> None:
    model = _model(depth, stem_pool, width=width)
    images = _images(1, size)
    for weighting in WEIGHTINGS:
        ref = scorecam_reference(model, images, weighting=weighting)
        _check_maps(ref, (1, *size))
        assert ref.max() == 1.0  # a non-trivial map
        for batch_size in (1, 5, 1000):
            # the reference's arithmetic (row-major, batch norms applied, not folded into
            # the convolutions): the same map to 1e-5
            fast = scorecam(model, images, batch_size=batch_size, weighting=weighting,
                            channels_last=False, fold_batch_norm=False)
            _check_maps(fast, (1, *size))
            torch.testing.assert_close(fast, ref, atol=ATOL, rtol=0)
            # the defaults (channels_last, folded batch norms) round differently: up to
            # 1.2e-5 (AMD EPYC) and 1.6e-5 (Intel Xeon) measured on the width-2 ResNet-50,
            # within the performance issue's 1e-4
            fast = scorecam(model, images, batch_size=batch_size, weighting=weighting)
            _check_maps(fast, (1, *size))
            torch.testing.assert_close(fast, ref, atol=CHANNELS_LAST_ATOL, rtol=0)


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
        for skip_dead, batch_size, fold in ((True, 1, True), (True, 3, False), (False, 64, True)):
            fast = scorecam(model, images, batch_size=batch_size, weighting=weighting,
                            skip_dead=skip_dead, fold_batch_norm=fold)
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
    # the head's linear layer runs once per forward() (features() does not reach it); the
    # batch-norm-folded copy of the model shares the hook through its copy of the layer
    handle = model.fc.register_forward_hook(lambda m, inp, out: batches.append(inp[0].shape[0]))
    try:
        scorecam(model, images, batch_size=5, skip_dead=True)
        with_skip = list(batches)
        batches.clear()
        scorecam(model, images, batch_size=5, skip_dead=False, fold_batch_norm=False)
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
    with pytest.raises(ValueError, match="batch_size"):
        scorecam(model, images, batch_size="fastest")
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="score_scale"):
            scorecam(model, images, score_scale=bad)
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



# ----------------------------------------------------------------- reduced-resolution scoring


def _reduced_resolution_reference(model: ResNetClassifier, image: torch.Tensor,
                                  scale: float) -> torch.Tensor:
    """A plain loop of the ``score_scale`` definition: each channel's map upsampled to the
    scoring size, normalised, times the area-averaged image, scored; weights on full maps."""
    size = tuple(image.shape[-2:])
    small_size = scoring_size(size, scale)
    with torch.no_grad():
        small = F.interpolate(image[None], size=small_size, mode="area")[0]
        acts = model.eval().features(image[None])[0]
        logits = []
        for k in range(acts.shape[0]):
            mask = normalise_maps(upsample_to(acts[k : k + 1], small_size))
            if constant_channels(acts[k : k + 1])[0]:
                mask = torch.zeros_like(mask)
            logits.append(model((small * mask)[None]).double()[0])
        weights = torch.sigmoid(torch.stack(logits))
        cam = sum(w * upsample_to(acts[k : k + 1], size)[0].double()
                  for k, w in enumerate(weights))
        return normalise_maps(torch.relu(cam)).float()


def test_score_scale_matches_its_definition_and_scores_smaller_inputs() -> None:
    model = _model(18, stem_pool=False)
    images = _images(1, (64, 96))
    seen: list[tuple[int, ...]] = []
    handle = model.stem[0].register_forward_hook(
        lambda m, inp, out: seen.append(tuple(inp[0].shape[-2:])))
    try:
        half = scorecam(model, images, batch_size=7, score_scale=0.5, fold_batch_norm=False)
    finally:
        handle.remove()
    _check_maps(half, (1, 64, 96))
    # one full-size features() pass, every masked pass at the scoring size
    assert seen[0] == (64, 96) and set(seen[1:]) == {(32, 48)}
    expected = _reduced_resolution_reference(model, images[0], 0.5)
    torch.testing.assert_close(half[0], expected, atol=ATOL, rtol=0)
    # folded batch norms give the same approximation
    torch.testing.assert_close(scorecam(model, images, score_scale=0.5), half, atol=ATOL, rtol=0)
    # scale 1 is exact, and a reduced scale is a different (approximate) map
    exact = scorecam_reference(model, images)
    torch.testing.assert_close(scorecam(model, images, score_scale=1.0), exact, atol=ATOL, rtol=0)
    assert (half - exact).abs().max() > 1e-3


def test_score_scale_with_top_channels_and_odd_sizes() -> None:
    model = _model(50, width=2)
    images = _images(2, (50, 70))
    both = scorecam(model, images, max_channels=8, score_scale=0.37, weighting="baseline")
    _check_maps(both, (2, 50, 70))
    assert scoring_size((50, 70), 0.37) == (18, 26)
    assert scoring_size((3, 2), 0.1) == (1, 1)


# ----------------------------------------------------------------- speed options


def test_speed_options_keep_the_exact_result(monkeypatch) -> None:
    from napari_artseg import device

    # amp: a no-op on a CPU without bf16 units (this one is made to say so)
    monkeypatch.setattr(device, "native_bf16_cpu", lambda: False)
    model = _model(18, stem_pool=False, width=4)
    _force_channels(model, dead=[1, 7], constant={3: 0.4})
    images = _images(1, (48, 64))
    for weighting in ("softmax", "baseline"):
        ref = scorecam_reference(model, images, weighting=weighting)
        for options in ({"channels_last": True}, {"amp": True},
                        {"channels_last": True, "fold_batch_norm": False, "batch_size": 4}):
            fast = scorecam(model, images, weighting=weighting, **options)
            torch.testing.assert_close(fast, ref, atol=ATOL, rtol=0)
    # the caller's model is not changed by the folded / channels_last copies
    conv = model.stem[0].weight
    assert conv.is_contiguous() and isinstance(model.stem[1], torch.nn.BatchNorm2d)


def test_amp_scores_in_bf16_on_a_cpu_with_bf16_units(monkeypatch) -> None:
    from napari_artseg import device

    monkeypatch.setattr(device, "native_bf16_cpu", lambda: True)
    model = _model(18, stem_pool=False, width=4)
    images = _images(2, (48, 64))
    seen: list[tuple[torch.dtype, bool]] = []
    handle = model.fc.register_forward_hook(  # copied into the folded scoring network
        lambda m, inp, out: seen.append((out.dtype, torch.is_autocast_enabled("cpu"))))
    try:
        ref = scorecam_reference(model, images)
        seen.clear()
        fast = scorecam(model, images, batch_size=4, amp=True)
    finally:
        handle.remove()
    assert seen and all(found == (torch.bfloat16, True) for found in seen)
    assert fast.dtype == torch.float32 and fast.shape == ref.shape
    assert not torch.equal(fast, ref)  # rounded logits: close, not exact
    assert (fast - ref).abs().mean() < 0.05
    with torch.inference_mode():  # nothing leaks out of the passes
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(device, "native_bf16_cpu", lambda: False)
    seen.clear()
    handle = model.fc.register_forward_hook(
        lambda m, inp, out: seen.append((out.dtype, torch.is_autocast_enabled("cpu"))))
    try:  # emulated bf16 would be slower: fp32, exact
        plain = scorecam(model, images, batch_size=4, amp=True)
    finally:
        handle.remove()
    assert seen and all(found == (torch.float32, False) for found in seen)
    torch.testing.assert_close(plain, ref, atol=CHANNELS_LAST_ATOL, rtol=0)


def test_native_bf16_cpu_is_a_cached_answer() -> None:
    from napari_artseg.device import native_bf16_cpu, passes_autocast

    assert native_bf16_cpu() in (True, False)
    assert native_bf16_cpu() is native_bf16_cpu()
    with passes_autocast(torch.device("cpu"), enabled=False):
        assert not torch.is_autocast_enabled("cpu")


def test_auto_batch_size_is_exact_and_measured_once() -> None:
    from napari_artseg import scorecam_tuning

    scorecam_tuning.clear_cache()
    model = _model(18, width=2)
    images = _images(1, (48, 48))
    forwards: list[int] = []
    handle = model.fc.register_forward_hook(lambda m, inp, out: forwards.append(inp[0].shape[0]))
    try:
        first = scorecam(model, images, batch_size="auto")
        calls_first = len(forwards)
        forwards.clear()
        second = scorecam(model, images, batch_size="auto")
        calls_second = len(forwards)
    finally:
        handle.remove()
    ref = scorecam_reference(model, images)
    torch.testing.assert_close(first, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(second, ref, atol=ATOL, rtol=0)
    assert calls_second < calls_first  # the second call found the choice in the cache
    scorecam_tuning.clear_cache()


def test_choose_batch_size_picks_the_fastest_and_caches() -> None:
    from napari_artseg.scorecam_tuning import choose_batch_size, clear_cache

    clear_cache()
    network = _model(18, width=2)
    cpu = torch.device("cpu")
    asked: list[int] = []

    def measure(batch: int) -> float:  # seconds per input: 4 is the fastest
        asked.append(batch)
        return {1: 3.0, 4: 1.0, 16: 2.0}.get(batch, 5.0)

    assert choose_batch_size(network, (1, 32, 32), 100, cpu, candidates=(1, 4, 16),
                             measure=measure) == 4
    assert asked == [1, 4, 16, 1, 4, 16]  # two interleaved rounds
    assert choose_batch_size(network, (1, 32, 32), 100, cpu, candidates=(1, 4, 16),
                             measure=measure) == 4
    assert len(asked) == 6  # cached: nothing measured again
    # the fastest of the rounds counts: a slow first measurement of 16 does not hide it
    clear_cache()
    times = iter([5.0, 3.0, 9.0, 5.0, 3.0, 0.5])
    assert choose_batch_size(network, (1, 32, 32), 100, cpu, candidates=(1, 4, 16),
                             measure=lambda b: next(times)) == 16
    # candidates above the number of passes are capped; ties go to the smaller batch
    asked.clear()
    assert choose_batch_size(network, (1, 32, 32), 3, cpu, candidates=(1, 4, 16),
                             measure=lambda b: asked.append(b) or 1.0, rounds=1) == 1
    assert sorted(asked) == [1, 3]
    # the real timer returns positive seconds per input
    from napari_artseg.scorecam_tuning import cuda_batch_limit, time_batch_size

    assert time_batch_size(network.eval(), (1, 32, 32), 2, cpu, min_samples=2) > 0
    assert cuda_batch_limit(network, (1, 32, 32), cpu) >= 2**20  # no limit off CUDA
    clear_cache()


def test_auto_batch_sizes_off_cuda_are_bounded_by_their_pixels() -> None:
    """A big view never makes "auto" try a batch whose activations would fill the memory."""
    from napari_artseg.scorecam_tuning import (
        HOST_AUTO_BATCH_PIXELS,
        choose_batch_size,
        clear_cache,
        host_batch_limit,
    )

    clear_cache()
    network = _model(18, width=2)
    cpu = torch.device("cpu")
    assert HOST_AUTO_BATCH_PIXELS == 16 * 512 * 512
    assert host_batch_limit((1, 512, 512), cpu) == 16
    assert host_batch_limit((1, 1024, 1024), cpu) == 4
    assert host_batch_limit((1, 8192, 8192), cpu) == 1  # never below one
    assert host_batch_limit((1, 1024, 1024), torch.device("cuda")) >= 2**20  # measured there
    asked: list[int] = []
    chosen = choose_batch_size(network, (1, 1024, 1024), 2048, cpu,
                               measure=lambda b: asked.append(b) or 1.0 / b, rounds=1)
    assert sorted(asked) == [1, 4] and chosen == 4  # 16 and 64 capped to 4
    clear_cache()


class _Untraceable(torch.nn.Module):
    """A classifier with data-dependent control flow (torch.fx cannot trace it)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.num_feature_channels = 4

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(x)
        if feats.sum() > 0:
            return feats.mean(dim=(1, 2, 3))
        return feats.amax(dim=(1, 2, 3))


def test_fold_batch_norms_and_untraceable_fallback() -> None:
    from napari_artseg.scorecam_tuning import fold_batch_norms, scoring_network

    model = _model(50, width=2).eval()
    folded = fold_batch_norms(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    x = _images(2, (48, 48))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-5)
    odd = _Untraceable().eval()
    assert scoring_network(odd) is odd
    copy = scoring_network(odd, channels_last=True)
    assert copy is not odd and copy.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert odd.conv.weight.is_contiguous()
    images = _images(1, (16, 16))
    torch.testing.assert_close(scorecam(odd, images), scorecam_reference(odd, images),
                               atol=ATOL, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu_and_bounds_the_batch() -> None:
    from napari_artseg.scorecam_tuning import cuda_batch_limit, scoring_network

    model = _model(50, width=4)
    images = _images(2, (64, 64))
    ref = scorecam_reference(model, images)
    gpu = model.cuda()
    exact = scorecam(gpu, images.cuda(), batch_size="auto", channels_last=True)
    torch.testing.assert_close(exact.cpu(), ref, atol=1e-4, rtol=0)
    approx = scorecam(gpu, images.cuda(), amp=True)
    assert (approx.cpu() - ref).abs().mean() < 0.05  # bf16: close, not exact
    limit = cuda_batch_limit(scoring_network(gpu.eval()), (1, 64, 64), torch.device("cuda"))
    assert limit >= 1


def test_runner_builds_its_networks_once_and_gives_scorecams_maps(monkeypatch) -> None:
    from napari_artseg import scorecam_tuning
    from napari_artseg.models.resnet import StageView
    from napari_artseg.scorecam import ScoreCam

    built = []
    real = scorecam_tuning.fold_batch_norms

    def counting(network):
        built.append(network)
        return real(network)

    monkeypatch.setattr(scorecam_tuning, "fold_batch_norms", counting)
    model = StageView(_model(18, stem_pool=False), 3)
    images = _images(3, (48, 48))
    runner = ScoreCam(model, batch_size=3, max_channels=6, score_scale=0.5)
    maps = [runner(images[i : i + 1]) for i in range(3)]
    assert len(built) == 2  # the features and the scoring network, once for three calls
    for i, found in enumerate(maps):
        expected = scorecam(model, images[i : i + 1], batch_size=3, max_channels=6,
                            score_scale=0.5)
        torch.testing.assert_close(found, expected, atol=0, rtol=0)
        assert found.max() == 1.0


def test_feature_network_folds_stage_views_and_keeps_the_reference_path() -> None:
    from napari_artseg.models.resnet import StageView
    from napari_artseg.scorecam_tuning import feature_network

    model = StageView(_model(50, width=2), 3).eval()
    images = _images(2, (64, 64))
    fast = feature_network(model, True, True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        expected = model.features(images)
        torch.testing.assert_close(fast(images), expected, atol=1e-4, rtol=1e-5)
    assert feature_network(model, False, False) == model.features  # the reference's arithmetic
