"""Training throughput: Score-CAM's batch size, the pseudo-label cache, batches prepared ahead.

Two measurements with the ``fast`` preset on synthetic 512 px images (one 512 px
view per image at scale 1):

1. The pseudo-label stage (:func:`napari_artseg.training.pseudo_labels.saliency_maps`)
   of an untrained classifier (the time depends on the weights only through the
   channels Score-CAM skips) four ways: no cache with the default
   ``scorecam_batch_size`` (``"auto"``: measured once per process, in the first
   round); no cache with 32 masked inputs per pass (the default before session 20);
   an empty cache (computes and writes every map); a filled cache (hashes the
   classifier and the image files, reads every map). The maps read back are
   checked to equal the default's exactly; batch 32's largest difference to them
   is reported, and so are the system seconds and minor page faults of each
   mode's fastest round (``getrusage``: freshly mapped memory being zero-filled).
2. One U-Net epoch (:func:`napari_artseg.training.segmenter.train_unet`, random
   crops and the 8 symmetries, pseudo-targets from thresholded images, 4 crops
   per training image, batch size 4) with the
   batches made in the training loop (depth 0) against made one background
   thread ahead (2 batches), timed from the start to the epoch's last training
   step (validation excluded); the report says which of the two training itself
   uses with these threads and cores (``prefetch.prefetch_depth``). A third mode,
   "batches only", skips the training steps (``loop.train_step`` replaced by a
   no-op): the time one thread needs to make the epoch's batches, which bounds how
   fast a device whose steps take less could train. The epochs run with freed
   memory kept for reuse, as training runs them (``process_memory.heap_reuse``).

The modes are interleaved over rounds and each keeps its fastest round, because
the machine may be shared; ratios come from one run. The first round of each
mode builds its Score-CAM networks, and the default's also measures the batch
size; first rounds are reported on their own.

Usage::

    python benchmarks/bench_training.py --quick --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_common import drain, machine
from napari_artseg.atomic import atomic_write_text
from napari_artseg.config import preset
from napari_artseg.labels_file import read_labels_csv
from napari_artseg.process_memory import heap_reuse
from napari_artseg.synth import write_dataset
from napari_artseg.training import loop
from napari_artseg.training.classifier import build_classifier
from napari_artseg.training.data import load_training_items
from napari_artseg.training.prefetch import prefetch_depth, usable_cores
from napari_artseg.training.pseudo_labels import saliency_maps
from napari_artseg.training.saliency_cache import SaliencyCache
from napari_artseg.training.segmenter import build_unet, train_unet

CPU = torch.device("cpu")


#: The pseudo-label stage's modes: (name, scorecam_batch_size, cache).
STAGE_MODES = (("no cache", "auto", None), ("no cache, batch 32", 32, None),
               ("empty cache", "auto", "empty"), ("filled cache", "auto", "filled"))


def pseudo_label_stage(items, images_dir: Path, config, cache_root: Path, rounds: int) -> dict:
    """Fastest seconds of the stage: measured and fixed batch size, empty and full cache."""
    from napari_artseg.scorecam_tuning import clear_cache

    clear_cache()  # the default's first round measures the batch size, as a new process does
    torch.manual_seed(0)
    classifier = build_classifier(config).eval()
    indices = list(range(len(items)))
    best = {name: float("inf") for name, _, _ in STAGE_MODES}
    first: dict[str, float] = {}
    kernel: dict[str, dict[str, float]] = {}  # of each mode's fastest round
    difference = 0.0
    for round_ in range(rounds):
        folder = cache_root / f"round{round_}"
        for name, batch, cached in STAGE_MODES:
            before = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()  # hashing the classifier and the files counts
            setting = config.replace(scorecam_batch_size=batch)
            cache = cached and SaliencyCache(folder, classifier, setting, images_dir, CPU)
            maps = drain(saliency_maps(classifier, items, indices, setting, CPU, cache or None))
            seconds = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_SELF)
            if seconds < best[name]:
                kernel[name] = {"system_seconds": after.ru_stime - before.ru_stime,
                                "minor_page_faults": after.ru_minflt - before.ru_minflt}
            best[name] = min(best[name], seconds)
            first.setdefault(name, seconds)
            if name == "no cache":
                reference = maps
            elif batch == 32:  # another batch size: float rounding may differ
                difference = max(difference, max(float((maps[i] - reference[i]).abs().max())
                                                 for i in indices))
            else:
                assert all(torch.equal(maps[i], reference[i]) for i in indices), name
            if cached == "filled":
                assert cache.hits == len(items), cache.hits
    return {"images": len(items), "seconds": best,
            "first_round_seconds": first, "fastest_round_kernel": kernel,
            "batch_32_max_abs_difference": difference,
            "speed_up_auto_vs_batch_32": best["no cache, batch 32"] / best["no cache"],
            "speed_up_filled_vs_no_cache": best["no cache"] / best["filled cache"],
            "empty_cache_vs_no_cache": best["empty cache"] / best["no cache"]}


def unet_epoch(items, config, rounds: int) -> dict:
    """Fastest seconds of one U-Net epoch's training steps, batches in-loop vs ahead."""
    for item in items:
        item.target = (item.image > item.image.mean() + item.image.std()).float()
    train_idx, val_idx = list(range(len(items) - 1)) * 4, [len(items) - 1]  # 4 crops each
    modes = {"batches in the loop": 0, "prefetch 2": 2, "batches only": 0}
    best = dict.fromkeys(modes, float("inf"))
    chosen = prefetch_depth(CPU)  # what training itself would use here
    step = loop.train_step
    try:
        for _ in range(rounds):
            for mode, depth in modes.items():
                loop.prefetch_depth = lambda device, depth=depth: depth
                loop.train_step = (lambda *args: 0.0) if mode == "batches only" else step
                torch.manual_seed(0)
                generator = train_unet(items, train_idx, val_idx, config, CPU, build_unet(config))
                start = time.perf_counter()
                for event in generator:
                    if event.kind == "step" and event.step == event.total:
                        best[mode] = min(best[mode], time.perf_counter() - start)
                        generator.close()
                        break
    finally:
        loop.prefetch_depth, loop.train_step = prefetch_depth, step
    steps = -(-len(train_idx) // config.batch_size)
    return {"train_images": len(train_idx), "batch_size": config.batch_size, "steps": steps,
            "torch_threads": torch.get_num_threads(), "usable_cores": usable_cores(),
            "training_default_depth": chosen, "seconds": best,
            "speed_up_prefetch": best["batches in the loop"] / best["prefetch 2"],
            "ms_per_batch": {mode: 1000 * seconds / steps for mode, seconds in best.items()},
            "batch_making_share": best["batches only"] / best["batches in the loop"]}


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
        with heap_reuse():  # as train_pipeline runs its epochs
            report["unet_epoch"] = unet_epoch(items, config, rounds)
        print(json.dumps(report["unet_epoch"], indent=1), flush=True)
    report["load_average_end"] = os.getloadavg()
    report["total_seconds"] = time.perf_counter() - started
    atomic_write_text(Path(args.json), json.dumps(report, indent=1))
    print(f"wrote {args.json} ({report['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
