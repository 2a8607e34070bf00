"""Minimum object size on masks larger than memory: connected components block by block.

Each block is labelled on its own (4-connected, as
:func:`napari_artseg.postprocess.remove_small`); labels that touch across a
block edge are joined with a graph over all block labels; each joined object's
size is the sum of its parts. A second pass keeps the pixels of objects with at
least ``min_size`` pixels. The result equals ``remove_small(prob >= threshold)``
on the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class BlockLabels:
    """What the first pass keeps of one block: label sizes and its four edges' labels."""

    sizes: np.ndarray
    top: np.ndarray
    bottom: np.ndarray
    left: np.ndarray
    right: np.ndarray


def _label_block(prob: np.ndarray, threshold: float) -> BlockLabels:
    """Label one block of ``prob >= threshold`` and keep what joining needs."""
    labels, count = ndimage.label(np.asarray(prob) >= threshold)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return BlockLabels(sizes, labels[0].copy(), labels[-1].copy(), labels[:, 0].copy(),
                       labels[:, -1].copy())


def _keep_block(prob: np.ndarray, threshold: float, keep: np.ndarray) -> np.ndarray:
    """The final uint8 mask of a block: pixels of the objects ``keep`` marks (index = label)."""
    labels, _count = ndimage.label(np.asarray(prob) >= threshold)
    return keep[labels].astype(np.uint8)


def _join(blocks: list[list[BlockLabels]]) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """Global object of every block label, object sizes, and each block's label offset."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    offsets = [[0] * len(row) for row in blocks]
    total = 0
    for i, row in enumerate(blocks):
        for j, block in enumerate(row):
            offsets[i][j] = total
            total += len(block.sizes)
    pairs: list[np.ndarray] = []

    def touch(a: np.ndarray, first: int, b: np.ndarray, second: int) -> None:
        both = (a > 0) & (b > 0)
        if both.any():
            pairs.append(np.stack([a[both] - 1 + first, b[both] - 1 + second]))

    for i, row in enumerate(blocks):
        for j, block in enumerate(row):
            if j + 1 < len(row):
                touch(block.right, offsets[i][j], row[j + 1].left, offsets[i][j + 1])
            if i + 1 < len(blocks):
                touch(block.bottom, offsets[i][j], blocks[i + 1][j].top, offsets[i + 1][j])
    edges = np.concatenate(pairs, axis=1) if pairs else np.zeros((2, 0), np.int64)
    graph = coo_matrix((np.ones(edges.shape[1], np.int8), (edges[0], edges[1])),
                       shape=(total, total))
    _n, objects = connected_components(graph, directed=False)
    sizes = np.concatenate([b.sizes for row in blocks for b in row]) if total else np.zeros(0)
    object_sizes = np.bincount(objects, weights=sizes) if total else np.zeros(0)
    return objects, object_sizes, offsets


def mask_blocked(prob, threshold: float, min_size: int, compute):
    """The mask of a large probability map with objects below ``min_size`` pixels removed.

    Parameters
    ----------
    prob : dask.array.Array
        (H, W) float32 probability map (read from storage: it is read twice).
    threshold : float
        Pixels ``>= threshold`` are foreground.
    min_size : int
        Objects with fewer pixels are dropped (none when ``<= 1``).
    compute : callable
        ``compute(*delayed)`` returning concrete results (the run's scheduler).

    Returns
    -------
    tuple
        The lazy uint8 (H, W) mask (0/1), its foreground pixel count and its number of objects.
    """
    import dask
    import dask.array as da

    n_rows, n_cols = prob.numblocks
    label = dask.delayed(_label_block, pure=True)
    firsts = [[label(prob.blocks[i, j], threshold) for j in range(n_cols)] for i in range(n_rows)]
    flat = compute(*[d for row in firsts for d in row])
    blocks = [list(flat[i * n_cols:(i + 1) * n_cols]) for i in range(n_rows)]
    objects, sizes, offsets = _join(blocks)
    kept = sizes >= min_size if min_size > 1 else np.ones(len(sizes), bool)
    pixels, count = int(sizes[kept].sum()), int(kept.sum())
    keep = dask.delayed(_keep_block, pure=True)
    rows = []
    for i in range(n_rows):
        row = []
        for j in range(n_cols):
            start = offsets[i][j]
            own = objects[start:start + len(blocks[i][j].sizes)]
            lookup = np.concatenate([[False], kept[own]])
            shape = (prob.chunks[0][i], prob.chunks[1][j])
            row.append(da.from_delayed(keep(prob.blocks[i, j], threshold, lookup), shape,
                                       dtype=np.uint8))
        rows.append(row)
    return da.block(rows), pixels, count
