"""Tests of the ResNet classifier and the U-Net (tiny networks, CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from napari_artseg.errors import ArtSegError
from napari_artseg.models import ResNetClassifier, UNet


def fit_steps(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor,
              steps: int) -> list[float]:
    """Adam (lr 0.01) on binary cross-entropy for ``steps`` full-batch steps; the losses."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("depth, expansion", [(18, 1), (34, 1), (50, 4)])
@pytest.mark.parametrize("size", [(64, 64), (64, 96)])
def test_resnet_shapes(depth: int, expansion: int, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = ResNetClassifier(depth=depth, width=4).eval()
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        feats = model.features(x)
        logits = model(x)
        head = model.head(feats)
    assert model.num_feature_channels == 8 * 4 * expansion
    assert model.downsample == 32
    assert feats.shape == (2, model.num_feature_channels, size[0] // 32, size[1] // 32)
    assert (feats >= 0).all()
    assert logits.shape == (2,)
    assert torch.allclose(head, logits)


def test_resnet_no_stem_pool_features_at_one_sixteenth() -> None:
    torch.manual_seed(0)
    model = ResNetClassifier(depth=18, width=4, stem_pool=False).eval()
    with torch.no_grad():
        feats = model.features(torch.randn(1, 1, 64, 96))
    assert model.downsample == 16
    assert feats.shape == (1, 32, 4, 6)


def test_resnet_minimum_size_and_channels() -> None:
    model = ResNetClassifier(depth=18, width=2, in_channels=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1,)


@pytest.mark.parametrize("depth", [0, 10, 101, 152])
def test_resnet_invalid_depth(depth: int) -> None:
    with pytest.raises(ValueError, match="depth"):
        ResNetClassifier(depth=depth)


def test_resnet_avgmax_head_sees_one_hot_spot_that_averaging_dilutes() -> None:
    model = ResNetClassifier(depth=18, width=4, pool="avgmax").eval()
    channels = model.num_feature_channels
    assert model.fc.in_features == 2 * channels
    features = torch.zeros(2, channels, 8, 8)
    features[1, :, 3, 4] = 64.0  # one hot cell: average 1.0, maximum 64.0
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.weight[0, channels:] = 1.0  # read the max half only
        logits = model.head(features)
        assert logits.tolist() == pytest.approx([0.0, 64.0 * channels])
        assert model(torch.randn(2, 1, 64, 64)).shape == (2,)


def test_resnet_lse_head_scores_locations_and_pools_between_mean_and_max() -> None:
    from napari_artseg.models.resnet import LSE_SHARPNESS

    model = ResNetClassifier(depth=18, width=4, pool="lse").eval()
    channels = model.num_feature_channels
    assert model.fc.in_features == channels
    features = torch.zeros(3, channels, 4, 4)
    features[1, 0, 2, 3] = 8.0  # one location scores 8 (weight 1 on channel 0)
    features[2, 0] = 2.0  # every location scores 2
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.weight[0, 0] = 1.0
        model.fc.bias.fill_(-1.0)
        logits = model.head(features)
    r = LSE_SHARPNESS
    hot = (torch.logsumexp(torch.tensor([r * 8.0] + [0.0] * 15), 0) - torch.log(torch.tensor(16.0)))
    # No location scores: the bias; one hot location: near its score, far above the mean
    # (0.5); a uniform map: exactly its value.
    assert logits.tolist() == pytest.approx([-1.0, float(hot / r) - 1.0, 1.0], abs=1e-5)
    assert 0.5 < float(hot / r) < 8.0
    assert float(hot / r) > 8.0 - torch.log(torch.tensor(16.0)).item() / r - 1e-5


def test_resnet_rejects_unknown_pool() -> None:
    with pytest.raises(ValueError, match="pool"):
        ResNetClassifier(depth=18, width=4, pool="median")


def test_resnet_learns_tiny_problem() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 1, 32, 32) * 0.1
    y = torch.zeros(16)
    x[::2, :, 8:20, 8:20] += 2.0  # every other image has a bright square
    y[::2] = 1.0
    model = ResNetClassifier(depth=18, width=4)
    losses = fit_steps(model, x, y, 20)
    assert losses[-1] < 0.5 * losses[0]


def test_unet_output_shape() -> None:
    torch.manual_seed(0)
    model = UNet(width=4, levels=5, convs_per_level=3)
    assert model.divisor == 32
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        assert model(x).shape == (2, 1, 64, 96)
    plain = UNet(width=4, levels=2, convs_per_level=1, batch_norm=False, in_channels=2)
    with torch.no_grad():
        assert plain(torch.randn(1, 2, 8, 12)).shape == (1, 1, 8, 12)


def test_unet_rejects_bad_size() -> None:
    model = UNet(width=4, levels=5)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 1, 70, 64))
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 1, 64, 48))


def test_unet_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="levels"):
        UNet(levels=0)
    with pytest.raises(ValueError, match="downsample"):
        UNet(downsample=0)


