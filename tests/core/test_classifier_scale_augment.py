"""Scale augmentation of the classifier (``classifier_scale_augment``)."""

import torch

from napari_artseg.config import preset
from napari_artseg.training.classifier import build_classifier, train_classifier
from napari_artseg.training.data import TrainingItem, random_scale


def test_off_returns_the_views_and_draws_nothing():
    views = torch.randn(3, 1, 16, 16)
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    assert random_scale(views, 1.0, generator) is views
    assert torch.equal(generator.get_state(), state)


def test_half_the_batches_are_shrunk_by_area_averaging_within_the_range():
    views = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    sides, exact_divisors = [], 0
    for _ in range(1000):
        out = random_scale(views, 0.125, generator)
        side = out.shape[-1]
        assert out.shape == (2, 1, side, side) and 8 <= side <= 64
        sides.append(side)
        if side < 64 and 64 % side == 0:  # compare with block means computed by hand
            f = 64 // side
            blocks = views.reshape(2, 1, side, f, side, f).mean(dim=(3, 5))
            assert torch.allclose(out, blocks, atol=1e-6)
            exact_divisors += 1
    kept = sum(s == 64 for s in sides) / len(sides)
    assert 0.45 < kept < 0.6  # half kept (plus the few draws that round back to 64)
    assert exact_divisors > 5
    shrunk = [s for s in sides if s < 64]
    assert min(shrunk) <= 10 and max(shrunk) >= 50  # log-uniform over the whole range


def _items(n=12, side=32):
    generator = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        image = torch.randn(1, side, side, generator=generator)
        if i % 2:
            image[:, 8:20, 8:20] += 3.0
        items.append(TrainingItem(f"im{i}.tif", i % 2, image, (side, side)))
    return items


def _sizes_seen_in_training(**changes):
    """The (H, W) of every batch the classifier trains on (two tiny epochs)."""
    config = preset("tiny", input_size=32, batch_size=2, classifier_epochs=2, device="cpu",
                    **changes)
    sizes = []
    model = build_classifier(config)
    model.register_forward_pre_hook(
        lambda module, args: sizes.append(tuple(args[0].shape[-2:])) if module.training else None)
    for _ in train_classifier(_items(), list(range(10)), [10, 11], config, torch.device("cpu"),
                              model=model):
        pass
    return sizes


def test_training_shows_the_classifier_shrunk_views_only_when_asked():
    assert set(_sizes_seen_in_training()) == {(32, 32)}
    seen = _sizes_seen_in_training(classifier_scale_augment=0.25)
    assert (32, 32) in seen
    assert any(s[0] < 32 for s in seen) and all(8 <= s[0] <= 32 and s[0] == s[1] for s in seen)
