"""Benchmark: time from a labelling keypress to the next image drawn on the canvas.

Writes N uncompressed 16-bit TIFFs (2048 x 2048 by default), evicts them from the
page cache (``posix_fadvise(POSIX_FADV_DONTNEED)``), opens them in the labelling
widget of a real napari viewer, and presses the label keys on the canvas:

* steady: one keypress every ``--interval`` seconds (a person looking at each image);
* burst: groups of ``--burst`` keypresses, each sent as soon as the previous
  image is drawn (a person hammering the key), with a pause between groups.

"Drawn" is the end of the first canvas paint that shows the target image: a
handler connected last to the vispy ``draw`` event (so it runs after the scene
was drawn) calls ``glFinish`` and reads the clock. The clock starts just before
the key event is sent to the canvas (``QTest.keyClick``). Every label is written to
``labels.csv`` (fsync + rename) inside that interval.

Run under a display (``xvfb-run -a python benchmarks/bench_labelling.py``);
``--quick`` uses 40 images of 1024 x 1024.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_images(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """Write ``n`` dim uint16 images (uncompressed TIFF, as microscopes write them)."""
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    background = (400 + 150 * np.sin(6 * xx) * np.cos(4 * yy)).astype(np.float32)
    paths = []
    for i in range(n):
        path = folder / f"image_{i:04d}.tif"
        paths.append(path)
        if path.exists() and path.stat().st_size > size * size * 2:
            continue
        noise = rng.integers(0, 60, (size, size), dtype=np.uint16)
        tifffile.imwrite(path, (background + i % 7 * 10).astype(np.uint16) + noise)
    return paths


def evict_from_page_cache(paths: list[Path]) -> None:
    """Ask the kernel to drop the files' cached pages (flushed first)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def summary(name: str, times_ms: list[float], waited: int) -> str:
    """One result line: median, 95th percentile, max."""
    ordered = sorted(times_ms)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return (
        f"{name:>6}: n={len(ordered):3d}  median {statistics.median(ordered):6.1f} ms  "
        f"p95 {p95:6.1f} ms  max {ordered[-1]:6.1f} ms  (image not yet read: {waited})"
    )


class DrawClock:
    """Records the time of each canvas draw and what image was on screen."""

    def __init__(self, widget) -> None:
        self.widget = widget
        self.draws: list[tuple[float, str | None]] = []

    def on_draw(self, _event) -> None:
        """vispy draw event handler, connected last: the scene has been drawn."""
        from vispy.gloo import gl

        gl.glFinish()  # wait until the GL commands of this frame have executed
        self.draws.append((time.perf_counter(), self.widget.shown_image))


def run(args: argparse.Namespace) -> int:
    import napari
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QApplication

    from napari_artseg._widgets import LabellingWidget

    folder = Path(args.folder or tempfile.mkdtemp(prefix="artseg-bench-"))
    images = folder / "images"
    print(f"writing {args.n} images of {args.size} x {args.size} uint16 into {images} ...")
    paths = make_images(images, args.n, args.size)
    shutil.rmtree(images / "artseg", ignore_errors=True)
    evict_from_page_cache(paths)

    viewer = napari.Viewer(show=True)
    widget = LabellingWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Label images")
    canvas = viewer.window._qt_viewer.canvas
    clock = DrawClock(widget)
    canvas._scene_canvas.events.draw.connect(clock.on_draw, position="last")
    app = QApplication.instance()

    def pump_until(condition, timeout=30.0) -> None:
        end = time.perf_counter() + timeout
        while not condition():
            app.processEvents()
            if time.perf_counter() > end:
                raise TimeoutError("image not drawn in time")
            time.sleep(0.0005)

    widget.open_folder(images)
    pump_until(lambda: widget.shown_image == widget.navigator.current)
    pump_until(lambda: clock.draws and clock.draws[-1][1] == widget.shown_image)
    keys = (Qt.Key.Key_K, Qt.Key.Key_J)
    presses = 0

    def press_and_time() -> tuple[float, bool]:
        nonlocal presses
        target_index = widget.navigator.index + 1
        target = widget.navigator.images[target_index]
        ready = widget._readahead.peek(widget.project.image_path(target)) is not None
        n_draws = len(clock.draws)
        start = time.perf_counter()
        QTest.keyClick(canvas.native, keys[presses % 2])
        presses += 1
        pump_until(lambda: any(img == target for _, img in clock.draws[n_draws:]))
        drawn = next(t for t, img in clock.draws[n_draws:] if img == target)
        return (drawn - start) * 1e3, not ready

    half = (args.n - 1) // 2
    steady, steady_waits = [], 0
    for _ in range(half):
        ms, waited = press_and_time()
        steady.append(ms)
        steady_waits += waited
        end = time.perf_counter() + args.interval
        pump_until(lambda end=end: time.perf_counter() >= end)
    burst, burst_waits = [], 0
    while widget.navigator.index + 1 < len(widget.navigator.images):
        for _ in range(args.burst):
            if widget.navigator.index + 1 >= len(widget.navigator.images):
                break
            ms, waited = press_and_time()
            burst.append(ms)
            burst_waits += waited
        end = time.perf_counter() + args.pause
        pump_until(lambda end=end: time.perf_counter() >= end)

    labelled = len(widget.project.labels)
    print(f"{args.n} images {args.size} x {args.size} uint16, page cache evicted, "
          f"{labelled} labels saved to {widget.project.labels_path}")
    print(summary("steady", steady, steady_waits) + f"  every {args.interval * 1e3:.0f} ms")
    print(summary("burst", burst, burst_waits) + f"  groups of {args.burst}, no wait")
    widget.release()
    viewer.close()
    if not args.folder:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="number of images (200)")
    parser.add_argument("--size", type=int, default=2048, help="image side in pixels (2048)")
    parser.add_argument("--quick", action="store_true", help="40 images of 1024 x 1024")
    parser.add_argument("--interval", type=float, default=0.25, help="steady pace, s (0.25)")
    parser.add_argument("--burst", type=int, default=10, help="keypresses per burst (10)")
    parser.add_argument("--pause", type=float, default=0.5, help="pause between bursts, s")
    parser.add_argument("--folder", help="keep the images here (reused between runs)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.size = 40, 1024
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
