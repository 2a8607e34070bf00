"""Pseudo-mask IoU of Score-CAM's approximations against exact, without timing them.

For the classifier of a model folder and the artifact views of a held-out synthetic set
(the same views, binarisations and bootstrap interval as ``bench_scorecam.py``), each
approximate mode's pooled-Otsu pseudo-mask IoU against the true masks, its change from
exact and the 95 % paired interval of that change. The speed of a mode depends on the
network's shape and the device, not on the classifier's weights: ``bench_scorecam.py``
measures it. This script compares classifiers (e.g. trained with and without
``classifier_scale_augment``) where only the IoU changes, and runs on a busy machine.

Usage::

    python benchmarks/bench_scorecam_iou.py --quick --model path/to/model_folder
    python benchmarks/bench_scorecam_iou.py --model path/to/model_folder \
        --json benchmarks/results/perf_scorecam_iou.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from bench_common import machine, run_main
from bench_scorecam import (
    add_model_view_arguments,
    difference_interval,
    model_classifier,
    pseudo_ious,
    test_views,
)
from napari_artseg.atomic import atomic_write_text
from napari_artseg.scorecam import ScoreCam

#: (top-N channels, scoring scale) of every mode scored; the first is exact.
MODES = ((None, 1.0), (None, 0.5), (None, 0.25), (None, 0.125), (16, 1.0), (8, 1.0),
         (16, 0.25), (8, 0.25), (8, 0.125), (16, 0.125))


def main() -> int:
    """Score every mode, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_view_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="60 held-out images (30 views)")
    parser.add_argument("--json", help="default: benchmarks/results/perf_scorecam_iou.json")
    args = parser.parse_args()
    if args.quick:
        args.n_test = 60
    args.json = args.json or "benchmarks/results/perf_scorecam_iou.json"
    torch.set_num_threads(args.threads)
    classifier, config = model_classifier(args.model)
    data = test_views(args, config)
    device = torch.device("cpu")
    rows, exact = [], None
    print(f"{len(data)} artifact views; pooled-Otsu IoU, change from exact (95 % interval)")
    for top, scale in MODES:
        cam = ScoreCam(classifier, batch_size=32, max_channels=top, score_scale=scale)
        maps = [cam(view[None])[0] for view, _ in data]
        ious = pseudo_ious(classifier, data, maps, device)
        exact = exact or ious
        low, high = difference_interval(ious["otsu_counts"], exact["otsu_counts"])
        row = {"top": top, "scale": scale, "iou_otsu": ious["otsu"],
               "iou_otsu_minus_exact": ious["otsu"] - exact["otsu"],
               "iou_otsu_minus_exact_95ci": [low, high],
               "n_views_called_artifact": ious["n_called_artifact"]}
        rows.append(row)
        name = " + ".join(([f"top-{top} channels"] if top else [])
                          + ([f"score at {scale:g}x"] if scale < 1 else [])) or "exact"
        print(f"| {name} | {row['iou_otsu']:.3f} | {row['iou_otsu_minus_exact']:+.3f} | "
              f"{low:+.3f} to {high:+.3f} |", flush=True)
    report = {"command": " ".join(["python", *sys.argv]), "machine": machine(),
              "args": vars(args), "n_iou_views": len(data), "modes": rows}
    atomic_write_text(Path(args.json), json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    run_main(main)
