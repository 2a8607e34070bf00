"""Fixtures of the distributed suite: a 2-worker local Dask cluster and 20 tiny images."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
pytest.importorskip("zarr")


@pytest.fixture(scope="session")
def dask_client():
    """A ``distributed.Client`` on a 2-process local cluster (one thread each)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.ERROR,
                      env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}) as cluster, \
            Client(cluster) as client:
        yield client


@pytest.fixture(scope="session")
def twenty_images(tiny_dataset, tmp_path_factory) -> Path:
    """20 TIFFs: the 16 tiny 96 px images (in a sub-folder) and 4 of other sizes and types.

    Two of the extra images are larger than one 64 px tile at the tiny preset's
    scale 0.5, so they are predicted over several blended tiles.
    """
    import tifffile

    folder = tmp_path_factory.mktemp("twenty")
    shutil.copytree(tiny_dataset / "images", folder / "plate1")
    rng = np.random.default_rng(7)
    base = tifffile.imread(sorted((tiny_dataset / "images").glob("*.tif"))[1])
    tiled = np.tile(base, (2, 3))[:170, :230]
    tifffile.imwrite(folder / "large_a.tif", tiled)
    tifffile.imwrite(folder / "large_b.tif", np.tile(base, (3, 2))[:250, :150].T.copy())
    tifffile.imwrite(folder / "small.tif", rng.normal(900, 30, (50, 70)).astype(np.uint16))
    tifffile.imwrite(folder / "float.tif", rng.normal(0.5, 0.1, (90, 64)).astype(np.float32))
    return folder
