"""``artseg predict --dask``: same outputs as serial predict, resumable, per-image failures."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

from napari_artseg.cli import main

THRESHOLD = "0.4977"  # the barely trained tiny model's maps sit near 0.4977: masks are mixed


def run_cli(capsys, *args):
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def rows_of(folder):
    with (folder / "summary.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def output_times(folder, keys):
    return {k: [(folder / f"{k}{s}").stat().st_mtime_ns for s in ("_prob.tif", "_mask.tif")]
            for k in keys}


def test_local_cluster_gives_the_serial_outputs(tiny_model, twenty_images, tmp_path, capsys):
    common = ["--model", tiny_model, "--threshold", THRESHOLD, "--min-size", 3, "--quiet"]
    status, _, _ = run_cli(capsys, "predict", *common, "--out", tmp_path / "serial", twenty_images)
    assert status == 0
    status, out, err = run_cli(capsys, "predict", *common, "--out", tmp_path / "dask", "--dask",
                               "--workers", 2, twenty_images)
    assert status == 0, err
    assert "20 image(s) predicted" in out
    serial, dask_rows = rows_of(tmp_path / "serial"), rows_of(tmp_path / "dask")
    assert [r["image"] for r in dask_rows] == [r["image"] for r in serial]
    for a, b in zip(serial, dask_rows, strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == \
            {k: v for k, v in b.items() if k != "seconds"}
    cut = float(THRESHOLD)
    mixed = 0
    for row in serial:
        key = row["image"]
        prob_s = tifffile.imread(tmp_path / "serial" / f"{key}_prob.tif")
        prob_d = tifffile.imread(tmp_path / "dask" / f"{key}_prob.tif")
        mask_s = tifffile.imread(tmp_path / "serial" / f"{key}_mask.tif")
        mask_d = tifffile.imread(tmp_path / "dask" / f"{key}_mask.tif")
        assert prob_d.dtype == np.float32 and mask_d.dtype == np.uint8
        assert np.abs(prob_d - prob_s).max() <= 1e-5
        differ = mask_s != mask_d
        assert (np.abs(prob_s[differ] - cut) <= 1e-5).all()
        mixed += 0 < mask_s.mean() < 1
    assert mixed >= 5  # the comparison covers masks that are neither empty nor full


def test_existing_scheduler_loads_the_model_once_per_worker_and_resumes(
        tiny_model, twenty_images, dask_client, tmp_path, capsys):
    from napari_artseg.distributed.worker_models import cache_report

    before = dask_client.run(cache_report)
    out = tmp_path / "out"
    args = ["predict", "--model", tiny_model, "--out", out, "--no-gate", "--quiet", "--dask",
            "--scheduler", dask_client.scheduler.address, twenty_images]
    status, text, _ = run_cli(capsys, *args)
    assert status == 0 and "20 image(s) predicted" in text
    after = dask_client.run(cache_report)
    new_loads = [after[w]["loads"] - before[w]["loads"] for w in after]
    assert all(n <= 1 for n in new_loads) and sum(new_loads) >= 1
    assert all(report["devices"] == ["cpu"] for report in after.values() if report["loads"])

    # a run that stopped early: 3 images lost their maps, 2 their summary rows
    rows = rows_of(out)
    keys = [r["image"] for r in rows]
    for key in keys[:3]:
        (out / f"{key}_mask.tif").unlink()
    kept = [r for r in rows if r["image"] not in keys[3:5]]
    with (out / "summary.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    untouched = keys[5:]
    times = output_times(out, untouched)
    status, text, _ = run_cli(capsys, *args)
    assert status == 0
    assert "5 image(s) predicted, 15 already done (skipped), 0 failed" in text
    assert output_times(out, untouched) == times
    assert sorted(r["image"] for r in rows_of(out)) == sorted(keys)
    assert {r["status"] for r in rows_of(out)} == {"ok"}


def test_corrupt_images_are_failure_rows_and_the_rest_complete(tiny_model, dask_client,
                                                               tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        tifffile.imwrite(inputs / f"good_{i}.tif", rng.normal(900, 30, (60, 52)).astype(np.uint16))
    (inputs / "broken.tif").write_bytes(b"II*\x00garbage")
    (inputs / "empty.tif").write_bytes(b"")
    status, text, err = run_cli(capsys, "predict", "--model", tiny_model, "--out", tmp_path / "o",
                                "--quiet", "--dask", "--scheduler",
                                dask_client.scheduler.address, inputs)
    assert status == 3 and "3 image(s) predicted" in text and "2 failed" in text
    rows = {r["image"]: r for r in rows_of(tmp_path / "o")}
    assert {rows[f"good_{i}"]["status"] for i in range(3)} == {"ok"}
    assert rows["broken"]["status"] == "failed" and "broken.tif" in rows["broken"]["error"]
    assert rows["empty"]["status"] == "failed" and "empty.tif" in rows["empty"]["error"]
    assert "Traceback" not in err


CHILD = r"""
import sys
import torch
torch.set_num_threads(1)
from napari_artseg.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL of a process group is POSIX")
def test_killed_run_resumes_and_computes_only_the_missing_images(tiny_model, dask_client,
                                                                 tmp_path, capsys):
    images, out = tmp_path / "many", tmp_path / "out"
    images.mkdir()
    rng = np.random.default_rng(0)
    n = 160
    for i in range(n):
        tifffile.imwrite(images / f"img_{i:03d}.tif",
                         rng.normal(1000, 40, (40, 48)).astype(np.uint16))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, "predict", "--model", str(tiny_model), "--out", str(out),
         "--quiet", "--no-gate", "--dask", "--workers", "2", str(images)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if (out / "summary.csv").exists() and len(list(out.glob("*_mask.tif"))) >= 25:
                break
            time.sleep(0.2)
        assert child.poll() is None, "the run ended before it could be killed"
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the client and its local workers
        child.communicate()
    done = [r["image"] for r in rows_of(out) if r["status"] == "ok"]
    assert 0 < len(done) < n
    for path in out.glob("*.tif"):  # every visible output is complete
        assert tifffile.imread(path).shape == (40, 48)
    times = output_times(out, done)
    status, text, _ = run_cli(capsys, "predict", "--model", tiny_model, "--out", out, "--quiet",
                              "--no-gate", "--dask", "--scheduler",
                              dask_client.scheduler.address, images)
    assert status == 0
    assert f"{n - len(done)} image(s) predicted, {len(done)} already done" in text
    assert output_times(out, done) == times
    assert len(rows_of(out)) == n and {r["status"] for r in rows_of(out)} == {"ok"}


