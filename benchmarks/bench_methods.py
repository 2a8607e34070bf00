"""Every method side by side on the same synthetic sets (issue 8's comparison).

All methods are trained on one synthetic training set and scored on one test set
with the same metrics, as in the ArtSeg paper's Supplementary Table 1:
classification F1 (the gate's call against the image label), pixel precision,
recall, F1 and IoU (micro, over the test set), object F1 (IoU >= 0.5 matching),
training time and prediction time per image. The conventional detector (tuned
on the training masks, so it is an upper bound for an intensity threshold) is
the plain baseline. Pixel precision-recall curves of every method's probability
map (ungated) are drawn to a PNG.

Usage::

    python benchmarks/bench_methods.py            # 120 train / 60 test at 256 px
    python benchmarks/bench_methods.py --quick    # 40 / 20 images, few epochs (~10-20 min)

Writes ``benchmarks/results/methods[_quick].json`` and
``benchmarks/figures/methods_pr[_quick].png`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import baseline, load_test, make_set, score
from napari_artseg.atomic import atomic_path, atomic_write_text
from napari_artseg.config import METHODS, preset
from napari_artseg.methods import train_method
from napari_artseg.metrics import precision_recall_curve
from napari_artseg.predictor import ArtSegModel

HERE = Path(__file__).resolve().parent
COLUMNS = ["cls_f1", "pixel_precision", "pixel_recall", "pixel_f1", "pixel_iou", "object_f1",
           "pixel_ap", "train_s", "predict_s_per_image"]
PR_THRESHOLDS = np.concatenate([np.geomspace(1e-4, 0.05, 20), np.linspace(0.06, 0.99, 60)])


def settings(quick: bool, seed: int, epochs: int | None = None) -> dict:
    """Config changes for every method (fewer epochs for --quick).

    ``epochs`` overrides the classifier's and the U-Net's epochs (the anomaly
    detectors keep theirs: their epochs are fixed numbers of steps).
    """
    anomaly_epochs = 8 if quick else 30
    epochs = epochs or anomaly_epochs
    anomaly = {name: {"epochs": anomaly_epochs} for name in ("ae_ssim", "padim", "patchsvdd")}
    if quick:  # PaDiM's encoder and PatchSVDD: 8 x 25 steps (AE-SSIM keeps 8 x 100)
        for name in ("padim", "patchsvdd"):
            anomaly[name]["steps_per_epoch"] = 25
    return {"seed": seed, "classifier_epochs": epochs, "unet_epochs": epochs,
            "anomaly_params": anomaly, "device": "cpu"}


def train_all(train: Path, models: Path, methods: list[str], quick: bool,
              seed: int, epochs: int | None = None) -> dict[str, tuple[Path, float]]:
    """Train each method once; the ensemble reuses the trained scorecam_unet and ae_ssim."""
    done: dict[str, tuple[Path, float]] = {}
    for method in methods:
        out = models / method
        changes = settings(quick, seed, epochs)
        if method == "ensemble":
            members = [m for m in ("scorecam_unet", "ae_ssim") if m in done]
            if len(members) < 2:
                print("  ensemble skipped: needs scorecam_unet and ae_ssim first", flush=True)
                continue
            changes["ensemble_members"] = [str(done[m][0]) for m in members]
        if not (out / "config.json").is_file():
            print(f"training {method} ...", flush=True)
            start = time.perf_counter()
            train_method(method, train / "images", train / "labels.csv", out, preset("fast"),
                         masks_dir=train / "masks" if method == "supervised_unet" else None,
                         **changes)
            seconds = time.perf_counter() - start
            atomic_write_text(out / "bench_train_seconds.txt", f"{seconds:.1f}\n")
        seconds = float((out / "bench_train_seconds.txt").read_text(encoding="utf-8"))
        if method == "ensemble":  # its members' training is part of its cost
            seconds += sum(done[m][1] for m in ("scorecam_unet", "ae_ssim"))
        done[method] = (out, seconds)
        print(f"  {method}: {seconds:.0f} s", flush=True)
    return done


def evaluate(folder: Path, test) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Metrics of one model on the test set, and its pixel precision-recall curve."""
    model = ArtSegModel.load(folder, device="cpu")
    start = time.perf_counter()
    results = [model.predict(image, keep_ungated=True) for _, image, _, _, _ in test]
    seconds = (time.perf_counter() - start) / len(test)
    row = score([r.mask for r in results], [r.gate_passed for r in results], test)
    maps = [r.probability for r in results]
    curve = precision_recall_curve(
        ((m, t[2]) for m, t in zip(maps, test, strict=True)), PR_THRESHOLDS)
    row["pixel_ap"] = average_precision(curve["precision"], curve["recall"])
    row["predict_s_per_image"] = seconds
    return row, {"precision": curve["precision"].tolist(), "recall": curve["recall"].tolist()}


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the precision-recall points (recall ascending, step interpolation).

    Thresholds where nothing is predicted (precision undefined, NaN) are left out.
    """
    keep = np.isfinite(precision) & np.isfinite(recall)
    precision, recall = precision[keep], recall[keep]
    if precision.size == 0:
        return float("nan")
    order = np.argsort(recall)
    r = np.concatenate([[0.0], recall[order]])
    p = np.concatenate([[precision[order][0]], precision[order]])
    return float(np.sum(np.diff(r) * p[1:]))


def plot(curves: dict[str, dict[str, list[float]]], path: Path, title: str) -> None:
    """Precision-recall curves of every method in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5), dpi=120)
    for name, curve in curves.items():
        ax.plot(curve["recall"], curve["precision"], label=name, lw=1.5)
    ax.set_xlabel("pixel recall")
    ax.set_ylabel("pixel precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."))
    plt.close(fig)


