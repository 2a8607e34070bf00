"""Synthetic brightfield images with artifacts and exact ground-truth masks.

The generator draws grey 12-bit brightfield fields of view (stored as uint16):
an uneven illumination background, cells with a bright halo and a textured,
slightly darker interior, camera noise, and, on artifact images, one to four
artifacts of five kinds (:data:`ARTIFACT_KINDS`) drawn on top of the cells.

Everything is rendered as a *transmission* map ``T`` (1 = empty background,
below 1 = darker, above 1 = brighter) that multiplies the illumination
background ``B``; the noise-free image is ``offset + B * T``.

Ground truth
------------
Each artifact replaces the transmission in its window by a new one. The pixels
it *visibly changes* are those where ``|T_new - T_old| > MASK_THRESHOLD``, i.e.
where the artifact changes the noise-free intensity by more than 2 % of the local
background brightness (about 1.5x the per-pixel noise). ``T_old`` already holds
the cells and the artifacts drawn before, so an artifact that occludes another
takes over those pixels in the kind map. The mask is the union of all artifact
footprints; the kind map holds the id (index in :data:`ARTIFACT_KINDS` + 1) of
the last artifact that visibly changed each pixel, so ``kinds > 0`` equals
``mask`` exactly. Cells are never part of the mask.

Sizes are specified for a 512 x 512 field and scaled by
``sqrt(H * W) / 512``. Every random draw comes from the ``numpy.random.Generator``
passed in, so a seed reproduces an image bit for bit. Background, cells and
noise are drawn before the artifacts, which come from their own stream: with
the same seed, the clean and the artifact version of an image share the same
cells and noise, and the same seed at another size draws the same artifacts,
scaled.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

#: Artifact kinds; the kind id stored in kind maps is the index + 1.
ARTIFACT_KINDS: tuple[str, ...] = ("debris", "dust", "hair", "clump", "bubble")
#: Default relative frequency of each kind among drawn artifacts.
DEFAULT_KIND_WEIGHTS: dict[str, float] = {
    "debris": 0.30,
    "dust": 0.20,
    "hair": 0.15,
    "clump": 0.15,
    "bubble": 0.20,
}
#: Probabilities of drawing 1, 2, 3 or 4 artifacts on an artifact image.
N_ARTIFACT_PROBS: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1)
#: A pixel belongs to an artifact where it changes the transmission by more than this.
MASK_THRESHOLD = 0.02
#: Probability that a clump is a large one (12-50 % of the field).
LARGE_CLUMP_PROB = 0.2
#: Bumped whenever the same seed would draw different images.
SYNTH_VERSION = 1
CAMERA_OFFSET = 100.0
MAX_COUNTS = 4095.0  # 12-bit camera


@dataclass
class SynthSample:
    """One synthetic image with its ground truth.

    Attributes
    ----------
    image : numpy.ndarray
        (H, W) uint16 brightfield image (12-bit range).
    mask : numpy.ndarray
        (H, W) uint8, 1 where an artifact visibly changes the image.
    kinds : numpy.ndarray
        (H, W) uint8, 0 = no artifact, k = ``ARTIFACT_KINDS[k - 1]`` (the top one
        where artifacts overlap).
    label : str
        ``"artifact"`` or ``"clean"``.
    artifacts : tuple of str
        Kinds of the artifacts drawn, in drawing order (empty for clean images).
    """

    image: np.ndarray
    mask: np.ndarray
    kinds: np.ndarray
    label: str
    artifacts: tuple[str, ...] = ()


# --------------------------------------------------------------------------- helpers


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise with zero mean and unit standard deviation.

    Large ``sigma`` is produced on a coarse grid and interpolated with separable
    Gaussian weights, which keeps the cost independent of ``sigma``.
    """
    h, w = shape
    if sigma <= 8.0:
        field = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    else:
        step = sigma / 2.0
        ch, cw = int(math.ceil(h / step)) + 4, int(math.ceil(w / step)) + 4
        coarse = ndi.gaussian_filter(rng.standard_normal((ch, cw), dtype=np.float32), 1.5)
        # einsum, not BLAS: for these thin products BLAS threading costs more than the maths.
        rows = np.einsum("ij,jk->ik", _interp_matrix(h, ch, step), coarse)
        field = np.einsum("ik,jk->ij", rows, _interp_matrix(w, cw, step))
    field = field.astype(np.float32, copy=False)
    field -= field.mean()
    std = float(field.std())
    return field / std if std > 0 else field


