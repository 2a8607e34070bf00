"""``artseg demo``: synthesise data, train ``fast``, predict, evaluate, show the table.

Opens napari with the results when a display is available (``--no-viewer`` to
skip). Everything lands in one folder a person can open.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import ArtSegError

#: The demo trains ``fast`` with fewer epochs, no self-training round and the classifier's
#: half-resolution view (256 px of a 512 px image, width 16; the preset itself looks at 512 px,
#: which trains 2-3x slower), so the whole demo stays within 10 minutes on a 2-core CPU.
DEMO_SETTINGS = {"classifier_epochs": 30, "unet_epochs": 15, "self_training_rounds": 0,
                 "input_size": 256, "scale": 0.5, "resnet_width": 16, "unet_input_size": 256,
                 "unet_downsample": 1, "lr_patience": 5, "early_stop_patience": 12}


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``demo`` sub-command."""
    parser = sub.add_parser(
        "demo", help="synth -> train (fast) -> predict -> evaluate on built-in synthetic data",
        description="Runs the whole pipeline on synthetic brightfield images in a few minutes "
                    "on a CPU and prints the metrics table.")
    parser.add_argument("--out", default="artseg-demo", help="work folder (default ./artseg-demo)")
    parser.add_argument("--n", type=int, default=200, help="training images (default 200)")
    parser.add_argument("--n-test", type=int, default=40, help="test images (default 40)")
    parser.add_argument("--size", type=int, default=512, help="image side in px (default 512)")
    parser.add_argument("--epochs", type=int,
                        help="epochs for both networks (default: classifier 30, U-Net 15, no "
                             "self-training round, on a half-resolution classifier view, to "
                             "stay within minutes; the fast preset itself uses 80, 30, one "
                             "round and the full-resolution view)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the training set")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--no-viewer", action="store_true", help="do not open napari")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def display_available() -> bool:
    """True when a window can be opened (a display server, or macOS/Windows)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _step(parser_args: list[str]) -> int:
    """Run one sub-command through the same parser the user would."""
    from . import build_parser

    args = build_parser().parse_args(parser_args)
    return int(args.run(args) or 0)


def run(args: argparse.Namespace) -> int:
    """The whole demo; returns the exit status."""
    out = Path(args.out)
    train, test = out / "data" / "train", out / "data" / "test"
    model, predictions = out / "model", out / "predictions"
    if model.exists():
        raise ArtSegError(f"{model}: exists from an earlier demo; remove {out} or use --out")
    quiet = ["--quiet"] if args.quiet else []
    print(f"1/4 synthesising {args.n} training and {args.n_test} test images in {out / 'data'}")
    _step(["synth", str(train), "--n", str(args.n), "--size", str(args.size),
           "--seed", str(args.seed), *quiet])
    _step(["synth", str(test), "--n", str(args.n_test), "--size", str(args.size),
           "--seed", str(args.seed + 1000), *quiet])
    print("2/4 training ScoreCAM-U-Net (preset fast)")
    settings = dict(DEMO_SETTINGS)
    if args.epochs is not None:
        settings.update(classifier_epochs=args.epochs, unet_epochs=args.epochs)
    epochs = [part for key, value in settings.items() for part in ("--set", f"{key}={value}")]
    _step(["train", "--images", str(train / "images"), "--labels", str(train / "labels.csv"),
           "--out", str(model), "--preset", "fast", "--device", args.device, *epochs, *quiet])
    print("3/4 predicting the test images")
    status = _step(["predict", "--model", str(model), "--out", str(predictions),
                    "--device", args.device, str(test / "images"), *quiet])
    if status not in (0, 3):
        return status
    print("4/4 evaluating against the true masks")
    _step(["evaluate", "--pred", str(predictions), "--truth", str(test / "masks"),
           "--labels", str(test / "labels.csv")])
    if not args.no_viewer and display_available():
        from .._demo_viewer import show_demo

        show_demo(test, predictions)
    return 0


