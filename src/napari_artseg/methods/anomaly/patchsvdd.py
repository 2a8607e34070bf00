"""Patch SVDD (Yi & Yoon 2020): a patch encoder trained on clean patches with the SVDD
and relative-position objectives; a patch's anomaly score is the distance from its
embedding to the nearest clean training patch embedding (a memory bank), and a pixel's
score the mean over the patches that contain it, summed over patch sizes.

The encoder is fully convolutional with output stride 4 (see
:class:`~.networks.PatchEncoder`), so one pass over an image embeds every patch whose
corner lies on the 4 px grid.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ...training.events import ProgressEvent
from .ae_ssim import seeded_module
from .base import (
    AnomalyDetector,
    DetectorParamsError,
    ParamSpec,
    check_image,
    load_module,
    module_shapes,
    module_tensors,
)
from .networks import PatchEncoder, PositionClassifier
from .pair_sampling import position_offsets, sample_pairs, svdd_offsets
from .patches import CropSampler, pad_to_at_least, spread_patch_scores

STRIDE = PatchEncoder.stride
#: Output rows of the embedding grid computed per band (bounds memory on large images).
BAND_ROWS = 32


def nearest_distance(queries: torch.Tensor, bank: torch.Tensor, chunk: int) -> torch.Tensor:
    """Euclidean distance from each query (Q, D) to its nearest bank row (M, D), in chunks."""
    out = [torch.cdist(part, bank).amin(dim=1) for part in queries.split(chunk)]
    return torch.cat(out) if out else queries.new_zeros(0)


class PatchSVDD(AnomalyDetector):
    """Patch SVDD with a hierarchical 32/64 px encoder and a nearest-neighbour memory bank.

    Parameters
    ----------
    params : dict, optional
        Overrides of :meth:`default_params` (see docs/anomaly-detectors.md).
    device : torch.device or str
        Where training and scoring run.
    seed : int
        Seeds initialisation, patch sampling and the memory-bank subsampling.
    """

    NAME = "patchsvdd"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "patch_sizes": [32, 64],
        "width": 32,
        "dim": 64,
        "epochs": 10,
        "steps_per_epoch": 100,
        "batch_size": 32,
        "learning_rate": 1e-3,
        "svdd_weight": 1.0,
        "memory_size": 4096,
        "query_chunk": 4096,
    }
    SPECS: ClassVar[dict[str, ParamSpec]] = {
        "patch_sizes": ("ints", 32),
        "width": ("int", 1),
        "dim": ("int", 1),
        "epochs": ("int", 1),
        "steps_per_epoch": ("int", 1),
        "batch_size": ("int", 1),
        "learning_rate": ("float", 1e-12),
        "svdd_weight": ("float", 0.0),
        "memory_size": ("int", 1),
        "query_chunk": ("int", 1),
    }

    def __init__(
        self, params: dict | None = None, device: torch.device | str = "cpu", seed: int = 0
    ) -> None:
        super().__init__(params, device, seed)
        self._build()

    @classmethod
    def _check_combination(cls, params: dict) -> None:
        sizes = params["patch_sizes"]
        if any(s not in (32, 64) for s in sizes) or len(set(sizes)) != len(sizes):
            raise DetectorParamsError(
                f"parameter 'patch_sizes' must be [32], [64] or [32, 64] (got {sizes})"
            )
        params["patch_sizes"] = sorted(sizes)

    def _build(self) -> None:
        p = self.params

        def networks():
            encoder = PatchEncoder(p["width"], p["dim"])
            heads = torch.nn.ModuleDict(
                {str(k): PositionClassifier(p["dim"]) for k in p["patch_sizes"]}
            )
            return torch.nn.ModuleDict({"encoder": encoder, "heads": heads})

        self.nets = seeded_module(self.seed, networks).to(self.device).eval()
        self.banks: dict[int, torch.Tensor] = {}

    @property
    def encoder(self) -> PatchEncoder:
        """The patch encoder."""
        return self.nets["encoder"]

    def fit(self, images: Sequence[torch.Tensor]) -> Generator[ProgressEvent, None, dict]:
        """Train the encoder on clean patches, then fill the memory bank.

        Parameters
        ----------
        images : list of torch.Tensor
            Clean, z-scored (1, h, w) images, at least ``2 * max(patch_sizes)`` px on
            each side (room for a patch and its neighbour).

        Yields
        ------
        ProgressEvent
            Stage ``patchsvdd`` (``step``/``epoch`` events; ``metrics`` split the loss
            into ``position_loss`` and ``svdd_loss``), then ``patchsvdd_memory`` (a
            ``step`` per image). Closing the generator early leaves it unfitted.

        Returns
        -------
        dict
            ``{"history": [...], "memory": {patch size: bank rows}}``.
        """
        self.fitted = False
        p = self.params
        sampler = CropSampler(images, np.random.default_rng(self.seed))
        sampler.image_indices(1, 2 * max(p["patch_sizes"]))
        self._build()
        self.history = yield from self._train(sampler)
        yield from self._fill_memory(sampler.images)
        self.fitted = True
        return {"history": list(self.history),
                "memory": {k: len(v) for k, v in self.banks.items()}}

    def _losses(self, sampler: CropSampler, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Position-classification and SVDD losses on one batch of ``size`` px patches."""
        n, rng = self.params["batch_size"], sampler.rng
        labels, offsets = position_offsets(rng, n, size)
        a, b = sample_pairs(sampler, n, size, offsets)
        c, d = sample_pairs(sampler, n, size, svdd_offsets(rng, n, size))
        batch = torch.cat([a, b, c, d]).to(self.device)
        e = self.encoder.embed(batch, size).flatten(1)
        ea, eb, ec, ed = e.split(n)
        logits = self.nets["heads"][str(size)](ea, eb)
        position = F.cross_entropy(logits, torch.from_numpy(labels).to(self.device))
        svdd = (ec - ed).pow(2).sum(1).mean()
        return position, svdd

    def _train(self, sampler: CropSampler) -> Generator[ProgressEvent, None, list]:
        p = self.params
        optimizer = torch.optim.Adam(self.nets.parameters(), lr=p["learning_rate"])
        epochs, steps = p["epochs"], p["steps_per_epoch"]
        history = []
        self.nets.train()
        for epoch in range(1, epochs + 1):
            sums = np.zeros(3)
            for step in range(steps):
                optimizer.zero_grad(set_to_none=True)
                parts = [self._losses(sampler, k) for k in p["patch_sizes"]]
                position = sum(part[0] for part in parts)
                svdd = sum(part[1] for part in parts)
                loss = position + p["svdd_weight"] * svdd
                loss.backward()
                optimizer.step()
                values = [loss.item(), position.item(), svdd.item()]
                sums += values
                done = (epoch - 1) * steps + step + 1
                yield ProgressEvent(self.NAME, done, epochs * steps, loss=values[0],
                                    message=f"epoch {epoch}/{epochs}")
            mean = [float(v) for v in sums / steps]
            row = {"epoch": epoch, "train_loss": mean[0], "position_loss": mean[1],
                   "svdd_loss": mean[2]}
            history.append(row)
            yield ProgressEvent(self.NAME, epoch * steps, epochs * steps, kind="epoch",
                                loss=mean[0], metrics=dict(row),
                                message=f"epoch {epoch}/{epochs} loss {mean[0]:.4f}")
        self.nets.eval()
        return history

    def _grids(self, image: torch.Tensor):
        """Yield ``(size, first_row, embeddings (rows, cols, D))`` bands of the dense
        embedding grid of every patch size.

        ``image`` is on the device, at least ``max(patch_sizes)`` px, with
        ``(H - 32) % 4 == 0``; call under ``torch.inference_mode()``.
        """
        x = image[None]
        rows32 = (x.shape[-2] - 32) // STRIDE + 1
        dilation = 32 // STRIDE
        sizes = self.params["patch_sizes"]
        for r0 in range(0, rows32, BAND_ROWS):
            r1 = min(rows32, r0 + BAND_ROWS)
            extra = min(dilation, rows32 - r1) if 64 in sizes else 0
            grid32 = self.encoder.embed32(x[..., STRIDE * r0 : STRIDE * (r1 + extra - 1) + 32, :])
            if 32 in sizes:
                yield 32, r0, grid32[0, :, : r1 - r0].permute(1, 2, 0)
            if 64 in sizes and grid32.shape[-2] > dilation:
                yield 64, r0, self.encoder.embed64_from32(grid32)[0, :, : r1 - r0].permute(1, 2, 0)

    def _positions(self, image: torch.Tensor, size: int) -> int:
        """Number of ``size`` px patches on the 4 px grid of a training image."""
        h, w = (max(32, -(-n // STRIDE) * STRIDE) for n in image.shape[1:])
        return max(0, (h - size) // STRIDE + 1) * max(0, (w - size) // STRIDE + 1)

    def _fill_memory(self, images: list[torch.Tensor]) -> Generator[ProgressEvent, None, None]:
        """Embed every training patch; keep ``memory_size`` per patch size at random.

        Each band keeps twice its share at random, the union is then cut to size, so
        memory stays bounded however many images there are.
        """
        p = self.params
        rng = np.random.default_rng([self.seed, 2])
        totals = {k: sum(self._positions(img, k) for img in images) for k in p["patch_sizes"]}
        collected: dict[int, list[torch.Tensor]] = {k: [] for k in p["patch_sizes"]}
        for i, image in enumerate(images):
            with torch.inference_mode():
                x = pad_to_at_least(image.to(self.device, torch.float32), 32, STRIDE)
                for size, _, band in self._grids(x):
                    flat = band.reshape(-1, band.shape[-1])
                    share = -(-2 * p["memory_size"] * len(flat) // max(1, totals[size]))
                    chosen = rng.choice(len(flat), min(len(flat), share), replace=False)
                    collected[size].append(flat[torch.from_numpy(chosen).to(flat.device)])
            yield ProgressEvent("patchsvdd_memory", i + 1, len(images),
                                message=f"memory bank: image {i + 1}/{len(images)}")
        for size, parts in collected.items():
            bank = torch.cat(parts)
            if len(bank) > p["memory_size"]:
                chosen = np.sort(rng.choice(len(bank), p["memory_size"], replace=False))
                bank = bank[torch.from_numpy(chosen).to(bank.device)]
            self.banks[size] = bank.clone()

    def score_map(self, image: torch.Tensor) -> torch.Tensor:
        """Sum over patch sizes of the mean nearest-neighbour distance of the patches
        covering each pixel.

        Parameters
        ----------
        image : torch.Tensor
            z-scored (1, h, w) image, h and w >= 32 (padded bottom/right internally).

        Returns
        -------
        torch.Tensor
            (h, w) float32 on the CPU, >= 0; higher = more anomalous.
        """
        self._require_fitted()
        check_image(image)
        _, h, w = image.shape
        x = pad_to_at_least(image.to(self.device, torch.float32),
                            max(self.params["patch_sizes"]), STRIDE)
        sizes = self.params["patch_sizes"]
        with torch.inference_mode():
            scores = {k: torch.zeros((x.shape[-2] - k) // STRIDE + 1,
                                     (x.shape[-1] - k) // STRIDE + 1, device=self.device)
                      for k in sizes}
            for size, r0, band in self._grids(x):
                rows = min(band.shape[0], scores[size].shape[0] - r0)
                flat = band[:rows].reshape(-1, band.shape[-1])
                dist = nearest_distance(flat, self.banks[size], self.params["query_chunk"])
                scores[size][r0 : r0 + rows] = dist.reshape(rows, -1)
            total = sum(spread_patch_scores(s, k, STRIDE) for k, s in scores.items())
        return total[:h, :w].to("cpu", torch.float32).clone()

    # ------------------------------------------------------------------ state

    def _tensors(self) -> dict[str, torch.Tensor]:
        out = module_tensors("", self.nets)
        out.update({f"bank{k}": v for k, v in self.banks.items()})
        return out

    def _expected_shapes(self, tensors) -> dict:
        shapes = module_shapes("", self.nets)
        for k in self.params["patch_sizes"]:
            bank = tensors.get(f"bank{k}")
            rows = len(bank) if isinstance(bank, torch.Tensor) and bank.ndim == 2 else 1
            shapes[f"bank{k}"] = ((min(max(rows, 1), self.params["memory_size"]),
                                   self.params["dim"]), torch.float32)
        return shapes

    def _load(self, tensors: dict[str, torch.Tensor]) -> None:
        load_module("", self.nets, {k: v for k, v in tensors.items() if not k.startswith("bank")})
        self.nets.eval()
        self.banks = {k: tensors[f"bank{k}"].to(self.device) for k in self.params["patch_sizes"]}