def _interp_matrix(n: int, n_coarse: int, step: float) -> np.ndarray:
    """(n, n_coarse) smooth interpolation weights from a coarse grid to pixels."""
    pos = np.arange(n, dtype=np.float32)[:, None] / step + 2.0
    grid = np.arange(n_coarse, dtype=np.float32)[None, :]
    weights = np.exp(-0.5 * ((pos - grid) / 0.7) ** 2)
    return weights / weights.sum(axis=1, keepdims=True)


def _harmonics(rng: np.random.Generator, amplitude: float, orders: int = 5) -> np.ndarray:
    """Random boundary harmonics (order, amplitude, phase) for an irregular outline."""
    k = np.arange(2, 2 + orders, dtype=np.float32)
    amp = rng.normal(0.0, amplitude, orders).astype(np.float32) / (k - 1.0) ** 0.7
    phase = rng.uniform(0.0, 2 * np.pi, orders).astype(np.float32)
    return np.stack([k, amp, phase], axis=1)


def _blob_distance(
    yy: np.ndarray, xx: np.ndarray, a: float, b: float, angle: float, harmonics: np.ndarray
) -> np.ndarray:
    """Approximate signed distance (px, negative inside) to an irregular ellipse.

    Parameters
    ----------
    yy, xx : numpy.ndarray
        Offsets from the centre (open grids that broadcast to the window).
    a, b : float
        Semi-axes in pixels.
    angle : float
        Orientation of the ``a`` axis in radians.
    harmonics : numpy.ndarray
        Rows of (order, relative amplitude, phase) modulating the radius.
    """
    c, s = math.cos(angle), math.sin(angle)
    u = (xx * c + yy * s) / a
    v = (yy * c - xx * s) / b
    rho = np.sqrt(u * u + v * v)
    if len(harmonics) == 0:
        return (rho - 1.0) * math.sqrt(a * b)
    theta = np.arctan2(v, u)
    bound = np.ones_like(rho)
    for order, amp, phase in harmonics:
        bound += amp * np.cos(order * theta + phase)
    return (rho - np.maximum(bound, 0.3)) * math.sqrt(a * b)


def _soft_inside(distance: np.ndarray, width: float = 0.7) -> np.ndarray:
    """Anti-aliased inside indicator from a signed distance (1 inside, 0 outside)."""
    return np.clip(0.5 - distance / (2.0 * width), 0.0, 1.0)


_ROUND = np.zeros((0, 3), np.float32)  # no harmonics: a plain ellipse


