"""Training throughput: the Score-CAM pseudo-label cache, and batches prepared ahead.

Two measurements with the ``fast`` preset on synthetic images (``synth``, 512 px,
so one 256 px view per image at scale 0.5):

1. The pseudo-label stage (:func:`napari_artseg.training.pseudo_labels.saliency_maps`)
   of an untrained classifier (the time does not depend on the weights) three
   ways: no cache; an empty cache (computes and writes every map); a filled cache
   (hashes the classifier and the image files, reads every map). The maps read
   back are checked to equal the computed ones exactly.
2. One U-Net epoch (:func:`napari_artseg.training.segmenter.train_unet`, random
   crops and the 8 symmetries, pseudo-targets from thresholded images, 4 crops
   per training image, batch size 4) with the
   batches made in the training loop (``PREFETCH_BATCHES = 0``) against made one
   background thread ahead (2 batches), timed from the start to the epoch's last
   training step (validation excluded).

The modes are interleaved over rounds and each keeps its fastest round, because
the machine may be shared; ratios come from one run.

Usage::

    python benchmarks/bench_training.py --quick --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_common import drain, machine
from napari_artseg.atomic import atomic_write_text
from napari_artseg.config import preset
from napari_artseg.labels_file import read_labels_csv
from napari_artseg.synth import write_dataset
from napari_artseg.training import loop
from napari_artseg.training.classifier import build_classifier
from napari_artseg.training.data import load_training_items
from napari_artseg.training.pseudo_labels import saliency_maps
from napari_artseg.training.saliency_cache import SaliencyCache
from napari_artseg.training.segmenter import build_unet, train_unet

CPU = torch.device("cpu")


def pseudo_label_stage(items, images_dir: Path, config, cache_root: Path, rounds: int) -> dict:
    """Fastest seconds of the stage without a cache, with an empty one and with a full one."""
    torch.manual_seed(0)
    classifier = build_classifier(config).eval()
    indices = list(range(len(items)))
    best = {"no cache": float("inf"), "empty cache": float("inf"), "filled cache": float("inf")}
    for round_ in range(rounds):
        folder = cache_root / f"round{round_}"
        for mode in best:
            start = time.perf_counter()  # hashing the classifier and the files counts
            cache = None if mode == "no cache" else SaliencyCache(folder, classifier, config,
                                                                  images_dir, CPU)
            maps = drain(saliency_maps(classifier, items, indices, config, CPU, cache))
            best[mode] = min(best[mode], time.perf_counter() - start)
            if mode == "no cache":
                reference = maps
            elif mode == "filled cache":
                assert cache.hits == len(items), cache.hits
                assert all(torch.equal(maps[i], reference[i]) for i in indices)
    return {"images": len(items), "seconds": best,
            "speed_up_filled_vs_no_cache": best["no cache"] / best["filled cache"],
            "empty_cache_vs_no_cache": best["empty cache"] / best["no cache"]}


def unet_epoch(items, config, rounds: int) -> dict:
    """Fastest seconds of one U-Net epoch's training steps, batches in-loop vs ahead."""
    for item in items:
        item.target = (item.image > item.image.mean() + item.image.std()).float()
    train_idx, val_idx = list(range(len(items) - 1)) * 4, [len(items) - 1]  # 4 crops each
    best = {0: float("inf"), 2: float("inf")}
    saved = loop.PREFETCH_BATCHES
    try:
        for _ in range(rounds):
            for depth in best:
                loop.PREFETCH_BATCHES = depth
                torch.manual_seed(0)
                generator = train_unet(items, train_idx, val_idx, config, CPU, build_unet(config))
                start = time.perf_counter()
                for event in generator:
                    if event.kind == "step" and event.step == event.total:
                        best[depth] = min(best[depth], time.perf_counter() - start)
                        generator.close()
                        break
    finally:
        loop.PREFETCH_BATCHES = saved
    steps = -(-len(train_idx) // config.batch_size)
    return {"train_images": len(train_idx), "batch_size": config.batch_size, "steps": steps,
            "seconds": {"batches in the loop": best[0], "prefetch 2": best[2]},
            "speed_up_prefetch": best[0] / best[2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--json", help="default: benchmarks/results/perf_training[_quick].json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    suffix = "_quick" if args.quick else ""
    args.json = args.json or f"benchmarks/results/perf_training{suffix}.json"
    n_images, rounds = (8, 2) if args.quick else (24, 3)
    config = preset("fast", unet_epochs=1, batch_size=4)
    report = {"command": " ".join(["python", *sys.argv]), "machine": machine()}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        drain(write_dataset(data, n=n_images, size=512, artifact_fraction=1.0, seed=1))
        labels = read_labels_csv(data / "labels.csv").labels
        items, _ = drain(load_training_items(data / "images", labels, config))
        report["pseudo_labels"] = pseudo_label_stage(items, data / "images", config,
                                                     Path(tmp) / "cache", rounds)
        print(json.dumps(report["pseudo_labels"], indent=1), flush=True)
        report["unet_epoch"] = unet_epoch(items, config, rounds)
        print(json.dumps(report["unet_epoch"], indent=1), flush=True)
    report["load_average_end"] = os.getloadavg()
    report["total_seconds"] = time.perf_counter() - started
    atomic_write_text(Path(args.json), json.dumps(report, indent=1))
    print(f"wrote {args.json} ({report['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
