"""Folder prediction with reads ahead and writes behind in background threads, against in line.

``artseg predict`` on a folder (``napari_artseg.cli.predict_loop.run_serial``)
reads and decodes the next image and writes the previous image's two output
TIFFs while the current one is predicted. This
benchmark predicts the same folder of compressed uint16 TIFFs both ways with an
untrained ``fast`` model (gate off, so the U-Net always runs), in interleaved
rounds, and prints the ratio of the fastest round of each.

Usage::

    python benchmarks/bench_read_ahead.py [--size 2048] [--images 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import make_model
from napari_artseg.cli.predict_image import process_item
from napari_artseg.cli.predict_inputs import InputImage, PredictOptions
from napari_artseg.cli.predict_loop import run_serial
from napari_artseg.image_files import write_tiff
from napari_artseg.predictor import ArtSegModel


def write_inputs(folder: Path, size: int, n: int) -> list[InputImage]:
    """``n`` compressed uint16 TIFFs (written as the package writes them) of ``size`` px."""
    rng = np.random.default_rng(size)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        image = (1000 + rng.normal(0, 20, (size, size))).astype(np.uint16)
        path = folder / f"in_{i}.tif"
        write_tiff(path, image)
        items.append(InputImage(path, path.stem))
    return items


def in_line(model, items, out, options) -> None:
    """Every image read, predicted and written in turn (no read-ahead)."""
    for item in items:
        key, row, _ = process_item(model, item, out, options, None)
        if row.get("status") != "ok":
            raise SystemExit(f"{key}: {row.get('error')}")


def read_ahead(model, items, out, options) -> None:
    """The CLI's serial loop (next image read, previous outputs written, in background threads)."""
    computed, _, failed = run_serial(model, items, out, options, {}, quiet=True)
    if failed or computed != len(items):
        raise SystemExit(f"{failed} image(s) failed")


def main() -> int:
    """Time both loops and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="artseg-bench-read-ahead-"))
    try:
        items = write_inputs(work / "in", args.size, args.images)
        model = ArtSegModel.load(make_model(work, "fast"), device="cpu")
        options = PredictOptions(threshold=None, min_size=None, no_gate=True, overwrite=True)
        loops = {"in line": in_line, "read ahead, write behind": read_ahead}
        in_line(model, items[:1], work / "warm", options)  # warm-up: inference copies, caches
        best = {name: float("inf") for name in loops}
        load = os.getloadavg()[0]
        for _ in range(args.rounds):
            for name, loop in loops.items():
                out = work / "out"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                start = time.perf_counter()
                loop(model, items, out, options)
                best[name] = min(best[name], time.perf_counter() - start)
        print(f"{args.images} images of {args.size} px, fast preset, {args.threads} torch threads, "
              f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
        for name, seconds in best.items():
            print(f"  {name}: {seconds:.2f} s ({seconds / args.images:.3f} s per image)")
        ratio = best["in line"] / best["read ahead, write behind"]
        print(f"read-ahead + write-behind speed-up: {ratio:.2f}x")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
