"""Few curated masks train rather than judge, and the sampler can favour them."""

import collections

import pytest
import torch

from napari_artseg.config import ArtSegConfig
from napari_artseg.training.data import TrainingItem, curated_to_training, epoch_order


def item(key, label, curated):
    return TrainingItem(key, label, torch.zeros(1, 8, 8), (8, 8), torch.zeros(1, 8, 8), curated)


def draws(labels, curated, share, balance=True, epochs=1000):
    """How often each image is drawn over many epochs."""
    counts = collections.Counter()
    for epoch in range(epochs):
        counts.update(epoch_order(list(range(len(labels))), labels, balance,
                                  torch.Generator().manual_seed(epoch), curated, share))
    return counts, epochs * len(labels)


def test_curated_share_gives_curated_artifact_images_that_share_of_artifact_draws():
    # 10 clean, 8 pseudo-labelled artifact images, 2 curated ones
    labels = [0] * 10 + [1] * 10
    curated = [False] * 18 + [True] * 2
    counts, n = draws(labels, curated, 0.5)
    artifact = sum(counts[i] for i in range(10, 20))
    assert abs(artifact / n - 0.5) < 0.02  # classes still balanced
    assert abs((counts[18] + counts[19]) / artifact - 0.5) < 0.03
    # without a share each artifact image is as likely as another: 2 of 10
    counts, n = draws(labels, curated, 0.0)
    artifact = sum(counts[i] for i in range(10, 20))
    assert abs((counts[18] + counts[19]) / artifact - 0.2) < 0.03


def test_curated_share_without_class_balance_keeps_the_class_ratio():
    labels = [0] * 15 + [1] * 5
    curated = [False] * 19 + [True]
    counts, n = draws(labels, curated, 0.6, balance=False)
    artifact = sum(counts[i] for i in range(15, 20))
    assert abs(artifact / n - 0.25) < 0.02
    assert abs(counts[19] / artifact - 0.6) < 0.03


def test_share_is_ignored_when_every_or_no_artifact_image_is_curated():
    labels = [0, 0, 1, 1]
    generator = torch.Generator().manual_seed(3)
    # without balance and nothing to share: a permutation, as before
    assert sorted(epoch_order([4, 5, 6, 7], labels, False, generator, [False, False, True, True],
                              0.5)) == [4, 5, 6, 7]
    assert sorted(epoch_order([4, 5, 6, 7], labels, False, generator, None, 0.5)) == [4, 5, 6, 7]


def test_balanced_order_is_unchanged_without_curated_masks():
    labels = [0] * 6 + [1] * 3
    first = epoch_order(list(range(9)), labels, True, torch.Generator().manual_seed(5))
    second = epoch_order(list(range(9)), labels, True, torch.Generator().manual_seed(5),
                         [False] * 9, 0.7)
    assert first == second  # the same draws for the same seed


def test_too_few_curated_masks_in_validation_move_to_training():
    items = ([item(f"c{i}", 0, False) for i in range(4)]
             + [item(f"p{i}", 1, False) for i in range(4)]
             + [item(f"m{i}", 1, True) for i in range(6)] + [item("cm", 0, True)])
    train, val = [0, 1, 4, 5, 8, 9, 10], [2, 3, 6, 7, 11, 12, 13, 14]
    # 3 curated artifact masks in validation (and one clean curated image): all move
    assert curated_to_training(items, train, val, 5) == ([0, 1, 4, 5, 8, 9, 10, 11, 12, 13, 14],
                                                         [2, 3, 6, 7])
    # enough of them: the split is kept
    assert curated_to_training(items, train, val, 3) == (train, val)
    # no uncurated artifact image would be left to validate on: kept
    assert curated_to_training(items, [0, 1, 4, 5, 6, 7, 8], [2, 3, 11, 12, 13], 5) == (
        [0, 1, 4, 5, 6, 7, 8], [2, 3, 11, 12, 13])


def test_configs_written_before_the_rule_keep_every_curated_mask_where_it_fell():
    config = ArtSegConfig.from_dict({"method": "scorecam_unet"})
    assert config.curated_validation_min == 1 and config.curated_share == 0.0
    assert config.fine_tune_schedule == "plateau"
    new = ArtSegConfig()
    assert (new.curated_validation_min, new.curated_share, new.fine_tune_schedule) == (
        20, 0.5, "cosine")


def test_keep_last_anneals_the_rate_to_zero_and_keeps_the_last_weights():
    from generator_helpers import drain
    from napari_artseg.training.loop import fit

    torch.manual_seed(0)
    net = torch.nn.Linear(1, 1)
    x = torch.ones(4, 1)
    batches = lambda epoch: [(x, torch.full((4, 1), 3.0))]  # noqa: E731
    loss_fn = lambda out, batch: ((out - batch[1]) ** 2).mean()  # noqa: E731
    # validation prefers the starting weights: the loss grows as training moves the output
    def output(model):
        return float(model(x[:1]).detach())

    start = output(net)

    def validate(model):
        yield 1, 1
        return {"val_loss": abs(output(model) - start)}

    config = ArtSegConfig(learning_rate=0.1, early_stop_patience=2)

    best = drain(fit("t", net, config, 6, torch.device("cpu"), batches, 1, loss_fn, validate,
                     prefetch_batches=0))
    assert best.best_epoch == 1 and best.stopped_early  # plateau rule: the earliest epoch

    torch.manual_seed(0)
    net = torch.nn.Linear(1, 1)  # the same starting weights
    assert output(net) == start
    last = drain(fit("t", net, config, 6, torch.device("cpu"), batches, 1, loss_fn, validate,
                     prefetch_batches=0, keep_last=True))
    assert len(last.history) == 6 and last.best_epoch == 6 and not last.stopped_early
    assert last.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert [r["lr"] for r in last.history] == sorted([r["lr"] for r in last.history],
                                                    reverse=True)
    assert abs(output(net) - 3.0) < abs(start - 3.0)  # the trained weights were kept
    assert abs(output(net) - start) == last.history[-1]["val_loss"]


def test_corrections_are_unjudged_when_curated_masks_train_and_none_validates():
    from napari_artseg.training.segmenter import corrections_unjudged

    items = [item("c", 0, False), item("p", 1, False), item("m", 1, True), item("n", 1, True),
             item("cm", 0, True)]
    assert corrections_unjudged(items, [0, 2], [1, 4])  # a clean curated image judges nothing
    assert not corrections_unjudged(items, [0, 2], [1, 3])
    assert not corrections_unjudged(items, [0, 1], [3, 4])  # no curated mask trains
