"""Scaling past one machine: Dask-distributed batch prediction and larger-than-memory images.

The modules here import ``dask`` and ``distributed`` (the ``distributed`` extra);
nothing else in the package imports them, so the core works without them.

- :mod:`.worker_models`: one loaded model per worker process (a cache keyed by
  folder, model id and device).
- :mod:`.dask_predict`: ``artseg predict --dask``, one task per image on a
  ``dask.distributed`` cluster.
- :mod:`.blocked`: blocked resizing and tiled U-Net prediction of dask arrays
  (``map_overlap``) that reproduce the in-memory path.
- :mod:`.zarr_io` and :mod:`.zarr_predict`: Zarr / OME-Zarr / large TIFF
  sources, and the prediction of one larger-than-memory image.
"""
