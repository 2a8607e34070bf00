"""``artseg evaluate``: compare predicted masks with true masks; print and save metrics."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import ArtSegError
from ..image_files import discover_images, image_key, read_mask
from ..labels_file import read_labels_csv


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``evaluate`` sub-command."""
    parser = sub.add_parser(
        "evaluate", help="metrics of predicted masks against true masks",
        description="Pairs TRUTH/<key>.tif with PRED/<key>_mask.tif; prints classification F1, "
                    "pixel precision/recall/F1/IoU and object F1, and writes them as JSON.")
    parser.add_argument("--pred", required=True, help="folder written by artseg predict")
    parser.add_argument("--truth", required=True, help="folder of true masks <key>.tif")
    parser.add_argument("--labels", help="labels.csv with the true image labels")
    parser.add_argument("--json", help="where to write the metrics (default PRED/metrics.json)")
    parser.set_defaults(run=run)


def predicted_labels(pred: Path) -> dict[str, bool]:
    """Predicted image labels from summary.csv, when present."""
    path = pred / "summary.csv"
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8", newline="") as handle:
        return {row["image"]: row.get("predicted_label") == "artifact"
                for row in csv.DictReader(handle) if row.get("status") == "ok"}


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the table."""
    from ..metrics import evaluate_dataset

    pred, truth = Path(args.pred), Path(args.truth)
    for folder in (pred, truth):
        if not folder.is_dir():
            raise ArtSegError(f"{folder}: folder not found")
    pairs, missing = [], []
    for path in discover_images(truth):
        key = image_key(path, truth)
        pred_path = pred / f"{key}_mask.tif"
        if not pred_path.is_file():
            missing.append(key)
            continue
        true_mask = read_mask(path)
        pairs.append((key, read_mask(pred_path, shape=true_mask.shape), true_mask))
    if missing:
        print(f"note: {len(missing)} true mask(s) have no prediction, skipped "
              f"(first: {missing[0]})", file=sys.stderr)
    if not pairs:
        raise ArtSegError(f"no predicted mask in {pred} matches a true mask in {truth}")
    true_labels = None
    if args.labels:
        table = read_labels_csv(args.labels).labels
        by_key = {Path(k).with_suffix("").as_posix(): v for k, v in table.items()}
        true_labels = {key: by_key.get(key) == "artifact" for key, _, _ in pairs}
    labels_pred = predicted_labels(pred)
    pred_labels = {key: labels_pred.get(key, bool(p.any())) for key, p, _ in pairs}
    result = evaluate_dataset(pairs, true_labels=true_labels, pred_labels=pred_labels)
    print(result.format_table())
    target = Path(args.json) if args.json else pred / "metrics.json"
    atomic_write_text(target, json.dumps(result.to_json_dict(), indent=2))
    print(f"metrics written to {target}")
    return 0
