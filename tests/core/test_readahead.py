"""ReadAhead: background reading within a byte budget, contrast limits from a subsample."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from napari_artseg.image_files import LoadedImage, write_tiff
from napari_artseg.readahead import CONTRAST_SAMPLE, ReadAhead, contrast_limits


def fake_reader(size=64, delay=0.0, log=None):
    def read(path):
        if log is not None:
            log.append((path.name, threading.current_thread().name))
        time.sleep(delay)
        value = float(path.stem.split("_")[-1])
        return LoadedImage(np.full((size, size), value, np.float32), path, "uint16")

    return read


def paths(tmp_path, n):
    return [tmp_path / f"img_{i}.tif" for i in range(n)]


def wait_for(condition, timeout=5.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_reads_in_background_and_calls_back(tmp_path):
    ready = []
    log = []
    cache = ReadAhead(max_bytes=10**9, reader=fake_reader(log=log), on_ready=ready.append)
    files = paths(tmp_path, 4)
    cache.want(files)
    wait_for(lambda: len(ready) == 4)
    assert all(name.startswith("artseg-read") for _, name in log)
    item = cache.peek(files[2])
    assert item.data[0, 0] == 2 and item.error is None
    cache.close()


def test_byte_budget_bounds_cache_and_reads(tmp_path):
    one = 64 * 64 * 4
    log = []
    cache = ReadAhead(max_bytes=3 * one, reader=fake_reader(log=log))
    files = paths(tmp_path, 10)
    cache.want(files)
    wait_for(lambda: len(cache.cached_paths()) == 3)
    time.sleep(0.05)
    assert cache.cached_bytes <= 3 * one
    # two reader threads: completion order varies, the set of cached images must not
    assert sorted(p.name for p in cache.cached_paths()) == ["img_0.tif", "img_1.tif", "img_2.tif"]
    assert len(log) == 3  # nothing beyond the budget was read
    cache.want(files[5:])  # user moved on: old images make room
    wait_for(lambda: set(cache.cached_paths()) == set(files[5:8]))
    assert cache.cached_bytes <= 3 * one
    cache.close()


def test_get_waits_or_reads_and_errors_become_messages(tmp_path):
    cache = ReadAhead(max_bytes=10**9, reader=fake_reader(delay=0.05))
    files = paths(tmp_path, 2)
    cache.want(files[:1])
    assert cache.get(files[0]).data[0, 0] == 0  # waits for the pending read
    assert cache.get(files[1]).data[0, 0] == 1  # not wanted: read now
    cache.close()
    real = ReadAhead()
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff")
    item = real.get(broken)
    assert item.data is None and "broken.tif" in item.error
    real.close()


def test_real_files_and_contrast(tmp_path):
    rng = np.random.default_rng(0)
    data = (rng.random((300, 200)) * 500 + 100).astype(np.uint16)
    write_tiff(tmp_path / "x.tif", data)
    cache = ReadAhead()
    item = cache.get(tmp_path / "x.tif")
    assert item.dtype == "uint16" and item.data.shape == (300, 200)
    low, high = item.contrast_limits
    assert 100 <= low < 110 and 590 < high <= 600
    cache.close()


def test_contrast_limits_subsample_close_to_full_and_small(monkeypatch):
    rng = np.random.default_rng(1)
    image = (rng.gamma(2.0, 300.0, (2048, 2048))).astype(np.float32)
    full_low, full_high = np.percentile(image, (0.5, 99.5))
    seen = []
    real = np.percentile

    def counting(values, *args, **kwargs):
        seen.append(np.size(values))
        return real(values, *args, **kwargs)

    monkeypatch.setattr(np, "percentile", counting)
    low, high = contrast_limits(image)
    assert low == pytest.approx(full_low, rel=0.05)
    assert high == pytest.approx(full_high, rel=0.05)
    # the limits come from a subsample of about CONTRAST_SAMPLE pixels, not the 4 Mpx image
    assert seen and max(seen) <= 2 * CONTRAST_SAMPLE < image.size // 16
    assert contrast_limits(np.zeros((4, 4), np.float32)) == (0.0, 1.0)
