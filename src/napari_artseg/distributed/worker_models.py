"""One loaded model per worker process, shared by every task that runs there.

A Dask task ships a :class:`ModelRef` (folder, model id, device: a few bytes),
never the networks. The first task on a worker loads the model from the
(shared) model folder; later tasks reuse it. Only the most recently used model
is kept, so a worker holds one model at a time.
"""

from __future__ import annotations

import os
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelFileError

_LOCK = threading.Lock()
_CACHE: dict[tuple[str, str, str], Any] = {}
_LOADS = [0]


@dataclass(frozen=True)
class ModelRef:
    """What a task needs to find its model on a worker.

    Attributes
    ----------
    folder : str
        The model folder, as the workers see it (shared storage).
    model_id : str
        The weights hash the client saw; a worker that reads another model refuses it.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``mps``; ``auto`` picks the worker's GPU when it has one.
    """

    folder: str
    model_id: str
    device: str = "auto"

    def key(self) -> tuple[str, str, str]:
        """The cache key: resolved folder, model id, device."""
        return str(Path(self.folder).resolve()), self.model_id, self.device


def _worker_index() -> int:
    """A stable small number for this Dask worker (its name), 0 outside a worker."""
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return 0
    text = str(name)
    return int(text) if text.isdigit() else zlib.crc32(text.encode())


def _pick_gpu(device: str) -> None:
    """With ``auto`` on a machine with several GPUs, spread workers over them by name."""
    if device != "auto":
        return
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 1:
        torch.cuda.set_device(_worker_index() % torch.cuda.device_count())


def remember_model(model: Any, device: str) -> ModelRef:
    """Put an already loaded model in this process's cache and return its reference.

    Used when the client process computes blocks itself (local scheduler), so it
    does not load a second copy.
    """
    ref = ModelRef(str(model.folder), model.model_id, device)
    with _LOCK:
        _CACHE.clear()
        _CACHE[ref.key()] = model
    return ref


def cached_model(ref: ModelRef) -> Any:
    """The loaded :class:`~napari_artseg.predictor.ArtSegModel` of ``ref`` in this process.

    Raises
    ------
    ModelFileError
        The folder cannot be loaded here, or holds another model than the client saw.
    """
    from ..predictor import ArtSegModel

    key = ref.key()
    with _LOCK:
        model = _CACHE.get(key)
        if model is None:
            _CACHE.clear()
            _pick_gpu(ref.device)
            model = ArtSegModel.load(ref.folder, device=ref.device)
            if ref.model_id and model.model_id != ref.model_id:
                raise ModelFileError(f"{ref.folder}: holds model {model.model_id} on this worker, "
                                     f"not {ref.model_id}; was it replaced during the run?")
            _CACHE[key] = model
            _LOADS[0] += 1
        return model


def cache_report() -> dict[str, Any]:
    """How many models this process loaded, its pid and the device of the cached model."""
    with _LOCK:
        devices = [str(m.device) for m in _CACHE.values()]
    return {"loads": _LOADS[0], "pid": os.getpid(), "devices": devices}
