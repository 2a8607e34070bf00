"""Export a project's results for downstream tools: masks, artifact-free images, QC tables, model.

Layout of the export folder (``<project>/export/`` by default)::

    masks/<key>.tif          uint8 0/1: the curated mask, else the predicted one
    clean_images/<key>.tif   float32 image with artifact pixels set to NaN (or a fill value)
    keep_masks/<key>.tif     uint8 0/1: 1 where the pixel is usable (not artifact)
    qc_images.csv            one row per image (see napari_artseg.qc_table.IMAGE_COLUMNS)
    qc_wells.csv             per plate and well, when file names carry wells
    qc_plates.csv            per plate, likewise
    model/<model>.zip        the model folder, to share (safetensors + config.json ...)
    model/<model>/*.torchscript.pt
                             TorchScript networks for use outside Python (they hold code:
                             the plugin never loads them back; they exist only under export/)
    export.json              options, model id, counts, time

``mask_source`` in ``qc_images.csv`` says which mask each image got: ``curated``
(``masks/`` of the project), ``predicted`` (the current model), ``clean_label``
(labelled clean by a person, no curated mask: all zero) or ``none`` (no mask
could be made). Every TIFF keeps the input's pixel size. Every file is written
atomically. GUI-free; :func:`export_project` is a generator of progress events.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path, atomic_write_text
from .curation import CuratedMasks
from .errors import ArtSegError, first_line
from .image_files import image_key, read_image, write_tiff
from .postprocess import chosen_cuts, final_mask
from .prediction_cache import PredictionCache
from .process_memory import heap_reuse
from .provenance import utc_now
from .qc_table import decide, mask_statistics, parse_well, write_qc_tables
from .training.events import ProgressEvent

EXPORT_FOLDER = "export"
MASK_SOURCES = ("curated", "predicted", "clean_label", "none")


@dataclass
class ExportOptions:
    """What to export and how.

    Attributes
    ----------
    masks : bool
        Write ``masks/``.
    clean_images : bool
        Write ``clean_images/`` and ``keep_masks/``.
    fill : str
        ``nan`` (float32 NaN at artifact pixels) or ``value`` (``fill_value``).
    fill_value : float
        The value for ``fill="value"``.
    qc : bool
        Write the QC tables.
    max_artifact_fraction : float
        An image (well, plate) whose artifact fraction exceeds this is ``exclude``.
    well_patterns : sequence of str or None
        Regular expressions for plate/well/field (see :func:`~napari_artseg.qc_table.parse_well`).
    model_archive : bool
        Write the current model folder as a zip.
    torchscript : bool
        Write TorchScript networks of the current model.
    predict_missing : bool
        Run the current model on images without a cached prediction.
    threshold, min_size_px : float, int or None
        Mask settings for predicted masks (default: the model's).
    images : sequence of str or None
        Images to export (default: every project image).
    """

    masks: bool = True
    clean_images: bool = True
    fill: str = "nan"
    fill_value: float = 0.0
    qc: bool = True
    max_artifact_fraction: float = 0.2
    well_patterns: Sequence[str] | None = None
    model_archive: bool = True
    torchscript: bool = True
    predict_missing: bool = True
    threshold: float | None = None
    min_size_px: int | None = None
    images: Sequence[str] | None = None

    def validate(self) -> ExportOptions:
        """Check the values; raise :class:`ArtSegError` naming the bad one."""
        if self.fill not in ("nan", "value"):
            raise ArtSegError(f"export: fill must be 'nan' or 'value', got {self.fill!r}")
        if not 0 <= self.max_artifact_fraction <= 1:
            raise ArtSegError("export: max_artifact_fraction must be between 0 and 1")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ArtSegError("export: threshold must be between 0 and 1")
        return self


@dataclass
class ExportReport:
    """What :func:`export_project` wrote.

    Attributes
    ----------
    out : pathlib.Path
        The export folder.
    rows : list of dict
        The QC rows, one per image.
    counts : dict
        Images per mask source.
    files : dict
        Kind -> list of written paths (relative to ``out``).
    errors : dict
        Image -> one-line error.
    notes : list of str
        Things the user should know (no model, skipped outputs).
    """

    out: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    files: dict[str, list[str]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, kind: str, path: Path) -> None:
        """Record a written file."""
        self.files.setdefault(kind, []).append(path.relative_to(self.out).as_posix())


def artifact_free(image: np.ndarray, mask: np.ndarray, fill: str = "nan",
                  fill_value: float = 0.0) -> np.ndarray:
    """The image as float32 with artifact pixels set to NaN (or ``fill_value``)."""
    out = np.asarray(image, dtype=np.float32).copy()
    out[np.asarray(mask) != 0] = np.nan if fill == "nan" else np.float32(fill_value)
    return out


def current_model_folder(project: Any) -> Path | None:
    """The project's current model folder when it exists and can predict, else None."""
    name = project.current_model
    if not name:
        return None
    folder = project.models_dir / name
    try:
        document = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return folder if document.get("status") == "complete" else None


class _Masks:
    """Finds the mask, score and model id of each image: curated, cached, or predicted now."""

    def __init__(self, project: Any, options: ExportOptions, device: str) -> None:
        self.project = project
        self.options = options
        self.curated = CuratedMasks(project.masks_dir)
        self.folder = current_model_folder(project)
        self.model: Any = None
        self.model_id = ""
        self.device = device
        if self.folder is not None:
            document = json.loads((self.folder / "config.json").read_text(encoding="utf-8"))
            self.model_id = str(document.get("model_id", ""))
            self.thresholds = document.get("thresholds", {})
        self.cache = PredictionCache(project.predictions_dir, self.model_id) \
            if self.model_id else None

    def _model(self) -> Any:
        if self.model is None:
            from .predictor import ArtSegModel

            self.model = ArtSegModel.load(self.folder, device=self.device)
        return self.model

    def _settings(self, pixel_size_um: float | None) -> tuple[tuple[float, ...], int]:
        """The mask's cuts (the user's threshold, else the model's and its fallback) and
        minimum size."""
        cuts = chosen_cuts(self.thresholds, self.options.threshold)
        size = self.options.min_size_px
        if size is None:
            size = self._model().min_size_for(pixel_size_um) if self.model is not None \
                else int(self.thresholds.get("min_size_px", 0))
        return cuts, size

    def predicted(self, image: str, data: np.ndarray,
                  pixel_size_um: float | None) -> tuple[np.ndarray | None, float | None]:
        """The predicted mask and score of an image (None, None without a model)."""
        if self.folder is None:
            return None, None
        cached = self.cache.load(image) if self.cache is not None else None
        if cached is None and self.options.predict_missing:
            result = self._model().predict(data, pixel_size_um=pixel_size_um)
            cuts, size = self._settings(pixel_size_um)
            mask = final_mask(result.probability, cuts, size) if result.gate_passed \
                else np.zeros(data.shape, bool)
            return mask, result.score
        if cached is None:
            return None, None
        cuts, size = self._settings(pixel_size_um)
        return final_mask(cached.probability, cuts, size), cached.score

    def score(self, image: str, data: np.ndarray) -> float | None:
        """The classifier's artifact score (cached, or computed when allowed)."""
        if self.folder is None:
            return None
        cached = self.cache.load(image) if self.cache is not None else None
        if cached is not None:
            return cached.score
        if not self.options.predict_missing:
            return None
        model = self._model()
        return model.artifact_score(model.prepare(data))

    def release(self) -> None:
        if self.model is not None:
            from .device import release_memory

            device, self.model = self.model.device, None
            release_memory(device)


def _image_row(project: Any, image: str, masks: _Masks, options: ExportOptions, out: Path,
               report: ExportReport) -> dict[str, Any]:
    """Export one image and return its QC row."""
    loaded = read_image(project.image_path(image))
    data, pixel = loaded.data, loaded.pixel_size_um
    label = project.labels.get(image) or ""
    provenance, model_id = "", ""
    mask = masks.curated.load(image, data.shape)
    if mask is not None:
        source = "curated"
        row = masks.curated.table.get(image)
        provenance = row.provenance if row else ""
        model_id = row.model_id if row else ""
        score = masks.score(image, data)
    elif label == "clean":
        source, mask, score = "clean_label", np.zeros(data.shape, bool), masks.score(image, data)
    else:
        mask, score = masks.predicted(image, data, pixel)
        source = "predicted" if mask is not None else "none"
        model_id = masks.model_id if mask is not None else ""
    key = image_key(Path(image), Path())
    row: dict[str, Any] = {"image": image, **parse_well(image, options.well_patterns),
                           "label": label, "mask_source": source,
                           "mask_provenance": provenance, "model_id": model_id,
                           "artifact_score": score if score is not None else "",
                           "pixel_size_um": pixel or ""}
    if mask is None:
        row.update({"artifact_fraction": "", "height": data.shape[0], "width": data.shape[1],
                    "decision": "unknown"})
        return row
    row.update(mask_statistics(mask, pixel))
    row["decision"] = decide(row["artifact_fraction"], options.max_artifact_fraction)
    if options.masks:
        path = write_tiff(out / "masks" / f"{key}.tif", mask.astype(np.uint8), pixel)
        report.add("masks", path)
        row["mask_file"] = path.relative_to(out).as_posix()
    if options.clean_images:
        clean = artifact_free(data, mask, options.fill, options.fill_value)
        path = write_tiff(out / "clean_images" / f"{key}.tif", clean, pixel)
        report.add("clean_images", path)
        row["clean_image_file"] = path.relative_to(out).as_posix()
        path = write_tiff(out / "keep_masks" / f"{key}.tif", (~mask).astype(np.uint8), pixel)
        report.add("keep_masks", path)
        row["keep_mask_file"] = path.relative_to(out).as_posix()
    return row


def write_model_archive(model_folder: Path, out: Path) -> Path:
    """Zip a model folder into ``out/model/<name>.zip`` (atomically) and return the path."""
    target = out / "model" / f"{model_folder.name}.zip"
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(model_folder.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                archive.write(path, f"{model_folder.name}/{path.relative_to(model_folder)}")
    return target


TORCHSCRIPT_README = """TorchScript networks of artseg model {model_id} ({name}).

They contain code: load them only if you trust their source. napari-artseg itself
never loads them (it reads the safetensors weights of the model folder).

classifier.torchscript.pt  input (N, 1, {size}, {size}) float32, output (N,) logit;
                           sigmoid(logit) = P(artifact); the gate threshold is {gate}.
unet.torchscript.pt        input (N, 1, H, W), H and W multiples of {divisor}; output (N, 1, H, W)
                           logits; sigmoid gives the artifact probability; mask threshold {mask}.

Pre-processing (as napari-artseg does it): resize the image by scale {scale} (area averaging),
then normalisation '{normalization}' (zscore: subtract the image mean, divide by its standard
deviation). The classifier sees the whole image resized to {size} x {size}; the U-Net sees tiles
of {unet_size} px with {halo} px of overlap. Remove objects smaller than {min_size} px after
thresholding. Full settings: config.json in the zip archive beside this folder.
"""


def write_torchscript(model_folder: Path, out: Path) -> list[Path]:
    """TorchScript files of a model's networks under ``out/model/<name>/`` (atomically).

    Scripted when possible, else traced on an example input of the model's size.
    Only ScoreCAM-U-Net, the supervised U-Net and CDL are a classifier and/or a
    U-Net whose outputs make the map; for other methods (Score-CAM alone, the
    anomaly detectors, ensembles) nothing is written and an empty list returned:
    their model zip is the way to share them.
    """
    import torch

    from .models import ResNetClassifier, UNet
    from .predictor import ArtSegModel

    model = ArtSegModel.load(model_folder, device="cpu")
    if not isinstance(model.unet, UNet):
        return []
    folder = out / "model" / model_folder.name
    written = []
    size, unet_size = model.config.input_size, model.config.unet_size
    networks = [("classifier", model.classifier, size), ("unet", model.unet, unet_size)]
    for name, net, side in networks:
        if not isinstance(net, ResNetClassifier | UNet):
            continue  # a method without a classifier
        net = net.float().eval()
        example = torch.zeros(1, 1, side, side)
        try:
            compiled = torch.jit.script(net)
        except Exception:  # scripting fails on some constructs; tracing then works
            with torch.no_grad():
                compiled = torch.jit.trace(net, example, check_trace=False)
        target = folder / f"{name}.torchscript.pt"
        with atomic_path(target) as tmp:
            torch.jit.save(compiled, str(tmp))
        written.append(target)
    thresholds = model.thresholds
    config = model.config
    text = TORCHSCRIPT_README.format(
        model_id=model.model_id, name=model_folder.name, size=size, unet_size=unet_size,
        gate=thresholds.get("gate", 0.5), mask=thresholds.get("mask", 0.5),
        divisor=model.unet.divisor, scale=config.scale, normalization=config.normalization,
        halo=config.tile_halo, min_size=thresholds.get("min_size_px", 0))
    if not isinstance(model.classifier, ResNetClassifier):
        start = text.index("classifier.torchscript.pt")
        end = text.index("unet.torchscript.pt")
        text = (text[:start] + "(no classifier: this method calls an image 'artifact' when the "
                f"maximum of its map reaches {thresholds.get('gate', 0.5)})\n" + text[end:])
    written.append(atomic_write_text(folder / "README.txt", text))
    return written


def export_project(
    project: Any,
    out: str | os.PathLike | None = None,
    options: ExportOptions | None = None,
    device: str = "auto",
) -> Generator[ProgressEvent, None, ExportReport]:
    """Export masks, artifact-free images, QC tables and the model of a project.

    Parameters
    ----------
    project : napari_artseg.project.Project
        The project.
    out : path-like, optional
        The export folder (default ``<project>/export``); created when missing,
        files of the same name are replaced.
    options : ExportOptions, optional
        What to write.
    device : str
        Device for predictions made during the export.

    Yields
    ------
    ProgressEvent
        Stage ``export``: one per image, then one per model output.

    Returns
    -------
    ExportReport
        Files written, QC rows, counts and per-image errors (an unreadable image
        is reported and skipped; the others are exported).
    """
    options = (options or ExportOptions()).validate()
    out = Path(out) if out is not None else project.folder / EXPORT_FOLDER
    out.mkdir(parents=True, exist_ok=True)
    images = list(options.images) if options.images is not None else project.images()
    report = ExportReport(out)
    masks = _Masks(project, options, device)
    if masks.folder is None:
        report.notes.append("no trained model: only curated masks and images labelled clean "
                            "have masks; no model files exported")
    yield ProgressEvent("export", 0, len(images), kind="stage",
                        message=f"exporting {len(images)} image(s) to {out}")
    try:
        with heap_reuse():  # freed memory is kept for the next image, not mapped again
            for index, image in enumerate(images, start=1):
                try:
                    row = _image_row(project, image, masks, options, out, report)
                    report.rows.append(row)
                except (ArtSegError, OSError, ValueError, RuntimeError) as exc:
                    text = first_line(exc)
                    report.errors[image] = text
                    report.rows.append({"image": image,
                                        **parse_well(image, options.well_patterns),
                                        "mask_source": "none", "decision": "unknown",
                                        "label": project.labels.get(image) or ""})
                yield ProgressEvent("export", index, len(images), message=image)
    finally:
        masks.release()
    for source in MASK_SOURCES:
        report.counts[source] = sum(r.get("mask_source") == source for r in report.rows)
    if options.qc:
        for path in write_qc_tables(out, report.rows, options.max_artifact_fraction).values():
            report.add("qc", path)
    if masks.folder is not None and (options.model_archive or options.torchscript):
        yield ProgressEvent("export", 0, 1, kind="stage", message="exporting the model")
        if options.model_archive:
            report.add("model", write_model_archive(masks.folder, out))
        if options.torchscript:
            scripted = write_torchscript(masks.folder, out)
            for path in scripted:
                report.add("model", path)
            if not scripted:
                report.notes.append("no TorchScript files: this method's map is not one "
                                    "network's output; share the model zip instead")
        yield ProgressEvent("export", 1, 1, message="model exported")
    summary = {"exported_at": utc_now(), "project": str(project.folder),
               "model": masks.folder.name if masks.folder is not None else None,
               "model_id": masks.model_id or None, "counts": report.counts,
               "errors": report.errors, "notes": report.notes,
               "options": {k: (list(v) if isinstance(v, tuple) else v)
                           for k, v in asdict(options).items()}}
    atomic_write_text(out / "export.json", json.dumps(summary, indent=2, default=str) + "\n")
    return report
