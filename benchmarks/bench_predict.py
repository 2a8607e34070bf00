"""Prediction throughput end to end (files in, files out) and the network's FLOP rate.

For the ``fast`` and ``paper`` presets (untrained networks: throughput does not
depend on the weights) and 1024 x 1024 and 4096 x 4096 uint16 TIFFs, every image
goes through the CLI's own per-image step
(:func:`napari_artseg.cli.predict_cmd.predict_one`: read, normalise, classifier
gate, tiled U-Net, stitch, threshold, minimum size, write two TIFFs) with the
gate off so the U-Net always runs. Reported per row: images/s and the network's
useful FLOP rate as a fraction of this machine's dense fp32 matmul rate
(``torch.matmul`` of 4096 x 4096 squares, measured in the same run) and, on CUDA,
of its dense bf16 matmul rate (8192 x 8192 squares), since prediction there runs
under bf16 autocast.

*Useful* FLOPs are the convolutions' multiply-adds (x2) for the image's pixels
at the processing scale once (U-Net per-pixel cost x pixels, plus the
classifier's view); *executed* FLOPs also count tile overlap and padding.

Two variants: ``plain`` (the loaded networks as saved,
``ArtSegModel.use_inference_copy = False``) and ``inference copy`` (what the
predictor runs by default: :func:`napari_artseg.device.inference_copy` of the
U-Net and the classifier, batch norms folded, ``channels_last``). A tile sweep
shows the per-tile time of batch sizes and of both variants.

Usage::

    python benchmarks/bench_predict.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from bench_common import machine, run_main
from napari_artseg.atomic import atomic_write_text
from napari_artseg.cli.predict_cmd import InputImage, predict_one
from napari_artseg.config import preset
from napari_artseg.device import inference_copy, resolve_device
from napari_artseg.model_files import save_model
from napari_artseg.predictor import ArtSegModel
from napari_artseg.training.classifier import build_classifier
from napari_artseg.training.segmenter import build_unet


def matmul_rate(device: torch.device, n: int = 4096, repeats: int = 3,
                dtype: torch.dtype = torch.float32, products: int = 1) -> float:
    """Best dense matmul rate (FLOP/s) of ``n`` x ``n`` squares of ``dtype``.

    Each of ``repeats`` timings covers ``products`` products (several on a GPU, where
    one takes well under a millisecond); the best timing counts.
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(products):
            torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / products)
    return 2 * n**3 / best


def bf16_ceiling(device: torch.device) -> float | None:
    """On CUDA the dense bf16 matmul rate (8192 squares, 10 products a timing); else None.

    Prediction on CUDA runs under bf16 autocast, so its FLOP rate is also given as a
    share of this rate (the issue's "fraction of the GPU's bf16 peak").
    """
    if device.type != "cuda":
        return None
    return matmul_rate(device, n=8192, repeats=5, dtype=torch.bfloat16, products=10)


