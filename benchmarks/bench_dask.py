"""Overhead of ``artseg predict --dask`` against serial ``artseg predict``, and of the
block-by-block (Zarr) path against the in-memory path, measured in one run.

    python benchmarks/bench_dask.py --quick     # ~4-8 min on a shared 2-core VM
    python benchmarks/bench_dask.py             # more images, a larger image

1. **Per-image overhead.** The same small images are predicted by the serial
   command and through a one-worker local cluster (``--scheduler``), both with one
   PyTorch thread (on a shared machine more threads mostly contend), alternately,
   three times each with ``--overwrite``; the fastest run of each is kept and
   ``(dask - serial) / images`` is the overhead per image. A small network (the
   ``tiny`` preset) keeps the computation short so the overhead is not lost in its
   noise. Cluster
   start-up and the first run on a fresh worker (it imports PyTorch and loads the
   model) are reported apart. A two-worker run is reported too; on a 2-core
   machine it cannot show a parallel speed-up.
2. **Blocked path.** One large image (``fast`` preset) is predicted by the command
   from a TIFF (in memory, then two TIFFs written) and from a Zarr store (block by
   block, two Zarr arrays and two TIFFs written), in process; then from the Zarr
   store on the one-worker cluster. The largest map difference between them is
   reported.
3. **Peak memory.** A larger image (``tiny`` preset, so the network is not what
   fills memory; below ``LARGE_IMAGE_PIXELS`` so the TIFF takes the in-memory path)
   is predicted by ``artseg predict`` in a child process from a TIFF (in memory) and
   from a Zarr store (block by block); each child reports its peak resident set
   size (``VmHWM``; Linux only).

Models have random weights and a gate of 0 (every image runs the U-Net): the
overheads do not depend on what the weights learnt. Results go to
``benchmarks/results/scale_dask.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_artseg.atomic import atomic_write_text


def make_model(folder: Path, name: str) -> Path:
    """A model folder of preset ``name`` with random weights and a gate of 0."""
    import torch

    from napari_artseg.config import preset
    from napari_artseg.model_files import save_model
    from napari_artseg.training.classifier import build_classifier
    from napari_artseg.training.segmenter import build_unet

    torch.manual_seed(0)
    config = preset(name)
    networks = {"classifier": build_classifier(config), "unet": build_unet(config)}
    thresholds = {"gate": 0.0, "mask": 0.5, "min_size_px": 0, "pseudo_label": 0.5}
    return save_model(folder, config, networks, {"thresholds": thresholds})


def make_image(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A noisy uint16 image with a few dark blobs."""
    image = rng.normal(1000, 40, shape)
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    for _ in range(max(1, shape[0] * shape[1] // 40000)):
        r, c = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        image[(rows - r) ** 2 + (cols - c) ** 2 < rng.integers(4, 30) ** 2] -= 300
    return np.clip(image, 0, 65535).astype(np.uint16)


def timed_cli(*args) -> float:
    """Wall seconds of one in-process ``artseg`` command (it must succeed)."""
    from napari_artseg.cli import main

    start = time.perf_counter()
    status = main([str(a) for a in args])
    if status != 0:
        raise SystemExit(f"artseg {args[0]} exited {status}")
    return time.perf_counter() - start


def _cluster(workers: int):
    """A local cluster of ``workers`` processes (one PyTorch thread each), and its client."""
    from distributed import Client, LocalCluster

    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=logging.ERROR, env=env)
    return cluster, Client(cluster)


def per_image(model: Path, images: Path, out: Path, n: int, rounds: int = 3) -> dict:
    """Serial vs one-worker Dask runs over the same images, alternating; then two workers."""
    common = ["predict", "--model", model, "--quiet", "--overwrite", images]
    start = time.perf_counter()
    cluster, client = _cluster(1)
    started = time.perf_counter() - start
    address = ["--dask", "--scheduler", client.scheduler.address]
    first = timed_cli(*common, "--out", out / "dask", *address)
    serial, dask_runs = [], []
    for _ in range(rounds):
        serial.append(timed_cli(*common, "--out", out / "serial"))
        dask_runs.append(timed_cli(*common, "--out", out / "dask", *address))
    client.close()
    cluster.close()
    cluster, client = _cluster(2)
    two = [timed_cli(*common, "--out", out / "dask2", "--dask", "--scheduler",
                     client.scheduler.address) for _ in range(2)]
    client.close()
    cluster.close()
    best_serial, best_dask = min(serial), min(dask_runs)
    return {"images": n, "serial_runs_s": serial, "dask_1_worker_runs_s": dask_runs,
            "dask_2_workers_runs_s": two, "cluster_start_s": started,
            "first_run_on_fresh_worker_s": first,
            "serial_per_image_s": best_serial / n, "dask_1_worker_per_image_s": best_dask / n,
            "overhead_per_image_s": (best_dask - best_serial) / n,
            "overhead_ratio": best_dask / best_serial}


def blocked(model: Path, root: Path, side: int) -> dict:
    """One large image: TIFF (in memory) vs Zarr (block by block), in process and on a worker."""
    import tifffile
    import zarr

    image = make_image(np.random.default_rng(1), (side, side))
    tifffile.imwrite(root / "big.tif", image, tile=(256, 256))
    store = zarr.create_array(store=str(root / "big.zarr"), shape=image.shape,
                              chunks=(1024, 1024), dtype=image.dtype)
    store[:] = image
    common = ["predict", "--model", model, "--quiet", "--overwrite", "--no-gate"]
    in_memory = timed_cli(*common, "--out", root / "tiff", root / "big.tif")
    in_process = timed_cli(*common, "--out", root / "zarr", root / "big.zarr")
    cluster, client = _cluster(1)
    client.run(lambda: __import__("torch"))  # the worker's imports are not the path's cost
    on_worker = timed_cli(*common, "--out", root / "zarr1", root / "big.zarr", "--dask",
                          "--scheduler", client.scheduler.address)
    client.close()
    cluster.close()
    expected = tifffile.imread(root / "tiff" / "big_prob.tif")
    difference = max(float(np.abs(tifffile.imread(root / name / "big_prob.tif") - expected).max())
                     for name in ("zarr", "zarr1"))
    return {"side_px": side, "tiff_in_memory_s": in_memory, "zarr_blocked_in_process_s": in_process,
            "zarr_blocked_one_worker_s": on_worker, "max_abs_map_difference": difference}


# VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork and exec
CHILD = r"""
import sys
import torch
torch.set_num_threads(1)
from napari_artseg.cli import main
from napari_artseg.process_memory import peak_rss_kib
status = main(sys.argv[1:])
print("PEAK_KB", peak_rss_kib(), flush=True)
sys.exit(status)
"""


def peak_memory(model: Path, root: Path, side: int) -> dict:
    """Peak RSS (MiB) of ``artseg predict`` on one ``side`` px image: TIFF vs Zarr input."""
    import subprocess
    import sys

    import tifffile
    import zarr

    image = make_image(np.random.default_rng(2), (side, side))
    tifffile.imwrite(root / "mem.tif", image, tile=(512, 512))
    store = zarr.create_array(store=str(root / "mem.zarr"), shape=image.shape,
                              chunks=(1024, 1024), dtype=image.dtype)
    store[:] = image
    del image, store
    result = {"side_px": side}
    for name in ("tif", "zarr"):
        child = subprocess.run(
            [sys.executable, "-c", CHILD, "predict", "--model", str(model), "--quiet",
             "--no-gate", "--out", str(root / f"mem_{name}"), str(root / f"mem.{name}")],
            capture_output=True, text=True, check=True)
        kb = int(child.stdout.split("PEAK_KB")[1].split()[0])
        result[f"{name}_peak_rss_mib"] = kb / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer and smaller images")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "scale_dask.json"))
    args = parser.parse_args()
    import tifffile
    import torch

    from napari_artseg.large_images import LARGE_IMAGE_PIXELS

    n, size, side, memory_side = (40, 96, 2048, 4096) if args.quick else (200, 96, 4096, 7000)
    # the TIFF must take the in-memory path: stay below the streamed path's threshold
    memory_side = min(memory_side, int(LARGE_IMAGE_PIXELS**0.5) // 64 * 64)
    torch.set_num_threads(1)  # as each worker: on a loaded machine extra threads only contend
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        small_model = make_model(root / "tiny", "tiny")
        large_model = make_model(root / "fast", "fast")
        rng = np.random.default_rng(0)
        (root / "images").mkdir()
        for i in range(n):
            tifffile.imwrite(root / "images" / f"img_{i:04d}.tif", make_image(rng, (size, size)))
        report = {
            "command": "python benchmarks/bench_dask.py" + (" --quick" if args.quick else ""),
            "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                        "torch": torch.__version__, "load_average_before": load_before},
            "models": "random weights, gate 0; per-image: tiny preset, blocked: fast preset",
            "image_px": size,
            "per_image": per_image(small_model, root / "images", root / "out", n),
            "blocked": blocked(large_model, root, side),
            "memory": peak_memory(small_model, root, memory_side),
        }
    report["machine"]["load_average_after"] = os.getloadavg()
    atomic_write_text(Path(args.out), json.dumps(report, indent=2) + "\n")
    p, b = report["per_image"], report["blocked"]
    print(f"serial {p['serial_per_image_s'] * 1000:.1f} ms/image, dask (1 worker) "
          f"{p['dask_1_worker_per_image_s'] * 1000:.1f} ms/image: overhead "
          f"{p['overhead_per_image_s'] * 1000:.1f} ms/image; cluster start "
          f"{p['cluster_start_s']:.1f} s, first run on a fresh worker "
          f"{p['first_run_on_fresh_worker_s']:.1f} s")
    print(f"{b['side_px']} px image: TIFF in memory {b['tiff_in_memory_s']:.1f} s, Zarr blocked "
          f"in process {b['zarr_blocked_in_process_s']:.1f} s, on one worker "
          f"{b['zarr_blocked_one_worker_s']:.1f} s; max map difference "
          f"{b['max_abs_map_difference']:.2e}")
    m = report["memory"]
    print(f"{m['side_px']} px image, peak RSS: TIFF in memory {m['tif_peak_rss_mib']:.0f} MiB, "
          f"Zarr blocked {m['zarr_peak_rss_mib']:.0f} MiB")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
