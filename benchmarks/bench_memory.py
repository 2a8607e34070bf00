"""Peak memory of predicting one 8192 x 8192 TIFF with the ``paper`` preset (target < 3 GB).

Each measurement is a fresh child process running ``artseg predict`` (the CLI's
``main``) on the file, gate off so the U-Net runs on every tile; its peak
resident memory (VmHWM, :func:`napari_artseg.process_memory.peak_rss_kib`, which counts
torch's CPU tensors and, unlike ``ru_maxrss``, not this driver's own peak) is printed by
the child itself. The networks are untrained (memory does not depend on the
weights). A child that only imports the package and loads the model gives the
fixed part. Without ``--quick`` both prediction paths are measured: the
in-memory one (:meth:`ArtSegModel.predict`) and the streamed one
(:func:`napari_artseg.large_images.predict_large_file`); ``--quick`` measures
the path the CLI chooses for this size.

Usage::

    python benchmarks/bench_memory.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

import napari_artseg
from bench_common import machine, run_main
from napari_artseg.atomic import atomic_write_text
from napari_artseg.config import preset
from napari_artseg.device import resolve_device
from napari_artseg.model_files import save_model
from napari_artseg.training.classifier import build_classifier
from napari_artseg.training.segmenter import build_unet

CHILD = r"""
import sys, time
import torch
from napari_artseg.process_memory import peak_rss_kib
torch.set_num_threads(int(sys.argv[1]))
import napari_artseg.large_images as large
path, argv = sys.argv[2], sys.argv[3:]
if path == "streamed":
    large.LARGE_IMAGE_PIXELS = 0
elif path == "in-memory":
    large.LARGE_IMAGE_PIXELS = 1 << 62
start = time.perf_counter()
if path == "load-only":
    from napari_artseg.predictor import ArtSegModel
    ArtSegModel.load(argv[argv.index("--model") + 1], device=argv[argv.index("--device") + 1])
    status = 0
else:
    from napari_artseg.cli import main
    status = main(argv)
print("SECONDS", time.perf_counter() - start)
print("MAXRSS_KB", peak_rss_kib())
sys.exit(status)
"""


def write_input(path: Path, size: int) -> None:
    """A tiled uint16 TIFF: noisy background with dark objects, written tile by tile."""
    rng = np.random.default_rng(0)
    tile = 512

    def tiles():
        for y in range(0, size, tile):
            for x in range(0, size, tile):
                block = (1000 + rng.normal(0, 20, (tile, tile))).astype(np.uint16)
                if (y // tile + x // tile) % 5 == 0:
                    block[100:260, 150:330] = 400
                yield block

    tifffile.imwrite(path, tiles(), shape=(size, size), dtype=np.uint16, tile=(tile, tile))


def measure(path_kind: str, image: Path, model: Path, out: Path, threads: int,
            device: str) -> dict:
    """Peak RSS and seconds of one child process."""
    src = str(Path(napari_artseg.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (src, os.environ.get("PYTHONPATH", "")) if p)}
    argv = ["predict", str(image), "--model", str(model), "--out", str(out), "--quiet",
            "--no-gate", "--device", device, "--overwrite"]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, str(threads), path_kind, *argv],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{path_kind}: child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    values = dict(line.split(None, 1) for line in done.stdout.splitlines()
                  if line.startswith(("SECONDS", "MAXRSS_KB")))
    return {"path": path_kind, "peak_rss_mb": int(values["MAXRSS_KB"]) / 1024,
            "seconds_in_child": float(values["SECONDS"]), "wall_seconds": wall}


def main() -> int:
    """Run the benchmark and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the path the CLI chooses")
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (host RSS either way)")
    parser.add_argument("--json", help="default: benchmarks/results/perf_memory[_quick].json")
    args = parser.parse_args()
    load_at_start = os.getloadavg()
    args.json = args.json or f"benchmarks/results/perf_memory{'_quick' if args.quick else ''}.json"
    resolve_device(args.device)  # a clear message when CUDA is asked for but absent
    work = Path(tempfile.mkdtemp(prefix="artseg-bench-memory-"))
    rows = []
    try:
        config = preset("paper")
        torch.manual_seed(0)
        networks = {"classifier": build_classifier(config).eval(),
                    "unet": build_unet(config).eval()}
        model = save_model(work / "paper", config, networks,
                           {"thresholds": {"gate": 0.5, "mask": 0.5, "min_size_px": 0}})
        image = work / "big.tif"
        write_input(image, args.size)
        kinds = ["load-only", "cli"] if args.quick else ["load-only", "cli", "in-memory",
                                                          "streamed"]
        for kind in kinds:
            row = measure(kind, image, model, work / "out", args.threads, args.device)
            rows.append(row)
            print(f"  {kind}: peak RSS {row['peak_rss_mb']:.0f} MB, "
                  f"{row['seconds_in_child']:.0f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"command": " ".join(["python", *sys.argv]), "machine": machine(),
              "load_average_at_start": load_at_start,
              "threads": args.threads,
              "image": f"{args.size} x {args.size} uint16 TIFF", "preset": "paper",
              "target_mb": 3 * 1024, "rows": rows}
    print("\n| run | peak RSS (MB) | seconds |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['path']} | {row['peak_rss_mb']:.0f} | {row['seconds_in_child']:.0f} |")
    atomic_write_text(Path(args.json), json.dumps(report, indent=2))
    worst = max(r["peak_rss_mb"] for r in rows if r["path"] != "load-only")
    print(f"largest prediction peak {worst:.0f} MB: "
          f"{'below' if worst < 3 * 1024 else 'ABOVE'} the 3 GB target")
    return 0


if __name__ == "__main__":
    run_main(main)
