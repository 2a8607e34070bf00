"""Training memory with the images held in memory vs kept on disk (``memory_budget_gb``).

Four fresh child processes train the same ``fast`` model (1 classifier and 1 U-Net
epoch, no self-training: the data stages are what matters here) on one synthetic set of
large images: with ``memory_budget_gb`` so large that everything stays in memory, so
small that every image, target and derived tensor is kept on disk, memory-mapped, and
the default (a quarter of the available memory, a cgroup's limit included); and all on
disk again without giving freed heap memory back to the system
(``process_memory.trim_heap`` off, as before 2026-12-07); and all in memory with glibc's
own allocation thresholds (``process_memory.heap_reuse`` off, as before session 20);
``--arms`` runs some of them.
Each child samples its own memory at every progress event: the peak of anonymous memory
(``RssAnon``: what the kernel cannot drop, and what runs a machine out of memory) and of
all resident memory (VmHWM; it also counts mapped file pages, which the kernel drops
under pressure); and its anonymous memory once the run has ended (what a long-lived
process, napari, keeps after training), its system seconds and minor page faults.
Printed: the peaks, the ratios, the seconds, and
whether the models' weights are identical (they must be: the values are the same; with
one torch thread per child, the default, two runs of the same process are bit-identical,
with two they were not).

With ``--limit-gb G`` (Linux, root, cgroup v1 memory controller) each child runs in
a cgroup whose memory is capped at G GB, to show which runs survive the cap (the
default budget sees the cap and keeps what does not fit on disk).

Usage::

    python benchmarks/bench_training_memory.py --quick
    python benchmarks/bench_training_memory.py --limit-gb 4.5
    python benchmarks/bench_training_memory.py --arms "in memory" "on disk"
    python benchmarks/bench_training_memory.py --n 150 --size 512 --threads 2 \
        --arms "in memory" "in memory, glibc's thresholds" "in memory" \
        "in memory, glibc's thresholds"
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from bench_common import memory_capped, run_report
from napari_artseg.atomic import atomic_write_text
from napari_artseg.synth import write_dataset

CHILD = r"""
import gc, json, resource, sys, time
import torch
from napari_artseg.config import preset
from napari_artseg.labels_file import read_labels_csv
from napari_artseg import process_memory
from napari_artseg.process_memory import peak_rss_kib, status_kib
from napari_artseg.training import train_pipeline

torch.set_num_threads(int(sys.argv[1]))
data, out, budget = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
if "no-trim" in sys.argv[5]:
    process_memory.MALLOC_TRIM = None  # freed heap memory stays with glibc, as before
if "no-reuse" in sys.argv[5]:
    process_memory.MALLOPT = None  # glibc's own thresholds during the run, as before
config = preset("fast", classifier_epochs=1, unet_epochs=1, self_training_rounds=0,
                memory_budget_gb=budget)
labels = read_labels_csv(data + "/labels.csv").labels
anon = 0
start = time.perf_counter()
for event in train_pipeline(data + "/images", labels, out, config):
    anon = max(anon, status_kib("RssAnon") or 0)
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
gc.collect()
print("RESULT", json.dumps({"seconds": seconds, "peak_anon_kib": anon,
                            "system_seconds": usage.ru_stime,
                            "minor_page_faults": usage.ru_minflt,
                            "peak_rss_kib": peak_rss_kib(),
                            "anon_after_run_kib": status_kib("RssAnon") or 0}))
