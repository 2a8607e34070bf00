"""Accuracy of ScoreCAM-U-Net on synthetic brightfield data (issue 2 acceptance).

Trains the ``fast`` preset from image-level labels only (weak), the same pipeline
with the true masks (fully supervised upper bound) and tunes a conventional
baseline (background-corrected intensity threshold) on the training masks, then
scores all three on a held-out test set: classification F1, pixel precision,
recall, F1, IoU, object F1, and pixel IoU per artifact kind. Several training
seeds give mean and spread. Thresholds of the learned models are chosen on the
training data's validation split only (the test set is never used to choose).

With ``--classifier-from PATTERN`` (``{seed}`` is replaced by the seed) the classifier of an
earlier run's model folder is kept (``classifier_epochs=0``, an ``--init`` parent holding only
that classifier) and everything after it is trained afresh: Score-CAM pseudo-labels, the U-Net,
self-training and the thresholds. It isolates a change after the classifier (e.g.
``--set scorecam_stage=3``) at a fraction of the training time.

Usage::

    python benchmarks/bench_accuracy.py                 # 200 train / 100 test at 512 px, 3 seeds
    python benchmarks/bench_accuracy.py --quick         # a smoke run in a few minutes
    python benchmarks/bench_accuracy.py --seeds 0 --supervised-seeds --set scorecam_stage=3 \
        --classifier-from WORK/model-weak-seed{seed}-default
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from napari_artseg.atomic import atomic_write_text
from napari_artseg.config import preset
from napari_artseg.conventional import tune_detector
from napari_artseg.image_files import read_image, read_mask
from napari_artseg.labels_file import read_labels_csv
from napari_artseg.metrics import evaluate_dataset
from napari_artseg.predictor import ArtSegModel
from napari_artseg.synth import ARTIFACT_KINDS, write_dataset
from napari_artseg.training import train_pipeline


def make_set(folder: Path, n: int, size: int, seed: int) -> Path:
    """Generate a synthetic set once (reused when it is already complete)."""
    if not (folder / "dataset.json").is_file():
        for _ in write_dataset(folder, n=n, size=size, artifact_fraction=0.5, seed=seed):
            pass
    return folder


def load_test(folder: Path) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, bool]]:
    """(name, image, true mask, kind map, labelled artifact) for every test image."""
    labels = read_labels_csv(folder / "labels.csv").labels
    return [(name, read_image(folder / "images" / name).data, read_mask(folder / "masks" / name),
             read_image(folder / "kinds" / name).data.astype(np.uint8), label == "artifact")
            for name, label in labels.items()]


def kind_iou(preds: list[np.ndarray], test) -> dict[str, float]:
    """Pixel IoU per artifact kind, pooled over the test images that contain the kind.

    TP and FN count the pixels of that kind; FP counts predicted pixels outside any
    artifact in those images.
    """
    out = {}
    for k, name in enumerate(ARTIFACT_KINDS, start=1):
        tp = fp = fn = 0
        for pred, (_, _, truth, kinds, _) in zip(preds, test, strict=True):
            of_kind = kinds == k
            if not of_kind.any():
                continue
            tp += int(np.sum(pred & of_kind))
            fn += int(np.sum(~pred & of_kind))
            fp += int(np.sum(pred & ~truth))
        out[name] = tp / (tp + fp + fn) if tp + fp + fn else float("nan")
    return out


def score(preds: list[np.ndarray], calls: list[bool], test) -> dict[str, float]:
    """Headline metrics plus per-kind IoU."""
    pairs = [(name, pred, truth) for pred, (name, _, truth, _, _) in zip(preds, test, strict=True)]
    result = evaluate_dataset(
        pairs, true_labels={t[0]: t[4] for t in test},
        pred_labels={t[0]: c for t, c in zip(test, calls, strict=True)})
    summary = result.summary()
    row = {key: summary[key] for key in ("cls_f1", "pixel_precision", "pixel_recall", "pixel_f1",
                                         "pixel_iou", "object_f1")}
    row.update({f"iou_{k}": v for k, v in kind_iou(preds, test).items()})
    return row


def classifier_only(source: Path, work: Path) -> Path:
    """A copy of a model folder holding only its classifier (a ``partial`` model).

    As the ``init`` of a training run it gives that run this classifier and a fresh U-Net.
    """
    target = work / f"classifier-of-{source.name}"
    if not (target / "config.json").is_file():
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        shutil.copy2(source / "classifier.safetensors", staging)
        document = json.loads((source / "config.json").read_text(encoding="utf-8"))
        document.update(components=["classifier"], status="partial")
        (staging / "config.json").write_text(json.dumps(document, indent=1), encoding="utf-8")
        staging.rename(target)
    return target


def train_model(
    train: Path, out: Path, seed: int, masks: bool, overrides: dict, init: Path | None = None
) -> tuple[Path, float]:
    """Train one model (keeping the classifier of ``init`` when given); returns its folder
    and the training time in seconds."""
    labels = read_labels_csv(train / "labels.csv").labels
    if init is not None:
        overrides = {**overrides, "classifier_epochs": 0}
    config = preset("fast", seed=seed, **overrides)
    start = time.perf_counter()
    generator = train_pipeline(train / "images", labels, out, config,
                               masks_dir=train / "masks" if masks else None, init=init)
    for event in generator:
        if event.kind == "epoch":
            print(f"    {event.stage} {event.message}", flush=True)
    return out, time.perf_counter() - start


def evaluate_model(folder: Path, test) -> tuple[dict[str, float], float]:
    """Predict the test set; returns the metrics and seconds per image."""
    model = ArtSegModel.load(folder, device="cpu")
    start = time.perf_counter()
    results = [model.predict(image) for _, image, _, _, _ in test]
    seconds = (time.perf_counter() - start) / len(test)
    preds = [r.mask for r in results]
    row = score(preds, [bool(p.any()) for p in preds], test)
    return row, seconds


def baseline(train: Path, test, n_tune: int) -> dict[str, float]:
    """The conventional detector tuned on training masks, scored on the test set."""
    labels = list(read_labels_csv(train / "labels.csv").labels)[:n_tune]
    detector, _ = tune_detector((read_image(train / "images" / n).data for n in labels),
                                (read_mask(train / "masks" / n) for n in labels))
    preds = [detector.predict(image) for _, image, _, _, _ in test]
    row = score(preds, [bool(p.any()) for p in preds], test)
    row["settings"] = detector.to_dict()
    return row


def aggregate(rows: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """Mean and standard deviation of each numeric field over seeds."""
    keys = [k for k, v in rows[0].items() if isinstance(v, int | float)]
    return {k: (float(np.nanmean([r[k] for r in rows])), float(np.nanstd([r[k] for r in rows])))
            for k in keys}


def markdown(results: dict[str, dict[str, tuple[float, float]]]) -> str:
    """The results as a markdown table (mean ± sd over seeds)."""
    columns = ["cls_f1", "pixel_precision", "pixel_recall", "pixel_f1", "pixel_iou", "object_f1",
               *[f"iou_{k}" for k in ARTIFACT_KINDS], "train_s", "predict_s_per_image"]
    lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for method, agg in results.items():
        cells = []
        for c in columns:
            if c not in agg:
                cells.append("")
                continue
            mean, sd = agg[c]
            cells.append(f"{mean:.3f} ± {sd:.3f}" if c not in ("train_s",) else f"{mean:.0f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one seed")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2],
                        help="seeds of the weak models (none: only the upper bound)")
    parser.add_argument("--supervised-seeds", type=int, nargs="*",
                        help="seeds for the upper bound (default: the same as --seeds)")
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--work", default="benchmarks/results/accuracy-work")
    parser.add_argument("--json", default="benchmarks/results/accuracy.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for the learned models")
    parser.add_argument("--classifier-from", metavar="PATTERN",
                        help="keep the classifier of this model folder ({seed}: the seed)")
    args = parser.parse_args()
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    if args.quick:
        args.seeds, args.n_train, args.n_test, args.size = [0], 40, 20, 256
        overrides = {"classifier_epochs": 8, "unet_epochs": 4, **overrides}
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(args.work)
    train = make_set(work / f"train-n{args.n_train}-s{args.size}-seed1", args.n_train, args.size, 1)
    test_dir = make_set(work / f"test-n{args.n_test}-s{args.size}-seed2", args.n_test, args.size, 2)
    test = load_test(test_dir)
    runs: dict[str, list[dict[str, float]]] = {"ScoreCAM-U-Net (image labels)": [],
                                               "U-Net (true masks, upper bound)": []}
    tag = "-".join(f"{k}={v}" for k, v in sorted(overrides.items())) or "default"
    if args.classifier_from:
        tag += "-kept-classifier"
    supervised = args.seeds if args.supervised_seeds is None else args.supervised_seeds
    for seed in sorted(set(args.seeds) | set(supervised)):
        for method, masks in (("ScoreCAM-U-Net (image labels)", False),
                              ("U-Net (true masks, upper bound)", True)):
            if seed not in (supervised if masks else args.seeds):
                continue
            folder = work / f"model-{'sup' if masks else 'weak'}-seed{seed}-{tag}"
            print(f"{method}, seed {seed}", flush=True)
            train_s = 0.0
            if not (folder / "config.json").is_file():
                init = (classifier_only(Path(args.classifier_from.format(seed=seed)), work)
                        if args.classifier_from else None)
                folder, train_s = train_model(train, folder, seed, masks, overrides, init)
            row, per_image = evaluate_model(folder, test)
            row.update(train_s=train_s, predict_s_per_image=per_image)
            print(f"  {json.dumps({k: round(v, 3) for k, v in row.items()})}", flush=True)
            runs[method].append(row)
    base = baseline(train, test, n_tune=min(60, args.n_train))
    settings = base.pop("settings")
    results = {f"{m}, {len(rows)} seed(s)": aggregate(rows) for m, rows in runs.items() if rows}
    results["Conventional (background-corrected threshold, tuned on train masks)"] = {
        k: (v, 0.0) for k, v in base.items()}
    table = markdown(results)
    print(table)
    report = {"args": vars(args), "overrides": overrides, "runs": runs, "baseline": base,
              "baseline_settings": settings, "table": table}
    atomic_write_text(args.json, json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
