"""Choosing the compute device and mixed precision, and preparing networks for inference."""

from __future__ import annotations

import contextlib
import copy
import functools

import torch
from torch import nn

from .errors import ArtSegError
from .process_memory import trim_heap


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


@functools.cache
def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), as oneDNN reports it.

    On such CPUs bf16 convolutions run faster than fp32 ones (measured 1.8x for
    Score-CAM's masked passes, docs/performance.md); elsewhere torch emulates
    bf16 and it would be slower, so it is not used.
    """
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN's query
        return False


def passes_autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast for inference-only forward passes (Score-CAM's masked passes).

    Parameters
    ----------
    device : torch.device
        Where the passes run.
    enabled : bool
        False gives a no-op context (fp32, exact).

    Returns
    -------
    contextlib.AbstractContextManager
        bf16 autocast on CUDA, and on a CPU that computes bf16 natively
        (:func:`native_bf16_cpu`); a no-op elsewhere. Unlike :func:`autocast`
        (training, prediction) it uses the CPU's bf16 units: these passes only
        weight channels, so the rounding moves maps little (docs/performance.md).
    """
    if enabled and device.type == "cpu" and native_bf16_cpu():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return autocast(device, enabled)


def release_memory(device: torch.device) -> None:
    """Return cached accelerator memory to the driver, and freed heap memory to the system
    (after training or cancel)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()
    trim_heap()


def fold_sequential_batch_norms(module: nn.Module) -> nn.Module:
    """Fold every ``BatchNorm2d`` that directly follows a ``Conv2d`` in an ``nn.Sequential``.

    The convolution gets the batch norm's scale and shift in its weights and
    bias and the batch norm becomes ``nn.Identity``, in place. Valid in eval
    mode only (running statistics); the output changes only by float rounding.
    It saves one full-size activation per folded layer and one memory pass.

    Returns
    -------
    torch.nn.Module
        ``module`` itself.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        children = list(seq)
        for i in range(len(children) - 1):
            conv, norm = children[i], children[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(conv, norm)
                seq[i + 1] = nn.Identity()
    return module


def inference_copy(module: nn.Module, channels_last: bool = True) -> nn.Module:
    """An eval-mode copy of a network prepared for fast inference; ``module`` is unchanged.

    Batch norms in ``nn.Sequential`` containers are folded into the convolutions
    before them (:func:`fold_sequential_batch_norms`) and, when
    ``channels_last``, 4-D weights are stored ``channels_last`` so convolutions
    run in that memory format (a 1024 px tile of the paper U-Net ran 1.5x faster
    on a 2-core CPU; ``benchmarks/bench_predict.py``). Outputs match the original
    up to float rounding.

    Parameters
    ----------
    module : torch.nn.Module
        The network (any mode; the copy is put in eval mode).
    channels_last : bool
        Store the copy's 4-D weights in ``channels_last`` format.

    Returns
    -------
    torch.nn.Module
        The prepared copy, without gradients; ``module`` itself when it holds no
        convolution (e.g. a wrapped function), as there is nothing to prepare.
    """
    if not any(isinstance(m, nn.Conv2d) for m in module.modules()):
        return module
    prepared = copy.deepcopy(module).eval()
    with torch.no_grad():
        fold_sequential_batch_norms(prepared)
    if channels_last:
        prepared = prepared.to(memory_format=torch.channels_last)
    for parameter in prepared.parameters():
        parameter.requires_grad_(False)
    return prepared
