"""Dock widget: predict with the selected model, tune the mask live, correct it and accept it.

It follows the image the labelling widget shows (:meth:`PredictWidget.show_image`).
Predictions run in a napari worker (GUI-free :func:`~napari_artseg.prediction_cache.predict_images`)
and are cached per model in ``predictions/<model_id>/``; the threshold and minimum
size re-make the mask from the stored probability map, without the network. The
mask is a Labels layer; accepting it writes ``masks/<key>.tif`` and its provenance
(:mod:`napari_artseg.curation`). Edits are never lost: showing another image
saves unsaved edits as curated (and says so).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QWidget

from ..curation import CuratedMasks, MaskEdit
from ..errors import ArtSegError
from ..postprocess import final_mask, mask_cuts
from ..prediction_cache import (
    CachedPrediction,
    LoadedModel,
    PredictionCache,
    PredictionStep,
    complete_models,
    predict_images,
)
from ..project import Project
from .active_keys import ActiveSelector
from .keys import CORRECTION_KEYS, KeyBinder
from .lifecycle import show_status
from .predict_layout import build_predict_ui
from .prediction_layers import PredictionLayers

MASK_UPDATE_DELAY_MS = 15


class PredictWidget(QWidget):
    """Predict, show and correct artifact masks of the shared project's images.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer to draw in.
    project : Project, optional
        The shared project (usually set through :meth:`set_project`).
    """

    #: Asks the container to show an image (the "next most useful mask" key).
    image_requested = Signal(str)

    def __init__(self, napari_viewer: Any, project: Project | None = None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.selector = ActiveSelector("correct")
        self.selector.picked.connect(self.image_requested)
        self.selector.message.connect(self.show_message)
        self.project: Project | None = None
        self.curated: CuratedMasks | None = None
        self.models = LoadedModel()
        self.image: str | None = None
        self.prediction: CachedPrediction | None = None
        self.edit: MaskEdit | None = None
        self.worker: Any = None
        self.model_id = ""
        self._keys = KeyBinder(CORRECTION_KEYS, self)
        self.layers = PredictionLayers(napari_viewer, on_mask_created=self._keys.bind)
        self._mask_timer = QTimer(self)
        self._mask_timer.setSingleShot(True)
        self._mask_timer.setInterval(MASK_UPDATE_DELAY_MS)
        self._mask_timer.timeout.connect(self.update_mask)
        build_predict_ui(self)
        self._keys.bind(self.viewer)
        self.set_project(project)

    # ------------------------------------------------------------------ project and models
    def set_project(self, project: Project | None) -> None:
        """Use the shared ``project`` (its models, predictions and curated masks)."""
        self.save_pending_edits()
        self.project = project
        self.curated = CuratedMasks(project.masks_dir) if project is not None else None
        self.image = self.prediction = self.edit = None
        self.layers.clear()
        self.refresh_models()

    def refresh_models(self) -> None:
        """List the project's complete models; select the current one (else the newest)."""
        self.model_box.clear()
        names = complete_models(self.project.models_dir) if self.project is not None else []
        self.model_box.addItems(names)
        current = self.project.current_model if self.project is not None else None
        if names:
            self.model_box.setCurrentIndex(names.index(current) if current in names else 0)
        self._select_model(self.model_box.currentText() or None)

    def _on_model_chosen(self, index: int) -> None:
        """The user picked a model: it becomes the project's current model."""
        name = self.model_box.itemText(index)
        if self.project is not None and name:
            self.project.set_current_model(name)
        self._select_model(name or None)

    def _select_model(self, name: str | None) -> None:
        folder = self.project.models_dir / name if (self.project and name) else None
        self.models.select(folder)
        self.model_id = ""
        if folder is not None:
            document = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            self.model_id = str(document.get("model_id", ""))
            thresholds = document.get("thresholds", {})
            self.threshold.set_value(float(thresholds.get("mask", 0.5)), emit=False)
            for box, value in ((self.min_size_box, int(thresholds.get("min_size_px", 0))),
                               (self.fallback_box, float(thresholds.get("fallback") or 0.0))):
                box.blockSignals(True)
                box.setValue(value)
                box.blockSignals(False)
        if self.image is not None:
            self.show_image(self.image)

    def on_model_trained(self, folder: Path) -> None:
        """A new model was trained: list it and select it (it is the current model)."""
        self.refresh_models()

    def next_most_useful_mask(self) -> None:
        """Ask for the uncurated predicted mask with the most expected wrong pixels."""
        if self.project is None or self.curated is None:
            self.show_message("Open an image folder in the Label tab first.")
            return
        self.save_pending_edits()
        todo = [i for i in self.project.images() if not self.curated.path_for(i).is_file()]
        self.selector.pick(self.project, todo)

    # ------------------------------------------------------------------ following the image
    def show_image(self, image: str, prediction: CachedPrediction | None = None) -> None:
        """Show the curated mask and/or the prediction of ``image`` (the shown image).

        Unsaved edits of the mask shown so far are saved as curated first.
        ``prediction`` (fresh from the worker) saves reading the cache.
        """
        self.save_pending_edits()
        self.image = image
        self.prediction = prediction if prediction is not None else self._cached(image)
        self.edit = None
        curated = self.curated.edit_for(image) if self.curated is not None else None
        if curated is not None:
            self.edit, mask = curated
            self.layers.show_mask(mask)
        elif self.prediction is not None:
            mask = self._mask_from_prediction()
            self.edit = MaskEdit(image, "prediction", mask.copy(), self.prediction.model_id)
            self.layers.show_mask(mask)
        else:
            self.layers.clear()
        self._refresh_layers()

    def _cached(self, image: str) -> CachedPrediction | None:
        if self.project is None or not self.model_id:
            return None
        return PredictionCache(self.project.predictions_dir, self.model_id).load(image)

    def _on_view_option(self, *_: Any) -> None:
        """Score-CAM or un-gated box toggled: redraw the maps and re-make an unedited mask."""
        self._refresh_layers()
        if self.edit is not None and self.edit.source == "prediction" \
                and not self.edit.changed(self.layers.mask_data()):
            self.update_mask()

    def _refresh_layers(self) -> None:
        """Probability and saliency layers and the score text for the current prediction."""
        pred = self.prediction
        if pred is None:
            self.layers.show_saliency(None)
            self.layers.remove_probability()
            self.score_label.setText("No prediction for this image yet: press W."
                                     if self.image and self.model_id else "")
            return
        self.layers.show_probability(pred.map(gated=not self.ungated_box.isChecked()))
        self.layers.show_saliency(pred.saliency if self.saliency_box.isChecked() else None)
        if self.layers.mask is not None:  # keep the mask on top, and the layer to paint active
            self.viewer.layers.selection.active = self.layers.mask
        verdict = "artifact: map shown" if pred.gate_passed else (
            "called clean: map blanked (tick 'Un-gated map' to see the U-Net's)")
        self.score_label.setText(f"Artifact score {pred.score:.3f} (gate "
                                 f"{self._gate():.3f}): {verdict}")

    def _gate(self) -> float:
        folder = self.models.folder
        try:
            document = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            return float(document["thresholds"]["gate"])
        except (OSError, ValueError, KeyError, TypeError):
            return float("nan")

    # ------------------------------------------------------------------ live mask
    def _mask_from_prediction(self) -> np.ndarray:
        prob = self.prediction.map(gated=not self.ungated_box.isChecked())
        fallback = self.fallback_box.value() or None
        return final_mask(prob, mask_cuts(self.threshold.value(), fallback),
                          self.min_size_box.value())

    def _schedule_mask_update(self, *_: Any) -> None:
        self._mask_timer.start()

    def update_mask(self) -> None:
        """Re-make the mask from the stored map at the current threshold and minimum size."""
        if self.prediction is None or self.edit is None:
            return
        if self.edit.source != "prediction" or self.edit.changed(self.layers.mask_data()):
            self.show_message("The mask has edits or is curated: the threshold was not applied "
                              "(use 'Reset mask to prediction' to start again from the map).")
            return
        mask = self._mask_from_prediction()
        self.edit.baseline = mask.copy()
        self.layers.show_mask(mask)

    def reset_mask(self) -> None:
        """Replace the mask by the prediction at the current threshold (edits dropped)."""
        if self.prediction is None or self.image is None:
            self.show_message("No prediction for this image to reset to.")
            return
        mask = self._mask_from_prediction()
        self.edit = MaskEdit(self.image, "prediction", mask.copy(), self.prediction.model_id)
        self.layers.show_mask(mask)

    def draw_from_scratch(self) -> None:
        """An empty mask for this image, to draw with napari's brush."""
        if self.image is None or self.project is None:
            self.show_message("Show an image in the Label tab first.")
            return
        from ..image_files import read_image

        shape = self.prediction.shape if self.prediction is not None else \
            read_image(self.project.image_path(self.image)).data.shape
        mask = np.zeros(shape, dtype=bool)
        self.edit = MaskEdit(self.image, "empty", mask.copy())
        self.layers.show_mask(mask)
        self.show_message("Paint with P (brush), E (eraser), F (fill); accept with G.")

    # ------------------------------------------------------------------ accepting
    def accept_mask(self) -> bool:
        """Save the mask as this image's curated mask and record its provenance."""
        data = self.layers.mask_data()
        if self.edit is None or self.curated is None or data is None:
            self.show_message("No mask to accept: predict (W) or draw one first.")
            return False
        pixel = self.prediction.pixel_size_um if self.prediction is not None else None
        try:
            row = self.curated.save(self.edit, data, pixel)
        except (ArtSegError, OSError) as exc:
            self.show_message(f"Mask not saved: {exc}", error=True)
            return False
        self.show_message(f"Saved {self.curated.path_for(row.image).name} as curated "
                          f"({row.provenance}).")
        return True

    def save_pending_edits(self) -> None:
        """Save unsaved edits of the shown mask as curated (autosave; announced)."""
        data = self.layers.mask_data()
        if self.edit is None or data is None or not self.edit.changed(data):
            return
        if self.accept_mask():
            from napari.utils.notifications import show_info

            show_info(f"Your edits of {self.edit.image} were saved as its curated mask.")

    # ------------------------------------------------------------------ predicting
    def predict_current(self) -> None:
        """Predict the shown image."""
        if self.image is None:
            self.show_message("Show an image in the Label tab first.")
            return
        self._run([self.image])

    def predict_all(self) -> None:
        """Predict every image of the project."""
        if self.project is not None:
            self._run(self.project.images())

    def _run(self, images: list[str]) -> None:
        from napari.qt.threading import create_worker

        if self.worker is not None or self.project is None:
            return
        if self.models.folder is None:
            self.show_message("No trained model: train one in the Train tab first.", error=True)
            return
        self.progress_bar.setRange(0, len(images))
        self.progress_bar.setValue(0)
        self.worker = create_worker(
            predict_images, self.models.get, self.project.image_folder, images,
            self.project.predictions_dir, saliency=self.saliency_box.isChecked(),
            _start_thread=False, _ignore_errors=True,
            _progress={"total": len(images), "desc": "ArtSeg: predict"})
        self.worker.yielded.connect(self._on_step)
        self.worker.errored.connect(self._on_errored)
        self.worker.finished.connect(self._on_finished)
        self._set_running(True)
        self.worker.start()

    def cancel(self) -> None:
        """Stop after the current image."""
        if self.worker is not None:
            self.worker.quit()

    def _set_running(self, running: bool) -> None:
        for button in (self.predict_button, self.predict_all_button):
            button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _on_step(self, step: PredictionStep) -> None:
        self.progress_bar.setValue(step.index)
        if step.error:
            self.show_message(f"{step.image}: {step.error}", error=True)
        elif step.image == self.image and step.result is not None:
            self.show_image(step.image, step.result)

    def _on_errored(self, exc: BaseException) -> None:
        self.show_message(f"Prediction failed: {exc}", error=True)

    def _on_finished(self) -> None:
        self.worker = None
        self._set_running(False)

    def show_message(self, text: str, error: bool = False) -> None:
        """Show a message (and a napari notification for errors)."""
        show_status(self.status_label, text, error)

    # ------------------------------------------------------------------ closing
    def release(self) -> None:
        """Save pending edits, stop predicting, release the keys and the model's memory."""
        self.save_pending_edits()
        if self.worker is not None:
            self.worker.quit()
        self.selector.release()
        self.evaluation.release()
        self._keys.release_all()
        self.models.release()

    def closeEvent(self, event: Any) -> None:
        """Release everything when the widget is closed."""
        self.release()
        super().closeEvent(event)