def test_cluster_usage_errors_are_one_line(tiny_model, tmp_path, capsys, monkeypatch):
    from napari_artseg.distributed import dask_predict

    tifffile.imwrite(tmp_path / "a.tif", np.zeros((16, 16), np.uint16))
    status, _, err = run_cli(capsys, "predict", "--model", tiny_model, "--out", tmp_path / "o",
                             "--workers", 2, tmp_path / "a.tif")
    assert status == 2 and "--dask" in err and err.count("\n") == 1
    monkeypatch.setattr(dask_predict, "CONNECT_TIMEOUT_S", 1)
    status, _, err = run_cli(capsys, "predict", "--model", tiny_model, "--out", tmp_path / "o",
                             "--dask", "--scheduler", "tcp://127.0.0.1:9", tmp_path / "a.tif")
    assert status == 2 and "cannot reach a Dask scheduler" in err and err.count("\n") == 1


def _heap_jobs() -> tuple[int, bool]:
    """In a worker: the process's open heap_reuse blocks, and whether mallopt is there."""
    from napari_artseg import process_memory

    return process_memory._jobs, process_memory.MALLOPT is not None


def test_local_workers_keep_freed_memory_and_a_given_cluster_is_left_alone(dask_client):
    from napari_artseg.distributed.dask_predict import dask_session

    with dask_session(None, 1) as client:
        held = list(client.run(_heap_jobs).values())
    glibc = held[0][1]
    assert held == [(1 if glibc else 0, glibc)]  # the thresholds are set where glibc has them
    with dask_session(dask_client.scheduler.address, None) as client:
        assert {jobs for jobs, _ in client.run(_heap_jobs).values()} == {0}
