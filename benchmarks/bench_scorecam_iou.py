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
    Mode,
    add_model_view_arguments,
    add_modes_argument,
    difference_interval,
    model_classifier,
    pseudo_ious,
    selected,
    test_views,
)
from napari_artseg.atomic import atomic_write_text
from napari_artseg.device import native_bf16_cpu

#: Every mode scored; the first is exact.
MODES = (Mode(), Mode(scale=0.5), Mode(scale=0.25), Mode(scale=0.125), Mode(16), Mode(8),
         Mode(16, 0.25), Mode(8, 0.25), Mode(8, 0.125), Mode(16, 0.125),
         Mode(stage=2), Mode(16, stage=2), Mode(8, stage=2), Mode(stage=3), Mode(16, stage=3),
         Mode(8, stage=3), Mode(stage=2, amp=True), Mode(16, stage=2, amp=True))


def main() -> int:
    """Score every mode, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_view_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="60 held-out images (30 views)")
    parser.add_argument("--json", help="default: benchmarks/results/perf_scorecam_iou.json")
    add_modes_argument(parser)
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
    bf16 = native_bf16_cpu()
    if not bf16:
        print("bf16 modes skipped: this CPU has no bf16 units (emulated bf16 is slower)")
    for mode in selected(MODES, args.modes, classifier, bf16):
        cam = mode.runner(classifier, batch_size=32)
        maps = [cam(view[None])[0] for view, _ in data]
        ious = pseudo_ious(classifier, data, maps, device)
        exact = exact or ious
        low, high = difference_interval(ious["otsu_counts"], exact["otsu_counts"])
        row = {"top": mode.top, "scale": mode.scale, "mask_stage": mode.stage, "amp": mode.amp,
               "iou_otsu": ious["otsu"],
               "iou_otsu_minus_exact": ious["otsu"] - exact["otsu"],
               "iou_otsu_minus_exact_95ci": [low, high],
               "n_views_called_artifact": ious["n_called_artifact"]}
        rows.append(row)
        print(f"| {mode.name} | {row['iou_otsu']:.3f} | {row['iou_otsu_minus_exact']:+.3f} | "
              f"{low:+.3f} to {high:+.3f} |", flush=True)
    report = {"command": " ".join(["python", *sys.argv]), "machine": machine(),
              "args": vars(args), "n_iou_views": len(data), "modes": rows}
    atomic_write_text(Path(args.json), json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    run_main(main)
