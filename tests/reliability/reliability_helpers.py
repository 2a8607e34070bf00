"""Helpers shared by the reliability tests: model copies, CLI subprocesses, summary reading."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def child_env() -> dict[str, str]:
    """Environment for child processes: unbuffered, one compute thread (the machine is shared)."""
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def run_cli_subprocess(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``artseg`` in a child process and return the completed process."""
    return subprocess.run(
        [sys.executable, "-m", "napari_artseg", *[str(a) for a in args]],
        capture_output=True, text=True, timeout=timeout, env=child_env(),
    )


def summary_rows(folder: Path) -> list[dict[str, str]]:
    """The rows of ``folder/summary.csv``."""
    with (folder / "summary.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def copy_model(src: Path, dst: Path, **config_changes) -> Path:
    """Copy a model folder, optionally changing fields of its config (same architecture)."""
    shutil.copytree(src, dst)
    if config_changes:
        document = json.loads((dst / "config.json").read_text(encoding="utf-8"))
        document["config"].update(config_changes)
        (dst / "config.json").write_text(json.dumps(document), encoding="utf-8")
    return dst