class ConvFlops:
    """Counts the FLOPs (2 x multiply-adds) of every Conv2d call of some networks."""

    def __init__(self) -> None:
        self.total = 0
        self.handles: list = []

    def attach(self, *networks: torch.nn.Module) -> ConvFlops:
        for network in networks:
            for module in network.modules():
                if isinstance(module, torch.nn.Conv2d):
                    self.handles.append(module.register_forward_hook(self._count))
        return self

    def _count(self, module, inputs, output) -> None:
        per_output = module.in_channels // module.groups * module.kernel_size[0] \
            * module.kernel_size[1]
        self.total += 2 * per_output * output.numel()

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def network_flops(network: torch.nn.Module, side: int) -> int:
    """Conv FLOPs of one forward pass on a ``side`` x ``side`` input.

    Counted on a quarter-side input and scaled by 16: every convolution's output
    has exactly 1/16 of the pixels there (sides divisible by the networks' strides).
    """
    counter = ConvFlops().attach(network)
    device = next(network.parameters()).device
    with torch.inference_mode():
        network(torch.zeros((1, 1, side // 4, side // 4), device=device))
    counter.detach()
    return counter.total * 16


def write_inputs(folder: Path, size: int, n: int) -> list[InputImage]:
    """``n`` uint16 TIFFs of ``size`` px: noisy background with a few dark objects."""
    rng = np.random.default_rng(size)
    items = []
    for i in range(n):
        image = (1000 + rng.normal(0, 20, (size, size))).astype(np.uint16)
        for _ in range(3):
            y, x = rng.integers(0, size - size // 8, 2)
            image[y:y + size // 10, x:x + size // 12] = 400
        path = folder / f"in_{size}_{i}.tif"
        tifffile.imwrite(path, image)
        items.append(InputImage(path, path.stem))
    return items


def make_model(folder: Path, name: str) -> Path:
    """A model folder of untrained networks of a preset."""
    config = preset(name)
    torch.manual_seed(0)
    networks = {"classifier": build_classifier(config).eval(), "unet": build_unet(config).eval()}
    thresholds = {"gate": 0.5, "mask": 0.5, "min_size_px": 0}
    return save_model(folder / name, config, networks, {"thresholds": thresholds})


def run_row(model_dir: Path, variant: str, items: list[InputImage], out: Path,
            device: str) -> dict:
    """Predict ``items`` with one model variant; time, FLOPs and useful FLOPs."""
    model = ArtSegModel.load(model_dir, device=device)
    model.use_inference_copy = variant == "inference copy"
    config = model.config
    tile = config.input_size
    per_pixel = network_flops(model.unet, tile) / tile**2
    view = network_flops(model.classifier, tile)
    args = argparse.Namespace(threshold=None, min_size=None, no_gate=True)
    networks = (model.inference_unet, model.inference_classifier)
    counter = ConvFlops().attach(*(n for n in networks if n is not None))
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = [predict_one(model, item, out, args) for item in items]
    seconds = time.perf_counter() - start
    counter.detach()
    useful = sum(per_pixel * round(r["height"] * config.scale) * round(r["width"] * config.scale)
                 + view for r in rows)
    shutil.rmtree(out)
    return {"seconds": seconds, "images": len(items), "executed_flops": counter.total,
            "useful_flops": useful}


def tile_sweep(device: torch.device, rounds: int, quick: bool) -> list[dict]:
    """Seconds per tile of each preset's U-Net: batch sizes x (plain, inference copy).

    Each batch size is warmed up once per variant, then timed ``rounds`` times
    (interleaved); ``quick`` times the slow paper tiles once without a warm-up.
    """
    rows = []
    for name, batches in (("fast", (1, 4, 16)), ("paper", (1, 2))):
        slow = quick and name == "paper"
        config = preset(name)
        torch.manual_seed(0)
        unet = build_unet(config).eval().to(device)
        variants = {"plain": unet, "inference copy": inference_copy(unet)}
        tile = config.input_size
        flops = network_flops(unet, tile)
        best: dict[tuple[str, int], float] = {}
        with torch.inference_mode():
            for batch in batches:
                x = torch.randn(batch, 1, tile, tile, device=device)
                for variant in variants.values() if not slow else ():
                    variant(x)  # warm-up
                for _ in range(1 if slow else rounds):
                    for label, variant in variants.items():
                        start = time.perf_counter()
                        variant(x)
                        per_tile = (time.perf_counter() - start) / batch
                        best[(label, batch)] = min(best.get((label, batch), 1e9), per_tile)
        for (label, batch), seconds in best.items():
            rows.append({"preset": name, "tile": tile, "variant": label, "batch": batch,
                         "s_per_tile": seconds, "gflop_per_s": flops / seconds / 1e9})
            print(f"  tile {name} {label} batch {batch}: {seconds:.3f} s/tile, "
                  f"{flops / seconds / 1e9:.0f} GFLOP/s", flush=True)
    return rows


def main() -> int:
    """Run the benchmark, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and rounds")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", help="default: benchmarks/results/perf_predict[_quick].json")
    args = parser.parse_args()
    load_at_start = os.getloadavg()
    args.json = args.json or f"benchmarks/results/perf_predict{'_quick' if args.quick else ''}.json"
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)  # a clear message when CUDA is asked for but absent
    counts = {1024: 2, 4096: 1} if args.quick else {1024: 4, 4096: 2}
    rounds = 2 if args.quick else 3
    ceiling = matmul_rate(device, products=10 if device.type == "cuda" else 1)
    print(f"dense fp32 matmul: {ceiling / 1e9:.0f} GFLOP/s", flush=True)
    bf16 = bf16_ceiling(device)
    if bf16 is not None:
        print(f"dense bf16 matmul: {bf16 / 1e12:.0f} TFLOP/s", flush=True)
    print("tile sweep:", flush=True)
    tiles = tile_sweep(device, rounds, args.quick)
    work = Path(tempfile.mkdtemp(prefix="artseg-bench-predict-"))
    rows = []
    try:
        for name in ("fast", "paper"):
            model_dir = make_model(work, name)
            for size, n in counts.items():
                items = write_inputs(work, size, n)
                variants = ["plain", "inference copy"]
                if args.quick and name == "paper" and size == 4096:
                    variants = ["inference copy"]  # plain: see the tile sweep
                for variant in variants:
                    result = run_row(model_dir, variant, items, work / "out", device.type)
                    row = {"preset": name, "size": size, "variant": variant, **result,
                           "images_per_s": result["images"] / result["seconds"],
                           "useful_fraction_of_matmul":
                               result["useful_flops"] / result["seconds"] / ceiling,
                           "executed_fraction_of_matmul":
                               result["executed_flops"] / result["seconds"] / ceiling}
                    rows.append(row)
                    print(f"  {name} {size} px {variant}: {row['images_per_s']:.3f} images/s, "
                          f"useful {row['useful_fraction_of_matmul']:.0%} of matmul", flush=True)
                for item in items:
                    item.path.unlink()
        # the ceilings again, after the run
        ceiling = max(ceiling, matmul_rate(device, products=10 if device.type == "cuda" else 1))
        if bf16 is not None:
            bf16 = max(bf16, bf16_ceiling(device))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for row in rows:  # against the higher of the two ceiling measurements
        row["useful_fraction_of_matmul"] = row["useful_flops"] / row["seconds"] / ceiling
        row["executed_fraction_of_matmul"] = row["executed_flops"] / row["seconds"] / ceiling
        if bf16 is not None:
            row["useful_fraction_of_bf16_matmul"] = row["useful_flops"] / row["seconds"] / bf16
    report = {"command": " ".join(["python", *sys.argv]), "machine": machine(),
              "load_average_at_start": load_at_start,
              "matmul_gflop_per_s": ceiling / 1e9,
              "bf16_matmul_gflop_per_s": bf16 / 1e9 if bf16 is not None else None,
              "tile_sweep": tiles, "rows": rows}
    print("\n| preset | input | variant | images/s | useful GFLOP/s | useful / matmul | "
          "executed / matmul |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['preset']} | {row['size']}^2 | {row['variant']} | "
              f"{row['images_per_s']:.3f} | {row['useful_flops'] / row['seconds'] / 1e9:.0f} | "
              f"{row['useful_fraction_of_matmul']:.0%} | "
              f"{row['executed_fraction_of_matmul']:.0%} |")
    if bf16 is not None:
        print("\nuseful / dense bf16 matmul (CUDA): " + ", ".join(
            f"{row['preset']} {row['size']}^2 {row['variant']} "
            f"{row['useful_fraction_of_bf16_matmul']:.1%}" for row in rows))
    atomic_write_text(Path(args.json), json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    run_main(main)
