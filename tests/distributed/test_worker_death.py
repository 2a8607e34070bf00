"""``artseg predict --dask`` when a worker process dies in the middle of a run."""

from __future__ import annotations

import csv
import logging
import os

import numpy as np
import pytest
import tifffile

from napari_artseg.cli import main

#: Loaded by every worker process of the cluster below, also by the ones its nannies start
#: again: reading the image named POISON ends the process at once, as a crash or the kernel's
#: out-of-memory killer would.
PRELOAD = r"""
import os
from pathlib import Path

import napari_artseg.cli.predict_image as predict_image

POISON = {poison!r}
# a worker may run this more than once: always wrap the original reader
original = getattr(predict_image, "unpoisoned_read_image", predict_image.read_image)
predict_image.unpoisoned_read_image = original


def read_image(path, *args, **kwargs):
    if Path(path).name == POISON:
        os._exit(9)
    return original(path, *args, **kwargs)


predict_image.read_image = read_image
"""

#: The two ways an image of this run can fail (see napari_artseg.distributed.dask_predict).
DIED = "the worker process predicting it died, on every try"
NO_WORKER = "not predicted: no Dask worker on the cluster"


def rows_of(folder):
    with (folder / "summary.csv").open(newline="") as handle:
        return {row["image"]: row for row in csv.DictReader(handle)}


@pytest.mark.skipif(os.name != "posix", reason="worker processes end with os._exit")
def test_a_dying_worker_loses_only_its_image_and_a_rerun_completes_it(tiny_model, tmp_path,
                                                                      capsys, monkeypatch):
    from distributed import Client, LocalCluster

    from napari_artseg.distributed import dask_predict

    # nannies restart dead workers; on a loaded machine a restart can fail and leave none
    monkeypatch.setattr(dask_predict, "NO_WORKERS_TIMEOUT_S", 20.0)
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    rng = np.random.default_rng(4)
    for i in range(12):
        tifffile.imwrite(images / f"img_{i:02d}.tif",
                         rng.normal(1000, 40, (40, 48)).astype(np.uint16))
    preload = tmp_path / "poison_preload.py"
    preload.write_text(PRELOAD.format(poison="img_05.tif"))
    command = ["predict", "--model", str(tiny_model), "--out", str(out), "--quiet", "--no-gate",
               "--dask", str(images)]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.CRITICAL, preload=[str(preload)],
                      env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}) as cluster, \
            Client(cluster) as client:
        status = main([*command, "--scheduler", client.scheduler.address])
    text, err = capsys.readouterr()
    print(text, err)  # shown by pytest when an assertion below fails
    rows = rows_of(out)
    failed = sorted(k for k, r in rows.items() if r["status"] == "failed")
    ok = sorted(k for k, r in rows.items() if r["status"] == "ok")
    # the image that kills its worker is a failed row naming it; the other images completed
    # (workers died under them too: Dask ran them again) unless no worker was left
    assert status == 3 and len(rows) == 12 and "img_05" in failed
    assert DIED in rows["img_05"]["error"] or NO_WORKER in rows["img_05"]["error"]
    for key in failed:
        assert rows[key]["error"].startswith(str(images / f"{key}.tif"))
        assert DIED in rows[key]["error"] or NO_WORKER in rows[key]["error"]
        assert f"failed: {rows[key]['error']}" in err
    assert f"{len(ok)} image(s) predicted, 0 already done (skipped), {len(failed)} failed" in text
    assert "Traceback" not in err
    for key in ok:
        assert tifffile.imread(out / f"{key}_prob.tif").shape == (40, 48)
    assert not (out / "img_05_prob.tif").exists()
    times = {k: (out / f"{k}_mask.tif").stat().st_mtime_ns for k in ok}

    # the cause gone (a new local cluster without the poison): only the failed images run
    status = main([*command, "--workers", "2"])
    text, _ = capsys.readouterr()
    assert status == 0
    assert f"{len(failed)} image(s) predicted, {len(ok)} already done" in text
    assert {k: (out / f"{k}_mask.tif").stat().st_mtime_ns for k in ok} == times
    assert {r["status"] for r in rows_of(out).values()} == {"ok"}
