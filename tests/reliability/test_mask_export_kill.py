"""SIGKILL while curated masks are saved and while a project is exported.

(1) A child process saves curated masks (brush strokes) for four images in a
loop, printing an acknowledgement after each save; it is killed at random
moments. Every mask file then reads back whole and holds either the last
acknowledged mask of its image or the one in flight; the provenance table reads
back and has a row for every acknowledged image; only hidden temporaries are
left, which :func:`remove_stale_temporaries` removes.
(2) ``export_project`` is killed at random moments; every visible file in the
export folder is complete (TIFFs read back at the image's size, CSVs parse,
``export.json`` parses, the model archive passes ``testzip``), and a second export
into the same folder completes.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile

import numpy as np
import pytest
import tifffile
from reliability_helpers import child_env

from napari_artseg.atomic import remove_stale_temporaries
from napari_artseg.provenance import ProvenanceTable

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX")

MASK_TRIALS = 12
EXPORT_TRIALS = 4
SIZE = 48
IMAGES = [f"well A0{i} f{i}.tif" for i in range(4)]

SAVER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from napari_artseg.curation import CuratedMasks, MaskEdit

    masks = CuratedMasks(sys.argv[1])
    names = sys.argv[2:]
    size = {size}

    def pattern(index, step):
        yy, xx = np.mgrid[0:size, 0:size]
        return ((yy * 7 + xx * 3 + step * 11 + index * 5) % (step % 5 + 2)) == 0

    step = 0
    while True:
        for index, name in enumerate(names):
            masks.save(MaskEdit(name, "empty", np.zeros((size, size), bool)),
                       pattern(index, step))
            print(f"ACK {{index}} {{step}}", flush=True)
        step += 1
    """
).format(size=SIZE)


def pattern(index: int, step: int) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    return ((yy * 7 + xx * 3 + step * 11 + index * 5) % (step % 5 + 2)) == 0


class Child:
    """A child process whose stdout lines are collected by a thread."""

    def __init__(self, args: list[str]) -> None:
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=child_env())
        self.lines: list[str] = []
        self.times: list[float] = []
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in iter(self.process.stdout.readline, ""):
            self.lines.append(line.strip())
            self.times.append(time.monotonic())
            self.started.set()

    def kill_after(self, seconds: float) -> None:
        assert self.started.wait(timeout=120), self.process.stderr.read()
        time.sleep(seconds)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.thread.join(timeout=30)


def visible_files(folder):
    return [p for p in folder.rglob("*") if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)]


def test_sigkill_while_saving_masks_never_loses_an_acknowledged_stroke(tmp_path):
    rng = random.Random(11)
    masks_dir = tmp_path / "masks"
    for trial in range(MASK_TRIALS):
        child = Child([sys.executable, "-c", SAVER, str(masks_dir), *IMAGES])
        child.kill_after(rng.uniform(0.0, 0.6))
        acked: dict[int, int] = {}
        for line in child.lines:
            _, index, step = line.split()
            acked[int(index)] = int(step)
        for index, name in enumerate(IMAGES):
            path = masks_dir / name
            if index not in acked:
                continue  # may exist from an earlier trial, never acknowledged in this one
            saved = tifffile.imread(path) != 0
            candidates = [pattern(index, acked[index]), pattern(index, acked[index] + 1)]
            assert any(np.array_equal(saved, c) for c in candidates), (trial, name)
        table = ProvenanceTable(masks_dir / "provenance.csv")
        for index in acked:
            assert table.get(IMAGES[index]) is not None, (trial, IMAGES[index])
        for path in visible_files(masks_dir):
            assert path.name in IMAGES or path.name == "provenance.csv", path
        remove_stale_temporaries(masks_dir, age_s=0)
        assert {p.name for p in masks_dir.iterdir()} <= {*IMAGES, "provenance.csv"}


EXPORTER = textwrap.dedent(
    """
    import sys
    from napari_artseg.export import ExportOptions, export_project
    from napari_artseg.project import Project

    project = Project.open(sys.argv[1])
    out = sys.argv[2] + ("-scratch" if sys.argv[-1] == "--" else "")
    generator = export_project(project, out, ExportOptions(), device="cpu")
    for event in generator:
        print(f"EVENT {event.step}/{event.total} {event.message}", flush=True)
    print("DONE", flush=True)
    """
)


def check_export_folder(out, sizes: dict[str, tuple[int, int]]) -> None:
    """Every visible file in an export folder is complete and readable."""
    for path in visible_files(out):
        relative = path.relative_to(out)
        if path.suffix == ".tif":
            key = str(relative.relative_to(relative.parts[0]))
            assert tifffile.imread(path).shape == sizes[key], relative
        elif path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                rows = list(csv.reader(handle))
            assert rows and all(len(r) == len(rows[0]) for r in rows), relative
        elif path.name == "export.json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                assert archive.testzip() is None, relative
        elif path.name.endswith(".torchscript.pt"):
            with zipfile.ZipFile(path) as archive:  # TorchScript files are zip archives
                assert archive.testzip() is None, relative
        else:
            assert path.name == "README.txt", relative


def test_sigkill_during_export_leaves_only_complete_files(tiny_dataset, tiny_model, tmp_path):
    from napari_artseg.project import Project

    images = tmp_path / "images"
    shutil.copytree(tiny_dataset / "images", images)
    project = Project.create(images)
    shutil.copyfile(tiny_dataset / "labels.csv", project.labels_path)
    shutil.copytree(tiny_model, project.models_dir / "20000101T000000Z-tiny")
    project.set_current_model("20000101T000000Z-tiny")
    sizes = {p.name: tifffile.imread(p).shape for p in images.glob("*.tif")}
    out = tmp_path / "export"
    rng = random.Random(5)
    command = [sys.executable, "-c", EXPORTER, str(project.folder), str(out)]
    timing = Child([*command, "--"])  # a full run into a scratch folder: how long an export takes
    timing.process.wait(timeout=300)
    timing.thread.join(timeout=30)
    assert timing.lines[-1] == "DONE", timing.process.stderr.read()
    duration = timing.times[-1] - timing.times[0]
    inside = 0
    for _ in range(EXPORT_TRIALS):
        child = Child(command)
        child.kill_after(rng.uniform(0.0, duration))
        inside += "DONE" not in child.lines
        check_export_folder(out, sizes)
    assert inside >= EXPORT_TRIALS // 2  # most kills landed inside an export
    finished = subprocess.run(command, capture_output=True, text=True, env=child_env(),
                              timeout=300)
    assert finished.returncode == 0, finished.stderr
    check_export_folder(out, sizes)
    summary = json.loads((out / "export.json").read_text(encoding="utf-8"))
    assert sum(summary["counts"].values()) == len(sizes)
    folders = [out, *[p for p in out.rglob("*") if p.is_dir()]]
    for folder in folders:
        remove_stale_temporaries(folder, age_s=0)
    for folder in folders:
        assert not [p for p in folder.iterdir() if p.name.startswith(".")], folder
