"""Model folders: weights as safetensors plus a JSON sidecar a person can read.

A model is a folder::

    config.json               format_version, method, model_id, status, parent,
                              components, config (every field), thresholds, versions,
                              label counts, validation metrics
    <component>.safetensors   weights (safetensors: loading runs no code); which
                              components a method has: METHOD_COMPONENTS
    history_<stage>.csv       per-epoch training curves
    manifest.csv              image, label, target (curated/pseudo/zero), split
    saliency/<key>.tif        Score-CAM map of each pseudo-labelled image (uint8, 0-255,
                              classifier view size)
    pseudo_labels/<key>.tif   its binarised pseudo-label (uint8 0/1, processing scale)
    cdl_labels/<key>.tif      (cdl) the conventional detector's label (uint8 0/1, processing scale)
    members/<name>/           (ensemble) each member's own model folder (config.json,
                              weights and tables, no rasters)

The folder is built under a temporary name and renamed when complete, so a
model folder is complete or absent.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import json
import math
import os
import platform
import re
import shutil
from collections.abc import Generator, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .atomic import atomic_folder, atomic_write_text
from .config import METHODS, ArtSegConfig
from .errors import ArtSegError, ModelFileError

FORMAT_VERSION = 1
#: The weight files (components) of a complete model folder of each method.
METHOD_COMPONENTS: dict[str, tuple[str, ...]] = {
    "scorecam_unet": ("classifier", "unet"),
    "supervised_unet": ("unet",),
    "scorecam": ("classifier",),
    "ae_ssim": ("detector",),
    "padim": ("detector",),
    "patchsvdd": ("detector",),
    "ensemble": ("ensemble",),
    "cdl": ("unet",),
}
COMPONENTS = ("classifier", "unet", "detector", "ensemble")
#: Files of a member folder copied into an ensemble (weights, config and tables only).
MEMBER_FILE_SUFFIXES = (".json", ".safetensors", ".csv")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def package_versions() -> dict[str, str]:
    """Versions recorded in every model folder."""
    import numpy

    return {"napari_artseg": __version__, "torch": torch.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


def weights_id(paths: Iterable[Path], root: Path | None = None) -> str:
    """A short hash of the weight files' bytes: the model's identity.

    Files are named by their path relative to ``root`` (by their name without it).
    """
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update((path.relative_to(root).as_posix() if root else path.name).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    """Render dict rows as CSV text (columns from the union of keys, in order seen)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def save_model(folder: str | os.PathLike, *args: Any, **kwargs: Any) -> Path:
    """Write a model folder atomically and return its path.

    :func:`write_model` run to its end; the parameters are the same.
    """
    for _ in write_model(folder, *args, **kwargs):
        pass
    return Path(folder)


def write_model(
    folder: str | os.PathLike,
    config: ArtSegConfig,
    networks: dict[str, torch.nn.Module],
    metadata: dict[str, Any],
    tables: dict[str, list[dict[str, Any]]] | None = None,
    status: str = "complete",
    rasters: dict[str, np.ndarray] | None = None,
    members: dict[str, Path] | None = None,
) -> Generator[tuple[int, int], None, Path]:
    """Write a model folder atomically, yielding ``(files written, files to write)`` after each.

    A model of a large screen holds two rasters per pseudo-labelled image, so the
    save takes seconds to minutes; the counts let a progress bar follow it (an
    ensemble member's folder counts as one file). Closing the generator before
    its end removes the temporary folder and writes nothing.

    Parameters
    ----------
    folder : path-like
        The model folder to create (must not exist).
    config : ArtSegConfig
        The config it was trained with.
    networks : dict
        Component name -> network (its ``state_dict`` is saved) or a dict of tensors,
        e.g. ``{"classifier": ..., "unet": ...}`` (a partial model may lack some).
    metadata : dict
        Extra top-level fields: thresholds, label_counts, validation_metrics,
        parent, pixel_size_um, ...
    tables : dict, optional
        ``{"history_classifier": rows, "manifest": rows, ...}`` written as CSV.
    status : str
        ``complete`` or ``partial``.
    rasters : dict, optional
        ``{"relative/path.tif": array}`` written as TIFF inside the folder.
    members : dict, optional
        ``{name: model folder}`` copied to ``members/<name>/`` (ensembles; only the
        files ending in :data:`MEMBER_FILE_SUFFIXES`, never links). Their weights
        count in the model id.
    """
    from safetensors.torch import save_file

    from .image_files import write_tiff

    folder = Path(folder)
    members, tables, rasters = members or {}, tables or {}, rasters or {}
    of = len(networks) + len(members) + len(tables) + len(rasters) + 1  # + config.json
    done = 0
    with atomic_folder(folder) as tmp:
        weight_files = []
        for name, net in networks.items():
            tensors = net.state_dict() if isinstance(net, torch.nn.Module) else net
            state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
            path = tmp / f"{name}.safetensors"
            save_file(state, str(path))
            weight_files.append(path)
            done += 1
            yield done, of
        for name, source in members.items():
            weight_files += _copy_member(Path(source), member_folder(tmp, name))
            done += 1
            yield done, of
        for name, rows in tables.items():
            atomic_write_text(tmp / f"{name}.csv", rows_to_csv(rows))
            done += 1
            yield done, of
        for relative, array in rasters.items():
            write_tiff(tmp / relative, array)
            done += 1
            yield done, of
        document = {
            "format_version": FORMAT_VERSION,
            "method": config.method,
            "model_id": weights_id(weight_files, tmp if members else None),
            "status": status,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "components": sorted(networks),
            "versions": package_versions(),
            **metadata,
            "config": config.to_dict(),
        }
        atomic_write_text(tmp / "config.json", json.dumps(document, indent=2, default=str))
    yield of, of  # renamed into place: the folder is complete
    return folder


