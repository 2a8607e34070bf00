"""``artseg train``: train a model of any method (ScoreCAM-U-Net by default)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ANOMALY_METHODS, METHODS, PRESETS, ArtSegConfig, preset
from ..errors import ArtSegError
from ..labels_file import read_labels_csv
from .progress import run_with_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``train`` sub-command."""
    parser = sub.add_parser(
        "train", help="train a model from labels.csv",
        description="Train a model of one method (default scorecam_unet: the classifier, "
                    "Score-CAM pseudo-labels, the U-Net), choose thresholds on the validation "
                    "split and write a model folder. Methods: " + ", ".join(METHODS)
                    + " (artseg train --list-methods describes them).")
    parser.add_argument("--method", choices=METHODS, metavar="NAME",
                        help="the method to train (default: the preset's or config's, "
                             "scorecam_unet): " + ", ".join(METHODS))
    parser.add_argument("--list-methods", action="store_true",
                        help="list the methods with the supervision each needs, and exit")
    parser.add_argument("--project", help="an artseg project folder (instead of --images/--labels; "
                                          "its masks/ are used as curated masks)")
    parser.add_argument("--images", help="image folder the labels refer to")
    parser.add_argument("--labels", help="labels.csv (image,label); optional for a method "
                                          "that needs no labels (cdl)")
    parser.add_argument("--out", help="model folder to create (with --project: default "
                                      "models/<UTC time>-<method>/)")
    parser.add_argument("--preset", default="fast", choices=sorted(PRESETS),
                        help="settings preset (default fast; paper is for GPUs)")
    parser.add_argument("--config", help="a config.json (or a model folder) to start from")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set scorecam_weighting=softmax")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), help="compute device")
    parser.add_argument("--epochs", type=int, help="epochs for every network (classifier, "
                                                   "U-Net, anomaly detectors)")
    parser.add_argument("--masks", help="folder of curated masks <key>.tif")
    parser.add_argument("--init", help="model folder to fine-tune from")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--from-scratch", action="store_true",
                        help="with --project and curated masks: train new networks instead of "
                             "fine-tuning the current model")
    parser.add_argument("--holdout-fraction", type=float, default=None, metavar="F",
                        help="with --project: share of curated masks held out to compare models "
                             "(chosen once, kept in project.json; default 0.2, only with at least "
                             "5 masks)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(run=run)


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``KEY=VALUE``; the value is read as JSON when it parses, else as text."""
    if "=" not in text:
        raise ArtSegError(f"--set {text!r}: expected KEY=VALUE")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def build_config(args: argparse.Namespace) -> ArtSegConfig:
    """The run's config: preset or config file, then the command-line overrides."""
    if args.config:
        path = Path(args.config)
        path = path / "config.json" if path.is_dir() else path
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ArtSegError(f"{path}: cannot read config ({exc})") from None
        data = data.get("config", data)
        config = ArtSegConfig.from_dict(data, str(path))
    else:
        config = preset(args.preset)
    changes = dict(parse_override(item) for item in args.set)
    if getattr(args, "method", None):
        changes["method"] = args.method
    if args.device:
        changes["device"] = args.device
    if args.epochs is not None:
        changes["classifier_epochs"] = changes["unet_epochs"] = args.epochs
        params = changes.get("anomaly_params", config.anomaly_params)
        changes["anomaly_params"] = detector_epochs(params, args.epochs)
    if args.seed is not None:
        changes["seed"] = args.seed
    return ArtSegConfig.from_dict({**config.to_dict(), **changes}, "command line")


def detector_epochs(params: Any, epochs: int) -> Any:
    """``anomaly_params`` with ``epochs`` set for every detector that has that parameter."""
    if not isinstance(params, dict):
        return params  # the config's validation names the problem
    from ..methods.anomaly_methods import detector_class

    out = {name: dict(value) if isinstance(value, dict) else value
           for name, value in params.items()}
    for name in ANOMALY_METHODS:
        try:
            defaults = detector_class(name).default_params()
        except ArtSegError:
            continue
        if "epochs" in defaults and isinstance(out.setdefault(name, {}), dict):
            out[name]["epochs"] = epochs
    return out


def list_methods_text() -> str:
    """The methods, their supervision and description, for ``--list-methods``."""
    import textwrap

    from ..methods import SUPERVISIONS, list_methods

    lines = []
    for method in list_methods():
        lines.append(f"{method.name:16s} {method.title}")
        lines.append(f"{'':16s} needs: {SUPERVISIONS[method.supervision]}")
        lines += textwrap.wrap(method.description, 84, initial_indent=" " * 17,
                               subsequent_indent=" " * 17)
    return "\n".join(lines)


def existing_labels(images: Path, labels_path: Path) -> dict[str, str]:
    """Labels whose image exists; missing images are reported on stderr and skipped."""
    table = read_labels_csv(labels_path)
    if table.duplicates:
        print(f"note: {labels_path}: {len(table.duplicates)} image(s) labelled more than once; "
              f"the last row counts (first: {table.duplicates[0]})", file=sys.stderr)
    present = {k: v for k, v in table.labels.items() if (images / k).is_file()}
    missing = [k for k in table.labels if k not in present]
    if missing:
        print(f"note: {len(missing)} labelled image(s) not found in {images}, skipped "
              f"(first: {missing[0]})", file=sys.stderr)
    return present


def model_folder_name(method: str) -> str:
    """A new model folder name: ``<UTC timestamp>-<method>``."""
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + f"-{method}"


def free_folder(parent: Path, name: str) -> Path:
    """``parent/name``, or ``parent/name-2``, ``-3`` ... when taken (two runs in one second)."""
    candidate, n = parent / name, 1
    while candidate.exists():
        n += 1
        candidate = parent / f"{name}-{n}"
    return candidate


@dataclass(frozen=True)
class TrainInputs:
    """What a run trains on and where its model goes."""

    images: Path
    labels: dict[str, str]
    out: Path
    masks: str | Path | None
    project: Any = None  #: the :class:`~napari_artseg.project.Project` of ``--project``
    #: ``--project`` with curated masks and no ``--masks``: the MDL retrain, not a plain run
    retrain: bool = False


def resolve_inputs(args: argparse.Namespace, config: ArtSegConfig,
                   folder_name: Callable[[str], str] = model_folder_name) -> TrainInputs:
    """The images, labels, model folder and masks the options of ``artseg train`` name.

    With ``--project``: the project's image folder and ``labels.csv``, its
    ``masks/`` as curated masks, and ``--out`` or ``models/<folder_name(method)>``;
    a project with curated masks and no ``--masks`` gives ``retrain=True`` (and
    no labels: the retrain reads the project itself).

    Raises
    ------
    ArtSegError
        Missing or conflicting options, a folder that does not exist, or labels
        the method cannot train on.
    """
    from ..methods import get_method

    method = get_method(config.method)
    needs_labels = method.supervision != "none"
    project = None
    if args.project:
        from ..project import Project
        from ..retrain import curated_images

        if args.images or args.labels:
            raise ArtSegError("give either --project or --images/--labels, not both")
        project = Project.open(args.project)
        images, labels_path = project.image_folder, project.labels_path
        out = (Path(args.out) if args.out
               else free_folder(project.models_dir, folder_name(config.method)))
        masks = args.masks or (project.masks_dir if project.masks_dir.is_dir() else None)
        if not args.masks and curated_images(project):
            return TrainInputs(images, {}, out, masks, project, retrain=True)
    elif args.images and args.out and (args.labels or not needs_labels):
        images, out = Path(args.images), Path(args.out)
        labels_path = Path(args.labels) if args.labels else None
        masks = args.masks
    else:
        raise ArtSegError("give --images, --labels and --out (or --project)")
    if not images.is_dir():
        raise ArtSegError(f"{images}: image folder not found")
    if masks and not Path(masks).is_dir():
        raise ArtSegError(f"{masks}: mask folder not found")
    labels: dict[str, str] = {}
    if labels_path is not None and (needs_labels or labels_path.is_file()):
        labels = existing_labels(images, labels_path)
    if project is not None and not needs_labels:
        labels = {key: labels.get(key, "unsure") for key in project.images()}
    method.check_inputs(labels, masks, config)
    return TrainInputs(images, labels, out, masks, project)


def run(args: argparse.Namespace) -> int:
    """Train and print where the model went."""
    from ..training import train_pipeline

    if args.list_methods:
        print(list_methods_text())
        return 0
    config = build_config(args)
    inputs = resolve_inputs(args, config)
    if inputs.retrain:
        return run_retrain(args, inputs.project, config, inputs.out)
    from ..atomic import remove_stale_temporaries

    out = inputs.out
    remove_stale_temporaries(out.parent)
    if out.exists():
        raise ArtSegError(f"{out}: already exists; choose a new model folder")
    generator = train_pipeline(inputs.images, inputs.labels, out, config, masks_dir=inputs.masks,
                               init=args.init)
    folder = run_with_progress(generator, quiet=args.quiet)
    document = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    print(f"{document['method']} model {document['model_id']} written to {folder}")
    print("thresholds: " + ", ".join(f"{k} {v:.4g}" for k, v in document["thresholds"].items()))
    if inputs.project is not None:
        inputs.project.set_current_model(folder)
        print(f"{folder.name} is now the project's current model")
    return 0


def run_retrain(args: argparse.Namespace, project: Any, config: ArtSegConfig, out: Path) -> int:
    """``train --project`` with curated masks: the MDL retrain with held-out before/after IoU."""
    from ..atomic import remove_stale_temporaries
    from ..retrain import HOLDOUT_FRACTION, retrain

    remove_stale_temporaries(out.parent)
    if out.exists():
        raise ArtSegError(f"{out}: already exists; choose a new model folder")
    fraction = HOLDOUT_FRACTION if args.holdout_fraction is None else args.holdout_fraction
    if not 0 < fraction < 1:
        raise ArtSegError("--holdout-fraction must be between 0 and 1")
    generator = retrain(project, config, out, from_scratch=args.from_scratch,
                        holdout_fraction=fraction, init=args.init)
    report = run_with_progress(generator, quiet=args.quiet)
    document = json.loads((report.model / "config.json").read_text(encoding="utf-8"))
    print(f"model {document['model_id']} written to {report.model}")
    print("thresholds: " + ", ".join(f"{k} {v:.4g}" for k, v in document["thresholds"].items()))
    print(report.text())
    project.set_current_model(report.model)
    print(f"{report.model.name} is now the project's current model")
    return 0
