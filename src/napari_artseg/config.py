"""One configuration object holding every tunable, with the ``fast`` and ``paper`` presets.

The config is saved as JSON inside every model folder (``config.json``), and the
CLI and the widgets read and write the same fields.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ArtSegError

DEVICES = ("auto", "cpu", "cuda", "mps")
WEIGHTINGS = ("probability", "softmax", "baseline")
#: Every training method (code in :mod:`napari_artseg.methods`, described in docs/methods.md).
METHODS = ("scorecam_unet", "supervised_unet", "scorecam", "ae_ssim", "padim", "patchsvdd",
           "ensemble", "cdl")
#: The methods trained on clean images only (adapters around ``methods.anomaly`` detectors).
ANOMALY_METHODS = ("ae_ssim", "padim", "patchsvdd")
POLARITIES = ("both", "dark", "bright")
POOLS = ("avg", "avgmax", "lse")
PSEUDO_LABEL_RULES = ("otsu", "deletion")
GATE_RULES = ("joint", "classifier")
FINE_TUNE_SCHEDULES = ("plateau", "cosine")


@dataclass
class ArtSegConfig:
    """Every tunable of the ScoreCAM-U-Net pipeline.

    Sizes in pixels are at the processing scale unless named ``*_px`` (full
    resolution). ``None`` for a threshold means "choose it on the validation split".
    """

    preset: str = "fast"
    method: str = "scorecam_unet"
    # Classifier (ResNet, single-channel, single logit).
    resnet_depth: int = 18
    resnet_width: int = 8
    resnet_stem_pool: bool = False
    resnet_pool: str = "lse"
    # Segmenter (the paper's U-Net: constant width, 3 convs per level).
    unet_width: int = 8
    unet_levels: int = 5
    unet_convs_per_level: int = 3
    # The U-Net works at 1/unet_downsample of the processing scale inside (input average-
    # pooled, logits resized back): more context per pixel of compute, coarser detail.
    unet_downsample: int = 2
    # Geometry: images are resized by `scale`; the classifier sees the whole image as an
    # `input_size` square; the U-Net sees `unet_input_size` squares (None: input_size):
    # random crops in training, overlapping tiles with `tile_halo` px of overlap in inference.
    input_size: int = 512
    unet_input_size: int | None = 512
    scale: float = 1.0
    tile_halo: int = 32
    normalization: str = "zscore"
    # Training.
    classifier_epochs: int = 80
    unet_epochs: int = 30
    batch_size: int = 8
    learning_rate: float = 0.002
    # Fine-tuning a parent model (--init, a project retrain) trains at this share of
    # learning_rate (docs/loop.md: 1.0 let 10 corrections move the U-Net further than 0.1).
    fine_tune_lr_factor: float = 1.0
    lr_patience: int = 10
    lr_factor: float = 0.1
    early_stop_patience: int = 30
    val_fraction: float = 0.2
    augment: bool = True
    # Smallest scale at which the classifier is shown its views in training (1.0: off).
    # Below 1, half the batches are shrunk to a random scale between it and 1. Tried so that
    # Score-CAM could score at a reduced resolution: it did not make that safe, but made
    # better exact maps (docs/performance.md, "a classifier trained across scales").
    classifier_scale_augment: float = 1.0
    balance_classes: bool = True
    # Weight of a soft-Dice term beside the pixel BCE of the U-Net (docs/accuracy.md: 1.0
    # kept one of three fresh runs from collapsing to small masks in self-training).
    dice_weight: float = 1.0
    curated_weight: float = 1.0
    # Share of the artifact crops drawn from curated masks when some artifact images have
    # one and others pseudo-labels (0: each image as often as any other; docs/loop.md).
    curated_share: float = 0.5
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    # Score-CAM.
    scorecam_weighting: str = "probability"
    # Masked inputs per forward pass; "auto" times a few sizes once per process and keeps the
    # fastest (the maps change by float rounding at most; docs/performance.md, "Score-CAM's
    # batch size in training"). Models trained before session 20 (2026-12-07) recorded 32.
    scorecam_batch_size: int | str = "auto"
    scorecam_max_channels: int | None = 32
    scorecam_stage: int = 3
    scorecam_score_scale: float = 1.0
    # Mask the activations after this stage instead of the input (0: the input, exact;
    # an approximation that skips the early stages in every masked pass; docs/performance.md).
    scorecam_mask_stage: int = 0
    # Masked passes in bf16 on CUDA and on CPUs with bf16 units (an approximation;
    # docs/performance.md); fp32 elsewhere.
    scorecam_amp: bool = False
    pseudo_label_rule: str = "otsu"
    pseudo_label_per_image: bool = False
    self_training_rounds: int = 1
    # Fine-tuning (--init): pseudo-labelled images start from the parent U-Net's masks.
    parent_mask_targets: bool = True
    # With curated artifact masks in the validation split, only human-given targets
    # (curated masks, clean labels) choose the U-Net's best epoch.
    curated_validation: bool = True
    # Curated artifact masks the validation split must hold for them to stay there and
    # judge; with fewer, they train (and validation is judged as without them). 5-8
    # judging did worse than all training at 30 corrections (docs/loop.md).
    curated_validation_min: int = 20
    # Fine-tuning with curated masks in training but none judging in validation:
    # "plateau" chooses the best epoch on validation as any training does; "cosine"
    # anneals the learning rate to 0 over the epochs and keeps the last weights.
    fine_tune_schedule: str = "cosine"
    pseudo_label_cache: bool = True
    # GB the training images, their targets and what training derives from them (views,
    # Score-CAM maps, saved rasters) may take in memory; the images past it are kept on
    # disk with all of that, memory-mapped (None: a quarter of the memory available at
    # the start).
    memory_budget_gb: float | None = None
    # Thresholds (None: chosen on the validation split after training).
    pseudo_label_threshold: float | None = None
    gate_threshold: float | None = None
    gate_rule: str = "classifier"
    # The gate's P(artifact): the mean over this many of the square's 8 symmetries of the
    # classifier's view (1: the view as it is; 8: full test-time augmentation).
    gate_symmetries: int = 8
    mask_threshold: float | None = None
    # When the U-Net's targets are its own 0.5 masks and the threshold chosen for image F1
    # is lower, cut masks at 0.5 and use the chosen one only for images whose 0.5 mask is
    # empty (the "fallback" in a model's thresholds; docs/method.md).
    mask_fallback: bool = True
    min_size_px: int | None = None
    min_size_um2: float | None = None
    pixel_size_um: float | None = None
    # Ensemble: member method names (trained in the same run) or model folders (copied in),
    # and their weights (empty: equal weights).
    ensemble_members: list[str] = field(default_factory=lambda: ["scorecam_unet", "ae_ssim"])
    ensemble_weights: list[float] = field(default_factory=list)
    # Anomaly detectors: parameters over each detector's defaults, by method name, and the
    # percentile of clean validation scores that the calibration maps to probability 0.5.
    anomaly_params: dict[str, Any] = field(default_factory=dict)
    anomaly_calibration_percentile: float = 99.0
    # CDL: the conventional detector that labels every image (napari_artseg.conventional;
    # sizes in full-resolution px; defaults chosen on a synthetic set, see docs/methods.md).
    cdl_background_sigma: float = 25.0
    cdl_flat_field: bool = True
    cdl_smooth_sigma: float = 1.5
    cdl_dog_sigma: float = 8.0
    cdl_threshold: float = 10.0
    cdl_low_threshold: float = 2.5
    cdl_min_size_px: int = 50
    cdl_polarity: str = "both"
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> ArtSegConfig:
        """Check the values; raise :class:`ArtSegError` naming the first bad field."""
        divisor = 2**self.unet_levels * max(self.unet_downsample, 1)
        checks = [
            (self.resnet_depth in (18, 34, 50), "resnet_depth must be 18, 34 or 50"),
            (self.resnet_width >= 1, "resnet_width must be >= 1"),
            (self.resnet_pool in POOLS, f"resnet_pool must be one of {', '.join(POOLS)}"),
            (self.unet_width >= 1, "unet_width must be >= 1"),
            (1 <= self.unet_levels <= 7, "unet_levels must be between 1 and 7"),
            (self.unet_convs_per_level >= 1, "unet_convs_per_level must be >= 1"),
            (1 <= self.unet_downsample <= 8, "unet_downsample must be between 1 and 8"),
            (self.input_size >= 32, "input_size must be >= 32"),
            (self.unet_size % divisor == 0 and self.unet_size >= divisor,
             f"unet_input_size (or input_size) must be a positive multiple of {divisor} "
             "(2**unet_levels * unet_downsample)"),
            (0 < self.scale <= 4, "scale must be in (0, 4]"),
            (0 <= 2 * self.tile_halo < self.unet_size,
             "tile_halo must be < unet_input_size / 2"),
            (self.normalization in ("zscore", "none"), "normalization must be zscore or none"),
            (self.classifier_epochs >= 0 and self.unet_epochs >= 0, "epochs must be >= 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.fine_tune_lr_factor > 0, "fine_tune_lr_factor must be > 0"),
            (0 < self.val_fraction < 1, "val_fraction must be between 0 and 1"),
            (0 <= self.curated_share < 1, "curated_share must be >= 0 and < 1"),
            (self.curated_validation_min >= 1, "curated_validation_min must be >= 1"),
            (self.device in DEVICES, f"device must be one of {', '.join(DEVICES)}"),
            (self.scorecam_weighting in WEIGHTINGS,
             f"scorecam_weighting must be one of {', '.join(WEIGHTINGS)}"),
            (self.scorecam_batch_size == "auto"
             or (_is_integer(self.scorecam_batch_size) and self.scorecam_batch_size >= 1),
             "scorecam_batch_size must be an integer >= 1 or \"auto\""),
            (0 < self.scorecam_score_scale <= 1, "scorecam_score_scale must be in (0, 1]"),
            (0 < self.classifier_scale_augment <= 1, "classifier_scale_augment must be in (0, 1]"),
            (self.scorecam_stage in (1, 2, 3, 4), "scorecam_stage must be 1, 2, 3 or 4"),
            (_is_integer(self.scorecam_mask_stage)
             and 0 <= self.scorecam_mask_stage <= self.scorecam_stage,
             "scorecam_mask_stage must be an integer from 0 to scorecam_stage"),
            (self.scorecam_mask_stage == 0 or self.scorecam_score_scale == 1,
             "scorecam_mask_stage > 0 and scorecam_score_scale < 1 cannot be combined"),
            (self.pseudo_label_rule in PSEUDO_LABEL_RULES,
             f"pseudo_label_rule must be one of {', '.join(PSEUDO_LABEL_RULES)}"),
            (self.gate_rule in GATE_RULES, f"gate_rule must be one of {', '.join(GATE_RULES)}"),
            (self.fine_tune_schedule in FINE_TUNE_SCHEDULES,
             f"fine_tune_schedule must be one of {', '.join(FINE_TUNE_SCHEDULES)}"),
            (1 <= self.gate_symmetries <= 8, "gate_symmetries must be between 1 and 8"),
            (self.self_training_rounds >= 0, "self_training_rounds must be >= 0"),
            (self.method in METHODS, f"method must be one of {', '.join(METHODS)}"),
            *self._method_checks(),
        ]
        for ok, message in checks:
            if not ok:
                raise ArtSegError(f"invalid setting: {message}")
        if self.memory_budget_gb is not None and not self.memory_budget_gb > 0:
            raise ArtSegError("invalid setting: memory_budget_gb must be > 0 (or null: automatic)")
        for name in ("pseudo_label_threshold", "gate_threshold", "mask_threshold"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ArtSegError(f"invalid setting: {name} must be between 0 and 1")
        return self

    def _method_checks(self) -> list[tuple[bool, str]]:
        """Checks of the other methods' settings (ensemble, anomaly, CDL)."""
        members, weights = self.ensemble_members, self.ensemble_weights
        params = self.anomaly_params
        return [
            (isinstance(members, list) and len(members) > 0
             and all(isinstance(m, str) and m and m != "ensemble" for m in members),
             "ensemble_members must be a non-empty list of method names or model folders "
             "(not ensemble)"),
            (isinstance(weights, list) and (not weights or len(weights) == len(members))
             and all(_is_real(w) and w >= 0 for w in weights) and (not weights or sum(weights) > 0),
             "ensemble_weights must be empty or one non-negative number per member, not all 0"),
            (isinstance(params, dict) and all(k in ANOMALY_METHODS and isinstance(v, dict)
                                              for k, v in params.items()),
             f"anomaly_params must map {', '.join(ANOMALY_METHODS)} to objects"),
            (0 < self.anomaly_calibration_percentile < 100,
             "anomaly_calibration_percentile must be between 0 and 100"),
            (self.cdl_background_sigma > 0, "cdl_background_sigma must be > 0"),
            (self.cdl_smooth_sigma >= 0 and self.cdl_dog_sigma >= 0,
             "cdl_smooth_sigma and cdl_dog_sigma must be >= 0"),
            (0 < self.cdl_low_threshold <= self.cdl_threshold,
             "cdl_low_threshold must be > 0 and <= cdl_threshold"),
            (self.cdl_min_size_px >= 0, "cdl_min_size_px must be >= 0"),
            (self.cdl_polarity in POLARITIES,
             f"cdl_polarity must be one of {', '.join(POLARITIES)}"),
        ]

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """The config as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ArtSegConfig:
        """Build a config from a dict, refusing unknown fields and wrong types."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ArtSegError(f"{source}: unknown setting(s) {', '.join(unknown)}")
        defaults = cls()
        values = {name: value for name, value in LEGACY_VALUES.items() if name not in data}
        for name, value in data.items():
            default = getattr(defaults, name)
            values[name] = _coerce(name, value, default, source)
        return cls(**values).validate()

    @property
    def unet_size(self) -> int:
        """The U-Net's square side in px: ``unet_input_size``, or ``input_size`` when None."""
        return self.unet_input_size or self.input_size

    def replace(self, **changes: Any) -> ArtSegConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes).validate()

    def start_learning_rate(self, fine_tuning: bool) -> float | None:
        """The learning rate a network starts at: ``fine_tune_lr_factor`` of it when fine-tuning.

        Parameters
        ----------
        fine_tuning : bool
            True when the network starts from a parent model's weights.

        Returns
        -------
        float or None
            ``learning_rate * fine_tune_lr_factor`` when fine-tuning, else None
            (the trainer's default, ``learning_rate``).
        """
        return self.learning_rate * self.fine_tune_lr_factor if fine_tuning else None


