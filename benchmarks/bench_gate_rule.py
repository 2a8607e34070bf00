"""The gate rule: classifier cut-off alone vs searched jointly with the mask settings (issue 2).

For each trained ScoreCAM-U-Net model folder, the gate, mask threshold and minimum size are
chosen again on the model's own validation split (``manifest.csv``) under both
``gate_rule`` values, and the test set is scored with each choice. The networks are not
retrained, so both rules see the same classifier and U-Net; the difference is the rule alone.

The tie-break targets of the validation artifact images are the Score-CAM pseudo-labels stored in
the model folder (``pseudo_labels/``). A training run breaks ties against its own targets
(refreshed by self-training when ``self_training_rounds`` > 0), so its choice can differ from
the one made here; the ``classifier`` row is the reference.

Usage::

    python benchmarks/bench_gate_rule.py --train TRAIN_SET --test TEST_SET MODEL_DIR [MODEL_DIR...]

The sets are ``artseg synth`` folders (as ``bench_accuracy.py`` writes them); results go to
``benchmarks/results/gate_rule.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
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
from napari_artseg.training.segmenter import unet_probability
from napari_artseg.training.thresholds import choose_gate_and_mask

HEADLINE = ("cls_f1", "pixel_precision", "pixel_recall", "pixel_iou")


def validation_data(model: ArtSegModel, folder: Path, train: Path):
    """Scores, processing-scale maps and tie-break targets of the model's validation images."""
    config = model.config
    labels = read_labels_csv(train / "labels.csv").labels
    with open(folder / "manifest.csv", newline="", encoding="utf-8") as handle:
        names = [row["image"] for row in csv.DictReader(handle) if row["split"] == "val"]
    items, _ = drain(load_training_items(train / "images", {n: labels[n] for n in names}, config,
                                         None))
    device = torch.device("cpu")
    scores = classifier_probabilities(model.classifier, global_views(items, config), device)
    probs = [unet_probability(model.unet, item.image, config, device).numpy() for item in items]
    targets = [read_mask(folder / "pseudo_labels" / name) > 0 if item.label
               else np.zeros(prob.shape, bool)
               for name, item, prob in zip(names, items, probs, strict=True)]
    median_area = float(np.median([np.prod(item.full_shape) for item in items]))
    return np.array([item.label for item in items]), scores, probs, targets, median_area


def evaluate(folder: Path, train: Path, test) -> dict[str, dict]:
    """Both rules' choices on one model and their test metrics."""
    model = ArtSegModel.load(folder, device="cpu")
    labels, scores, probs, targets, median_area = validation_data(model, folder, train)
    results = [model.predict(image, gate=False) for _, image, _, _, _ in test]
    out = {}
    for rule in GATE_RULES:
        gate, threshold, fraction, _ = choose_gate_and_mask(
            scores, labels, probs, targets, np.zeros(len(labels), bool), rule)
        min_size = int(round(fraction * median_area))
        preds = []
        for result, (_, image, _, _, _) in zip(results, test, strict=True):
            if result.score < gate:
                preds.append(np.zeros(image.shape, bool))
            else:
                preds.append(model.predict(image, threshold=threshold, min_size_px=min_size,
                                           gate=False).mask)
        row = score(preds, [bool(p.any()) for p in preds], test)
        out[rule] = {"gate": gate, "mask": threshold, "min_size_px": min_size, **row}
        print(f"{folder.name} {rule}: gate {gate:.3f} mask {threshold} min size {min_size}: "
              + ", ".join(f"{k} {row[k]:.3f}" for k in HEADLINE), flush=True)
    return out


def main() -> None:
    """Run both rules on every model and write JSON with a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True, help="the models' training set")
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", default="benchmarks/results/gate_rule.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    test = load_test(args.test)
    per_model = {str(folder): evaluate(folder, args.train, test) for folder in args.models}
    lines = ["| gate_rule | " + " | ".join(HEADLINE) + " |", "|---" * (len(HEADLINE) + 1) + "|"]
    for rule in GATE_RULES:
        cells = []
        for key in HEADLINE:
            values = [runs[rule][key] for runs in per_model.values()]
            cells.append(f"{np.mean(values):.3f} ± {np.std(values):.3f}")
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + f"\n\nmodels: {len(per_model)}"
    print(table)
    report = {"train": str(args.train), "test": str(args.test), "per_model": per_model,
              "table": table}
    atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
