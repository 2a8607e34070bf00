"""Choosing the compute device and mixed precision."""

from __future__ import annotations

import contextlib

import torch

from .errors import ArtSegError


def resolve_device(name: str = "auto") -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``mps`` into a torch device.

    ``auto`` picks CUDA, then MPS, then CPU. Asking for a device that is not
    available raises :class:`ArtSegError`.
    """
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_ok else torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ArtSegError("device cuda requested but no CUDA GPU is available; use --device cpu")
    if name == "mps" and not mps_ok:
        raise ArtSegError("device mps requested but Apple MPS is not available; use --device cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise ArtSegError(f"unknown device {name!r}; use auto, cpu, cuda or mps")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool = True):
    """A bf16 autocast context on CUDA when enabled; a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def release_memory(device: torch.device) -> None:
    """Return cached accelerator memory to the driver (after training or cancel)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()
