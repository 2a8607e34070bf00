"""napari-artseg: find and remove artifacts in brightfield microscopy images.

The package root imports nothing heavy; the headless core lives in submodules
(``config``, ``imageio``, ``models``, ``scorecam``, ``training``, ``predictor``,
``metrics``, ``cli``) and never imports napari or Qt.
"""

__version__ = "0.1.0"
