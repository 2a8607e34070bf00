"""Scaling past one machine: Dask-distributed batch prediction and larger-than-memory images.

The modules here import ``dask``, ``distributed`` and ``zarr`` (the ``distributed``
extra) when used; nothing in the core imports them at import time, so the core
works without them. Multi-GPU training lives in :mod:`napari_artseg.training.ddp`.

- :mod:`.worker_models`: one loaded model per worker process (a cache keyed by
  folder, model id and device).
- :mod:`.dask_predict`: ``artseg predict --dask``, one task per image on a
  ``dask.distributed`` cluster.
- :mod:`.sources`: Zarr, OME-Zarr and TIFF files as lazy dask arrays.
- :mod:`.blocked`: blocked resizing and tiled U-Net prediction of dask arrays
  (``map_overlap``) that reproduce the in-memory path.
- :mod:`.components`: the minimum object size on masks larger than memory.
- :mod:`.zarr_io` and :mod:`.zarr_predict`: writing large maps, and the
  prediction of one larger-than-memory image.
"""
