"""Score-CAM speed: fast exact mode vs the one-channel-per-pass reference, approximations.

On one ``fast``-preset classifier (trained briefly here on synthetic images, or
the classifier of a model folder given with ``--model``), its ``scorecam_stage`` as the
target layer (the model's own with ``--model``), and the same views:

1. exact fast mode (a ``ScoreCam`` made once and called per view, as training and
   prediction use it) vs the reference loop (``scorecam_reference``): maximum absolute
   difference (must be < 1e-4 in fp32) and speed-up (target >= 1.5x);
2. a sweep of the exact mode (batch sizes; the one-shot ``scorecam()`` that builds its
   networks at every call; one pass stream using every thread instead of one
   single-thread worker per thread; batch norms not folded; row-major instead of
   ``channels_last``), and the batch size that ``batch_size="auto"`` measures;
3. approximations (top-N channels, reduced-resolution scoring, masking after an early
   stage, bf16 masked passes where the device has bf16 units, and combinations) vs
   exact: speed-up (target
   >= 8x) and pseudo-mask IoU against the true synthetic masks (target within 0.02
   of exact), pooled over the held-out artifact views with three binarisation
   rules: as training does by default, every view cut at Otsu's threshold of all
   their maps pooled; every view cut at 0.5; and the views the classifier calls
   artifact each cut at its own deletion-test threshold. For the first rule, a 95 %
   bootstrap interval of the difference to exact (views resampled in pairs).

All ratios come from one run; timings are interleaved (every mode once per round)
and the fastest round is kept, because the machine may be shared.

Usage::

    python benchmarks/bench_scorecam.py --quick
    python benchmarks/bench_scorecam.py --threads 1 \
        --json benchmarks/results/perf_scorecam_1thread.json
    python benchmarks/bench_scorecam.py --model path/to/model_folder
    python benchmarks/bench_scorecam.py --model path/to/model_folder --modes inside

``--modes inside`` times only exact and the modes that mask after a stage
(``inside-bf16``: those of them with bf16 passes); ``--modes exact`` runs parts 1 and 2
only (no approximations, no IoU), e.g. with more ``--rounds`` to repeat the exact
speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch

from bench_common import drain, machine, run_main
from napari_artseg.atomic import atomic_write_text
from napari_artseg.config import ArtSegConfig, preset
from napari_artseg.device import native_bf16_cpu, resolve_device
from napari_artseg.image_files import read_mask
from napari_artseg.labels_file import read_labels_csv
from napari_artseg.model_files import load_weights, read_model_document
from napari_artseg.models.resnet import cam_target
from napari_artseg.normalize import mask_to_scale
from napari_artseg.scorecam import ScoreCam, scorecam, scorecam_reference
from napari_artseg.scorecam_inside import resnet_and_target
from napari_artseg.scorecam_passes import CpuWorkers, resolve_workers
from napari_artseg.scorecam_tuning import clear_cache, resolve_batch_size, scoring_network
from napari_artseg.synth import write_dataset
from napari_artseg.training.classifier import build_classifier, train_classifier
from napari_artseg.training.data import global_view, load_training_items, stratified_split
from napari_artseg.training.pseudo_labels import (
    FALLBACK_THRESHOLD,
    deletion_threshold,
    otsu_pseudo_threshold,
)


class Mode(NamedTuple):
    """One Score-CAM mode: exact with the defaults, else the approximations it combines."""

    top: int | None = None
    scale: float = 1.0
    stage: int = 0
    amp: bool = False

    @property
    def name(self) -> str:
        """E.g. ``"top-8 channels + masked after stage 2"``; ``"exact"`` for none."""
        parts = ((["bf16 passes"] if self.amp else [])
                 + ([f"top-{self.top} channels"] if self.top else [])
                 + ([f"score at {self.scale:g}x"] if self.scale < 1 else [])
                 + ([f"masked after stage {self.stage}"] if self.stage else []))
        return " + ".join(parts) or "exact"

    def runner(self, classifier, **options) -> ScoreCam:
        """A ``ScoreCam`` of ``classifier`` in this mode (``options``: the others)."""
        return ScoreCam(classifier, max_channels=self.top, score_scale=self.scale,
                        mask_stage=self.stage, amp=self.amp, **options)


#: Every approximate mode measured.
APPROXIMATIONS = (Mode(16), Mode(8), Mode(scale=0.5), Mode(scale=0.25), Mode(scale=0.125),
                  Mode(16, 0.5), Mode(16, 0.25), Mode(8, 0.25), Mode(8, 0.125),
                  Mode(stage=2), Mode(16, stage=2), Mode(8, stage=2), Mode(stage=3),
                  Mode(16, stage=3), Mode(8, stage=3),
                  Mode(amp=True), Mode(16, amp=True), Mode(8, amp=True),
                  Mode(scale=0.5, amp=True), Mode(8, 0.125, amp=True),
                  Mode(stage=2, amp=True), Mode(16, stage=2, amp=True),
                  Mode(8, stage=2, amp=True), Mode(16, stage=3, amp=True))


def add_modes_argument(parser: argparse.ArgumentParser, exact_only: bool = False) -> None:
    """``--modes``: every approximate mode, or only those that mask after a stage; with
    ``exact_only``, also ``exact``: no approximation at all."""
    choices = ("all", "inside", "inside-bf16") + (("exact",) if exact_only else ())
    help_text = ("inside: only exact and the modes that mask after a stage; "
                 "inside-bf16: exact and those of them with bf16 passes")
    if exact_only:
        help_text += "; exact: no approximations (exact against the reference only)"
    parser.add_argument("--modes", choices=choices, default="all", help=help_text)


def selected(modes, which: str, classifier, bf16: bool = False) -> list[Mode]:
    """The modes to run on ``classifier``.

    Those it can run (a mask stage up to its target stage; bf16 passes only where
    ``bf16``), and of them: all (``which="all"``), exact and those that mask after a
    stage (``"inside"``), or exact and those that mask after a stage with bf16 passes
    (``"inside-bf16"``).
    """
    def wanted(mode: Mode) -> bool:
        if which == "all" or mode == Mode():
            return True
        return bool(mode.stage) and (which == "inside" or mode.amp)

    return [mode for mode in modes
            if mode.stage <= resnet_and_target(classifier)[1] and (bf16 or not mode.amp)
            and wanted(mode)]


def make_set(folder: Path, n: int, size: int, seed: int) -> Path:
    """A synthetic set (reused when complete)."""
    if not (folder / "dataset.json").is_file():
        for _ in write_dataset(folder, n=n, size=size, artifact_fraction=0.5, seed=seed):
            pass
    return folder


def model_classifier(folder: str | Path) -> tuple[torch.nn.Module, ArtSegConfig]:
    """The Score-CAM target (its ``scorecam_stage``) of a model folder's classifier, in eval
    mode, and the model's config."""
    document = read_model_document(folder)
    config = document["config"]
    classifier = build_classifier(config)
    load_weights(Path(folder), "classifier", classifier)
    return cam_target(classifier, config.scorecam_stage).eval(), config


