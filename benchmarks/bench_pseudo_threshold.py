"""Pseudo-label threshold rules, scored against the true masks of a synthetic set.

Reads a trained ScoreCAM-U-Net model folder (its ``saliency/`` maps and
``manifest.csv``) and the synthetic training set it was trained on (its
``masks/``), and prints the pseudo-mask IoU (pooled over all artifact images)
and mean pseudo-mask area for:

- fixed global thresholds (the best of these is known only in hindsight);
- the thresholds the run used (``manifest.csv``: per-image or global);
- the label-free rules Otsu, Li and triangle, per image and pooled over images.

No training happens here; it takes seconds. Usage::

    python benchmarks/bench_pseudo_threshold.py MODEL_DIR DATA_DIR [--json OUT]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import tifffile
from skimage.filters import threshold_li, threshold_otsu, threshold_triangle
from skimage.transform import resize

from napari_artseg.atomic import atomic_write_text

FIXED = (0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05, 0.02)
RULES = {"otsu": threshold_otsu, "li": threshold_li, "triangle": threshold_triangle}


def load(model: Path, data: Path) -> tuple[list[np.ndarray], list[np.ndarray], list[float]]:
    """Saliency maps in [0, 1], true masks at the map size, and the run's own cut per image."""
    maps, truths, cuts = [], [], []
    with open(model / "manifest.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["label"] == "artifact"
                and r["target"] == "pseudo"]
    for row in rows:
        saliency = tifffile.imread(model / "saliency" / row["image"]).astype(np.float32) / 255
        truth = tifffile.imread(data / "masks" / row["image"]) > 0
        if truth.shape != saliency.shape:
            truth = resize(truth.astype(np.float32), saliency.shape, order=1) > 0.5
        maps.append(saliency)
        truths.append(truth)
        cuts.append(float(row["pseudo_threshold"]))
    return maps, truths, cuts


def pooled_iou(maps: list[np.ndarray], truths: list[np.ndarray],
               cuts: list[float]) -> dict[str, float]:
    """IoU over all pixels of all images, and the mean pseudo-mask area share."""
    tp = fp = fn = 0
    areas = []
    for saliency, truth, cut in zip(maps, truths, cuts, strict=True):
        mask = saliency >= cut
        tp += int((mask & truth).sum())
        fp += int((mask & ~truth).sum())
        fn += int((~mask & truth).sum())
        areas.append(float(mask.mean()))
    return {"iou": tp / max(1, tp + fp + fn), "area": float(np.mean(areas))}


def main() -> None:
    """Print and optionally save the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    maps, truths, own = load(args.model, args.data)
    n = len(maps)
    rows = {f"fixed {t}": {**pooled_iou(maps, truths, [t] * n), "cut": t} for t in FIXED}
    rows["the run's own cuts"] = {**pooled_iou(maps, truths, own), "cut": float(np.median(own))}
    values = np.concatenate([m.ravel() for m in maps])
    for name, rule in RULES.items():
        per_image = [float(rule(m)) if m.max() > m.min() else 1.0 for m in maps]
        rows[f"{name} per image"] = {**pooled_iou(maps, truths, per_image),
                                     "cut": float(np.median(per_image))}
        cut = float(rule(values))
        rows[f"{name} pooled"] = {**pooled_iou(maps, truths, [cut] * n), "cut": cut}
    print(f"{n} pseudo-labelled artifact images; true mean area "
          f"{np.mean([t.mean() for t in truths]):.4f}")
    print(f"{'rule':<22}{'cut':>7}{'IoU':>8}{'area':>9}")
    for name, row in rows.items():
        print(f"{name:<22}{row['cut']:>7.3f}{row['iou']:>8.3f}{row['area']:>9.4f}")
    if args.json:
        report = {"model": str(args.model), "data": str(args.data), "n_images": n, "rows": rows}
        atomic_write_text(args.json, json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
