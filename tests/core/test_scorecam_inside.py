"""Score-CAM with the masks applied after an early stage (napari_artseg.scorecam_inside)."""

from __future__ import annotations

import pytest
import torch
from test_scorecam import ATOL, CHANNELS_LAST_ATOL, _check_maps, _force_channels, _images, _model

from napari_artseg.models.resnet import ResNetClassifier, StageView, cam_target
from napari_artseg.scorecam import (
    WEIGHTINGS,
    ScoreCam,
    constant_channels,
    normalise_maps,
    scorecam,
    scorecam_reference,
    upsample_to,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _inside_reference(model: torch.nn.Module, image: torch.Tensor, mask_stage: int,
                      weighting: str = "probability",
                      max_channels: int | None = None) -> torch.Tensor:
    """A plain loop of the definition: the activations after ``mask_stage`` blended
    between those of an all-zero input (mask 0) and the image's (mask 1), then the later
    stages and the head, one channel at a time; weights on the full-size maps."""
    net, target = (model.net, model.stage) if isinstance(model, StageView) else (model, 4)
    size = tuple(image.shape[-2:])

    def after(x: torch.Tensor, first: int, last: int) -> torch.Tensor:
        for index in range(first, last):
            x = net.stages[index](x)
        return x

    with torch.no_grad():
        x = image[None]
        h = after(net.stem(x), 0, mask_stage)
        base = after(net.stem(torch.zeros_like(x)), 0, mask_stage)
        acts = after(h, mask_stage, target)[0]
        if max_channels is not None:
            variance = acts.flatten(1).var(dim=1, correction=0)
            acts = acts[torch.topk(variance, max_channels).indices.sort().values]
        zero_logit = net.head(after(base, mask_stage, 4)).double()[0]
        logits = []
        for k in range(acts.shape[0]):
            mask = normalise_maps(upsample_to(acts[k : k + 1], tuple(h.shape[-2:])))
            if constant_channels(acts[k : k + 1])[0]:
                mask = torch.zeros_like(mask)
            masked = base + mask[:, None] * (h - base)
            logits.append(net.head(after(masked, mask_stage, 4)).double()[0])
        logits = torch.stack(logits)
        if weighting == "probability":
            weights = torch.sigmoid(logits)
        elif weighting == "softmax":
            weights = torch.softmax(logits, dim=0)
        else:
            weights = torch.sigmoid(logits) - torch.sigmoid(zero_logit)
        cam = sum(w * upsample_to(acts[k : k + 1], size)[0].double()
                  for k, w in enumerate(weights))
        return normalise_maps(torch.relu(cam)).float()


@pytest.mark.parametrize(("depth", "width", "stem_pool", "stage", "mask_stage"), [
    (18, 4, True, 4, 1),
    (18, 4, False, 4, 2),
    (18, 4, True, 4, 4),
    (18, 4, False, 3, 2),
    (18, 4, False, 3, 3),
    (50, 2, True, 4, 3),
])
def test_matches_its_definition_on_several_shapes(depth: int, width: int, stem_pool: bool,
                                                  stage: int, mask_stage: int) -> None:
    model = cam_target(_model(depth, stem_pool=stem_pool, width=width), stage)
    images = _images(2, (64, 96))
    for weighting in WEIGHTINGS:
        plain = scorecam(model, images, batch_size=5, weighting=weighting,
                         mask_stage=mask_stage, fold_batch_norm=False, channels_last=False)
        _check_maps(plain, (2, 64, 96))
        for i in range(2):
            expected = _inside_reference(model, images[i], mask_stage, weighting)
            torch.testing.assert_close(plain[i], expected, atol=ATOL, rtol=0)
        # folded batch norms and channels_last (the defaults) give the same approximation
        fast = scorecam(model, images, batch_size=5, weighting=weighting, mask_stage=mask_stage)
        torch.testing.assert_close(fast, plain, atol=CHANNELS_LAST_ATOL, rtol=0)


def test_dead_and_constant_channels_and_top_channels() -> None:
    model = _model(18)
    _force_channels(model, dead=[0, 3, 5], constant={2: 0.7, 9: 1.3})
    images = _images(2)
    for batch_size in (1, 4, 1000):
        maps = scorecam(model, images, batch_size=batch_size, mask_stage=2,
                        fold_batch_norm=False, channels_last=False)
        for i in range(2):
            torch.testing.assert_close(maps[i], _inside_reference(model, images[i], 2),
                                       atol=ATOL, rtol=0)
    top = scorecam(model, images, mask_stage=3, max_channels=6, weighting="softmax")
    for i in range(2):
        expected = _inside_reference(model, images[i], 3, "softmax", max_channels=6)
        torch.testing.assert_close(top[i], expected, atol=CHANNELS_LAST_ATOL, rtol=0)


def test_stage_zero_is_exact_and_later_stages_are_not() -> None:
    model = _model(18, stem_pool=False)
    images = _images(1)
    exact = scorecam_reference(model, images)
    torch.testing.assert_close(scorecam(model, images, mask_stage=0), exact,
                               atol=CHANNELS_LAST_ATOL, rtol=0)
    assert (scorecam(model, images, mask_stage=2) - exact).abs().max() > 1e-3


def test_masked_passes_run_only_the_later_stages() -> None:
    model = _model(18, stem_pool=False)
    calls = {"stem": 0, "stage2": 0, "stage3": 0}

    def counter(name: str):
        def hook(_module, inputs, _output) -> None:
            calls[name] += inputs[0].shape[0]
        return hook

    # the networks are copies of the model; copied layers keep these hooks
    handles = [model.stem[0].register_forward_hook(counter("stem")),
               model.stages[1][0].conv1.register_forward_hook(counter("stage2")),
               model.stages[2][0].conv1.register_forward_hook(counter("stage3"))]
    try:
        scorecam(model, _images(1), batch_size=4, mask_stage=2, fold_batch_norm=False,
                 channels_last=False, workers=1)
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        constant = int(constant_channels(model.features(_images(1))[0]).sum())
    varying = model.num_feature_channels - constant
    # stem and stage 2: the image's pass and the all-zero input's, never a masked one;
    # stage 3: the features pass, one pass per varying channel, and one all-zero
    # (= base) pass that the constant channels share
    assert calls["stem"] == 2 and calls["stage2"] == 2
    assert varying > 8
    assert calls["stage3"] == 1 + varying + (1 if constant else 0)


def test_workers_and_runner_give_the_same_maps() -> None:
    model = _model(18)
    images = _images(3, (48, 80))
    one = scorecam(model, images, mask_stage=2, max_channels=7, workers=1)
    two = scorecam(model, images, mask_stage=2, max_channels=7, workers=2)
    torch.testing.assert_close(two, one, atol=ATOL, rtol=0)
    runner = ScoreCam(model, mask_stage=2, max_channels=7, workers=1)
    each = torch.cat([runner(images[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(each, one, atol=ATOL, rtol=0)
    assert len(runner._bases) == 1  # the all-zero input's activations: once per shape


def test_bf16_passes_after_a_stage_keep_the_maps_in_fp32(monkeypatch) -> None:
    from napari_artseg import device

    monkeypatch.setattr(device, "native_bf16_cpu", lambda: True)
    model = _model(18, stem_pool=False)
    images = _images(2, (48, 64))
    seen: dict[str, list[tuple[torch.dtype, bool]]] = {"stem": [], "fc": []}

    def record(name: str):
        def hook(_module, _inputs, output) -> None:
            seen[name].append((output.dtype, torch.is_autocast_enabled("cpu")))
        return hook

    fp32 = scorecam(model, images, batch_size=4, mask_stage=2)
    handles = [model.stem[0].register_forward_hook(record("stem")),
               model.fc.register_forward_hook(record("fc"))]
    try:
        bf16 = scorecam(model, images, batch_size=4, mask_stage=2, amp=True)
    finally:
        for handle in handles:
            handle.remove()
    # the image's and the all-zero input's stem passes stay fp32; masked passes are bf16
    assert seen["stem"] and all(found == (torch.float32, False) for found in seen["stem"])
    assert all(found == (torch.bfloat16, True) for found in seen["fc"])
    assert len(seen["fc"]) >= 2  # the image's masked passes and the all-zero one
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    assert not torch.equal(bf16, fp32)  # rounded logits: close, not equal
    assert (bf16 - fp32).abs().mean() < 0.05


def test_invalid_mask_stage() -> None:
    model = _model(18)
    images = _images(1)
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="mask_stage must be an integer"):
            scorecam(model, images, mask_stage=bad)
    with pytest.raises(ValueError, match="at most the target stage 3"):
        scorecam(StageView(model, 3), images, mask_stage=4)
    with pytest.raises(ValueError, match="cannot be combined"):
        scorecam(model, images, mask_stage=2, score_scale=0.5)

    class Plain(torch.nn.Module):
        num_feature_channels = 4

        def features(self, x: torch.Tensor) -> torch.Tensor:
            return x.repeat(1, 4, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(1, 2, 3))

    assert not isinstance(Plain(), ResNetClassifier)
    with pytest.raises(ValueError, match="needs a ResNetClassifier"):
        ScoreCam(Plain(), mask_stage=1)