def test_downsampled_unet_is_the_same_network_on_the_pooled_image() -> None:
    """downsample=2: same weights, run on the 2x2-mean image, logits resized back."""
    torch.manual_seed(0)
    full = UNet(width=4, levels=2, convs_per_level=1)
    half = UNet(width=4, levels=2, convs_per_level=1, downsample=2)
    assert half.divisor == 8 and list(half.state_dict()) == list(full.state_dict())
    half.load_state_dict(full.state_dict())
    full.eval(), half.eval()
    x = torch.randn(2, 1, 16, 24)
    with torch.no_grad():
        out = half(x)
        inner = full(x.reshape(2, 1, 8, 2, 12, 2).mean(dim=(3, 5)))
    assert out.shape == (2, 1, 16, 24)
    expected = torch.nn.functional.interpolate(inner, size=(16, 24), mode="bilinear")
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="multiples of 8"):
        half(torch.randn(1, 1, 12, 16))


def test_unet_learns_fixed_square() -> None:
    torch.manual_seed(0)
    model = UNet(width=8, levels=2, convs_per_level=2)
    x = torch.randn(4, 1, 32, 32)
    target = torch.zeros(4, 1, 32, 32)
    target[:, :, 8:24, 8:24] = 1.0
    losses = fit_steps(model, x, target, 30)
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    with torch.no_grad():
        pred = torch.sigmoid(model(x)) > 0.5
    accuracy = (pred == target.bool()).float().mean().item()
    assert accuracy > 0.9



@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("stem_pool", [True, False])
def test_stage_view_features_and_logits(depth: int, stem_pool: bool) -> None:
    from napari_artseg.models.resnet import StageView, cam_target

    torch.manual_seed(0)
    net = ResNetClassifier(depth=depth, width=4, stem_pool=stem_pool).eval()
    x = torch.randn(2, 1, 64, 64)
    sizes = []
    for stage in (1, 2, 3, 4):
        view = StageView(net, stage)
        features = view.features(x)
        assert features.shape[1] == view.num_feature_channels
        assert features.shape[-1] == 64 // view.downsample
        assert torch.equal(view(x), net(x))
        sizes.append(features.shape[-1])
    assert sizes == sorted(sizes, reverse=True) and sizes[2] == 2 * sizes[3]
    assert torch.equal(StageView(net, 4).features(x), net.features(x))
    assert cam_target(net, 4) is net and isinstance(cam_target(net, 3), StageView)
    with pytest.raises(ValueError, match="stage"):
        StageView(net, 5)


def test_scorecam_at_an_earlier_stage_equals_the_reference() -> None:
    from napari_artseg.models.resnet import StageView
    from napari_artseg.scorecam import scorecam, scorecam_reference

    torch.manual_seed(1)
    view = StageView(ResNetClassifier(depth=18, width=4, stem_pool=False).eval(), 3)
    image = torch.randn(1, 1, 64, 64)
    fast = scorecam(view, image)[0]
    assert fast.shape == (64, 64)
    assert torch.allclose(fast, scorecam_reference(view, image[0]), atol=1e-4)


def test_scorecam_runner_passes_score_scale_mask_stage_and_auto_batch_size() -> None:
    from napari_artseg.config import ArtSegConfig, preset
    from napari_artseg.saliency import scorecam_runner
    from napari_artseg.scorecam import scorecam

    torch.manual_seed(2)
    net = ResNetClassifier(depth=18, width=4, stem_pool=False).eval()
    image = torch.randn(1, 1, 64, 64)
    config = preset("tiny", scorecam_batch_size="auto", scorecam_score_scale=0.5,
                    scorecam_stage=4)  # the network's own features: compared with scorecam(net)
    config = ArtSegConfig.from_dict(json.loads(config.to_json()))  # as read from a model folder
    assert config.scorecam_batch_size == "auto"
    coarse = scorecam_runner(net, config)(image)
    assert torch.allclose(coarse, scorecam(net, image, batch_size=4, score_scale=0.5), atol=1e-5)
    exact = scorecam_runner(net, config.replace(scorecam_score_scale=1.0))(image)
    assert torch.allclose(exact, scorecam(net, image, batch_size=4), atol=1e-5)
    assert not torch.equal(coarse, exact)  # the reduced resolution reached scorecam()
    inside = scorecam_runner(net, config.replace(scorecam_score_scale=1.0, scorecam_mask_stage=2))
    assert inside.mask_stage == 2
    assert torch.allclose(inside(image), scorecam(net, image, batch_size=4, mask_stage=2),
                          atol=1e-5)
    assert scorecam_runner(net, config).amp is False  # exact unless asked for
    rounded = ArtSegConfig.from_dict({**config.to_dict(), "scorecam_amp": True})
    assert scorecam_runner(net, rounded).amp is True
    with pytest.raises(ArtSegError, match="scorecam_amp must be true or false"):
        ArtSegConfig.from_dict({**config.to_dict(), "scorecam_amp": "yes"})


def test_scorecam_runner_uses_the_configured_stage() -> None:
    from napari_artseg.config import preset
    from napari_artseg.models.resnet import StageView
    from napari_artseg.saliency import scorecam_runner
    from napari_artseg.scorecam import scorecam

    torch.manual_seed(2)
    net = ResNetClassifier(depth=18, width=4, stem_pool=False).eval()
    views = torch.randn(1, 1, 64, 64)
    config = preset("tiny", scorecam_stage=3, scorecam_max_channels=None)
    expected = scorecam(StageView(net, 3), views, max_channels=None)
    assert torch.allclose(scorecam_runner(net, config)(views), expected)
    assert not torch.allclose(scorecam_runner(net, config.replace(scorecam_stage=4))(views),
                              expected)
