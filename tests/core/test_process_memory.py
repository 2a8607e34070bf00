"""Peak memory of a process: its own, seen by a child started from a larger parent."""

import subprocess
import sys

import numpy as np
import pytest

from napari_artseg.process_memory import peak_rss_kib, reset_peak_rss, status_kib

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

CHILD = "from napari_artseg.process_memory import peak_rss_kib; print(peak_rss_kib())"


def test_a_child_reports_its_own_peak_not_its_parents():
    """``ru_maxrss`` would carry this process's 400 MB into the child; VmHWM does not."""
    ballast = np.ones(400 * 2**20 // 8)  # 400 MiB touched in this process
    assert peak_rss_kib() > 400 * 1024
    child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                           check=True)
    assert int(child.stdout) < 300 * 1024
    del ballast


def test_reset_brings_the_peak_down_to_the_current_size():
    ballast = np.ones(200 * 2**20 // 8)
    del ballast
    before = peak_rss_kib()
    reset_peak_rss()
    after = peak_rss_kib()
    assert after < before - 100 * 1024
    assert abs(after - status_kib("VmRSS")) < 50 * 1024