def member_folder(folder: Path, name: str) -> Path:
    """The folder of ensemble member ``name`` inside a model folder (names are checked)."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
        raise ModelFileError(f"{folder / 'config.json'}: invalid ensemble member name {name!r}")
    return folder / "members" / name


def _copy_member(source: Path, target: Path) -> list[Path]:
    """Copy a member model's plain files (no links, no rasters); returns its weight files."""
    target.mkdir(parents=True)
    copied = []
    for path in sorted(source.iterdir()):
        if path.is_symlink() or not path.is_file() or path.suffix not in MEMBER_FILE_SUFFIXES:
            continue
        shutil.copyfile(path, target / path.name)
        if path.suffix == ".safetensors":
            copied.append(target / path.name)
    return copied


def read_model_document(folder: str | os.PathLike) -> dict[str, Any]:
    """Read and check a model folder's ``config.json``.

    Raises
    ------
    ModelFileError
        Missing folder or file, invalid JSON, a newer format version, an unknown
        method, or an invalid config; the message names the file.
    """
    folder = Path(folder)
    path = folder / "config.json"
    if not folder.is_dir():
        raise ModelFileError(f"{folder}: model folder not found")
    if not path.is_file():
        raise ModelFileError(f"{path}: missing; {folder} is not a model folder")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ModelFileError(f"{path}: expected a JSON object")
    version = document.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ModelFileError(f"{path}: missing or invalid format_version")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format {version} is newer than this napari-artseg supports "
            f"({FORMAT_VERSION}); upgrade napari-artseg"
        )
    method = document.get("method")
    if method not in METHODS:
        raise ModelFileError(f"{path}: unknown method {method!r}; this napari-artseg knows "
                             f"{', '.join(METHODS)}")
    try:
        document["config"] = ArtSegConfig.from_dict(document.get("config") or {}, str(path))
    except (ArtSegError, TypeError) as exc:
        raise ModelFileError(str(exc)) from None
    if document["config"].method != method:
        raise ModelFileError(f"{path}: method {method!r} but config.method "
                             f"{document['config'].method!r}")
    _check_structure(document, path)
    return document


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _check_structure(document: dict[str, Any], path: Path) -> None:
    """Validate ``components`` and ``thresholds`` of a config.json before use."""
    method = document["method"]
    allowed = METHOD_COMPONENTS[method]
    components = document.get("components", [])
    if not isinstance(components, list) or not all(c in allowed for c in components):
        raise ModelFileError(f"{path}: components of a {method} model must be a list drawn "
                             f"from {', '.join(allowed)}, got {components!r}")
    missing = [c for c in allowed if c not in components]
    if document.get("status") == "complete" and missing:
        raise ModelFileError(f"{path}: a complete {method} model needs the component(s) "
                             f"{', '.join(missing)}")
    thresholds = document.get("thresholds", {})
    if not isinstance(thresholds, dict):
        raise ModelFileError(f"{path}: thresholds must be an object")
    required = ("gate", "mask", "min_size_px") if document.get("status") == "complete" else ()
    for key in {*required, *(k for k in ("gate", "mask", "min_size_px") if k in thresholds)}:
        if not _is_number(thresholds.get(key)):
            raise ModelFileError(f"{path}: thresholds.{key} must be a number, "
                                 f"got {thresholds.get(key)!r}")


def load_tensors(folder: Path, component: str) -> dict[str, torch.Tensor]:
    """The tensors of ``<component>.safetensors`` (raw tensors: loading executes no code).

    Raises
    ------
    ModelFileError
        The file is missing or not a safetensors file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder) / f"{component}.safetensors"
    if not path.is_file():
        raise ModelFileError(f"{path}: missing weights file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a valid safetensors weights file ({exc})") from None


def load_weights(folder: Path, component: str, network: torch.nn.Module) -> None:
    """Load ``<component>.safetensors`` into ``network``, checking names and shapes.

    safetensors files hold raw tensors only, so loading executes no code.

    Raises
    ------
    ModelFileError
        The file is missing, not a safetensors file, or does not match the
        architecture in config.json.
    """
    path = Path(folder) / f"{component}.safetensors"
    state = load_tensors(folder, component)
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        detail = (f"{len(missing)} missing, {len(unexpected)} unexpected, "
                  f"{len(wrong)} wrong-shape tensors (e.g. {(missing + unexpected + wrong)[0]})")
        raise ModelFileError(
            f"{path}: weights do not match the architecture in config.json ({detail})"
        )
    network.load_state_dict(state)
