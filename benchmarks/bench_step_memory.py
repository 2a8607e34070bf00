"""The estimated memory of a CPU training step against the peak a real step reaches.

Training on a CPU plans each step to fit the memory available
(``napari_artseg.training.step_memory``): it estimates what a step holds from two
small probe steps and splits the batch into micro-batches when that estimate, times
``HEADROOM``, does not fit. This script checks the estimate. For each network, size
and batch, a fresh child process builds the network, estimates the step
(``fixed_bytes + batch x bytes_per_image``, timed), takes one forward/backward step
at the smallest probe size (the libraries' one-time allocations), resets its peak
resident memory (``/proc/self/clear_refs``, Linux), and takes one real step (forward,
mean loss, backward, Adam step) inside ``heap_reuse`` as training does. Printed per
case: the estimate, the measured rise of the peak over the resident memory before the
step, their ratio, and what ``plan_step`` decides for the preset's own batch with
the memory available now.

With ``--cap-gb G`` (Linux, root, cgroup v1 memory controller) it then trains the
``paper`` U-Net for ``--cap-steps`` steps on batches of 4 crops of 512 px (``fit``, the
training loop itself) in two children whose memory is capped at G GB: one as
training runs (the plan sees the cap and splits the batch), one with the plan turned
off (every batch in one step, as before the plan existed). Printed: each child's exit
status, micro-batches, peak resident memory and seconds.

Usage::

    python benchmarks/bench_step_memory.py --quick
    python benchmarks/bench_step_memory.py
    python benchmarks/bench_step_memory.py --quick --cap-gb 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from bench_common import memory_capped, run_main, run_report
from napari_artseg.atomic import atomic_write_text

CHILD = r"""
import gc, json, sys, time
import torch
from napari_artseg.config import preset
from napari_artseg.process_memory import heap_reuse, reset_peak_rss, status_kib
from napari_artseg.training.classifier import build_classifier
from napari_artseg.training.segmenter import build_unet
from napari_artseg.training.step_memory import bytes_per_image, fixed_bytes, plan_step

spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
config = preset(spec["preset"])
network = build_unet(config) if spec["network"] == "unet" else build_classifier(config)
side, batch = spec["side"], spec["batch"]
start = time.perf_counter()
estimate = fixed_bytes(network) + batch * bytes_per_image(network, (1, side, side))
probe_seconds = time.perf_counter() - start
own_batch = (config.batch_size, 1, *(2 * [config.unet_size if spec["network"] == "unet"
                                          else config.input_size]))
plan = plan_step(network, own_batch, torch.device("cpu"), spec["network"])
optimizer = torch.optim.Adam(network.parameters())
network.train()
generator = torch.Generator().manual_seed(0)
with heap_reuse():
    warm = 2 * getattr(network, "divisor", 32)
    network(torch.randn(2, 1, warm, warm, generator=generator)).float().mean().backward()
    optimizer.zero_grad(set_to_none=True)
    inputs = torch.randn(batch, 1, side, side, generator=generator)
    gc.collect()
    reset_peak_rss()
    before = status_kib("VmRSS")
    start = time.perf_counter()
    output = network(inputs)
    output.float().mean().backward()
    del output
    optimizer.step()
    step_seconds = time.perf_counter() - start
    peak = status_kib("VmHWM")
print("RESULT", json.dumps({
    "estimate_bytes": estimate, "measured_bytes": (peak - before) * 1024,
    "probe_seconds": probe_seconds, "step_seconds": step_seconds,
    "own_batch": list(own_batch), "planned_chunks": plan.chunks,
    "planned_step_bytes": plan.step_bytes(own_batch[0]), "available_bytes": plan.available}))
"""

CAPPED = r"""
import json, sys, time
import torch
import torch.nn.functional as F
from napari_artseg.config import preset
from napari_artseg.process_memory import heap_reuse, peak_rss_kib
from napari_artseg.training import loop
from napari_artseg.training.segmenter import build_unet
from napari_artseg.training.step_memory import StepPlan

spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
if not spec["plan"]:
    loop.plan_step = lambda *args, **kwargs: StepPlan()
network = build_unet(preset("paper"))
generator = torch.Generator().manual_seed(0)


def batches(epoch):
    for _ in range(spec["steps"]):
        yield (torch.randn(4, 1, 512, 512, generator=generator),
               (torch.rand(4, 1, 512, 512, generator=generator) > 0.9).float())


def validate(net):
    return {"val_loss": 0.0}
    yield


def loss_fn(output, batch):
    return F.binary_cross_entropy_with_logits(output, batch[1])


