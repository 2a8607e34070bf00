"""The config dataclass: presets, validation, JSON round trip."""

import json

import pytest

from napari_artseg.config import PRESETS, ArtSegConfig, preset
from napari_artseg.errors import ArtSegError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_and_round_trip(name):
    config = preset(name)
    assert config.preset == name
    again = ArtSegConfig.from_dict(json.loads(config.to_json()))
    assert again == config


def test_paper_preset_matches_the_paper():
    config = preset("paper")
    assert (config.resnet_depth, config.unet_width, config.input_size) == (50, 64, 1024)
    assert config.classifier_epochs == 150 and config.learning_rate == 0.002
    assert config.pseudo_label_threshold == 0.05 and config.lr_patience == 10
    assert config.early_stop_patience == 30


@pytest.mark.parametrize(
    ("changes", "word"),
    [({"unet_input_size": 100}, "unet_input_size"), ({"input_size": 16}, "input_size"),
     ({"device": "tpu"}, "device"),
     ({"mask_threshold": 1.5}, "mask_threshold"), ({"resnet_depth": 20}, "resnet_depth"),
     ({"tile_halo": 256}, "tile_halo"), ({"fine_tune_lr_factor": 0}, "fine_tune_lr_factor"),
     ({"gate_symmetries": 0}, "gate_symmetries"), ({"gate_symmetries": 9}, "gate_symmetries"),
     ({"classifier_scale_augment": 0}, "classifier_scale_augment"),
     ({"classifier_scale_augment": 1.5}, "classifier_scale_augment"),
     ({"scorecam_mask_stage": -1}, "scorecam_mask_stage"),
     ({"scorecam_mask_stage": 4}, "scorecam_mask_stage"),  # fast's target stage is 3
     ({"scorecam_mask_stage": 2, "scorecam_score_scale": 0.5}, "cannot be combined")],
)
def test_bad_values_name_the_field(changes, word):
    with pytest.raises(ArtSegError, match=word):
        preset("fast", **changes)


def test_fast_preset_classifier_view_and_unet_resolution_differ():
    config = preset("fast")
    assert (config.input_size, config.unet_size, config.scale) == (512, 512, 1.0)
    assert config.unet_downsample == 2 and config.mask_fallback
    assert preset("paper").unet_downsample == preset("tiny").unet_downsample == 1
    assert config.resnet_pool == "lse" and preset("paper").resnet_pool == "avg"
    assert config.scorecam_stage == 3 and preset("paper").scorecam_stage == 4
    assert preset("paper").unet_size == 1024 and preset("tiny").unet_size == 64


def test_a_config_saved_before_unet_input_size_keeps_one_size_for_both_networks():
    old = preset("fast").to_dict()
    del old["unet_input_size"]  # a model folder written by an earlier version
    loaded = ArtSegConfig.from_dict(old)
    assert loaded.unet_input_size is None and loaded.unet_size == loaded.input_size == 512


def test_a_config_saved_before_gate_symmetries_keeps_the_plain_gate():
    """Its gate threshold was chosen on plain views, so it must keep scoring plain views."""
    assert preset("fast").gate_symmetries == 8 and preset("paper").gate_symmetries == 1
    old = preset("fast").to_dict()
    del old["gate_symmetries"]
    assert ArtSegConfig.from_dict(old).gate_symmetries == 1


def test_a_config_saved_before_unet_downsample_keeps_a_full_resolution_unet_and_one_cut():
    """Its weights and its mask threshold were made at full resolution without a fallback."""
    old = preset("fast").to_dict()
    del old["unet_downsample"], old["mask_fallback"]
    loaded = ArtSegConfig.from_dict(old)
    assert loaded.unet_downsample == 1 and not loaded.mask_fallback
    with pytest.raises(ArtSegError, match="unet_downsample"):
        preset("fast", unet_downsample=0)
    with pytest.raises(ArtSegError, match=r"multiple of 64 \(2\*\*unet_levels \* unet_down"):
        preset("fast", unet_input_size=96)


def test_scorecam_batch_size_is_measured_by_default_and_saved_integers_load():
    """Training measures the batch (the old fixed 32 was the slowest on a CPU); a model saved
    with an integer keeps it, and anything but an integer or "auto" is refused."""
    assert preset("fast").scorecam_batch_size == preset("paper").scorecam_batch_size == "auto"
    assert preset("tiny").scorecam_batch_size == 16  # tests stay free of timing
    old = preset("fast").to_dict()
    old["scorecam_batch_size"] = 32  # a model folder written before the default changed
    assert ArtSegConfig.from_dict(old).scorecam_batch_size == 32
    for bad in ("fast", 2.5, True):
        with pytest.raises(ArtSegError, match='scorecam_batch_size must be an integer or "auto"'):
            ArtSegConfig.from_dict({"scorecam_batch_size": bad})
    with pytest.raises(ArtSegError, match="scorecam_batch_size"):
        preset("fast", scorecam_batch_size=0)


def test_from_dict_refuses_unknown_fields_and_wrong_types():
    with pytest.raises(ArtSegError, match="unknown setting"):
        ArtSegConfig.from_dict({"bogus": 1})
    with pytest.raises(ArtSegError, match="integer"):
        ArtSegConfig.from_dict({"batch_size": "eight"})
    with pytest.raises(ArtSegError, match="true or false"):
        ArtSegConfig.from_dict({"augment": 1})
    assert ArtSegConfig.from_dict({"learning_rate": 1}).learning_rate == 1.0


def test_unknown_preset():
    with pytest.raises(ArtSegError, match="unknown preset"):
        preset("huge")


def test_fine_tuning_starts_at_the_fine_tune_share_of_the_learning_rate():
    config = preset("fast", learning_rate=0.004, fine_tune_lr_factor=0.5)
    assert config.start_learning_rate(True) == pytest.approx(0.002)
    assert config.start_learning_rate(False) is None
