"""Training data: images and labels in memory at the processing scale, splits, augmentation."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ArtSegConfig
from ..errors import ArtSegError
from ..image_files import read_image, read_mask
from ..normalize import mask_to_scale, prepare_image, resize
from .events import ProgressEvent
from .spill import TensorSpill

LABEL_VALUES = {"clean": 0, "artifact": 1}
#: TrainingItem fields a spill keeps on disk.
SPILLED = ("image", "target")


@dataclass
class TrainingItem:
    """One labelled image, held in memory at the processing scale.

    Attributes
    ----------
    key : str
        The image's path relative to the image folder (as in labels.csv).
    label : int
        1 artifact, 0 clean.
    image : torch.Tensor
        (1, h, w) normalised image at the processing scale.
    full_shape : tuple of int
        (H, W) at full resolution.
    target : torch.Tensor or None
        (1, h, w) pixel target in [0, 1] for the U-Net: a curated mask, zeros for a
        clean image, or a Score-CAM pseudo-label (set later).
    curated : bool
        True when ``target`` comes from a mask file.
    spill : TensorSpill or None
        Set (by :meth:`move_to`) when the image did not fit in memory: ``image`` and
        ``target`` are then backed by memory-mapped files (same values).
    """

    key: str
    label: int
    image: torch.Tensor
    full_shape: tuple[int, int]
    target: torch.Tensor | None = None
    curated: bool = False
    spill: TensorSpill | None = field(default=None, repr=False, compare=False)

    def __setattr__(self, name: str, value: object) -> None:
        # with a spill, the image and every target set later live in its memory-mapped files
        if name in SPILLED and isinstance(value, torch.Tensor):
            value = self.hold(value, name)
        object.__setattr__(self, name, value)

    def hold(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        """``tensor`` kept with this item: memory-mapped from its spill when it has one.

        For what training derives from the image and holds for a while (the
        classifier's view, the Score-CAM map, the rasters saved with the model),
        so that an item past the memory budget has all of its data on disk.
        ``name`` names the slot: holding again under the same name replaces the
        earlier file.
        """
        if self.spill is None:
            return tensor
        return self.spill.keep(tensor, (self.key, name))

    def hold_array(self, array: np.ndarray, name: str) -> np.ndarray:
        """:meth:`hold` for a NumPy array (a raster saved with the model)."""
        return self.hold(torch.from_numpy(array), name).numpy()

    def move_to(self, spill: TensorSpill) -> None:
        """Keep this item's image and target (and any later target) in ``spill``'s files."""
        self.spill = spill
        self.image = self.image
        if self.target is not None:
            self.target = self.target


def mask_path_for(masks_dir: Path, key: str) -> Path:
    """The mask file of an image key: ``<masks>/<key without extension>.tif``."""
    return masks_dir / (Path(key).with_suffix("").as_posix() + ".tif")


def load_training_items(
    images_dir: str | os.PathLike,
    labels: dict[str, str],
    config: ArtSegConfig,
    masks_dir: str | os.PathLike | None = None,
    spill: TensorSpill | None = None,
) -> Generator[ProgressEvent, None, tuple[list[TrainingItem], float | None]]:
    """Read every labelled image (``unsure`` skipped) and its curated mask if any.

    Yields progress; returns ``(items, pixel_size_um)`` where the pixel size is the
    first one found in the files (or None). With a ``spill``, the images that do
    not fit its memory budget (with a target of their size and what training
    derives from them, :func:`derived_bytes`) are kept on disk, memory-mapped
    (:mod:`napari_artseg.training.spill`).

    Raises
    ------
    ArtSegError
        A labelled image is missing or unreadable, a mask does not match its image,
        or a clean image has a non-empty mask.
    """
    images_dir = Path(images_dir)
    masks = Path(masks_dir) if masks_dir is not None else None
    chosen = [(k, v) for k, v in labels.items() if v in LABEL_VALUES]
    items: list[TrainingItem] = []
    pixel_size = None
    for done, (key, word) in enumerate(chosen, start=1):
        loaded = read_image(images_dir / key)
        pixel_size = pixel_size or loaded.pixel_size_um
        image = prepare_image(loaded.data, config.scale, config.normalization)
        item = TrainingItem(key, LABEL_VALUES[word], image, loaded.data.shape)
        if masks is not None and mask_path_for(masks, key).is_file():
            mask_file = mask_path_for(masks, key)
            mask = read_mask(mask_file, shape=loaded.data.shape)
            if item.label == 0 and mask.any():
                raise ArtSegError(
                    f"{mask_file}: non-empty mask for an image labelled clean ({key}); "
                    "relabel the image as artifact or clear the mask"
                )
            item.target = mask_to_scale(mask, tuple(image.shape[-2:]))
            item.curated = True
        if spill is not None and not spill.fits(image, derived_bytes(image, item.label, config)):
            item.move_to(spill)
        items.append(item)
        yield ProgressEvent("data", done, len(chosen), message=f"read {key}")
    yield from spill_report(items, spill)
    return items, pixel_size


def derived_bytes(image: torch.Tensor, label: int, config: ArtSegConfig) -> int:
    """Bytes training derives from one image and holds beside it and its target.

    Every image: the classifier's view (float32, ``input_size`` squared). An
    artifact image also: its Score-CAM map (float32, the view's size) and the
    rasters saved with the model (the map and the pseudo-label as uint8, at the
    view's size and at the image's). The methods that make no Score-CAM maps are
    counted the same: the budget errs towards the disk.
    """
    view = config.input_size ** 2
    if label != 1:
        return 4 * view
    return 4 * view + 4 * view + view + image.shape[-2] * image.shape[-1]


def count_on_disk(items: list[TrainingItem]) -> int:
    """How many of ``items`` a spill keeps on disk."""
    return sum(item.spill is not None for item in items)


def spill_report(items: list[TrainingItem],
                 spill: TensorSpill | None) -> Generator[ProgressEvent, None, None]:
    """A ``data`` stage event saying how many of ``items`` are kept on disk (none if none)."""
    on_disk = count_on_disk(items)
    if on_disk:  # only a spill with a budget keeps images on disk
        yield ProgressEvent("data", kind="stage",
                            message=f"{on_disk} of {len(items)} images kept on disk (memory "
                                    f"budget {spill.budget / 1e9:.1f} GB)")


def check_label_counts(items: list[TrainingItem]) -> dict[str, int]:
    """Count labels and refuse data that cannot train a classifier.

    Raises
    ------
    ArtSegError
        Fewer than 2 images of either class, with advice.
    """
    n_artifact = sum(item.label for item in items)
    counts = {"clean": len(items) - n_artifact, "artifact": n_artifact}
    if min(counts.values()) < 2:
        raise ArtSegError(
            f"training needs at least 2 clean and 2 artifact images; got {counts['clean']} clean "
            f"and {counts['artifact']} artifact: label more images of the missing class"
        )
    return counts


def stratified_split(
    labels: list[int], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split indices into train and validation, keeping the class ratio.

    Every class keeps at least one image on each side.
    """
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    for value in sorted(set(labels)):
        members = [i for i, lab in enumerate(labels) if lab == value]
        rng.shuffle(members)
        n_val = min(max(1, round(len(members) * val_fraction)), len(members) - 1)
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return sorted(train), sorted(val)


def weighted_indices(labels: list[int], curated: list[bool], n: int, generator: torch.Generator,
                     balance: bool, curated_share: float) -> list[int]:
    """Draw ``n`` indices with replacement, by class and by curated mask.

    Parameters
    ----------
    labels : list of int
        Image labels (1 artifact).
    curated : list of bool
        Which images have a curated mask.
    n : int
        Number of draws.
    generator : torch.Generator
        Random source.
    balance : bool
        Both classes equally likely (else each image equally likely).
    curated_share : float
        When artifact images with and without a curated mask are both present and
        this is above 0, that share of the artifact draws goes to the curated ones.

    Returns
    -------
    list of int
    """
    labels_t = torch.tensor(labels, dtype=torch.float64)
    positive = labels_t > 0
    curated_t = torch.tensor(curated, dtype=torch.bool) & positive
    n_pos = float(positive.sum())
    n_neg = len(labels) - n_pos
    positive_total = 0.5 if balance else n_pos / max(len(labels), 1)
    negative_total = 0.5 if balance else n_neg / max(len(labels), 1)
    weights = torch.where(positive, positive_total / max(n_pos, 1),
                          negative_total / max(n_neg, 1))
    n_cur = int(curated_t.sum())
    if curated_share > 0 and 0 < n_cur < n_pos:
        share = positive_total * (1 - curated_share) / (n_pos - n_cur)
        weights = torch.where(positive, share, weights)
        weights = torch.where(curated_t, positive_total * curated_share / n_cur, weights)
    return torch.multinomial(weights, n, replacement=True, generator=generator).tolist()


def epoch_order(
    train_idx: list[int], labels: list[int], balance: bool, generator: torch.Generator,
    curated: list[bool] | None = None, curated_share: float = 0.0,
) -> list[int]:
    """One epoch's training order: weighted draws with replacement, or a permutation.

    Draws (:func:`weighted_indices`) when ``balance`` or when a ``curated_share``
    applies (curated and uncurated artifact images both present); otherwise a
    permutation of ``train_idx``. ``labels`` and ``curated`` describe the images of
    ``train_idx``.
    """
    curated = curated or [False] * len(train_idx)
    n_cur = sum(c and lab == 1 for c, lab in zip(curated, labels, strict=True))
    shared = curated_share > 0 and 0 < n_cur < sum(lab == 1 for lab in labels)
    if balance or shared:
        drawn = weighted_indices(labels, curated, len(train_idx), generator, balance,
                                 curated_share)
        return [train_idx[i] for i in drawn]
    return [train_idx[i] for i in torch.randperm(len(train_idx), generator=generator)]


def curated_to_training(items: list[TrainingItem], train_idx: list[int], val_idx: list[int],
                        minimum: int) -> tuple[list[int], list[int]]:
    """Move the validation split's curated masks to training when it holds too few to judge.

    Parameters
    ----------
    items : list of TrainingItem
        All training items.
    train_idx, val_idx : list of int
        The split.
    minimum : int
        Curated artifact masks the validation split needs to keep its curated masks
        (``config.curated_validation_min``).

    Returns
    -------
    train_idx, val_idx : list of int
        Sorted; unchanged when the split holds no curated mask, at least
        ``minimum`` curated artifact masks, or no other artifact image.
    """
    moving = {i for i in val_idx if items[i].curated}
    staying = [i for i in val_idx if i not in moving]
    if (not moving or sum(items[i].label == 1 for i in moving) >= minimum
            or not any(items[i].label == 1 for i in staying)):
        return train_idx, val_idx
    return sorted([*train_idx, *moving]), staying


def d4(tensor: torch.Tensor, k: int) -> torch.Tensor:
    """Apply element ``k`` (0-7) of the square's symmetry group to the last two dims.

    Rotations by ``k % 4`` quarter turns, followed by a transpose when ``k >= 4``:
    the flips, 90-degree rotations and transpose the paper found helpful.
    """
    out = torch.rot90(tensor, k % 4, dims=(-2, -1))
    return out.transpose(-2, -1) if k >= 4 else out


def symmetry_mean(score: Callable[[torch.Tensor], torch.Tensor], views: torch.Tensor,
                  symmetries: int) -> torch.Tensor:
    """The mean of ``score`` over ``views`` under the first ``symmetries`` elements of :func:`d4`.

    One call of ``score`` per symmetry (on this CPU, one thread, machine shared: eight passes
    of one view took 0.38 s against 0.56 s for one pass of the eight stacked, width-8
    ResNet18 at 512 px).

    Parameters
    ----------
    score : callable
        Maps (N, C, S, S) views to per-view values (e.g. P(artifact), shape (N,)).
    views : torch.Tensor
        (N, C, S, S) square views.
    symmetries : int
        1 to 8; 1 is ``score(views)``.

    Returns
    -------
    torch.Tensor
        The per-view mean.
    """
    total = score(views)
    for k in range(1, symmetries):
        total = total + score(d4(views, k).contiguous())
    return total / symmetries


def random_scale(views: torch.Tensor, min_scale: float,
                 generator: torch.Generator) -> torch.Tensor:
    """A batch of square views, kept or (one time in two) shrunk to a random smaller scale.

    The scale is drawn log-uniformly between ``min_scale`` and 1, and the views are shrunk by
    area averaging, as Score-CAM shrinks the image it scores at ``scorecam_score_scale``.

    Parameters
    ----------
    views : torch.Tensor
        (N, C, S, S) views.
    min_scale : float
        The smallest scale, in (0, 1]; 1 returns ``views`` unchanged without a draw.
    generator : torch.Generator
        The random draws (two per batch when ``min_scale`` < 1).

    Returns
    -------
    torch.Tensor
        (N, C, s, s) views with ``s = max(1, round(S * scale))``.
    """
    if min_scale >= 1:
        return views
    keep, u = torch.rand(2, generator=generator).tolist()
    if keep < 0.5:
        return views
    side = max(1, round(views.shape[-1] * min_scale ** u))
    if side == views.shape[-1]:
        return views
    return F.interpolate(views, size=(side, side), mode="area")


def global_view(image: torch.Tensor, size: int) -> torch.Tensor:
    """The classifier's view of a (1, h, w) image: resized to ``size`` x ``size``."""
    return resize(image[None], (size, size))[0]


def random_crop(
    image: torch.Tensor, target: torch.Tensor, size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random ``size`` square crop of an image and its target, padded when smaller.

    Returns the image crop, the target crop and a weight map that is 0 on padding.
    """
    _, height, width = image.shape
    h, w = height, width
    pad_h, pad_w = max(0, size - h), max(0, size - w)
    if pad_h or pad_w:
        mode = "reflect" if pad_h < h and pad_w < w else "replicate"
        pad = (0, pad_w, 0, pad_h)
        image = torch.nn.functional.pad(image[None], pad, mode=mode)[0]
        target = torch.nn.functional.pad(target, pad)
        h, w = h + pad_h, w + pad_w
    top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
    window = (slice(None), slice(top, top + size), slice(left, left + size))
    # the padding is below and right of the image: the crop's rows and columns before it weigh 1
    weight = torch.zeros((1, size, size), dtype=target.dtype)
    weight[:, : height - top, : width - left] = 1
    return image[window], target[window], weight
