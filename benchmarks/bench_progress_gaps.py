"""The longest waits between two progress events of a training run.

Training is a generator (``train_pipeline``): the viewer's bars, the command line's
bars and Cancel act only when it yields, so the time between two events is how
long the progress shows nothing new and how long a Cancel waits at most. This
benchmark trains on a synthetic set, times every event as the consumer receives
it and prints the longest waits with the events on either side, and the longest
wait of each stage (the stage of the event that ended it).

Usage::

    python benchmarks/bench_progress_gaps.py [--n 200] [--size 1024] [--preset fast]
    python benchmarks/bench_progress_gaps.py --quick      # 40 images of 512 px
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import run_report
from napari_artseg.atomic import atomic_write_text
from napari_artseg.config import preset
from napari_artseg.labels_file import read_labels_csv
from napari_artseg.synth import write_dataset
from napari_artseg.training import train_pipeline

SHOWN = 8


def describe(event) -> str:
    """``stage:kind step/total`` and the event's message, short."""
    return f"{event.stage}:{event.kind} {event.step}/{event.total} {event.message[:48]}".strip()


def timed_events(images: Path, labels: dict, out: Path, config) -> tuple[list[dict], float]:
    """Every event of one training run with the wait before it; the run's total seconds."""
    rows, previous = [], "start"
    start = last = time.perf_counter()
    for event in train_pipeline(images, labels, out, config):
        now = time.perf_counter()
        rows.append({"wait_s": now - last, "after": previous, "event": describe(event),
                     "stage": event.stage})
        previous, last = describe(event), now
    return rows, time.perf_counter() - start


def main() -> int:
    """Train once, print the longest waits; write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="images (half with artifacts)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--epochs", type=int, default=1, help="classifier and U-Net epochs")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--work", help="folder keeping the synthetic set between runs")
    parser.add_argument("--quick", action="store_true", help="40 images of 512 px")
    parser.add_argument("--json", default="benchmarks/results/perf_progress_gaps.json")
    args = parser.parse_args()
    if args.quick:
        args.n, args.size = 40, 512
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="artseg-bench-gaps-") as tmp:
        work = Path(args.work or tmp) / f"set-{args.n}-{args.size}"
        if not (work / "labels.csv").is_file():
            for _ in write_dataset(work, n=args.n, size=args.size, artifact_fraction=0.5, seed=3):
                pass
        labels = read_labels_csv(work / "labels.csv").labels
        config = preset(args.preset, classifier_epochs=args.epochs, unet_epochs=args.epochs)
        rows, total = timed_events(work / "images", labels, Path(tmp) / "model", config)
    print(f"{args.n} images of {args.size} px, {args.preset} preset, {args.epochs} epoch(s), "
          f"{args.threads} torch threads: {len(rows)} events in {total:.1f} s")
    print(f"longest waits before an event (the {SHOWN} longest):")
    for row in sorted(rows, key=lambda r: -r["wait_s"])[:SHOWN]:
        print(f"  {row['wait_s']:6.2f} s  after {row['after']}  ->  {row['event']}")
    longest: dict[str, float] = {}
    for row in rows:
        longest[row["stage"]] = max(longest.get(row["stage"], 0.0), row["wait_s"])
    print("longest wait per stage: " + ", ".join(f"{stage} {wait:.2f} s"
                                                  for stage, wait in longest.items()))
    report = run_report(args, total_seconds=total, events=rows, longest_wait_per_stage_s=longest)
    atomic_write_text(Path(args.json), json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
