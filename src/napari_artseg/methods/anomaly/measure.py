"""Measure the anomaly detectors on a synthetic set: pixel AUROC, time and scoring memory.

Run ``python -m napari_artseg.methods.anomaly.measure --help``. Training images are
clean synthetic fields; test images are half with artifacts, half clean, all
z-scored at the processing scale. The pooled pixel AUROC ranks every test pixel by
its raw score against the true masks (no threshold involved). A row ``|z|`` scores
each pixel by its absolute z-score, a training-free intensity baseline. Peak scoring
memory is the rise of the peak resident memory (Linux VmHWM, reset just before) of a
fresh process while it scores one ``--large`` px square image.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ...normalize import mask_to_scale, prepare_image
from ...process_memory import reset_peak_rss, status_kib
from ...synth import generate_sample, image_rng
from . import DETECTORS
from .patches import auroc


def synthetic_split(n_train: int, n_test: int, size: int, scale: float, seed: int):
    """Clean training images and test ``(image, mask)`` pairs (even indices with artifacts).

    Returns
    -------
    (list of torch.Tensor, list of (torch.Tensor, numpy.ndarray))
        z-scored (1, h, w) images at ``scale`` and boolean (h, w) masks.
    """
    clean = [prepare_image(generate_sample(image_rng(seed, i), size, False).image, scale)
             for i in range(n_train)]
    test = []
    for i in range(n_test):
        sample = generate_sample(image_rng(seed + 1, i), size, artifact=i % 2 == 0)
        image = prepare_image(sample.image, scale)
        mask = mask_to_scale(sample.mask.astype(bool), tuple(image.shape[1:]))[0].numpy() > 0.5
        test.append((image, mask))
    return clean, test


def _aurocs(maps: list[np.ndarray], test) -> tuple[float, float]:
    """Pooled pixel AUROC and the median AUROC of the artifact images."""
    pooled = auroc(np.concatenate([m.ravel() for m in maps]),
                   np.concatenate([mask.ravel() for _, mask in test]))
    per_image = [auroc(m, mask) for m, (_, mask) in zip(maps, test, strict=True)
                 if mask.any() and not mask.all()]
    return pooled, float(np.median(per_image)) if per_image else float("nan")


def measure(name: str, params: dict, clean, test, seed: int) -> tuple[dict, object]:
    """Fit one detector and score the test set; returns (row, fitted detector)."""
    detector = DETECTORS[name](params, seed=seed)
    start = time.perf_counter()
    for _ in detector.fit(clean):
        pass
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    maps = [detector.score_map(image).numpy() for image, _ in test]
    score_s = (time.perf_counter() - start) / len(test)
    pooled, median = _aurocs(maps, test)
    return {"method": name, "auroc": pooled, "median_image_auroc": median, "fit_s": fit_s,
            "score_s": score_s}, detector


def score_large_child(name: str, params_path: str, state_path: str, size: int) -> None:
    """Child-process entry: load a detector, score a ``size`` px image, print the peak-RSS
    rise in MiB."""
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    detector = DETECTORS[name](json.loads(Path(params_path).read_text()))
    detector.load_state_tensors(load_file(state_path))
    image = torch.randn(1, size, size, generator=torch.Generator().manual_seed(0))
    reset_peak_rss()
    before = status_kib("VmRSS") / 1024.0
    scores = detector.score_map(image)
    peak = status_kib("VmHWM") / 1024.0 - before
    print(json.dumps({"peak_mib": peak, "shape": list(scores.shape)}))


def peak_scoring_memory(detector, size: int) -> float:
    """Peak resident-memory rise (MiB) of a fresh process scoring a ``size`` px image."""
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as folder:
        params_path, state_path = Path(folder) / "params.json", Path(folder) / "state.st"
        params_path.write_text(json.dumps(detector.params))
        save_file(detector.state_tensors(), str(state_path))
        code = ("import sys; from napari_artseg.methods.anomaly.measure import "
                "score_large_child as f; f(sys.argv[1], sys.argv[2], sys.argv[3], "
                "int(sys.argv[4]))")
        result = subprocess.run(
            [sys.executable, "-c", code, detector.NAME, str(params_path), str(state_path),
             str(size)], capture_output=True, text=True, check=True,
        )
    return float(json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"])


def _overrides(pairs: list[str]) -> dict[str, dict]:
    """``["padim.d=32", ...]`` -> ``{"padim": {"d": 32}}`` (values parsed as JSON)."""
    out: dict[str, dict] = {name: {} for name in DETECTORS}
    for pair in pairs:
        key, _, value = pair.partition("=")
        name, _, param = key.partition(".")
        if name not in out or not param or not value:
            raise SystemExit(f"--set expects DETECTOR.PARAM=VALUE, got {pair!r}")
        try:
            out[name][param] = json.loads(value)
        except json.JSONDecodeError:
            out[name][param] = value
    return out


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point; prints a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=40, help="clean training images")
    parser.add_argument("--test", type=int, default=20, help="test images (half with artifacts)")
    parser.add_argument("--size", type=int, default=512, help="synthetic image side (px)")
    parser.add_argument("--scale", type=float, default=0.5, help="processing scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave)")
    parser.add_argument("--large", type=int, default=2048,
                        help="side of the image for the memory measurement (0: skip)")
    parser.add_argument("--detectors", nargs="+", default=sorted(DETECTORS),
                        choices=sorted(DETECTORS))
    parser.add_argument("--set", nargs="*", default=[], metavar="DETECTOR.PARAM=VALUE")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = _overrides(args.set)
    clean, test = synthetic_split(args.train, args.test, args.size, args.scale, args.seed)
    print(f"{len(clean)} clean training images, {len(test)} test images "
          f"({sum(m.any() for _, m in test)} with artifacts, "
          f"{np.mean([m.mean() for _, m in test]):.3f} artifact pixel fraction), "
          f"{tuple(clean[0].shape[1:])} px at scale {args.scale}")
    print("| method | pixel AUROC | median image AUROC | fit (s) | score (s/image) | "
          f"peak scoring memory at {args.large} px (MiB) |")
    print("|---|---|---|---|---|---|")
    pooled, median = _aurocs([image.abs()[0].numpy() for image, _ in test], test)
    print(f"| abs(z) baseline | {pooled:.3f} | {median:.3f} | 0 | 0 | - |")
    for name in args.detectors:
        row, detector = measure(name, overrides[name], clean, test, args.seed)
        memory = f"{peak_scoring_memory(detector, args.large):.0f}" if args.large else "-"
        print(f"| {name} | {row['auroc']:.3f} | {row['median_image_auroc']:.3f} | "
              f"{row['fit_s']:.0f} | {row['score_s']:.2f} | {memory} |", flush=True)


if __name__ == "__main__":
    main()
