"""Score-CAM maps of training images cached on disk, so a re-run does not recompute them.

Score-CAM is the slow stage of training (K masked classifier passes per image).
Its map of an image depends only on the classifier's weights, the Score-CAM
settings, the processing settings and the image, so a run with the same
classifier (retraining the U-Net of a model with ``classifier_epochs=0``, or a
run restarted after a crash) finds the maps of the earlier run here.

Layout::

    <cache folder>/<key>/key.json                what the key was made of
    <cache folder>/<key>/<image content hash>.npy   (S, S) float32 map, no pickle

``<key>`` hashes the classifier's state dict (weights and batch-norm statistics),
every ``scorecam_*`` setting but the batch size (exact maps do not depend on
it beyond float rounding), ``input_size``, ``scale``, ``normalization``, the
device type and a format version; the image is named by the SHA-256 of its
file's bytes, so a renamed image still hits and an edited one misses. Files
are written atomically; an unreadable or mismatching file counts as a miss and
is overwritten. Only the :data:`KEEP_CLASSIFIERS` most recently used keys are
kept.

Where: ``<project>/cache/saliency`` when the model folder is inside a project's
``models/`` folder, or ``$ARTSEG_CACHE_DIR/saliency`` when that variable is
set; elsewhere no cache (a model folder's parent may hold anything).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_write, atomic_write_text, remove_stale_temporaries
from ..config import ArtSegConfig

#: Environment variable naming a cache folder for runs outside a project.
CACHE_ENV = "ARTSEG_CACHE_DIR"
#: Classifier keys kept in a cache folder (the least recently used go first).
KEEP_CLASSIFIERS = 4
_FORMAT = 1
_CHUNK = 1 << 20
#: Score-CAM settings that change only how fast a map is made, not the map.
BATCH_ONLY = ("scorecam_batch_size",)
#: Score-CAM settings added after caches were first written, with the value that gives the
#: maps of before: at that value they are left out of the key, so those caches stay valid.
ADDED_LATER = {"scorecam_mask_stage": 0}


def state_dict_hash(module: torch.nn.Module) -> str:
    """SHA-256 of a network's state dict: names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def scorecam_settings(config: ArtSegConfig) -> dict[str, Any]:
    """The settings a training image's Score-CAM map depends on, besides the classifier."""
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
              if f.name.startswith("scorecam_") and f.name not in BATCH_ONLY}
    for name, before in ADDED_LATER.items():
        if fields[name] == before:
            del fields[name]
    return {**fields, "input_size": config.input_size, "scale": config.scale,
            "normalization": config.normalization}


def default_cache_folder(out: str | os.PathLike) -> Path | None:
    """Where a run writing the model folder ``out`` caches its maps (None: no cache)."""
    named = os.environ.get(CACHE_ENV, "").strip()
    if named:
        return Path(named) / "saliency"
    from ..project import PROJECT_FILE

    models = Path(out).absolute().parent
    if models.name == "models" and (models.parent / PROJECT_FILE).is_file():
        return models.parent / "cache" / "saliency"
    return None


class SaliencyCache:
    """The cached maps of one classifier with one set of settings.

    Parameters
    ----------
    folder : path-like
        The cache folder (one subfolder per key is made in it).
    classifier : torch.nn.Module
        The trained classifier (hashed once, here).
    config : ArtSegConfig
        Score-CAM and processing settings (:func:`scorecam_settings`).
    images_dir : path-like
        The folder the training items' keys are relative to.
    device : torch.device
        Where the maps are computed (its type is part of the key).
    """

    def __init__(self, folder: str | os.PathLike, classifier: torch.nn.Module,
                 config: ArtSegConfig, images_dir: str | os.PathLike,
                 device: torch.device) -> None:
        self.root = Path(folder)
        self.images_dir = Path(images_dir)
        self.size = int(config.input_size)
        self.description = {"format": _FORMAT, "classifier": state_dict_hash(classifier),
                            "settings": scorecam_settings(config),
                            "device": torch.device(device).type}
        text = json.dumps(self.description, sort_keys=True, default=str)
        self.key = hashlib.sha256(text.encode()).hexdigest()[:32]
        self.folder = self.root / self.key
        self.hits = 0
        self.misses = 0
        self.write_error = ""
        self._hashes: dict[str, str] = {}

    def path_for(self, image_key: str) -> Path:
        """The cache file of a training image (by the hash of its file's content)."""
        if image_key not in self._hashes:
            self._hashes[image_key] = file_hash(self.images_dir / image_key)
        return self.folder / f"{self._hashes[image_key]}.npy"

    def load(self, image_key: str) -> torch.Tensor | None:
        """The cached (S, S) map of an image, or None (missing, unreadable or wrong shape)."""
        path = self.path_for(image_key)
        try:
            value = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            value = None
        ok = (value is not None and value.shape == (self.size, self.size)
              and value.dtype == np.float32 and bool(np.isfinite(value).all()))
        if not ok:
            self.misses += 1
            return None
        self.hits += 1
        os.utime(self.folder, None)  # recently used: kept by :meth:`prune`
        return torch.from_numpy(value)

    def store(self, image_key: str, saliency: torch.Tensor) -> bool:
        """Write an image's map (float32 ``.npy``, atomically); False when it cannot be written.

        A cache that cannot be written (read-only or full disk) never stops
        training: the first error is kept in :attr:`write_error` and later maps
        are not stored.
        """
        if self.write_error:
            return False
        value = np.ascontiguousarray(saliency.detach().cpu().numpy(), dtype=np.float32)
        try:
            if not (self.folder / "key.json").is_file():
                atomic_write_text(self.folder / "key.json",
                                  json.dumps(self.description, indent=1, default=str))
            atomic_write(self.path_for(image_key),
                         lambda handle: np.save(handle, value, allow_pickle=False))
        except OSError as error:
            self.write_error = f"{self.folder}: saliency cache not written ({error})"
            return False
        return True

    def prune(self, keep: int = KEEP_CLASSIFIERS) -> list[Path]:
        """Remove all but the ``keep`` most recently used keys (this one is always kept).

        Temporary files left by killed writers are removed too. Returns what was removed.
        """
        removed = remove_stale_temporaries(self.folder)
        if not self.root.is_dir():
            return removed
        keys = [p for p in self.root.iterdir() if p.is_dir() and (p / "key.json").is_file()
                and p != self.folder]
        keys.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for old in keys[max(0, keep - 1):]:
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
        return removed