def add_model_view_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a script that scores a model folder's classifier on the held-out views:
    ``--model`` (required), ``--n-test``, ``--size``, ``--threads``, ``--work``."""
    parser.add_argument("--model", required=True, help="a model folder (its classifier)")
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--size", type=int, default=512, help="synthetic image side (px)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "artseg-bench",
                                                         "scorecam"))


def trained_classifier(args, config, device) -> torch.nn.Module:
    """The Score-CAM target (the config's ``scorecam_stage``) of the classifier of ``--model``,
    or of one trained briefly on a synthetic set."""
    if args.model:
        return model_classifier(args.model)[0].to(device)
    from safetensors.torch import load_file, save_file

    train = make_set(Path(args.work) / f"train-n{args.n_train}-s{args.size}", args.n_train,
                     args.size, 1)
    cached = Path(args.work) / f"classifier-n{args.n_train}-s{args.size}-e{args.epochs}.safetensors"
    if cached.is_file():
        classifier = build_classifier(config)
        classifier.load_state_dict(load_file(str(cached)))
        print(f"classifier reused from {cached}", flush=True)
        return cam_target(classifier, config.scorecam_stage).to(device).eval()
    labels = read_labels_csv(train / "labels.csv").labels
    items, _ = drain(load_training_items(train / "images", labels, config))
    train_idx, val_idx = stratified_split([i.label for i in items], config.val_fraction, 0)
    start = time.perf_counter()
    classifier, fit = drain(train_classifier(items, train_idx, val_idx, config, device))
    print(f"classifier trained in {time.perf_counter() - start:.0f} s: "
          f"{fit.history[fit.best_epoch - 1] if fit.history else {}}", flush=True)
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(cached))
    return cam_target(classifier, config.scorecam_stage).eval()


def test_views(args, config) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(view (1, S, S), true mask (S, S) bool) of every artifact image of a held-out set."""
    test = make_set(Path(args.work) / f"test-n{args.n_test}-s{args.size}", args.n_test,
                    args.size, 2)
    labels = read_labels_csv(test / "labels.csv").labels
    artifact = {k: v for k, v in labels.items() if v == "artifact"}
    items, _ = drain(load_training_items(test / "images", artifact, config))
    out = []
    for item in items:
        mask = read_mask(test / "masks" / item.key)
        small = mask_to_scale(mask, (config.input_size, config.input_size))[0] >= 0.5
        out.append((global_view(item.image, config.input_size), small))
    return out


def timed(fn, views: list[torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
    """Seconds for ``fn`` over the views one at a time, and the maps."""
    start = time.perf_counter()
    maps = [fn(view[None])[0] for view in views]
    return time.perf_counter() - start, maps


def interleaved(modes: dict, views: list[torch.Tensor],
                rounds: int) -> tuple[dict[str, float], dict[str, list[torch.Tensor]]]:
    """Fastest-round seconds per image of each mode (modes interleaved in every round),
    and each mode's maps."""
    best: dict[str, float] = {}
    maps: dict[str, list[torch.Tensor]] = {}
    for _ in range(rounds):
        for name, fn in modes.items():
            seconds, maps[name] = timed(fn, views)
            best[name] = min(best.get(name, float("inf")), seconds / len(views))
            print(f"  {name}: {seconds / len(views):.3f} s/image", flush=True)
    return best, maps


def pooled_iou(pairs) -> float:
    """IoU pooled over (prediction, truth) boolean pairs."""
    inter = sum(int((pred & truth).sum()) for pred, truth in pairs)
    union = sum(int((pred | truth).sum()) for pred, truth in pairs)
    return inter / union if union else float("nan")


def per_view_counts(pairs) -> torch.Tensor:
    """(intersection, union) pixel counts of every (prediction, truth) pair, shape (n, 2)."""
    return torch.tensor([[int((pred & truth).sum()), int((pred | truth).sum())]
                         for pred, truth in pairs], dtype=torch.float64)


def difference_interval(counts: torch.Tensor, base: torch.Tensor, rounds: int = 2000,
                        seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap interval of pooled IoU(counts) - pooled IoU(base), views resampled
    in pairs (the same views for both: the spread of the views themselves cancels)."""
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, counts.shape[0], (rounds, counts.shape[0]), generator=gen)
    mine, theirs = counts[picks].sum(1), base[picks].sum(1)
    diffs = mine[:, 0] / mine[:, 1] - theirs[:, 0] / theirs[:, 1]
    low, high = torch.quantile(diffs, torch.tensor([0.025, 0.975], dtype=torch.float64))
    return float(low), float(high)


def pseudo_ious(classifier, data, maps, device) -> dict[str, float]:
    """Pseudo-mask IoU against the true masks, with three binarisation rules.

    ``otsu``: as training binarises by default (``pseudo_label_rule="otsu"``):
    every artifact view cut at Otsu's threshold of all their maps' values pooled.
    ``fixed_0.5``: every artifact view, maps cut at 0.5. ``deletion_test``: the
    views the classifier calls artifact (the gate drops the others), each cut at
    its own deletion-test threshold as in training (0.5 when nothing flips).
    """
    fixed = [(cam >= 0.5, truth) for (_, truth), cam in zip(data, maps, strict=True)]
    otsu, _ = otsu_pseudo_threshold(dict(enumerate(maps)))
    pooled = [(cam >= otsu, truth) for (_, truth), cam in zip(data, maps, strict=True)]
    own = []
    with torch.inference_mode():
        for (view, truth), cam in zip(data, maps, strict=True):
            if float(torch.sigmoid(classifier(view[None].to(device)).float())[0]) < 0.5:
                continue
            cut = deletion_threshold(classifier, view, cam, device)
            own.append((cam >= (FALLBACK_THRESHOLD if cut is None else cut), truth))
    return {"otsu": pooled_iou(pooled), "otsu_threshold": otsu,
            "otsu_counts": per_view_counts(pooled),
            "fixed_0.5": pooled_iou(fixed), "deletion_test": pooled_iou(own),
            "n_called_artifact": len(own)}


def approximation_rows(args, classifier, exact_runner, data, views, speed_views,
                       device) -> list[dict]:
    """Part 2: each approximate mode against exact (the first row): speed on ``speed_views``,
    map differences and pseudo-mask IoU on every view."""
    weighting = args.weighting
    approx = {"exact, batch auto": exact_runner}
    bf16 = device.type == "cuda" or native_bf16_cpu()
    for mode in selected(APPROXIMATIONS, args.modes, classifier, bf16):
        approx[mode.name] = mode.runner(classifier, batch_size="auto", weighting=weighting)
    if not bf16:
        print("bf16 modes skipped: this CPU has no bf16 units (emulated bf16 is slower)",
              flush=True)
    for fn in approx.values():  # each mode's networks and auto batch size before timing
        fn(speed_views[0][None])
    print("approximate modes (s/image):", flush=True)
    approx_speed, _ = interleaved(approx, speed_views, args.rounds)
    rows = []
    exact_all: list[torch.Tensor] = []
    exact_counts = None
    for name, fn in approx.items():
        _, maps = timed(fn, views)
        maps = [m.cpu() for m in maps]
        exact_all = exact_all or maps
        diff = torch.stack([(a - b).abs() for a, b in zip(maps, exact_all, strict=True)])
        ious = pseudo_ious(classifier, data, maps, device)
        exact_counts = ious["otsu_counts"] if exact_counts is None else exact_counts
        low, high = difference_interval(ious["otsu_counts"], exact_counts)
        rows.append({"mode": name, "s_per_image": approx_speed[name],
                     "iou_otsu_minus_exact_95ci": [low, high],
                     "max_abs_diff_vs_exact": float(diff.max()),
                     "mean_abs_diff_vs_exact": float(diff.mean()),
                     "speedup_vs_exact": approx_speed["exact, batch auto"] / approx_speed[name],
                     "iou_otsu": ious["otsu"], "otsu_threshold": ious["otsu_threshold"],
                     "iou_fixed_0.5": ious["fixed_0.5"], "iou_deletion_test": ious["deletion_test"],
                     "n_views_called_artifact": ious["n_called_artifact"]})
    for row in rows:
        for rule in ("otsu", "fixed_0.5", "deletion_test"):
            row[f"iou_{rule}_minus_exact"] = row[f"iou_{rule}"] - rows[0][f"iou_{rule}"]
    return rows


def main() -> None:
    """Run the benchmark, print the tables and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and epochs")
    parser.add_argument("--model", help="a model folder whose classifier to use (no training)")
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=300,
                        help="held-out images (half are artifact views scored for IoU)")
    parser.add_argument("--size", type=int, default=512, help="synthetic image side (px)")
    parser.add_argument("--epochs", type=int, default=40, help="classifier epochs")
    parser.add_argument("--speed-images", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--weighting", default="probability",
                        choices=("probability", "softmax", "baseline"),
                        help="Score-CAM weighting (the fast preset uses probability)")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "artseg-bench",
                                                         "scorecam"))
    parser.add_argument("--json", help="default: benchmarks/results/perf_scorecam[_quick].json")
    add_modes_argument(parser, exact_only=True)
    args = parser.parse_args()
    load_at_start = os.getloadavg()
    suffix = ("_quick" if args.quick else "") + (
        "" if args.weighting == "probability" else f"_{args.weighting}")
    args.json = args.json or f"benchmarks/results/perf_scorecam{suffix}.json"
    if args.quick:
        args.n_train, args.n_test, args.epochs = 80, 24, 15
        args.speed_images, args.rounds = 2, 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = resolve_device(args.device)  # a clear message when CUDA is asked for but absent
    config = preset("fast", classifier_epochs=args.epochs, device=device.type)
    classifier = trained_classifier(args, config, device)
    data = test_views(args, config)
    views = [v.to(device) for v, _ in data]
    speed_views = views[: args.speed_images]
    k = classifier.num_feature_channels
    with torch.inference_mode():
        dead = sum(int((classifier.features(v[None])[0].flatten(1).amax(1) == 0).sum())
                   for v in speed_views) / len(speed_views)
    print(f"{len(views)} artifact test views of {config.input_size} px; K = {k}, "
          f"{dead:.1f} dead channels per view on average", flush=True)

    # 1. exact fast mode vs the reference loop, and the sweep of the exact mode
    clear_cache()
    start = time.perf_counter()
    scorecam(classifier, speed_views[0][None], batch_size="auto", weighting=args.weighting)
    auto_seconds = time.perf_counter() - start
    sample = (1, config.input_size, config.input_size)
    workers = resolve_workers("auto", device, k)
    with CpuWorkers(workers) as pool:  # the cached choice of the call above: nothing is timed
        auto_batch = resolve_batch_size("auto", scoring_network(classifier, True, True), sample,
                                        k, device, False, True, classifier, pool)
    batches = sorted({1, 16, k} if args.quick else {1, 4, 16, 32, 64, k})
    weighting = args.weighting
    # every fast mode is a ScoreCam made once and called per view, as training and
    # prediction use it (its networks are built on the first call, before the timing)
    exact = {"reference (one channel per pass)": lambda x: scorecam_reference(
        classifier, x, weighting=weighting),
        "exact, batch auto": ScoreCam(classifier, batch_size="auto", weighting=weighting),
        "exact, batch auto, networks built at every call (scorecam())": lambda x: scorecam(
            classifier, x, batch_size="auto", weighting=weighting)}
    exact.update({f"exact, batch {b}": ScoreCam(classifier, batch_size=b, weighting=weighting)
                  for b in batches})
    if workers > 1:
        exact[f"exact, batch {auto_batch}, 1 worker of {args.threads} threads"] = ScoreCam(
            classifier, batch_size=auto_batch, workers=1, weighting=weighting)
    exact[f"exact, batch {auto_batch}, batch norms not folded"] = ScoreCam(
        classifier, batch_size=auto_batch, fold_batch_norm=False, weighting=weighting)
    exact[f"exact, batch {auto_batch}, not channels_last"] = ScoreCam(
        classifier, batch_size=auto_batch, channels_last=False, weighting=weighting)
    for fn in exact.values():  # build each runner's networks before timing
        fn(speed_views[0][None])
    print(f"exact modes on {len(speed_views)} views, {workers} worker(s) of "
          f"{max(1, args.threads // workers)} thread(s) (s/image; auto chose batch {auto_batch} "
          f"in {auto_seconds:.1f} s including its first map):", flush=True)
    speed, exact_maps = interleaved(exact, speed_views, args.rounds)
    ref_maps = exact_maps["reference (one channel per pass)"]
    diffs = {name: max(float((a - b).abs().max()) for a, b in zip(maps, ref_maps, strict=True))
             for name, maps in exact_maps.items()}
    reference = speed["reference (one channel per pass)"]
    exact_s = speed["exact, batch auto"]

    # 2. approximations vs exact: speed and pseudo-mask IoU
    rows = [] if args.modes == "exact" else approximation_rows(
        args, classifier, exact["exact, batch auto"], data, views, speed_views, device)

    table = [{"mode": name, "s_per_image": s, "speedup_vs_reference": reference / s,
              "max_abs_diff_vs_reference": diffs[name]} for name, s in speed.items()]
    report = {
        "command": " ".join(["python", *sys.argv]), "machine": machine(),
        "load_average_at_start": load_at_start, "args": vars(args),
        "k_channels": k, "dead_channels_per_view": dead, "n_speed_views": len(speed_views),
        "n_iou_views": len(views), "auto_batch_size": auto_batch, "workers": workers,
        "auto_first_call_seconds": auto_seconds, "exact_modes": table,
        "exact_speedup_vs_reference": reference / exact_s,
        "exact_max_abs_diff": diffs["exact, batch auto"],
        "approximate_modes": rows,
    }
    print_tables(report)
    atomic_write_text(Path(args.json), json.dumps(report, indent=2))
    ok = report["exact_max_abs_diff"] < 1e-4
    print(f"exact fast == reference within 1e-4: {ok}; speed-up {reference / exact_s:.2f}x "
          "(target >= 1.5x)")
    return 0 if ok else 1


def print_tables(report: dict) -> None:
    """The two tables as markdown (the first only when no approximation ran)."""
    print("\n| exact mode | s/image | speed-up vs reference | max abs diff |")
    print("|---|---|---|---|")
    for row in report["exact_modes"]:
        print(f"| {row['mode']} | {row['s_per_image']:.3f} | {row['speedup_vs_reference']:.2f}x "
              f"| {row['max_abs_diff_vs_reference']:.1e} |")
    if not report["approximate_modes"]:  # --modes exact
        return
    print("\n| mode | s/image | speed-up vs exact | map diff max / mean | IoU, pooled Otsu | "
          "minus exact | 95 % interval | IoU, cut 0.5 | minus exact | IoU, deletion test | "
          "minus exact |")
    print("|---" * 11 + "|")
    for row in report["approximate_modes"]:
        low, high = row["iou_otsu_minus_exact_95ci"]
        print(f"| {row['mode']} | {row['s_per_image']:.3f} | {row['speedup_vs_exact']:.1f}x | "
              f"{row['max_abs_diff_vs_exact']:.3f} / {row['mean_abs_diff_vs_exact']:.4f} | "
              f"{row['iou_otsu']:.3f} | {row['iou_otsu_minus_exact']:+.3f} | "
              f"{low:+.3f} to {high:+.3f} | "
              f"{row['iou_fixed_0.5']:.3f} | {row['iou_fixed_0.5_minus_exact']:+.3f} | "
              f"{row['iou_deletion_test']:.3f} | {row['iou_deletion_test_minus_exact']:+.3f} |")

if __name__ == "__main__":
    run_main(main)
