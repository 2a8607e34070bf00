"""The image classifier alone: test F1 and recall per artifact kind for config variants.

Trains only the classifier (stage 1 of ScoreCAM-U-Net) on the accuracy
benchmark's training set, chooses the gate on its validation split, and scores
the test set: F1 at that gate, the same with test-time augmentation (the mean
P(artifact) over the 8 square symmetries, gate re-chosen the same way), and
recall on the test images that carry one artifact kind only. The classifier
caps both learned models of ``bench_accuracy.py`` (every artifact image it calls
clean loses all its pixels), so variants are compared here, where one run takes
minutes instead of a whole pipeline.

Usage::

    python benchmarks/bench_classifier.py [--set KEY=VALUE ...] [--shift] [--threads 1]
        [--work benchmarks/results/accuracy-work]

``--shift`` adds a random circular shift to the training augmentation
(label-preserving: nothing leaves the image). The sets are made as in
``bench_accuracy.py`` (200 training images of seed 1, 100 test images of seed 2,
512 px) and reused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import make_set
from bench_common import drain, machine
from napari_artseg.config import preset
from napari_artseg.labels_file import read_labels_csv
from napari_artseg.training import classifier as classifier_module
from napari_artseg.training.classifier import (
    classifier_probabilities,
    global_views,
    train_classifier,
)
from napari_artseg.training.data import d4, load_training_items, stratified_split
from napari_artseg.training.thresholds import choose_gate_threshold


def shifting_d4(seed: int):
    """``d4`` followed by a random circular shift (the ``--shift`` augmentation)."""
    generator = torch.Generator().manual_seed(seed)

    def augment(view: torch.Tensor, k: int) -> torch.Tensor:
        view = d4(view, k)
        dy, dx = torch.randint(0, view.shape[-1], (2,), generator=generator).tolist()
        return torch.roll(view, (dy, dx), dims=(-2, -1))

    return augment


def symmetric_probabilities(net, views: torch.Tensor) -> np.ndarray:
    """Mean P(artifact) over the 8 square symmetries of each view."""
    device = torch.device("cpu")
    return np.mean([classifier_probabilities(net, torch.stack([d4(v, k) for v in views]), device)
                    for k in range(8)], axis=0)


def f1(calls: np.ndarray, truth: np.ndarray) -> float:
    """Image-level F1 of boolean calls against boolean truth."""
    tp, fp, fn = (calls & truth).sum(), (calls & ~truth).sum(), (~calls & truth).sum()
    return float(2 * tp / max(1, 2 * tp + fp + fn))


def main() -> None:
    """Train one classifier variant and print its scores as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--shift", action="store_true", help="add random circular shifts")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--work", default="benchmarks/results/accuracy-work")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    config = preset("fast", **overrides)
    work = Path(args.work)
    train_dir = make_set(work / "train-n200-s512-seed1", 200, 512, 1)
    test_dir = make_set(work / "test-n100-s512-seed2", 100, 512, 2)
    if args.shift:
        classifier_module.d4 = shifting_d4(config.seed)
    items, _ = drain(load_training_items(train_dir / "images",
                                         read_labels_csv(train_dir / "labels.csv").labels, config))
    train_idx, val_idx = stratified_split([i.label for i in items], config.val_fraction,
                                          config.seed)
    start = time.perf_counter()
    net, fit = drain(train_classifier(items, train_idx, val_idx, config, torch.device("cpu")))
    seconds = time.perf_counter() - start
    val_views = global_views([items[i] for i in val_idx], config)
    val_truth = np.array([items[i].label for i in val_idx])
    test_items, _ = drain(load_training_items(
        test_dir / "images", read_labels_csv(test_dir / "labels.csv").labels, config))
    test_views = global_views(test_items, config)
    truth = np.array([bool(item.label) for item in test_items])
    plain = classifier_probabilities(net, test_views, torch.device("cpu"))
    gate = choose_gate_threshold(classifier_probabilities(net, val_views, torch.device("cpu")),
                                 val_truth)
    tta_gate = choose_gate_threshold(symmetric_probabilities(net, val_views), val_truth)
    tta = symmetric_probabilities(net, test_views)
    kinds = {e["image"]: set(e["drawn"])
             for e in json.loads((test_dir / "dataset.json").read_text())["images"]}
    recall: dict[str, list[bool]] = defaultdict(list)
    for item, p in zip(test_items, plain, strict=True):
        if item.label:
            drawn = kinds[item.key]
            recall[next(iter(drawn)) if len(drawn) == 1 else "several kinds"].append(p >= gate)
    history = fit.history
    print(json.dumps({
        "overrides": overrides, "shift": args.shift,
        "test_f1": round(f1(plain >= gate, truth), 3),
        "test_f1_tta": round(f1(tta >= tta_gate, truth), 3), "gate": round(float(gate), 3),
        "best_epoch": fit.best_epoch, "epochs_run": len(history),
        "best_val": history[fit.best_epoch - 1] if history else {},
        "min_train_loss": round(min(h["train_loss"] for h in history), 3) if history else None,
        "recall_by_kind": {k: round(float(np.mean(v)), 2) for k, v in sorted(recall.items())},
        "train_s": round(seconds), "machine": machine()}))


if __name__ == "__main__":
    main()
