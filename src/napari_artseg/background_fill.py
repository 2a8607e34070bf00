"""Clean images made from artifact images: polynomial background plus noise under the mask.

When every image of a screen carries artifacts (the CHO-M4R case of the ArtSeg
paper) there are no clean images to train the classifier on. ArtSeg made them:
fit a 2-D second-order polynomial to the image's non-artifact pixels (a smooth
background estimate) and replace the artifact pixels by that background plus
zero-centred noise drawn from the background's own residuals. Pixels outside the
(optionally dilated) artifact mask are never changed.

:func:`fill_artifacts` works on arrays; :func:`fill_folder` is the generator the
CLI (``artseg fill``) and the widget drive: it writes the filled images and
labels them ``clean``. GUI-free.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ArtSegError, first_line
from .image_files import read_image, read_mask, write_tiff
from .training.data import mask_path_for
from .training.events import ProgressEvent

#: Folder (inside the image folder) where a project's filled images go.
FILLED_FOLDER = "filled"
#: At most this many background pixels enter the least-squares fit (a random subset).
MAX_FIT_PIXELS = 200_000


def _design(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    """Polynomial terms x^i y^j (i + j <= order) of pixel coordinates scaled to [-1, 1]."""
    h, w = shape
    y = 2.0 * rows / max(h - 1, 1) - 1.0
    x = 2.0 * cols / max(w - 1, 1) - 1.0
    terms = [x**i * y**j for total in range(order + 1) for i in range(total + 1)
             for j in [total - i]]
    return np.stack(terms, axis=-1)


def fit_background(
    image: np.ndarray, exclude: np.ndarray | None = None, order: int = 2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Fit a 2-D polynomial surface to the image's pixels outside ``exclude``.

    Parameters
    ----------
    image : numpy.ndarray
        (H, W) pixels.
    exclude : numpy.ndarray, optional
        (H, W) bool mask of pixels left out of the fit (the artifacts).
    order : int
        Polynomial order (2: the ArtSeg paper's second-order surface).
    seed : int
        Seed of the random subset used when the background has more than
        :data:`MAX_FIT_PIXELS` pixels.

    Returns
    -------
    background : numpy.ndarray
        (H, W) float64 fitted surface.
    residuals : numpy.ndarray
        1-D image minus surface at the fitted background pixels.

    Raises
    ------
    ValueError
        When fewer background pixels than polynomial terms remain.
    """
    data = np.asarray(image, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {data.shape}")
    keep = np.ones(data.shape, bool) if exclude is None else ~np.asarray(exclude, bool)
    rows, cols = np.nonzero(keep)
    n_terms = (order + 1) * (order + 2) // 2
    if rows.size < n_terms:
        raise ValueError(f"only {rows.size} background pixels: too few to fit a polynomial of "
                         f"order {order}")
    if rows.size > MAX_FIT_PIXELS:
        pick = np.random.default_rng(seed).choice(rows.size, MAX_FIT_PIXELS, replace=False)
        rows, cols = rows[pick], cols[pick]
    design = _design(rows, cols, data.shape, order)
    values = data[rows, cols]
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)
    all_rows, all_cols = np.indices(data.shape)
    background = _design(all_rows, all_cols, data.shape, order) @ coef
    residuals = data[keep] - background[keep]
    return background, residuals


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """``mask`` grown by ``pixels`` (a disk), so artifact halos are filled too."""
    mask = np.asarray(mask, bool)
    if pixels <= 0 or not mask.any():
        return mask
    from scipy import ndimage

    r = int(pixels)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return ndimage.binary_dilation(mask, structure=(yy**2 + xx**2) <= r * r)


def fill_artifacts(
    image: np.ndarray, mask: np.ndarray, order: int = 2, seed: int = 0, dilate_px: int = 0
) -> np.ndarray:
    """Replace the artifact pixels by the fitted background plus background-like noise.

    Parameters
    ----------
    image : numpy.ndarray
        (H, W) pixels.
    mask : numpy.ndarray
        (H, W) artifact mask (non-zero = artifact).
    order : int
        Polynomial order of the background (2 in the paper).
    seed : int
        Seed of the noise.
    dilate_px : int
        Grow the mask by this many pixels before filling (0: fill exactly the mask).

    Returns
    -------
    numpy.ndarray
        (H, W) float32 copy: identical outside the (dilated) mask; inside it,
        background + residual noise, the residuals drawn at random from the
        background pixels and centred on zero.
    """
    data = np.asarray(image, dtype=np.float32)
    region = dilate(np.asarray(mask) != 0, dilate_px)
    if region.shape != data.shape:
        raise ValueError(f"mask shape {region.shape} does not match image shape {data.shape}")
    out = data.copy()
    if not region.any():
        return out
    background, residuals = fit_background(data, region, order, seed)
    residuals = residuals - residuals.mean()
    noise = np.random.default_rng(seed).choice(residuals, size=int(region.sum()), replace=True)
    out[region] = (background[region] + noise).astype(np.float32)
    return out