start = time.perf_counter()
with heap_reuse():
    events = list(loop.fit("unet", network, preset("paper"), 1, torch.device("cpu"), batches,
                           spec["steps"], loss_fn, validate))
notes = [event.message for event in events if event.kind == "info"]
print("RESULT", json.dumps({"seconds": time.perf_counter() - start, "peak_kib": peak_rss_kib(),
                            "notes": notes}))
"""

#: (preset, network, side, batch) measured by default; --quick keeps the first four.
CASES = [
    ("fast", "classifier", 512, 8),
    ("fast", "unet", 512, 8),
    ("paper", "classifier", 512, 2),
    ("paper", "unet", 512, 2),
    ("paper", "classifier", 1024, 4),
    ("paper", "unet", 1024, 1),
    ("paper", "unet", 1024, 2),
]


def run_case(case: tuple, threads: int) -> dict:
    """One case in a fresh child process; its RESULT line as a dict (an error on failure)."""
    preset, network, side, batch = case
    spec = {"preset": preset, "network": network, "side": side, "batch": batch,
            "threads": threads}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)],
                          capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return {**spec, **json.loads(line[len("RESULT "):])}
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {**spec, "error": f"exit {done.returncode}: {tail}"}


def run_capped(plan: bool, cap_gb: float, steps: int, threads: int) -> dict:
    """Train the paper U-Net in a child capped at ``cap_gb`` (cgroup v1); how it ended."""
    spec = {"plan": plan, "steps": steps, "threads": threads}
    command = [sys.executable, "-c", CAPPED, json.dumps(spec)]
    with memory_capped(command, cap_gb, "artseg-step") as capped:
        done = subprocess.run(capped, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return {**spec, "exit": done.returncode, **json.loads(line[len("RESULT "):])}
    return {**spec, "exit": done.returncode, "stderr_tail": done.stderr[-300:]}


def main() -> int:
    """Run the cases, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the four cases at 512 px")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--cap-gb", type=float,
                        help="also train the paper U-Net capped at this many GB (cgroup v1)")
    parser.add_argument("--cap-steps", type=int, default=2)
    parser.add_argument("--json", help="default: benchmarks/results/perf_step_memory"
                                       "[_quick].json")
    args = parser.parse_args()
    args.json = args.json or ("benchmarks/results/perf_step_memory"
                              + ("_quick" if args.quick else "") + ".json")
    rows = []
    print(f"{'preset':6} {'network':10} {'side':>5} {'batch':>5} {'estimate GB':>11} "
          f"{'measured GB':>11} {'measured/est':>12} {'probe s':>7} {'step s':>7}  plan",
          flush=True)
    for case in CASES[:4] if args.quick else CASES:
        row = run_case(case, args.threads)
        rows.append(row)
        if "error" in row:
            print(f"{case[0]:6} {case[1]:10} {case[2]:5d} {case[3]:5d}  {row['error']}")
            continue
        row["ratio"] = row["measured_bytes"] / row["estimate_bytes"]
        print(f"{row['preset']:6} {row['network']:10} {row['side']:5d} {row['batch']:5d} "
              f"{row['estimate_bytes'] / 1e9:11.3f} {row['measured_bytes'] / 1e9:11.3f} "
              f"{row['ratio']:12.2f} {row['probe_seconds']:7.2f} {row['step_seconds']:7.2f}  "
              f"batch {row['own_batch'][0]} of {row['own_batch'][-1]} px: "
              f"{row['planned_chunks']} micro-batch(es), "
              f"{row['planned_step_bytes'] / 1e9:.2f} of {row['available_bytes'] / 1e9:.2f} GB",
              flush=True)
    ratios = [row["ratio"] for row in rows if "ratio" in row]
    if ratios:
        print(f"measured / estimated: {min(ratios):.2f} to {max(ratios):.2f}")
    capped = []
    if args.cap_gb:
        for plan in (True, False):
            row = run_capped(plan, args.cap_gb, args.cap_steps, args.threads)
            capped.append(row)
            how = "planned" if plan else "plan off"
            if "seconds" in row:
                print(f"paper U-Net, {args.cap_steps} batches of 4 x 512 px, capped at "
                      f"{args.cap_gb:g} GB, {how}: finished in {row['seconds']:.1f} s, peak "
                      f"{row['peak_kib'] * 1024 / 1e9:.2f} GB; {' '.join(row['notes'])}",
                      flush=True)
            else:
                print(f"paper U-Net, capped at {args.cap_gb:g} GB, {how}: exit {row['exit']}"
                      + (" (killed)" if row["exit"] in (-9, 137) else ""), flush=True)
    report = run_report(args, rows=rows, capped=capped)
    atomic_write_text(Path(args.json), json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    run_main(main)
