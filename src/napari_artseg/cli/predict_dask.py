"""``artseg predict --dask``: the command's side of a run on a ``dask.distributed`` cluster.

The cluster work itself is :mod:`napari_artseg.distributed.dask_predict`; this
module opens the session, feeds its results to the summary and closes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .predict_inputs import InputImage, PredictOptions
from .predict_loop import collect_rows


def run_dask(model, images: list[InputImage], out: Path, options: PredictOptions,
             table: dict[str, dict[str, Any]], *, scheduler: str | None, workers: int | None,
             device: str, quiet: bool) -> tuple[int, int, int]:
    """Predict ``images`` on the cluster at ``scheduler`` (or a local one of ``workers``).

    Returns
    -------
    tuple of int
        Images predicted now, skipped as done, failed (:func:`.predict_loop.collect_rows`).
    """
    from ..distributed.dask_predict import dask_session, predict_on_cluster

    with dask_session(scheduler, workers) as client:
        results = predict_on_cluster(client, model, images, out, options, table, device)
        return collect_rows(results, table, images, out, quiet)
