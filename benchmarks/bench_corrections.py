"""What corrections buy: retraining from corrected masks on synthetic data (issue 5).

Per seed:

1. ScoreCAM-U-Net from image-level labels only (the weak model, "0 corrections");
2. the fully supervised U-Net (every training image's true mask): the upper bound;
3. simulated corrections of the weak model's predicted masks for 10 and 30 training
   artifact images, then a retrain (fine-tuning the weak model with the curated masks, as
   ``artseg train --project`` does: curated_weight 4, dice_weight 1; the config's
   few-corrections rules, ``curated_validation_min``, ``curated_share`` and
   ``fine_tune_schedule``, apply as they are set). Two correctors (``--correctors``):
   ``strokes`` starts from the prediction and fixes its largest errors (connected components
   of prediction XOR truth) with a budget of brush strokes per image, one component per
   stroke; ``truth`` takes the true mask (the shortcut). As ``artseg train --project`` does
   when no image was relabelled, the weak model's classifier is kept (``classifier_epochs=0``)
   and its Score-CAM maps come from a cache in the work folder (``ARTSEG_CACHE_DIR``);
4. active selection against random order: the k = 5, 10, 20 images to correct (strokes) are
   the predicted masks with the most expected wrong pixels (napari_artseg.active_selection,
   the order Shift+V follows; before 2026-12-06 the most uncertain ones: Score-CAM/U-Net
   disagreement + mean entropy + classifier uncertainty) or a random draw; test IoU after
   retraining, and beside it how many wrong pixels of the weak model's masks the k chosen
   images' strokes fix (``fixed_px_<order>_<k>``: what a person's corrections change, before
   any retraining).

Test pixel IoU (micro, over the whole test set) is reported with mean and spread over seeds,
and the share of the weak-to-supervised gap that 10 corrections recover (target: >= 0.5).

Usage::

    python benchmarks/bench_corrections.py            # 160 train / 80 test at 256 px, 3 seeds
    python benchmarks/bench_corrections.py --quick    # a smoke run (tiny preset, minutes)

Seeds can run as separate processes (one thread each on a 2-core machine) and be summarised
together afterwards::

    python benchmarks/bench_corrections.py --seeds 0 --threads 1 --json corr-0.json &
    python benchmarks/bench_corrections.py --seeds 1 --threads 1 --json corr-1.json
    python benchmarks/bench_corrections.py --merge corr-0.json corr-1.json

A variant of the retrain (``--set``) gets its own correction folders with ``--tag`` while the
weak and supervised models of the work folder are reused, e.g. the retrain as it was first
built (before ``parent_mask_targets``, ``curated_validation`` and ``fine_tune_lr_factor`` 1.0),
at 10 corrections only::

    python benchmarks/bench_corrections.py --budgets 10 --active-k --tag before- \
        --set parent_mask_targets=false --set curated_validation=false \
        --set fine_tune_lr_factor=0.1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from bench_common import drain
from napari_artseg.active_selection import expected_errors, rank
from napari_artseg.atomic import atomic_write_text
from napari_artseg.config import preset
from napari_artseg.image_files import read_image, read_mask, write_tiff
from napari_artseg.labels_file import read_labels_csv
from napari_artseg.metrics import evaluate_dataset
from napari_artseg.predictor import ArtSegModel
from napari_artseg.retrain import CURATED_WEIGHT, DICE_WEIGHT
from napari_artseg.synth import write_dataset
from napari_artseg.training import train_pipeline
from napari_artseg.training.saliency_cache import CACHE_ENV

#: Seeds whose supervised-minus-weak IoU gap is below this are left out of the per-seed shares.
MIN_GAP = 0.01
CORRECTORS = ("strokes", "truth")
#: Prefix of the rows' pixel counts (wrong pixels the chosen images' strokes fix), not IoUs.
FIXED = "fixed_px_"


def make_set(folder: Path, n: int, size: int, seed: int) -> Path:
    """A synthetic set (reused when already complete)."""
    if not (folder / "dataset.json").is_file():
        for _ in write_dataset(folder, n=n, size=size, artifact_fraction=0.5, seed=seed):
            pass
    return folder


def train(images: Path, labels: dict, out: Path, config, masks: Path | None = None,
          init: Path | None = None) -> Path:
    """Train (or reuse) a model folder."""
    if (out / "config.json").is_file():
        return out
    if out.exists():
        shutil.rmtree(out)
    return drain(train_pipeline(images, labels, out, config, masks_dir=masks, init=init))


def test_iou(folder: Path, test: Path) -> float:
    """Micro pixel IoU of a model on the test set."""
    model = ArtSegModel.load(folder, device="auto")
    labels = read_labels_csv(test / "labels.csv").labels
    pairs = ((name, model.predict(read_image(test / "images" / name).data).mask,
              read_mask(test / "masks" / name)) for name in labels)
    return float(evaluate_dataset(pairs).pixel.iou)


def stroke_correction(pred: np.ndarray, truth: np.ndarray, strokes: int) -> np.ndarray:
    """Fix the ``strokes`` largest error regions of ``pred`` toward ``truth`` (one per stroke)."""
    corrected = pred.copy()
    errors, n = ndimage.label(pred != truth)
    if n == 0:
        return corrected
    sizes = np.bincount(errors.ravel())[1:]
    for label in np.argsort(sizes)[::-1][:strokes] + 1:
        region = errors == label
        corrected[region] = truth[region]
    return corrected


def pixels_fixed(preds, train_set: Path, images: list[str], strokes: int) -> int:
    """Wrong pixels of the predicted masks of ``images`` that ``strokes`` strokes each fix."""
    total = 0
    for image in images:
        pred = preds[image][0].astype(bool)
        truth = read_mask(train_set / "masks" / image).astype(bool)
        wrong = int(np.count_nonzero(pred != truth))
        total += wrong - int(np.count_nonzero(stroke_correction(pred, truth, strokes) != truth))
    return total


def predictions(model_folder: Path, train_set: Path,
                images: list[str]) -> dict[str, tuple[np.ndarray, float]]:
    """Predicted mask of each training artifact image and its active-selection score
    (expected wrong pixels, as Shift+V ranks masks)."""
    model = ArtSegModel.load(model_folder, device="auto")
    out = {}
    for name in images:
        result = model.predict(read_image(train_set / "images" / name).data, keep_ungated=True)
        out[name] = (result.mask, expected_errors(result.ungated, result.mask))
    return out


class LazyPredictions:
    """:func:`predictions`, computed on first use (a rerun whose folders exist skips them)."""

    def __init__(self, *args) -> None:
        self.args = args
        self.value: dict[str, tuple[np.ndarray, float]] | None = None

    def get(self) -> dict[str, tuple[np.ndarray, float]]:
        """The predictions, computed once."""
        if self.value is None:
            self.value = predictions(*self.args)
        return self.value

    def __getitem__(self, image: str) -> tuple[np.ndarray, float]:
        return self.get()[image]


def corrected_model(name: str, chosen: list[str], corrector: str, preds, train_set: Path,
                    labels: dict, weak: Path, work: Path, config, strokes: int) -> Path:
    """Write the corrections of ``chosen`` as curated masks and fine-tune the weak model."""
    masks = work / f"masks-{name}"
    if not (work / name / "config.json").is_file():
        shutil.rmtree(masks, ignore_errors=True)
        for image in chosen:
            truth = read_mask(train_set / "masks" / image)
            mask = truth if corrector == "truth" else stroke_correction(preds[image][0], truth,
                                                                        strokes)
            write_tiff(masks / image, mask.astype(np.uint8))
    # as `artseg train --project` does when no image was relabelled: the weak model's classifier
    # is kept and only the U-Net learns from the corrections
    retrain_config = config.replace(curated_weight=CURATED_WEIGHT, dice_weight=DICE_WEIGHT,
                                    classifier_epochs=0)
    return train(train_set / "images", labels, work / name, retrain_config, masks, init=weak)


def run_seed(seed: int, args, train_set: Path, test: Path, work: Path) -> dict[str, float]:
    """Every arm for one training seed."""
    config = preset(args.preset, seed=seed, **dict(args.overrides))
    labels = read_labels_csv(train_set / "labels.csv").labels
    artifacts = sorted(k for k, v in labels.items() if v == "artifact")
    work = work / f"seed{seed}"
    weak = train(train_set / "images", labels, work / "weak", config)
    upper = train(train_set / "images", labels, work / "supervised", config,
                  masks=train_set / "masks")
    row = {"weak": test_iou(weak, test), "supervised": test_iou(upper, test)}
    preds = LazyPredictions(weak, train_set, artifacts)
    rng = np.random.default_rng(1000 + seed)
    random_order = [artifacts[i] for i in rng.permutation(len(artifacts))]
    for k in args.budgets:
        for corrector in args.correctors:
            folder = corrected_model(f"{args.tag}{corrector}-{k}", random_order[:k], corrector,
                                     preds, train_set, labels, weak, work, config, args.strokes)
            row[f"{corrector}_{k}"] = test_iou(folder, test)
    active_order = (rank({image: score for image, (_, score) in preds.get().items()})
                    if args.active_k and "active" in args.orders else [])
    for k in args.active_k:
        for order_name in args.orders:
            # k random images with strokes is the strokes arm of budget k: one folder for both
            name, order = ((f"strokes-{k}", random_order) if order_name == "random"
                           else (f"active-{k}", active_order))
            folder = corrected_model(f"{args.tag}{name}", order[:k], "strokes", preds,
                                     train_set, labels, weak, work, config, args.strokes)
            row[f"{order_name}_{k}"] = test_iou(folder, test)
            row[f"{FIXED}{order_name}_{k}"] = pixels_fixed(preds, train_set, order[:k],
                                                           args.strokes)
    return row


def summarise(rows: list[dict[str, float]], budgets: list[int]) -> dict[str, object]:
    """Mean and standard deviation per arm, and the gap recovered by the smallest budget."""
    keys = list(dict.fromkeys(k for r in rows for k in r))  # every arm, in order of appearance
    stats = {k: (float(np.mean([r[k] for r in rows if k in r])),
                 float(np.std([r[k] for r in rows if k in r]))) for k in keys}
    gaps = {}
    mean_gap = stats["supervised"][0] - stats["weak"][0]
    k = min(budgets, default=None)
    for corrector in [c for c in CORRECTORS if k and all(f"{c}_{k}" in r for r in rows)]:
        # per seed, only where the gap is at least MIN_GAP (a vanishing gap makes any ratio
        # meaningless), and the share of the mean gap over all seeds
        shares = [(r[f"{corrector}_{k}"] - r["weak"]) / (r["supervised"] - r["weak"])
                  for r in rows if r["supervised"] - r["weak"] >= MIN_GAP]
        gaps[f"gap_recovered_{corrector}_{k}"] = float(np.mean(shares)) if shares else None
        gaps[f"mean_gap_recovered_{corrector}_{k}"] = (
            (stats[f"{corrector}_{k}"][0] - stats["weak"][0]) / mean_gap
            if mean_gap >= MIN_GAP else None)
    counts = {key: sum(key in r for r in rows) for key in keys}
    return {"per_arm": stats, "seeds_per_arm": counts, **gaps}


def markdown(summary: dict, rows: list[dict[str, float]]) -> str:
    """The result as a Markdown table."""
    lines = ["| arm | test pixel IoU (mean +- sd) |", "|---|---|"]
    fixed = ["", "| order and k | wrong pixels the strokes fix (mean +- sd) |", "|---|---|"]
    for name, (mean, sd) in summary["per_arm"].items():
        count = summary["seeds_per_arm"][name]
        seeds = f" ({count} of {len(rows)} seeds)" if count < len(rows) else ""
        if name.startswith(FIXED):
            fixed.append(f"| {name[len(FIXED):]} | {mean:,.0f} +- {sd:,.0f}{seeds} |")
        else:
            lines.append(f"| {name} | {mean:.3f} +- {sd:.3f}{seeds} |")
    if len(fixed) > 3:
        lines.extend(fixed)
    for key, value in summary.items():
        if "gap_recovered" in key:
            lines.append(f"\n{key}: {'n/a' if value is None else f'{value:.2f}'}")
    lines.append(f"\nseeds: {len(rows)}")
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark and write JSON and Markdown results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny preset and sizes, one seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-train", type=int, default=160)
    parser.add_argument("--n-test", type=int, default=80)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--budgets", type=int, nargs="*", default=[10, 30],
                        help="corrections per arm, random images (none: only --active-k)")
    parser.add_argument("--active-k", type=int, nargs="*", default=[5, 10, 20],
                        help="active-selection budgets (none: skip the comparison)")
    parser.add_argument("--correctors", nargs="+", choices=CORRECTORS, default=list(CORRECTORS))
    parser.add_argument("--orders", nargs="+", choices=("active", "random"),
                        default=["active", "random"],
                        help="the orders --active-k compares (random k = the strokes arm of k)")
    parser.add_argument("--strokes", type=int, default=5, help="brush strokes per image")
    parser.add_argument("--work", default="benchmarks/results/corrections-work")
    parser.add_argument("--json", default="benchmarks/results/corrections.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--tag", default="", help="prefix of the correction arms' folders")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads of this process")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="summarise the rows of earlier runs' JSON files and exit")
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, args.json)
        return
    torch.set_num_threads(args.threads)
    if args.quick:
        args.seeds, args.n_train, args.n_test, args.size = [0], 24, 8, 96
        args.preset, args.budgets, args.active_k = "tiny", [2, 4], [2]
        args.work, args.json = args.work + "-quick", args.json.replace(".json", "-quick.json")
    args.overrides = [(k, json.loads(v) if v[:1] in "0123456789-[{tf" else v)
                      for k, v in (item.split("=", 1) for item in args.set)]
    work = Path(args.work)
    os.environ.setdefault(CACHE_ENV, str(work.resolve() / "cache"))
    train_set = make_set(work / "train", args.n_train, args.size, 100)
    test = make_set(work / "test", args.n_test, args.size, 200)
    start = time.perf_counter()
    rows = []
    for seed in args.seeds:
        rows.append(run_seed(seed, args, train_set, test, work))
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[-1].items()),
              flush=True)
    save({k: v for k, v in vars(args).items()}, rows, args.budgets,
         time.perf_counter() - start, Path(args.json))


def save(run_args: dict, rows: list[dict[str, float]], budgets: list[int], seconds: float,
         out: Path) -> None:
    """Print the summary and write it as JSON and Markdown."""
    summary = summarise(rows, budgets)
    text = markdown(summary, rows)
    print(text)
    report = {"args": run_args, "rows": rows, "summary": summary, "seconds": seconds}
    atomic_write_text(out, json.dumps(report, indent=2, default=str) + "\n")
    atomic_write_text(out.with_suffix(".md"), text + "\n")


def merge(files: list[str], out: str) -> None:
    """Summarise the rows of several earlier runs together (e.g. one process per seed, or per
    seed and arm: the arms of one seed are joined into one row)."""
    runs = [json.loads(Path(name).read_text()) for name in files]
    by_seed: dict[int, dict[str, float]] = {}
    for run in runs:
        for seed, row in zip(run["args"]["seeds"], run["rows"], strict=True):
            by_seed.setdefault(seed, {}).update(row)
    seeds = sorted(by_seed)
    budgets = sorted({k for run in runs for k in run["args"]["budgets"]})
    run_args = {**runs[0]["args"], "seeds": seeds, "budgets": budgets, "merged_from": files}
    save(run_args, [by_seed[seed] for seed in seeds], budgets,
         sum(run["seconds"] for run in runs), Path(out))


if __name__ == "__main__":
    main()