"""


def run_child(threads: int, data: Path, out: Path, budget: float | None,
              limit_gb: float | None, trim: bool = True, reuse: bool = True) -> dict:
    """One training child; its RESULT line as a dict (``failed`` with its exit code if it died).

    ``trim`` False: the child does not give freed heap memory back at the end of the run
    (``process_memory.trim_heap`` does nothing), as training did before 2026-12-07.
    ``reuse`` False: the run keeps glibc's own allocation thresholds
    (``process_memory.heap_reuse`` does nothing), as training did before session 20.
    """
    switches = ",".join(["trim" if trim else "no-trim", "reuse" if reuse else "no-reuse"])
    command = [sys.executable, "-c", CHILD, str(threads), str(data), str(out), json.dumps(budget),
               switches]
    with memory_capped(command, limit_gb, "artseg-bench") as capped:
        done = subprocess.run(capped, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"failed": done.returncode, "stderr_tail": done.stderr[-400:]}


#: (name, memory_budget_gb, heap trimmed at the end, heap kept for reuse) of each run.
ARMS = (("in memory", 1e6, True, True), ("on disk", 1e-6, True, True),
        ("automatic", None, True, True), ("on disk, heap not trimmed", 1e-6, False, True),
        ("in memory, glibc's thresholds", 1e6, True, False))


def same_weights(first: Path, second: Path) -> bool:
    """Whether two model folders hold identical classifier and U-Net weights."""
    for part in ("classifier", "unet"):
        mine = load_file(str(first / f"{part}.safetensors"))
        theirs = load_file(str(second / f"{part}.safetensors"))
        if mine.keys() != theirs.keys() or not all(torch.equal(mine[k], theirs[k])
                                                   for k in mine):
            return False
    return True


def main() -> int:
    """Run both children, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 images of 1024 px")
    parser.add_argument("--n", type=int, default=96, help="images (half with artifacts)")
    parser.add_argument("--size", type=int, default=2048, help="image side (px)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per child (1: bit-identical runs; with 2 the "
                             "classifier's weights differed by 1e-6 between two processes)")
    parser.add_argument("--limit-gb", type=float, help="cap each child's memory (cgroup v1)")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "artseg-bench",
                                                         "training_memory"))
    parser.add_argument("--json", help="default: benchmarks/results/perf_training_memory"
                                       "[_quick].json")
    names = [arm[0] for arm in ARMS]
    parser.add_argument("--arms", nargs="+", choices=names, default=names, metavar="ARM",
                        help="which runs, in this order (one may come again), of: "
                             + ", ".join(f"'{name}'" for name in names) + " (default: all)")
    args = parser.parse_args()
    if args.quick:
        args.n, args.size = 16, 1024
    args.json = args.json or ("benchmarks/results/perf_training_memory"
                              f"{'_quick' if args.quick else ''}.json")
    work = Path(args.work)
    data = work / f"set-n{args.n}-s{args.size}"
    if not (data / "dataset.json").is_file():
        for _ in write_dataset(data, n=args.n, size=args.size, artifact_fraction=0.5, seed=3):
            pass
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = {}
    arms = {arm[0]: arm[1:] for arm in ARMS}
    for index, name in enumerate(args.arms):
        budget, trim, reuse = arms[name]
        key = name if name not in runs else f"{name} ({index + 1})"
        slug = "".join(c if c.isalnum() else "-" for c in key)
        out = work / f"model-{stamp}-{slug}"
        runs[key] = {"out": str(out), "memory_budget_gb": budget, "heap_trimmed": trim,
                     "heap_reuse": reuse,
                     **run_child(args.threads, data, out, budget, args.limit_gb, trim, reuse)}
        print(f"{key}: {runs[key]}", flush=True)
    image_bytes = args.n * args.size * args.size * 4
    report = run_report(args, image_bytes_float32=image_bytes, runs=runs)
    done = {name: run for name, run in runs.items() if "failed" not in run}
    for run in done.values():
        document = json.loads((Path(run["out"]) / "config.json").read_text())
        run["n_images_on_disk"] = document["n_images_on_disk"]
    names = list(done)
    report["identical_weights"] = all(same_weights(Path(done[names[0]]["out"]),
                                                   Path(done[name]["out"])) for name in names[1:]
                                      ) if names else None
    if "in memory" in done and "on disk" in done:
        memory, disk = done["in memory"], done["on disk"]
        report["anon_ratio"] = memory["peak_anon_kib"] / disk["peak_anon_kib"]
        report["seconds_ratio"] = disk["seconds"] / memory["seconds"]
    if "on disk" in done and "on disk, heap not trimmed" in done:
        untrimmed = done["on disk, heap not trimmed"]
        report["trim_anon_ratio"] = untrimmed["peak_anon_kib"] / done["on disk"]["peak_anon_kib"]
    glibc = "in memory, glibc's thresholds"
    if "in memory" in done and glibc in done:
        report["reuse_seconds_ratio"] = done[glibc]["seconds"] / done["in memory"]["seconds"]
    limit = f", each capped at {args.limit_gb:g} GB" if args.limit_gb else ""
    print(f"\n{args.n} images of {args.size} px ({image_bytes / 1e9:.2f} GB as float32){limit}")
    print("| run | images on disk | peak anonymous memory | peak resident (VmHWM) | seconds | "
          "system seconds | minor page faults | anonymous memory after the run |")
    print("|---|---|---|---|---|---|---|---|")
    for name, run in runs.items():
        if "failed" in run:
            print(f"| {name} | | killed (exit status {run['failed']}) | | | | | |")
            continue
        print(f"| {name} | {run['n_images_on_disk']} of {args.n} | "
              f"{run['peak_anon_kib'] / 1e6:.2f} GB | {run['peak_rss_kib'] / 1e6:.2f} GB | "
              f"{run['seconds']:.0f} | {run['system_seconds']:.1f} | "
              f"{run['minor_page_faults'] / 1e6:.2f} M | "
              f"{run['anon_after_run_kib'] / 1e6:.2f} GB |")
    if "anon_ratio" in report:
        print(f"anonymous memory {report['anon_ratio']:.2f}x lower on disk; "
              f"{report['seconds_ratio']:.2f}x the time")
    if "reuse_seconds_ratio" in report:
        print(f"with glibc's own thresholds {report['reuse_seconds_ratio']:.2f}x the time of "
              "the heap kept for reuse (in memory)")
    if "trim_anon_ratio" in report:
        print(f"anonymous memory {report['trim_anon_ratio']:.2f}x lower with the heap trimmed "
              "(on disk)")
    print(f"identical weights across the completed runs ({'; '.join(names)}): "
          f"{report['identical_weights']}")
    atomic_write_text(Path(args.json), json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
