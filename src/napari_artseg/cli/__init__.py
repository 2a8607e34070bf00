"""The ``artseg`` command line: synth, train, predict, evaluate, demo.

Each sub-command lives in its own module; this one builds the parser and turns
user errors into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from .. import __version__
from ..errors import ArtSegError
from . import demo_cmd, evaluate_cmd, export_cmd, fill_cmd, predict_cmd, synth_cmd, train_cmd

EXIT_OK, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 2, 3, 130
COMMANDS = (synth_cmd, train_cmd, predict_cmd, evaluate_cmd, demo_cmd, fill_cmd, export_cmd)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog="artseg",
        description="Find and remove artifacts in brightfield images (ScoreCAM-U-Net).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def _interrupt(signum: int, frame: object) -> None:
    """Turn SIGTERM into KeyboardInterrupt so long jobs stop cleanly (partial model saved)."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return the exit status.

    0: done; 2: usage error or nothing could be processed; 3: some images failed;
    130: interrupted.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
    try:
        return int(args.run(args) or EXIT_OK)
    except ArtSegError as exc:
        print(f"artseg {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"artseg {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"artseg {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
