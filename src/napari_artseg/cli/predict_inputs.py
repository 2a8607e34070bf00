"""``artseg predict``: the inputs of a run, its per-image settings and its output folder."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ArtSegError
from ..image_files import discover_images, image_key, is_image_file


@dataclass(frozen=True)
class InputImage:
    """An image to predict: its file and its output key."""

    path: Path
    key: str

    @property
    def is_zarr(self) -> bool:
        """True for a Zarr / OME-Zarr store (a folder), predicted block by block."""
        return self.path.is_dir()


@dataclass(frozen=True)
class PredictOptions:
    """The per-image settings of a run (the attributes of the parsed arguments they mirror)."""

    threshold: float | None = None
    min_size: int | None = None
    no_gate: bool = False
    overwrite: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PredictOptions:
        """The options of parsed ``artseg predict`` arguments."""
        return cls(args.threshold, args.min_size, bool(args.no_gate),
                   bool(getattr(args, "overwrite", False)))


def _is_zarr_store(path: Path) -> bool:
    """True for a folder holding a Zarr array or group (v2 or v3 metadata)."""
    from ..distributed.sources import is_zarr_store

    return is_zarr_store(path)


def _zarr_stores_below(folder: Path, exclude: list[Path]) -> list[Path]:
    """Zarr stores (``*.zarr`` folders) below ``folder``, not looking inside them."""
    excluded = {p.resolve() for p in exclude}
    found = []
    for current, dirs, _files in os.walk(folder):
        here = Path(current)
        stores = [d for d in dirs if d.lower().endswith(".zarr") and not d.startswith(".")]
        found.extend(here / d for d in sorted(stores) if (here / d).resolve() not in excluded)
        dirs[:] = sorted(d for d in dirs if d not in stores and not d.startswith("."))
    return found


def collect_inputs(inputs: list[str], exclude: list[Path]) -> list[InputImage]:
    """Expand files and folders into images with unique keys.

    A folder that is a Zarr store is one image; other folders are searched for
    image files and ``*.zarr`` stores.

    Raises
    ------
    ArtSegError
        A path does not exist, a file is not an image, or two inputs share a key.
    """
    found: list[InputImage] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir() and (path.suffix.lower() == ".zarr" or _is_zarr_store(path)):
            found.append(InputImage(path, image_key(path)))
        elif path.is_dir():
            found.extend(InputImage(p, image_key(p, path)) for p in discover_images(path, exclude))
            found.extend(InputImage(p, image_key(p, path))
                         for p in _zarr_stores_below(path, exclude))
        elif path.is_file():
            if not is_image_file(path):
                raise ArtSegError(f"{path}: not an image file (.tif, .tiff, .png, .jpg, .zarr)")
            found.append(InputImage(path, image_key(path)))
        else:
            raise ArtSegError(f"{path}: no such file or folder")
    seen: dict[str, Path] = {}
    for item in found:
        if item.key in seen:
            raise ArtSegError(f"{item.path} and {seen[item.key]} both give the output name "
                              f"{item.key!r}; predict them into different output folders")
        seen[item.key] = item.path
    return found


def prepare_output_folder(out: Path) -> None:
    """Create ``out``, check it can be written, and clear temporaries of killed runs.

    Raises
    ------
    ArtSegError
        When the folder cannot be created or written.
    """
    import tempfile

    from ..atomic import remove_stale_temporaries

    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".artseg-write-test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ArtSegError(f"{out}: cannot write predictions here ({exc.strerror or exc})") from None
    for current, dirs, _files in os.walk(out):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        remove_stale_temporaries(current)
