"""The pseudo-label threshold rules of training/pseudo_labels.py."""

from __future__ import annotations

import pytest
import torch

from napari_artseg.config import preset
from napari_artseg.errors import ArtSegError
from napari_artseg.training.pseudo_labels import FALLBACK_THRESHOLD, otsu_pseudo_threshold


def _map(high: float, low: float, size: int = 16) -> torch.Tensor:
    saliency = torch.full((size, size), low)
    saliency[4:8, 4:8] = high
    return saliency


def test_otsu_splits_the_pooled_maps_between_their_two_levels() -> None:
    maps = {0: _map(0.9, 0.1), 3: _map(0.7, 0.05), 7: _map(0.8, 0.2)}
    threshold, report = otsu_pseudo_threshold(maps)
    assert 0.2 <= threshold < 0.7
    assert report == {"n_images": 3}
    for saliency in maps.values():  # every bright square is kept, every background pixel dropped
        assert torch.equal(saliency >= threshold, saliency >= 0.5)


def test_otsu_does_not_depend_on_the_order_of_the_maps() -> None:
    maps = {0: _map(0.9, 0.1), 1: _map(0.6, 0.3)}
    reordered = {1: maps[1], 0: maps[0]}
    assert otsu_pseudo_threshold(maps)[0] == otsu_pseudo_threshold(reordered)[0]


@pytest.mark.parametrize("maps", [{}, {0: torch.full((8, 8), 0.4)}, {0: torch.zeros(8, 8)}])
def test_otsu_falls_back_when_there_is_nothing_to_split(maps) -> None:
    assert otsu_pseudo_threshold(maps)[0] == FALLBACK_THRESHOLD


def test_fast_preset_uses_otsu_and_the_rule_is_checked() -> None:
    config = preset("fast")
    assert config.pseudo_label_rule == "otsu" and not config.pseudo_label_per_image
    assert preset("paper").pseudo_label_threshold == 0.05  # the paper's fixed threshold
    with pytest.raises(ArtSegError, match="pseudo_label_rule"):
        preset("fast", pseudo_label_rule="median").validate()