class _Canvas:
    """Transmission map plus the artifact mask and kind map being built."""

    def __init__(self, trans: np.ndarray, scale: float):
        self.trans = trans
        self.scale = scale
        self.shape: tuple[int, int] = trans.shape  # type: ignore[assignment]
        self.mask = np.zeros(trans.shape, np.uint8)
        self.kinds = np.zeros(trans.shape, np.uint8)

    def window(
        self, cy: float, cx: float, ry: float, rx: float
    ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
        """Window of half-size (ry, rx) around a centre, clipped to the image.

        Returns the slices and the (column, row) open grids of offsets from the
        centre, or None when the window lies outside the image.
        """
        h, w = self.shape
        y0, y1 = max(0, int(cy - ry)), min(h, int(math.ceil(cy + ry)) + 1)
        x0, x1 = max(0, int(cx - rx)), min(w, int(math.ceil(cx + rx)) + 1)
        if y0 >= y1 or x0 >= x1:
            return None
        yy = (np.arange(y0, y1, dtype=np.float32) - np.float32(cy))[:, None]
        xx = (np.arange(x0, x1, dtype=np.float32) - np.float32(cx))[None, :]
        return (slice(y0, y1), slice(x0, x1)), yy, xx

    def apply(self, kind: str, window: tuple[slice, slice], new: np.ndarray) -> None:
        """Replace the transmission in ``window`` and record the visible change."""
        old = self.trans[window]
        changed = np.abs(new - old) > MASK_THRESHOLD
        self.trans[window] = new
        self.mask[window][changed] = 1
        self.kinds[window][changed] = ARTIFACT_KINDS.index(kind) + 1

    def random_point(self, rng: np.random.Generator, margin: float = 0.0) -> tuple[float, float]:
        """A uniform random point, ``margin`` pixels beyond the borders allowed."""
        h, w = self.shape
        return float(rng.uniform(-margin, h + margin)), float(rng.uniform(-margin, w + margin))


# ----------------------------------------------------------------------- background


def _illumination(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Uneven illumination: a random 2nd-order polynomial times slight vignetting."""
    h, w = shape
    y = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    c = rng.normal(0.0, [0.05, 0.05, 0.035, 0.035, 0.03]).astype(np.float32)
    poly = 1.0 + c[0] * x + c[1] * y + c[2] * x * x + c[3] * y * y + c[4] * x * y
    oy, ox = rng.uniform(-0.3, 0.3, 2).astype(np.float32)
    vignette = 1.0 - rng.uniform(0.02, 0.08) * ((x - ox) ** 2 + (y - oy) ** 2) / 2.0
    level = rng.uniform(1900.0, 2500.0)
    return (level * np.clip(poly, 0.6, None) * vignette).astype(np.float32)


# ---------------------------------------------------------------------------- cells


def _cell_centres(rng: np.random.Generator, shape: tuple[int, int], radii: np.ndarray) -> list:
    """Cell centres: random with little overlap, a fraction placed touching a neighbour."""
    h, w = shape
    touching = rng.uniform(0.1, 0.5)
    centres: list[tuple[float, float]] = []
    for r in radii:
        if centres and rng.random() < touching:
            j = int(rng.integers(len(centres)))
            direction = rng.uniform(0.0, 2 * np.pi)
            dist = (radii[j] + r) * rng.uniform(0.85, 1.0)
            cy = centres[j][0] + dist * math.sin(direction)
            cx = centres[j][1] + dist * math.cos(direction)
            centres.append((cy, cx))
            continue
        placed = np.array(centres, dtype=np.float32).reshape(-1, 2)
        for _ in range(20):
            cy, cx = rng.uniform(-r, h + r), rng.uniform(-r, w + r)
            if not len(placed):
                break
            dist = np.hypot(placed[:, 0] - cy, placed[:, 1] - cx)
            if np.all(dist > 0.8 * (radii[: len(placed)] + r)):
                break
        centres.append((cy, cx))
    return centres


def _draw_cells(rng: np.random.Generator, trans: np.ndarray, scale: float) -> None:
    """Add cells (halo, dark membrane, darker textured interior, nucleus) in place."""
    h, w = trans.shape
    density = rng.uniform(20.0, 120.0)
    n_cells = int(round(density * h * w / 512.0**2))
    diameters = rng.uniform(15.0, 40.0, n_cells) * scale
    aspects = rng.uniform(1.0, 1.6, n_cells)
    radii = diameters / 2.0
    centres = _cell_centres(rng, (h, w), radii / np.sqrt(aspects))
    texture = _smooth_noise(rng, (h, w), 1.5 * scale)
    granules = np.clip(_smooth_noise(rng, (h, w), 0.9 * scale) - 1.6, 0.0, None)
    interior = np.zeros((h, w), np.float32)
    delta = np.zeros((h, w), np.float32)
    canvas = _Canvas(trans, scale)
    halo_width = 1.8 * scale
    for (cy, cx), a, aspect in zip(centres, radii, aspects, strict=True):
        b = a / aspect
        reach = a * 1.3 + 4 * halo_width + 2
        win = canvas.window(cy, cx, reach, reach)
        if win is None:
            continue
        sl, yy, xx = win
        angle = rng.uniform(0.0, np.pi)
        dist = _blob_distance(yy, xx, a, b, angle, _harmonics(rng, 0.07, 4))
        inside = _soft_inside(dist, 0.8)
        depth = rng.uniform(0.03, 0.10)
        membrane = rng.uniform(0.04, 0.12) * np.exp(-(((dist + 1.2 * scale) / scale) ** 2))
        halo = rng.uniform(0.06, 0.20) * np.exp(-(((dist - halo_width) / halo_width) ** 2))
        cell = halo - depth * inside - membrane
        if rng.random() < 0.7:  # nucleus, off-centre, slightly darker
            off = rng.uniform(-0.25, 0.25, 2) * b
            fn = rng.uniform(0.35, 0.55)
            nuc = _blob_distance(yy - off[0], xx - off[1], a * fn, b * fn, angle, _ROUND)
            cell -= rng.uniform(0.02, 0.06) * _soft_inside(nuc, 1.2 * scale)
        delta[sl] += cell
        np.maximum(interior[sl], inside, out=interior[sl])
    texture_amp = rng.uniform(0.02, 0.045)
    granule_amp = rng.uniform(0.10, 0.25)
    trans += delta + interior * (texture_amp * texture - granule_amp * granules)


# ------------------------------------------------------------------------ artifacts


def _draw_debris(rng: np.random.Generator, canvas: _Canvas) -> None:
    """Debris: a small group of dark irregular specks, a few px to ~15 px across."""
    s = canvas.scale
    cy, cx = canvas.random_point(rng)
    n_specks = int(min(1 + rng.geometric(0.3), 12))
    spread = rng.uniform(4.0, 30.0) * s
    for _ in range(n_specks):
        py, px = cy + rng.normal(0.0, spread), cx + rng.normal(0.0, spread)
        diameter = math.exp(rng.uniform(math.log(2.5), math.log(15.0))) * s
        a = diameter / 2.0
        b = a / rng.uniform(1.0, 1.8)
        win = canvas.window(py, px, a * 1.6 + 3, a * 1.6 + 3)
        if win is None:
            continue
        sl, yy, xx = win
        dist = _blob_distance(yy, xx, a, b, rng.uniform(0, np.pi), _harmonics(rng, 0.25, 4))
        alpha = _soft_inside(dist, 0.6)
        value = rng.uniform(0.35, 0.8) + 0.05 * rng.standard_normal(alpha.shape)
        new = canvas.trans[sl] * (1.0 - alpha) + value.astype(np.float32) * alpha
        if rng.random() < 0.3:  # refractile bright rim
            new += rng.uniform(0.05, 0.15) * np.exp(-(((dist - 0.8) / 0.8) ** 2))
        canvas.apply("debris", sl, new.astype(np.float32))


def _draw_dust(rng: np.random.Generator, canvas: _Canvas) -> None:
    """Dust: an out-of-focus, low-contrast blurred disc (dark, or with a bright rim)."""
    s = canvas.scale
    radius = rng.uniform(10.0, 40.0) * s
    cy, cx = canvas.random_point(rng)
    blur = rng.uniform(0.08, 0.25) * radius + 0.5
    aspect = rng.uniform(1.0, 1.15)
    reach = radius * aspect + 3 * blur + 2
    win = canvas.window(cy, cx, reach, reach)
    if win is None:
        return
    sl, yy, xx = win
    dist = _blob_distance(
        yy, xx, radius * aspect, radius, rng.uniform(0, np.pi), _harmonics(rng, 0.02, 2)
    )
    disc = np.clip(0.5 - dist / (2.5 * blur), 0.0, 1.0)
    disc = disc * disc * (3.0 - 2.0 * disc)  # smoothstep: defocused edge
    if rng.random() < 0.6:
        factor = 1.0 - rng.uniform(0.04, 0.12) * disc
    else:
        rim = np.exp(-((dist / blur) ** 2))
        inner = np.exp(-(((dist + 0.45 * radius) / blur) ** 2))
        factor = (
            1.0
            - rng.uniform(0.02, 0.06) * disc
            + rng.uniform(0.04, 0.10) * rim
            + rng.uniform(0.0, 0.04) * inner
        )
    canvas.apply("dust", sl, (canvas.trans[sl] * factor).astype(np.float32))


def _fibre_path(rng: np.random.Generator, canvas: _Canvas, length: float) -> np.ndarray:
    """Centre line of a fibre: a smooth random curve through a point of the image."""
    step = 0.5
    n = max(int(length / step), 4)
    curvature = ndi.gaussian_filter1d(rng.standard_normal(n), 40.0 / step, mode="nearest")
    curvature *= rng.uniform(0.0, 0.02) / (curvature.std() + 1e-9)
    heading = rng.uniform(0.0, 2 * np.pi) + np.cumsum(curvature) * step
    heading -= heading[n // 2] - rng.uniform(0.0, 2 * np.pi)
    py = np.cumsum(np.sin(heading) * step)
    px = np.cumsum(np.cos(heading) * step)
    my, mx = canvas.random_point(rng)
    return np.stack([py - py[n // 2] + my, px - px[n // 2] + mx], axis=1)


def _draw_hair(rng: np.random.Generator, canvas: _Canvas) -> None:
    """Hair or fibre: a long thin dark curved line, 2-5 px wide, 100 to ~800 px long."""
    s = canvas.scale
    length = 100.0 * s * math.exp(rng.uniform(0.0, math.log(8.0)))
    width = rng.uniform(2.0, 5.0) * s
    path = _fibre_path(rng, canvas, length)
    h, w = canvas.shape
    pad = width + 4
    y0, x0 = np.floor(path.min(axis=0) - pad).astype(int)
    y1, x1 = np.ceil(path.max(axis=0) + pad).astype(int)
    y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
    if y0 >= y1 or x0 >= x1:
        return
    iy = np.round(path[:, 0]).astype(int) - y0
    ix = np.round(path[:, 1]).astype(int) - x0
    keep = (iy >= 0) & (iy < y1 - y0) & (ix >= 0) & (ix < x1 - x0)
    if not keep.any():
        return
    centre = np.ones((y1 - y0, x1 - x0), bool)
    centre[iy[keep], ix[keep]] = False
    # Width and darkness vary slowly along the fibre; look them up at the nearest centre pixel.
    along = np.zeros(centre.shape, np.float32)
    along_values = ndi.gaussian_filter1d(rng.standard_normal(len(path)), 30.0, mode="nearest")
    along_values /= along_values.std() + 1e-9
    along[iy[keep], ix[keep]] = along_values[keep]
    dist, (ny, nx) = ndi.distance_transform_edt(centre, return_indices=True)
    local = along[ny, nx]
    half = 0.5 * width * (1.0 + 0.15 * local)
    alpha = np.clip(half - dist + 0.5, 0.0, 1.0).astype(np.float32)
    value = rng.uniform(0.25, 0.65) * (1.0 + 0.08 * local)
    sl = (slice(y0, y1), slice(x0, x1))
    new = canvas.trans[sl] * (1.0 - alpha) + value * alpha
    if rng.random() < 0.5:  # refractive bright fringe along the edges
        fringe = max(s, 0.7)
        new += rng.uniform(0.04, 0.12) * np.exp(-(((dist - half - fringe) / fringe) ** 2))
    canvas.apply("hair", sl, new.astype(np.float32))


def _draw_clump(rng: np.random.Generator, canvas: _Canvas) -> None:
    """Clump: a large irregular dark textured dead-cell clump or debris field.

    Usually 60-160 px across; with probability :data:`LARGE_CLUMP_PROB` it covers
    12-50 % of the field.
    """
    s = canvas.scale
    h, w = canvas.shape
    if rng.random() < LARGE_CLUMP_PROB:
        radius = math.sqrt(rng.uniform(0.12, 0.5) * h * w / math.pi)
        cy, cx = canvas.random_point(rng, margin=-0.25 * min(h, w))
    else:
        radius = rng.uniform(30.0, 80.0) * s
        cy, cx = canvas.random_point(rng)
    aspect = rng.uniform(1.0, 1.5)
    reach = radius * aspect * 1.5 + 4
    win = canvas.window(cy, cx, reach, reach)
    if win is None:
        return
    sl, yy, xx = win
    shape = (sl[0].stop - sl[0].start, sl[1].stop - sl[1].start)
    dist = _blob_distance(
        yy, xx, radius * aspect, radius, rng.uniform(0, np.pi), _harmonics(rng, 0.15, 4)
    )
    lobes = 0.3 * _smooth_noise(rng, shape, radius / 4) + 0.12 * _smooth_noise(rng, shape, 4 * s)
    field = -dist / radius + lobes
    alpha = np.clip(field * radius / (2.0 * s) + 0.5, 0.0, 1.0)
    # Patchy density: the cells below show through in places.
    alpha *= np.clip(0.85 + 0.35 * _smooth_noise(rng, shape, 6 * s), 0.35, 1.0)
    # Outlying specks just outside the border.
    specks = (_smooth_noise(rng, shape, 1.2 * s) > 1.7) & (field > -0.25) & (field < 0.0)
    alpha = np.maximum(alpha, 0.8 * specks)
    bodies = np.clip(_smooth_noise(rng, shape, 2.5 * s) - 0.3, 0.0, None)
    fine = _smooth_noise(rng, shape, 1.0 * s)
    value = (
        rng.uniform(0.4, 0.65) - 0.12 * bodies + 0.06 * fine + 0.25 * np.clip(fine - 2.2, 0.0, None)
    )
    new = canvas.trans[sl] * (1.0 - alpha) + value * alpha
    canvas.apply("clump", sl, new.astype(np.float32))


def _draw_bubble(rng: np.random.Generator, canvas: _Canvas) -> None:
    """Bubble: a dark refractive ring with a bright inner line and a lighter interior."""
    s = canvas.scale
    radius = 0.5 * math.exp(rng.uniform(math.log(30.0), math.log(150.0))) * s
    cy, cx = canvas.random_point(rng)
    aspect = rng.uniform(1.0, 1.1)
    ring = rng.uniform(0.06, 0.15) * radius + 1.5 * s
    reach = radius * aspect + 4 * s + 3
    win = canvas.window(cy, cx, reach, reach)
    if win is None:
        return
    sl, yy, xx = win
    dist = _blob_distance(
        yy, xx, radius * aspect, radius, rng.uniform(0, np.pi), _harmonics(rng, 0.01, 2)
    )
    inside = _soft_inside(dist + ring, 0.8)
    new = canvas.trans[sl] * (1.0 + rng.uniform(0.05, 0.12) * inside)
    band = _soft_inside(dist, 0.7) * (1.0 - inside)
    darkest = rng.uniform(0.2, 0.5)
    value = darkest + (1.0 - darkest) * 0.5 * np.clip(-dist / ring, 0.0, 1.0)  # darker outside
    new = new * (1.0 - band) + value * band
    new += rng.uniform(0.1, 0.25) * np.exp(-(((dist + ring + 0.8 * s) / (0.8 * s)) ** 2))
    new += rng.uniform(0.0, 0.06) * np.exp(-(((dist - 1.5 * s) / (1.2 * s)) ** 2))
    canvas.apply("bubble", sl, new.astype(np.float32))


_DRAWERS = {
    "debris": _draw_debris,
    "dust": _draw_dust,
    "hair": _draw_hair,
    "clump": _draw_clump,
    "bubble": _draw_bubble,
}


# --------------------------------------------------------------------------- sample


def _check_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """(H, W) from an int or a pair; each side at least 32 px."""
    shape = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(shape) != 2 or any(
        isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in shape
    ):
        raise ValueError(f"size must be an integer or a pair of integers (got {size!r})")
    if min(shape) < 32:
        raise ValueError(f"size must be at least 32 pixels (got {size!r})")
    return int(shape[0]), int(shape[1])


def _kind_probabilities(kind_weights: Mapping[str, float] | None) -> np.ndarray:
    """Normalised kind probabilities in :data:`ARTIFACT_KINDS` order."""
    weights = dict(DEFAULT_KIND_WEIGHTS if kind_weights is None else kind_weights)
    unknown = set(weights) - set(ARTIFACT_KINDS)
    if unknown:
        raise ValueError(
            f"unknown artifact kind(s): {', '.join(sorted(unknown))}; "
            f"choose from {', '.join(ARTIFACT_KINDS)}"
        )
    p = np.array([float(weights.get(k, 0.0)) for k in ARTIFACT_KINDS])
    if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError("kind weights must be non-negative with a positive sum")
    return p / p.sum()


def _add_noise(
    noise: np.ndarray, illumination: np.ndarray, trans: np.ndarray, gain: float, read: float
) -> np.ndarray:
    """Noise-free counts to a uint16 image with shot and read noise (12-bit clip).

    Shot noise uses the Gaussian approximation of Poisson noise: variance
    ``gain * signal`` in counts; ``noise`` is a pre-drawn standard normal field.
    """
    signal = illumination * np.clip(trans, 0.02, None)
    sigma = np.sqrt(gain * signal + read * read)
    counts = CAMERA_OFFSET + signal + sigma * noise
    return np.clip(np.rint(counts), 0, MAX_COUNTS).astype(np.uint16)


def generate_sample(
    rng: np.random.Generator,
    size: int | tuple[int, int] = 512,
    artifact: bool = True,
    *,
    artifact_kinds: Sequence[str] | None = None,
    kind_weights: Mapping[str, float] | None = None,
) -> SynthSample:
    """Draw one synthetic brightfield image with its artifact mask and kind map.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of every random draw (same state, same image).
    size : int or (int, int)
        Image size in pixels, ``(H, W)`` for a pair; at least 32.
    artifact : bool
        Draw 1-4 artifacts (``True``) or none (a clean image, all-zero mask).
    artifact_kinds : sequence of str, optional
        Draw exactly these kinds, in this order, instead of random ones.
    kind_weights : mapping, optional
        Relative frequency of each kind (default :data:`DEFAULT_KIND_WEIGHTS`).

    Returns
    -------
    SynthSample
        The image, mask, kind map and label. An artifact image always has a
        non-empty mask: an artifact that ends up invisible is followed by another.
    """
    shape = _check_size(size)
    probs = _kind_probabilities(kind_weights)
    if artifact_kinds is not None:
        bad = [k for k in artifact_kinds if k not in ARTIFACT_KINDS]
        if bad:
            raise ValueError(f"unknown artifact kind(s): {', '.join(bad)}")
    scale = math.sqrt(shape[0] * shape[1]) / 512.0
    # Artifacts get their own stream, drawn first: their parameters do not depend on
    # how many cells the image has (same seed, other size: the same artifacts, scaled).
    art_rng = np.random.default_rng(int(rng.integers(0, 2**63)))
    illumination = _illumination(rng, shape)
    trans = (1.0 + 0.006 * _smooth_noise(rng, shape, 20.0 * scale)).astype(np.float32)
    _draw_cells(rng, trans, scale)
    noise = rng.standard_normal(shape, dtype=np.float32)
    gain = rng.uniform(0.3, 0.9)  # counts per photo-electron
    read = rng.uniform(2.0, 6.0)  # read noise, counts
    canvas = _Canvas(trans, scale)
    drawn: list[str] = []
    if artifact:
        if artifact_kinds:
            todo = list(artifact_kinds)
        else:
            count = 1 + int(art_rng.choice(len(N_ARTIFACT_PROBS), p=N_ARTIFACT_PROBS))
            todo = [ARTIFACT_KINDS[i] for i in art_rng.choice(len(ARTIFACT_KINDS), count, p=probs)]
        for _attempt in range(20):
            for kind in todo:
                _DRAWERS[kind](art_rng, canvas)
                drawn.append(kind)
            if canvas.mask.any():
                break
            todo = [todo[-1]] if artifact_kinds else [ARTIFACT_KINDS[art_rng.choice(5, p=probs)]]
    image = _add_noise(noise, illumination, canvas.trans, gain, read)
    return SynthSample(
        image=image,
        mask=canvas.mask,
        kinds=canvas.kinds,
        label="artifact" if artifact else "clean",
        artifacts=tuple(drawn),
    )


# -------------------------------------------------------------------------- dataset


def _check_dataset_args(
    n: int, size: int, artifact_fraction: float, seed: int, pixel_size_um: float
) -> None:
    """Raise ValueError with a one-line message for a bad argument."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer of at least 1 (got {n!r})")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"size must be an integer of at least 32 pixels (got {size!r})")
    if not (isinstance(artifact_fraction, (int, float)) and 0.0 <= artifact_fraction <= 1.0):
        raise ValueError(f"artifact_fraction must be between 0 and 1 (got {artifact_fraction!r})")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer (got {seed!r})")
    if not (
        isinstance(pixel_size_um, (int, float))
        and math.isfinite(pixel_size_um)
        and pixel_size_um > 0
    ):
        raise ValueError(f"pixel_size_um must be a positive number (got {pixel_size_um!r})")


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator used for image ``index`` of a dataset with ``seed``.

    It is the ``index``-th child of ``numpy.random.SeedSequence(seed)``, so image
    ``index`` does not depend on how many images the dataset has.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def artifact_indices(n: int, artifact_fraction: float, seed: int) -> set[int]:
    """Indices of the ``round(n * artifact_fraction)`` artifact images (seeded shuffle)."""
    n_artifact = int(round(n * artifact_fraction))
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2**32,)))
    return {int(i) for i in order.permutation(n)[:n_artifact]}