#: Fields added after the first saved models, with the value that reproduces how those
#: models were built (a config file without the field gets this, not the new default).
LEGACY_VALUES: dict[str, Any] = {"unet_input_size": None, "gate_symmetries": 1,
                                 "unet_downsample": 1, "mask_fallback": False,
                                 "curated_validation_min": 1, "curated_share": 0.0,
                                 "fine_tune_schedule": "plateau"}

#: Integer settings that also accept the word "auto".
AUTO_INTEGERS = ("scorecam_batch_size",)


def _coerce(name: str, value: Any, default: Any, source: str) -> Any:
    """Check a value read from JSON against the type of its default."""
    if value is None:
        return None
    if name in AUTO_INTEGERS and value == "auto":
        return value
    expected = int if name in AUTO_INTEGERS else type(default) if default is not None else None
    if expected is bool and not isinstance(value, bool):
        raise ArtSegError(f"{source}: setting {name} must be true or false, got {value!r}")
    if expected is int and not _is_integer(value):
        word = ' or "auto"' if name in AUTO_INTEGERS else ""
        raise ArtSegError(f"{source}: setting {name} must be an integer{word}, got {value!r}")
    if expected is float or (expected is None and isinstance(value, int | float)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ArtSegError(f"{source}: setting {name} must be a number, got {value!r}")
        return float(value) if expected is float else value
    if expected is str and not isinstance(value, str):
        raise ArtSegError(f"{source}: setting {name} must be text, got {value!r}")
    if expected is dict and not isinstance(value, dict):
        raise ArtSegError(f"{source}: setting {name} must be an object, got {value!r}")
    if expected is list and not isinstance(value, list):
        raise ArtSegError(f"{source}: setting {name} must be a list, got {value!r}")
    return value


def _is_integer(value: Any) -> bool:
    """An int (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and value == value and abs(value) != float("inf"))


PRESETS: dict[str, dict[str, Any]] = {
    # CPU-friendly: narrow networks, the classifier sees 512 px at full resolution, the U-Net
    # 512 px crops and tiles that it works on at half resolution inside (unet_downsample 2);
    # docs/accuracy.md has the training times and accuracy.
    "fast": {},
    # The paper's settings (ResNet50, U-Net 64 filters, 1024 px, 150 epochs): for GPUs.
    "paper": {
        "resnet_depth": 50,
        "resnet_width": 64,
        "resnet_stem_pool": True,
        "unet_width": 64,
        "scorecam_max_channels": None,
        "resnet_pool": "avg",
        "scorecam_stage": 4,
        "gate_symmetries": 1,
        "input_size": 1024,
        "unet_input_size": None,
        "unet_downsample": 1,
        "scale": 1.0,
        "tile_halo": 64,
        "classifier_epochs": 150,
        "unet_epochs": 150,
        "batch_size": 4,
        "lr_patience": 10,
        "early_stop_patience": 30,
        "pseudo_label_threshold": 0.05,
        "pseudo_label_per_image": False,
        "self_training_rounds": 0,
        "mask_threshold": 0.001,
        "min_size_px": 1000,
        "dice_weight": 0.0,
    },
    # For unit tests and smoke runs only: tiny networks, very few epochs.
    "tiny": {
        "resnet_width": 4,
        "unet_width": 4,
        "unet_levels": 3,
        "unet_downsample": 1,
        "scorecam_max_channels": None,
        "input_size": 64,
        "unet_input_size": None,
        "scale": 0.5,
        "tile_halo": 8,
        "classifier_epochs": 2,
        "unet_epochs": 2,
        "batch_size": 4,
        "scorecam_batch_size": 16,
        "dice_weight": 0.0,
    },
}


def preset(name: str, **overrides: Any) -> ArtSegConfig:
    """The config of a named preset, with optional field overrides.

    Parameters
    ----------
    name : str
        ``fast``, ``paper`` or ``tiny``.
    **overrides
        Fields to change.
    """
    if name not in PRESETS:
        raise ArtSegError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    values = {"preset": name, **PRESETS[name], **overrides}
    return ArtSegConfig(**values).validate()