def to_stored_dtype(filled: np.ndarray, dtype: str) -> np.ndarray:
    """``filled`` in the image file's dtype: integers rounded and clipped, else float32."""
    kind = np.dtype(dtype) if dtype in np.sctypeDict else np.dtype(np.float32)
    if np.issubdtype(kind, np.integer):
        info = np.iinfo(kind)
        return np.clip(np.rint(filled), info.min, info.max).astype(kind)
    return filled.astype(np.float32)


@dataclass
class FillResult:
    """What :func:`fill_folder` wrote.

    Attributes
    ----------
    written : dict
        Source image key (with extension) -> the filled image's key (relative to
        ``out_root``).
    skipped : list of str
        Images without a non-empty mask.
    errors : dict
        Image -> one-line error.
    """

    written: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


def fill_folder(
    images_dir: str | os.PathLike,
    images: Iterable[str],
    masks_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    order: int = 2,
    dilate_px: int = 0,
    seed: int = 0,
    overwrite: bool = False,
) -> Generator[ProgressEvent, None, FillResult]:
    """Write a filled (clean) copy of every image that has a non-empty mask.

    Parameters
    ----------
    images_dir : path-like
        Folder the image keys are relative to.
    images : iterable of str
        Image keys (with extension), e.g. a project's artifact images.
    masks_dir : path-like
        Masks ``<key without extension>.tif`` (a project's ``masks/``).
    out_dir : path-like
        Where ``<key without extension>.tif`` filled images go (sub-folders mirrored).
    order, dilate_px, seed
        See :func:`fill_artifacts` (the seed is offset per image).
    overwrite : bool
        Replace filled images that exist already (else they are kept and counted).

    Yields
    ------
    ProgressEvent
        Stage ``fill``, one per image.

    Returns
    -------
    FillResult
        Written, skipped and failed images. Every file is written atomically with
        the source's dtype and pixel size.
    """
    images_dir, masks, out = Path(images_dir), Path(masks_dir), Path(out_dir)
    chosen = list(images)
    result = FillResult()
    yield ProgressEvent("fill", 0, len(chosen), kind="stage",
                        message=f"filling artifacts of {len(chosen)} image(s)")
    for index, key in enumerate(chosen, start=1):
        mask_file = mask_path_for(masks, key)
        target = mask_path_for(out, key)
        try:
            if not mask_file.is_file():
                result.skipped.append(key)
                continue
            loaded = read_image(images_dir / key)
            mask = read_mask(mask_file, shape=loaded.data.shape)
            if not mask.any():
                result.skipped.append(key)
                continue
            if overwrite or not target.is_file():
                filled = fill_artifacts(loaded.data, mask, order, seed + index, dilate_px)
                write_tiff(target, to_stored_dtype(filled, loaded.dtype), loaded.pixel_size_um)
            result.written[key] = target.relative_to(out).as_posix()
        except (ArtSegError, OSError, ValueError) as exc:
            result.errors[key] = first_line(exc)
        finally:
            yield ProgressEvent("fill", index, len(chosen), message=key)
    return result


def fill_project(
    project, order: int = 2, dilate_px: int = 0, seed: int = 0, overwrite: bool = False
) -> Generator[ProgressEvent, None, FillResult]:
    """Fill every curated artifact image of a project and label the results ``clean``.

    The filled images go to ``<image folder>/filled/`` (so they are project images
    that training reads like any other) and are labelled ``clean`` in
    ``labels.csv``. Images in ``filled/`` are never filled again.

    Parameters
    ----------
    project : napari_artseg.project.Project
        The project.
    order, dilate_px, seed, overwrite
        See :func:`fill_folder`.

    Returns
    -------
    FillResult
        ``written`` maps each source image to its filled image's key in the project.
    """
    labels = project.labels.labels
    prefix = f"{FILLED_FOLDER}/"
    sources = [k for k in project.images()
               if labels.get(k) == "artifact" and not k.startswith(prefix)]
    out = project.image_folder / FILLED_FOLDER
    result = yield from fill_folder(project.image_folder, sources, project.masks_dir, out,
                                    order, dilate_px, seed, overwrite)
    project.images(refresh=True)
    keys = {}
    for source, filled in result.written.items():
        key = f"{prefix}{filled}"
        keys[source] = key
        if project.labels.get(key) != "clean":
            project.labels.set(key, "clean")
    result.written = keys
    return result
