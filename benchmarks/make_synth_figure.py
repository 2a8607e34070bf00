"""Render a grid of synthetic examples with their artifact masks.

Usage: ``python benchmarks/make_synth_figure.py [OUT.png] [--seed S]``; writes
``benchmarks/figures/synth_examples.png`` by default.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.colors import ListedColormap

from napari_artseg.atomic import atomic_path
from napari_artseg.synth import ARTIFACT_KINDS, generate_sample

KIND_COLOURS = ["#e41a1c", "#377eb8", "#ff7f00", "#984ea3", "#4daf4a"]


def make_figure(out: Path, seed: int = 0, size: int = 512) -> Path:
    """Draw one clean image, one example per kind and two random artifact images."""
    rng = np.random.default_rng(seed)
    rows = [("clean", generate_sample(rng, size, artifact=False))]
    for kind in ARTIFACT_KINDS:
        rows.append((kind, generate_sample(rng, size, artifact_kinds=(kind,))))
    for _ in range(2):
        sample = generate_sample(rng, size)
        rows.append(("random: " + ", ".join(sample.artifacts), sample))
    cmap = ListedColormap(["none", *KIND_COLOURS])
    fig, axes = plt.subplots(len(rows) // 2, 4, figsize=(16, 4.1 * len(rows) // 2))
    for index, (title, sample) in enumerate(rows):
        ax_img, ax_mask = axes.flat[2 * index], axes.flat[2 * index + 1]
        lo, hi = np.percentile(sample.image, [0.5, 99.5])
        ax_img.imshow(sample.image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax_img.set_title(title, fontsize=10)
        ax_mask.imshow(sample.image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        kinds = np.ma.masked_equal(sample.kinds, 0)
        ax_mask.imshow(
            kinds, cmap=cmap, vmin=0, vmax=len(ARTIFACT_KINDS), alpha=0.55, interpolation="nearest"
        )
        ax_mask.set_title(f"mask ({100 * sample.mask.mean():.1f} % of pixels)", fontsize=10)
    for ax in axes.flat:
        ax.set_axis_off()
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in KIND_COLOURS]
    fig.legend(handles, ARTIFACT_KINDS, loc="lower center", ncol=5, fontsize=11)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=60, format=out.suffix.lstrip("."))
    plt.close(fig)
    return out


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parent
    parser.add_argument("out", nargs="?", type=Path, default=here / "figures/synth_examples.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    print(make_figure(args.out, args.seed, args.size))


if __name__ == "__main__":
    main()