def markdown(rows: dict[str, dict[str, float]]) -> str:
    """The table (one row per method)."""
    lines = ["| method | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, row in rows.items():
        cells = []
        for column in COLUMNS:
            value = row.get(column)
            if value is None or (isinstance(value, float) and np.isnan(value)):
                cells.append("")
            elif column == "train_s":
                cells.append(f"{value:.0f}")
            else:
                cells.append(f"{value:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sets and few epochs")
    parser.add_argument("--work", type=Path, default=Path("/tmp/artseg-bench-methods"),
                        help="folder for the data and models (reused when present)")
    parser.add_argument("--methods", nargs="*", default=list(METHODS),
                        help="methods to run (default all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None,
                        help="classifier and U-Net epochs (default 8 with --quick, else 30)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    n_train, n_test, size = (40, 20, 256) if args.quick else (120, 60, 256)
    tag = ("_quick" if args.quick else "") + (f"_e{args.epochs}" if args.epochs else "")
    epochs_tag = f"-e{args.epochs}" if args.epochs else ""
    work = args.work / f"n{n_train}-s{size}-seed{args.seed}{epochs_tag}"
    train = make_set(work / "train", n_train, size, seed=1)
    test_folder = make_set(work / "test", n_test, size, seed=2)
    test = load_test(test_folder)

    trained = train_all(train, work / "models", args.methods, args.quick, args.seed, args.epochs)
    rows: dict[str, dict[str, float]] = {}
    curves: dict[str, dict[str, list[float]]] = {}
    for method, (folder, seconds) in trained.items():
        print(f"evaluating {method} ...", flush=True)
        row, curve = evaluate(folder, test)
        row["train_s"] = seconds
        rows[method], curves[method] = row, curve
    start = time.perf_counter()
    conventional = baseline(train, test, n_tune=min(40, n_train))
    conventional["train_s"] = time.perf_counter() - start
    rows["conventional (tuned threshold)"] = conventional

    table = markdown(rows)
    print(table)
    command = ("python benchmarks/bench_methods.py" + (" --quick" if args.quick else "")
               + (f" --epochs {args.epochs}" if args.epochs else ""))
    figure = HERE / "figures" / f"methods_pr{tag}.png"
    plot(curves, figure, f"{n_train} train / {n_test} test synthetic images, {size} px")
    result = {"command": command, "n_train": n_train, "n_test": n_test, "size": size,
              "seed": args.seed, "epochs": args.epochs,
              "torch_threads": torch.get_num_threads(), "rows": rows,
              "curves": curves, "table": table}
    out = HERE / "results" / f"methods{tag}.json"
    atomic_write_text(out, json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {out} and {figure}")


if __name__ == "__main__":
    main()
