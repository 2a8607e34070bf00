"""The gate rule: classifier cut-off alone vs searched jointly with the mask settings (issue 2).

With ``--symmetries 1 8`` each rule is also tried with the gate's test-time augmentation
(``gate_symmetries``: the mean P(artifact) over the square's 8 symmetries).

For each trained ScoreCAM-U-Net model folder, the gate, mask threshold and minimum size are
chosen again on the model's own validation split (``manifest.csv``) under both
``gate_rule`` values, and the test set is scored with each choice. The networks are not
retrained, so both rules see the same classifier and U-Net; the difference is the rule alone.

The tie-break targets of the validation artifact images are the Score-CAM pseudo-labels stored in
the model folder (``pseudo_labels/``). As in training, a model whose targets became its own
masks (self-training, a parent's masks) breaks image-F1 ties toward a mask threshold of 0.5
first; its remaining ties (the minimum size) were broken against the self-trained targets in
training, so the choice here can still differ; the ``classifier`` row is the reference.

Usage::

    python benchmarks/bench_gate_rule.py --train TRAIN_SET --test TEST_SET MODEL_DIR [MODEL_DIR...]
        [--symmetries 1 8]

The sets are ``artseg synth`` folders (as ``bench_accuracy.py`` writes them); results go to
``benchmarks/results/gate_rule.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import load_test, score
from bench_common import drain
from napari_artseg.atomic import atomic_write_text
from napari_artseg.config import GATE_RULES
from napari_artseg.image_files import read_mask
from napari_artseg.labels_file import read_labels_csv
from napari_artseg.predictor import ArtSegModel
from napari_artseg.training.classifier import classifier_probabilities, global_views
from napari_artseg.training.data import load_training_items
from napari_artseg.training.pipeline import targets_are_own
from napari_artseg.training.segmenter import unet_probability
from napari_artseg.training.thresholds import choose_gate_and_mask

HEADLINE = ("cls_f1", "pixel_precision", "pixel_recall", "pixel_iou", "predict_s_per_image")


def validation_data(model: ArtSegModel, folder: Path, train: Path):
    """Scores, processing-scale maps and tie-break targets of the model's validation images.

    The scores follow the model's ``gate_symmetries``.
    """
    config = model.config
    labels = read_labels_csv(train / "labels.csv").labels
    with open(folder / "manifest.csv", newline="", encoding="utf-8") as handle:
        names = [row["image"] for row in csv.DictReader(handle) if row["split"] == "val"]
    items, _ = drain(load_training_items(train / "images", {n: labels[n] for n in names}, config,
                                         None))
    device = torch.device("cpu")
    scores = classifier_probabilities(model.classifier, global_views(items, config), device,
                                      symmetries=config.gate_symmetries)
    probs = [unet_probability(model.unet, item.image, config, device).numpy() for item in items]
    targets = [read_mask(folder / "pseudo_labels" / name) > 0 if item.label
               else np.zeros(prob.shape, bool)
               for name, item, prob in zip(names, items, probs, strict=True)]
    median_area = float(np.median([np.prod(item.full_shape) for item in items]))
    return np.array([item.label for item in items]), scores, probs, targets, median_area


def variant(rule: str, symmetries: int) -> str:
    """A row's name: the rule, and the gate's test-time symmetries when there are several."""
    return rule if symmetries == 1 else f"{rule}, {symmetries} symmetries"


def evaluate(folder: Path, train: Path, test, symmetries: int) -> dict[str, dict]:
    """Both rules' choices on one model with one gate symmetry count, and their test metrics."""
    model = ArtSegModel.load(folder, device="cpu")
    model.config = model.config.replace(gate_symmetries=symmetries)
    labels, scores, probs, targets, median_area = validation_data(model, folder, train)
    start = time.perf_counter()
    results = [model.predict(image, gate=False) for _, image, _, _, _ in test]
    seconds = (time.perf_counter() - start) / len(test)  # gate score + tiled U-Net per image
    out = {}
    for rule in GATE_RULES:
        gate, threshold, fraction, _ = choose_gate_and_mask(
            scores, labels, probs, targets, np.zeros(len(labels), bool), rule,
            own_targets=targets_are_own(model.document.get("pseudo_labels", {})))
        min_size = int(round(fraction * median_area))
        preds = []
        for result, (_, image, _, _, _) in zip(results, test, strict=True):
            if result.score < gate:
                preds.append(np.zeros(image.shape, bool))
            else:
                preds.append(model.predict(image, threshold=threshold, min_size_px=min_size,
                                           gate=False).mask)
        row = {**score(preds, [bool(p.any()) for p in preds], test),
               "predict_s_per_image": seconds}
        out[variant(rule, symmetries)] = {"gate": gate, "mask": threshold,
                                          "min_size_px": min_size, **row}
        print(f"{folder.name} {variant(rule, symmetries)}: gate {gate:.3f} mask {threshold} "
              f"min size {min_size}: "
              + ", ".join(f"{k} {row[k]:.3f}" for k in HEADLINE), flush=True)
    return out


def main() -> None:
    """Run both rules on every model and write JSON with a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True, help="the models' training set")
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--symmetries", type=int, nargs="+", default=[1],
                        help="gate_symmetries values to compare (e.g. 1 8)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", default="benchmarks/results/gate_rule.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    test = load_test(args.test)
    per_model = {str(folder): {name: row for n in args.symmetries
                               for name, row in evaluate(folder, args.train, test, n).items()}
                 for folder in args.models}
    lines = ["| gate | " + " | ".join(HEADLINE) + " |", "|---" * (len(HEADLINE) + 1) + "|"]
    for name in next(iter(per_model.values())):
        cells = []
        for key in HEADLINE:
            values = [runs[name][key] for runs in per_model.values()]
            cells.append(f"{np.mean(values):.3f} ± {np.std(values):.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + f"\n\nmodels: {len(per_model)}"
    print(table)
    report = {"train": str(args.train), "test": str(args.test), "per_model": per_model,
              "table": table}
    atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
