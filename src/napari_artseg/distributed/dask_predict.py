"""``artseg predict --dask``: batch prediction on a ``dask.distributed`` cluster.

One task per image runs :func:`napari_artseg.cli.predict_image.process_item`, the
same per-image step as the serial command: resume check, prediction, output
TIFFs, summary row or failure row. A task ships a :class:`ModelRef`, the image
path, the output folder, the settings and the image's previous summary row (a
few hundred bytes); the worker reads the image and writes the outputs on shared
storage and keeps one loaded model (:mod:`.worker_models`). The client gathers
rows as tasks finish and writes ``summary.csv``.

Zarr stores, and TIFFs above
:data:`~napari_artseg.large_images.LARGE_IMAGE_PIXELS`, are not one task: their
blocks are spread over the cluster (:mod:`.zarr_predict`) after the per-image
tasks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import ArtSegError, typed_first_line
from .worker_models import ModelRef, cached_model

#: Default local workers: one per core, at most this many.
MAX_DEFAULT_WORKERS = 8
#: Seconds to wait for a scheduler given by address.
CONNECT_TIMEOUT_S = 30
#: Seconds without any worker on the cluster after which the images not done yet are given up
#: (failed rows; a re-run predicts them). Workers that are restarting or queued jobs that
#: start within this time simply continue the run.
NO_WORKERS_TIMEOUT_S = 600.0
#: Seconds between checks for finished tasks while none is finished.
POLL_S = 0.2
#: Seconds to fetch one finished task's row before waiting for it again (its worker died).
RESULT_TIMEOUT_S = 10.0
#: The local cluster's workers keep freed memory for reuse (:mod:`.worker_memory`); a
#: benchmark sets this to False to measure them with glibc's own thresholds.
LOCAL_HEAP_REUSE = True


def default_workers() -> int:
    """Local worker processes when ``--workers`` is not given: the CPU cores, at most 8."""
    return max(1, min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1))


@contextlib.contextmanager
def dask_session(address: str | None, workers: int | None) -> Iterator[Any]:
    """A ``distributed.Client``: to the scheduler at ``address``, or to a new local cluster.

    The local cluster has ``workers`` processes with one thread each; each
    process's PyTorch uses its share of the CPU cores, and each keeps freed
    memory for the next image (:mod:`.worker_memory`).

    Raises
    ------
    ArtSegError
        The ``distributed`` package is missing or the scheduler cannot be reached.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ArtSegError("--dask needs the dask.distributed package: "
                          "pip install 'napari-artseg[distributed]'") from None
    if address:
        try:
            client = Client(address, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise ArtSegError(f"{address}: cannot reach a Dask scheduler ({exc})") from None
        with client:
            yield client
        return
    n_workers = workers or default_workers()
    threads = str(max(1, (os.cpu_count() or 1) // n_workers))
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.ERROR, env=env) as cluster, \
            Client(cluster) as client:
        if LOCAL_HEAP_REUSE:
            from .worker_memory import HeapReusePlugin

            client.register_plugin(HeapReusePlugin())
        yield client


def predict_task(ref: ModelRef, item, out: Path, options, previous: dict[str, str] | None
                 ) -> tuple[str, dict[str, Any] | None, bool]:
    """The worker side of one image: :func:`~napari_artseg.cli.predict_image.process_item`.

    Returns ``(key, None, False)`` for an image too large for one task (the
    client then predicts it block by block).
    """
    from ..cli.predict_image import process_item
    from ..cli.predict_resume import is_done
    from ..large_images import LARGE_IMAGE_PIXELS, read_header

    model = cached_model(ref)
    if not options.overwrite and is_done(previous, item, out, model, options):
        return item.key, dict(previous or {}), True
    header = read_header(item.path)
    if header is not None and header.is_tiff and header.pixels > LARGE_IMAGE_PIXELS:
        return item.key, None, False
    return process_item(model, item, out, options, previous)


def _lost(item, model_id: str, exc: BaseException) -> dict[str, Any]:
    """The failure row of an image whose task did not return (a worker died, ...).

    Dask retries a task whose worker died on other workers; when the workers
    die every time (``KilledWorker``), the image itself is the likely cause.
    """
    if type(exc).__name__ == "KilledWorker":
        error = (f"{item.path}: the worker process predicting it died, on every try "
                 "(a crash or out of memory: see the worker logs)")
    else:
        error = f"{item.path}: task lost on the cluster ({typed_first_line(exc)})"
    return {"image": item.key, "model_id": model_id, "status": "failed", "error": error}


def _abandoned(item, model_id: str, waited: float) -> dict[str, Any]:
    """The failure row of an image not predicted because the cluster has no worker left."""
    return {"image": item.key, "model_id": model_id, "status": "failed",
            "error": f"{item.path}: not predicted: no Dask worker on the cluster for "
                     f"{waited:.0f} s (workers died or were stopped); re-run to predict it"}


class _Finished:
    """Futures as they finish, with a way out when the cluster has no worker left.

    Iterating gives ``(future, 0.0)`` for each finished future, and at most once
    ``(None, seconds)`` when the cluster has had no worker for
    :data:`NO_WORKERS_TIMEOUT_S` seconds while tasks were waiting (then stops).
    :meth:`again` waits once more for a future whose result was lost with its
    worker (Dask computes it again).
    """

    def __init__(self, client, futures) -> None:
        from distributed import as_completed

        self.client = client
        self.pending = as_completed(list(futures))

    def again(self, future) -> None:
        """Wait for ``future`` again (its result went away before it could be fetched)."""
        self.pending.add(future)

    def __iter__(self) -> Iterator[tuple[Any, float]]:
        without_workers = None
        while not self.pending.is_empty():
            batch = self.pending.next_batch(block=False)
            yield from ((future, 0.0) for future in batch)
            if batch:
                without_workers = None
                continue
            if self.client.scheduler_info().get("workers"):
                without_workers = None
            elif without_workers is None:
                without_workers = time.monotonic()
            elif time.monotonic() - without_workers >= NO_WORKERS_TIMEOUT_S:
                yield None, time.monotonic() - without_workers
                return
            time.sleep(POLL_S)


def predict_on_cluster(client, model, images: list, out: Path, options,
                       table: dict[str, dict[str, str]], device: str
                       ) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """Predict ``images`` on ``client``'s cluster; yield ``(key, row, skipped)`` as they finish.

    Parameters
    ----------
    client : distributed.Client
        The cluster.
    model : ArtSegModel
        The model as loaded on the client (its folder, id and settings).
    images : list of InputImage
        The inputs.
    out : pathlib.Path
        Output folder on storage the workers share.
    options : PredictOptions
        Threshold, minimum size, gate and overwrite settings.
    table : dict
        Rows of an earlier summary by key (for the resume check).
    device : str
        Device for the workers (``auto``: each worker's GPU when it has one).

    Raises
    ------
    ArtSegError
        A worker cannot load the model (the rest of the run is cancelled).

    Notes
    -----
    A worker that dies loses its tasks; Dask runs them again elsewhere, and a
    task whose workers die every time becomes a failed row. When the cluster
    has no worker at all for :data:`NO_WORKERS_TIMEOUT_S` seconds, the images
    not done yet become failed rows and the run ends (a re-run predicts them).
    """
    from ..cli.predict_image import process_item
    from ..cli.predict_large import predict_blocked as blocked

    ref = ModelRef(str(Path(model.folder).resolve()), model.model_id, device)
    out = out.resolve()
    run = uuid.uuid4().hex[:8]  # task keys unique to this run (several runs may share a cluster)
    single = [item for item in images if not item.is_zarr]
    futures = {client.submit(predict_task, ref, item, out, options, table.get(item.key),
                             pure=False, key=f"artseg-predict-{run}-{index}"): item
               for index, item in enumerate(single)}
    large = [item for item in images if item.is_zarr]
    try:
        finished = _Finished(client, futures)
        for future, waited in finished:
            if future is None:  # no worker left: give up what is not done
                for item in [*futures.values(), *large]:
                    yield item.key, _abandoned(item, model.model_id, waited), False
                return
            if future.status in ("pending", "lost"):  # its row went with its worker: recomputed
                finished.again(future)
                continue
            try:
                key, row, skipped = future.result(timeout=RESULT_TIMEOUT_S)
            except TimeoutError:  # its worker died while sending it: wait for it again
                finished.again(future)
                continue
            except ArtSegError as exc:  # the model itself: every image would fail the same way
                raise ArtSegError(f"on the cluster: {exc}") from None
            except Exception as exc:  # its workers died every time, or the task was lost
                item = futures.pop(future)
                yield item.key, _lost(item, model.model_id, exc), False
                continue
            item = futures.pop(future)
            if row is None:
                large.append(item)
            else:
                yield key, row, skipped
    finally:
        client.cancel(list(futures))
    predict = partial(blocked, client=client, device=device)
    for item in large:
        yield process_item(model, item, out, options, table.get(item.key), predict=predict)
