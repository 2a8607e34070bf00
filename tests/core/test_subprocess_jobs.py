"""run_in_subprocess: events, return value, errors, cancel and a dying child."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from napari_artseg.errors import ArtSegError
from napari_artseg.subprocess_jobs import SubprocessJobError, run_in_subprocess
from napari_artseg.training.events import ProgressEvent


def count_to(n: int, marker: str | None = None, delay: float = 0.0):
    """Yields n events with the child's pid; writes ``marker`` in its clean-up."""
    try:
        for i in range(n):
            time.sleep(delay)
            yield ProgressEvent("count", i + 1, n, metrics={"pid": os.getpid()})
        return n * 10
    finally:
        if marker:
            Path(marker).write_text("cleaned up", encoding="utf-8")


def fails_with(kind: str):
    yield ProgressEvent("fail", 0, 1)
    if kind == "artseg":
        raise ArtSegError("images/a.tif: not a readable TIFF")
    if kind == "unpicklable":
        class Local(Exception):
            pass

        raise Local("a local class cannot be pickled")
    os._exit(9)  # the process dies without a word (as when the OS kills it)


def drive(generator):
    events = []
    try:
        while True:
            events.append(next(generator))
    except StopIteration as stop:
        return events, stop.value


def test_events_and_return_value_come_back_in_order():
    before = set(multiprocessing.active_children())
    events, value = drive(run_in_subprocess(count_to, 5))
    assert [e.step for e in events] == [1, 2, 3, 4, 5] and value == 50
    assert {e.metrics["pid"] for e in events} != {os.getpid()}  # it really ran elsewhere
    assert set(multiprocessing.active_children()) <= before


def test_the_childs_exception_is_raised_here():
    with pytest.raises(ArtSegError, match=r"images/a\.tif: not a readable TIFF"):
        drive(run_in_subprocess(fails_with, "artseg"))
    with pytest.raises(SubprocessJobError, match="Local: a local class cannot be pickled"):
        drive(run_in_subprocess(fails_with, "unpicklable"))


def test_a_child_that_dies_gives_a_clear_error():
    with pytest.raises(ArtSegError, match=r"ended unexpectedly \(exit code 9\)"):
        drive(run_in_subprocess(fails_with, "die"))


def test_closing_stops_the_child_after_its_clean_up(tmp_path):
    marker = tmp_path / "marker.txt"
    before = set(multiprocessing.active_children())
    generator = run_in_subprocess(count_to, 10_000, str(marker), 0.01)
    assert next(generator).step == 1
    next(generator)
    generator.close()
    assert marker.read_text(encoding="utf-8") == "cleaned up"
    assert set(multiprocessing.active_children()) <= before


def report_niceness():
    """One event carrying the child's CPU niceness."""
    yield ProgressEvent("nice", 1, 1, metrics={"nice": os.nice(0)})


@pytest.mark.skipif(not hasattr(os, "nice"), reason="os.nice is POSIX only")
def test_the_child_runs_at_a_lower_cpu_priority():
    here = os.nice(0)
    events, _ = drive(run_in_subprocess(report_niceness, nice=5))
    assert events[0].metrics["nice"] == min(19, here + 5)
    events, _ = drive(run_in_subprocess(report_niceness))
    assert events[0].metrics["nice"] == here  # 0: unchanged
