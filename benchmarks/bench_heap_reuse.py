"""Folder prediction and export with freed memory kept for reuse, against glibc's own thresholds.

``artseg predict`` on a folder (``cli/predict_loop.run_serial``), the viewer's
prediction job and, since session 21, ``export_project`` and the retrain
evaluation keep freed heap memory for the next image while they run
(:func:`napari_artseg.process_memory.heap_reuse`). glibc's adaptive thresholds
cannot be restored inside a process once set, so each run is a fresh child
process that calls the command line on the same inputs, alternately with the
thresholds kept (the default) and with glibc's own
(``process_memory.MALLOPT = None``). Each child reports its wall time, system
time and minor page faults (``getrusage``); printed: every run, the fastest of
each mode and their ratio. The model is an untrained ``fast`` one (the time does
not depend on the weights) with the gate at 0, so the U-Net runs on every image.

``--job predict`` (default): ``artseg predict --no-gate`` on the folder.
``--job export``: ``artseg export --no-model`` of a project on the folder with that
model current and no cached predictions, so every image is predicted, and its
mask, artifact-free image and QC row written.
``--job dask``: ``artseg predict --dask --workers 2 --no-gate`` on the folder; the
local cluster's worker processes hold the setting (``distributed/worker_memory.py``)
or, in the other mode, keep glibc's (``dask_predict.LOCAL_HEAP_REUSE = False``). The
workers' system time and page faults are counted with the child's (its finished
child processes, ``RUSAGE_CHILDREN``).
Training's side of the same change is measured by ``bench_training_memory.py``
(arm "in memory, glibc's thresholds").

Usage::

    python benchmarks/bench_heap_reuse.py [--job predict|export|dask] [--images 100] [--size 512]
        [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import run_report
from bench_predict import make_model
from bench_read_ahead import write_inputs
from napari_artseg.atomic import atomic_write_text
from napari_artseg.project import Project

CHILD = r"""
import json, resource, sys, time
import torch
from napari_artseg import process_memory
from napari_artseg.cli import main
from napari_artseg.distributed import dask_predict
torch.set_num_threads(int(sys.argv[1]))
if sys.argv[2] == "glibc":
    process_memory.MALLOPT = None  # glibc's own thresholds, as before session 20
    dask_predict.LOCAL_HEAP_REUSE = False  # and the local Dask workers' (before session 22)
start = time.perf_counter()
if sys.argv[6] == "export":  # the model is the project's current one; sys.argv[3] unused
    code = main(["export", "--project", sys.argv[5], "--out", sys.argv[4], "--no-model",
                 "--device", "cpu", "--quiet"])
else:
    dask = ["--dask", "--workers", "2"] if sys.argv[6] == "dask" else []
    code = main(["predict", "--model", sys.argv[3], "--out", sys.argv[4], "--no-gate",
                 "--overwrite", "--quiet", *dask, sys.argv[5]])
seconds = time.perf_counter() - start
usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
print("RESULT", json.dumps({"exit": code, "seconds": seconds,
                            "system_seconds": sum(u.ru_stime for u in usage),
                            "minor_page_faults": sum(u.ru_minflt for u in usage)}))
"""

MODES = ("heap kept for reuse", "glibc's thresholds")


def export_project_folder(images: Path, model: Path) -> Path:
    """A project on ``images`` whose current model is ``model`` with its gate open (at 0)."""
    project = Project.create(images)
    current = project.models_dir / model.name
    shutil.copytree(model, current)
    document = json.loads((current / "config.json").read_text())
    document["thresholds"]["gate"] = 0.0  # every image reaches the U-Net, as --no-gate does
    atomic_write_text(current / "config.json", json.dumps(document, indent=1))
    project.set_current_model(model.name)
    return project.folder


def run_child(threads: int, mode: str, model: Path, out: Path, inputs: Path,
              job: str = "predict") -> dict:
    """One ``artseg predict`` (or ``export``) child; its RESULT line as a dict."""
    done = subprocess.run([sys.executable, "-c", CHILD, str(threads),
                           "glibc" if mode == MODES[1] else "reuse", str(model), str(out),
                           str(inputs), job], capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"child failed ({done.returncode}): {done.stderr[-400:]}")


def main() -> int:
    """Alternate the two modes over rounds; print the runs and the ratio; write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--job", choices=("predict", "export", "dask"), default="predict")
    parser.add_argument("--json",
                        help="default: benchmarks/results/perf_heap_reuse[_export|_dask].json")
    args = parser.parse_args()
    args.json = args.json or ("benchmarks/results/perf_heap_reuse"
                              f"{'' if args.job == 'predict' else '_' + args.job}.json")
    torch.set_num_threads(args.threads)  # as the children run (recorded with the machine)
    with tempfile.TemporaryDirectory(prefix="artseg-bench-heap-") as tmp:
        work = Path(tmp)
        write_inputs(work / "in", args.size, args.images)
        model = make_model(work, "fast")
        inputs = work / "in"
        if args.job == "export":
            inputs = export_project_folder(inputs, model)
        runs: list[dict] = []
        for round_ in range(args.rounds):
            for mode in MODES:
                result = run_child(args.threads, mode, model, work / "out", inputs, args.job)
                runs.append({"round": round_ + 1, "mode": mode, **result})
                print(f"round {round_ + 1}, {mode}: {result['seconds']:.2f} s, system "
                      f"{result['system_seconds']:.2f} s, {result['minor_page_faults']:,} minor "
                      "page faults", flush=True)
    best = {mode: min(r["seconds"] for r in runs if r["mode"] == mode) for mode in MODES}
    ratio = best[MODES[1]] / best[MODES[0]]
    print(f"artseg {args.job}, {args.images} images of {args.size} px, fast preset, "
          f"{args.threads} torch threads: "
          f"fastest {best[MODES[0]]:.2f} s kept for reuse, {best[MODES[1]]:.2f} s with glibc's "
          f"thresholds: {ratio:.2f}x")
    report = run_report(args, runs=runs, fastest_seconds=best, speed_up_heap_reuse=ratio)
    atomic_write_text(Path(args.json), json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
