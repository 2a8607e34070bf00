"""The headless core never imports napari or Qt."""

import subprocess
import sys

CORE_MODULES = [
    "napari_artseg", "napari_artseg.config", "napari_artseg.image_files",
    "napari_artseg.labels_file", "napari_artseg.models", "napari_artseg.scorecam",
    "napari_artseg.training", "napari_artseg.predictor", "napari_artseg.metrics",
    "napari_artseg.tiling", "napari_artseg.model_files", "napari_artseg.synth",
    "napari_artseg.cli", "napari_artseg.project", "napari_artseg.label_store",
    "napari_artseg.readahead", "napari_artseg.conventional", "napari_artseg.large_images",
    "napari_artseg.provenance", "napari_artseg.curation", "napari_artseg.prediction_cache",
    "napari_artseg.training_job", "napari_artseg.training_curves", "napari_artseg.postprocess",
    "napari_artseg.export", "napari_artseg.qc_table", "napari_artseg.background_fill",
    "napari_artseg.retrain", "napari_artseg.active_selection", "napari_artseg.methods",
    "napari_artseg.methods.anomaly", "napari_artseg.subprocess_jobs", "napari_artseg.distributed",
    "napari_artseg.distributed.dask_predict", "napari_artseg.distributed.zarr_predict",
]


def test_core_imports_no_gui_toolkit():
    code = (
        "import sys\n"
        f"for name in {CORE_MODULES!r}: __import__(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'vispy'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == ""