def write_dataset(
    out: str | os.PathLike,
    n: int = 100,
    size: int = 512,
    artifact_fraction: float = 0.5,
    seed: int = 0,
    pixel_size_um: float = 0.65,
    kind_weights: Mapping[str, float] | None = None,
) -> Iterator[tuple[int, int]]:
    """Write a labelled synthetic dataset, yielding progress after each image.

    Writes ``OUT/images/synth_0000.tif ...`` (uint16, with pixel size),
    ``OUT/masks/`` (uint8 0/1), ``OUT/kinds/`` (uint8 kind ids), ``OUT/labels.csv``
    (``image,label``) and ``OUT/dataset.json`` (parameters, generator version and
    the kinds visible in each image). Existing files of the same names are
    replaced; other files are left alone. Closing the generator early (e.g. on
    Ctrl+C in the CLI) still writes ``labels.csv`` and ``dataset.json`` for the
    images written so far, with ``"complete": false``.

    Parameters
    ----------
    out : path-like
        Output folder, created when missing.
    n : int
        Number of images (at least 1).
    size : int
        Image side in pixels (at least 32).
    artifact_fraction : float
        Fraction of images with artifacts; exactly ``round(n * artifact_fraction)``
        images carry artifacts, at seeded random positions in the order.
    seed : int
        Non-negative seed. Image ``i`` is drawn from :func:`image_rng` ``(seed, i)``.
    pixel_size_um : float
        Pixel size recorded in the TIFF files.
    kind_weights : mapping, optional
        Relative frequency of each artifact kind.

    Yields
    ------
    (int, int)
        Images done and total, after each image.

    Returns
    -------
    dict
        ``{"n", "n_artifact", "n_clean", "out"}`` (as ``StopIteration.value``).
    """
    from . import __version__
    from .atomic import atomic_write_text
    from .image_files import write_tiff
    from .labels_file import write_labels_csv

    _check_dataset_args(n, size, artifact_fraction, seed, pixel_size_um)
    _kind_probabilities(kind_weights)
    root = Path(out)
    with_artifacts = artifact_indices(n, artifact_fraction, seed)
    digits = max(4, len(str(n - 1)))
    labels: dict[str, str] = {}
    records: list[dict] = []
    complete = False
    try:
        for i in range(n):
            sample = generate_sample(
                image_rng(seed, i), size, i in with_artifacts, kind_weights=kind_weights
            )
            name = f"synth_{i:0{digits}d}.tif"
            write_tiff(root / "images" / name, sample.image, pixel_size_um)
            write_tiff(root / "masks" / name, sample.mask, pixel_size_um)
            write_tiff(root / "kinds" / name, sample.kinds, pixel_size_um)
            labels[name] = sample.label
            visible = sorted(set(np.unique(sample.kinds).tolist()) - {0})
            records.append(
                {
                    "image": name,
                    "label": sample.label,
                    "kinds": [ARTIFACT_KINDS[k - 1] for k in visible],
                    "drawn": list(sample.artifacts),
                    "artifact_fraction_px": round(float(sample.mask.mean()), 6),
                }
            )
            yield i + 1, n
        complete = True
    finally:
        if records:
            write_labels_csv(root / "labels.csv", labels)
            meta = {
                "generator": "napari_artseg.synth",
                "generator_version": SYNTH_VERSION,
                "package_version": __version__,
                "seed": int(seed),
                "n": int(n),
                "size": int(size),
                "artifact_fraction": float(artifact_fraction),
                "pixel_size_um": float(pixel_size_um),
                "kind_weights": dict(
                    zip(ARTIFACT_KINDS, _kind_probabilities(kind_weights).tolist(), strict=True)
                ),
                "mask_threshold": MASK_THRESHOLD,
                "complete": complete,
                "images": records,
            }
            atomic_write_text(root / "dataset.json", json.dumps(meta, indent=1) + "\n")
    n_artifact = sum(1 for r in records if r["label"] == "artifact")
    return {
        "n": len(records),
        "n_artifact": n_artifact,
        "n_clean": len(records) - n_artifact,
        "out": str(root),
    }
