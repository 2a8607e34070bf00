"""The "next most useful" keys: pick the image most worth a look, in a worker.

:class:`ActiveSelector` scores candidate images once per model (classifier
uncertainty for unlabelled images; for predicted masks the expected number of
wrong pixels, see :mod:`napari_artseg.active_selection`), keeps the scores, and
emits :attr:`ActiveSelector.picked` with the best-scored candidate. Scoring runs
in a napari worker, so a keypress never blocks napari.
"""

from __future__ import annotations

import json
from typing import Any

from qtpy.QtCore import QObject, Signal

from ..active_selection import next_most_useful, rank, score_predictions, score_unlabelled
from ..export import current_model_folder
from ..prediction_cache import LoadedModel


class ActiveSelector(QObject):
    """Scores images with the project's current model and picks the next most useful one.

    Parameters
    ----------
    mode : str
        ``label`` (unlabelled images, classifier uncertainty) or ``correct``
        (cached predictions, expected wrong pixels of their masks).
    """

    #: The chosen image (relative path).
    picked = Signal(str)
    #: A message for the user (nothing to pick, no model, errors).
    message = Signal(str)

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.scores: dict[str, float] = {}
        self.tried: set[str] = set()
        self.model_id = ""
        self.worker: Any = None
        self._candidates: list[str] = []
        self._models = LoadedModel()

    def pick(self, project: Any, candidates: list[str]) -> None:
        """Emit the best-scored of ``candidates`` (scoring the unscored ones first)."""
        if self.worker is not None:
            self.message.emit("Still ranking the images …")
            return
        folder = current_model_folder(project) if project is not None else None
        if folder is None:
            self.message.emit("No trained model yet: train one first (Train tab).")
            return
        model_id = str(json.loads((folder / "config.json").read_text("utf-8")).get("model_id"))
        if model_id != self.model_id:
            self.scores, self.tried, self.model_id = {}, set(), model_id
        if not candidates:
            self.message.emit("Nothing left to pick: every image is done.")
            return
        self._candidates = list(candidates)
        missing = [c for c in candidates
                   if c not in self.scores and self._worth_scoring(project, c)]
        if not missing:
            self._emit_best()
            return
        self._start(project, folder, missing)

    def _worth_scoring(self, project: Any, image: str) -> bool:
        """Not tried yet with this model, or (correct mode) its prediction exists now."""
        if image not in self.tried:
            return True
        if self.mode != "correct":
            return False
        from ..prediction_cache import PredictionCache

        return PredictionCache(project.predictions_dir, self.model_id).has(image)

    def _start(self, project: Any, folder: Any, missing: list[str]) -> None:
        from napari.qt.threading import create_worker

        if self.mode == "label":
            self._models.select(folder)
            generator = score_unlabelled(self._models.get, project.image_folder, missing)
        else:
            generator = score_predictions(project.predictions_dir, self.model_id, missing)
        self.tried.update(missing)
        self.message.emit(f"Ranking {len(missing)} image(s) by "
                          + ("how unsure the model is …" if self.mode == "label"
                             else "how many pixels a correction would fix …"))
        self.worker = create_worker(_drive, generator, _start_thread=False, _ignore_errors=True)
        self.worker.returned.connect(self._on_scored)
        self.worker.errored.connect(self._on_errored)
        self.worker.finished.connect(self._on_finished)
        self.worker.start()

    def _on_scored(self, scores: dict[str, float]) -> None:
        self.scores.update(scores)
        self._emit_best()

    def _emit_best(self) -> None:
        ranked = rank({c: self.scores[c] for c in self._candidates if c in self.scores})
        image = next_most_useful(ranked)
        if image is None:
            self.message.emit("No scored image: predict the images first (Predict all images)."
                              if self.mode == "correct" else "No image could be scored.")
            return
        score = self.scores[image]
        self.message.emit(f"Next most useful: {image} (" + (
            f"uncertainty {score:.3f})" if self.mode == "label"
            else f"about {score:.0f} wrong pixels expected)"))
        self.picked.emit(image)

    def _on_errored(self, exc: BaseException) -> None:
        self.message.emit(f"Ranking failed: {exc}")

    def _on_finished(self) -> None:
        self.worker = None

    def release(self) -> None:
        """Stop a running ranking and free the model."""
        if self.worker is not None:
            self.worker.quit()
        self._models.release()


def _drive(generator: Any) -> Any:
    """Run a progress generator in a worker; return its result."""
    return (yield from generator)
