"""One training run of a project, as the training widget drives it (GUI-free).

:class:`TrainingJob` wraps :func:`~napari_artseg.training.train_pipeline` (any
method, ``config.method``) for a project: it picks the new model folder
(``models/<UTC time>-<method>/``, the CLI's naming), keeps the per-epoch
history for the loss plot, turns errors into one line that says what to do, and
cancels by closing the pipeline generator in the thread that runs it.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

from .config import ArtSegConfig
from .errors import ArtSegError, first_line
from .training import train_pipeline  # imported here, not in the worker: imports hold the GIL
from .training.events import ProgressEvent
from .training_curves import CurveRecorder, render_curves, save_curves

#: CPU priority a child-process run gives up (``os.nice``): training is background work,
#: the napari GUI thread should win a busy core.
CHILD_NICE = 10


def warm_up() -> None:
    """Import what a run imports lazily, and draw the curve plot once.

    ``torch._dynamo`` (pulled in by the optimiser) takes 1-2 s of mostly
    GIL-holding work to import; matplotlib's import and its first drawing (fonts,
    Agg) took about 0.3 s. Done for the first time during a run, either stalls
    the GUI thread. The training widget runs this in a background thread as soon
    as it is created, long before Start is clicked.
    """
    import torch._dynamo  # noqa: F401

    render_curves([], 120, 80)


class TrainingFailed(ArtSegError):
    """Training stopped on an error; the message says what to do."""


def advice_for(exc: BaseException) -> str:
    """A one-line message for a training error, saying what to do about it."""
    text = first_line(exc)
    if "out of memory" in text.lower() or type(exc).__name__ == "OutOfMemoryError":
        return ("Training ran out of GPU memory: lower the batch size or the input size, "
                "or choose device CPU, then start again.")
    if isinstance(exc, ArtSegError):
        return text
    return f"Training failed ({type(exc).__name__}: {text}). Check the settings and start again."


def needs_no_labels(config: ArtSegConfig) -> bool:
    """Whether ``config.method`` trains without human labels."""
    from .methods import get_method

    return get_method(config.method).supervision == "none"


def new_model_folder(models_dir: Path, method: str) -> Path:
    """A model folder that does not exist yet: ``<UTC time>-<method>`` (``-2`` ... if taken)."""
    from .cli.train_cmd import free_folder, model_folder_name

    return free_folder(models_dir, model_folder_name(method))


class TrainingJob:
    """Train a model for a project's labels, cancellable from another thread.

    Parameters
    ----------
    image_folder : path-like
        The folder the labels refer to.
    labels : dict
        Image -> ``clean`` / ``artifact`` / ``unsure``.
    models_dir : path-like
        Where the new model folder goes.
    config : ArtSegConfig
        The run's settings.
    masks_dir : path-like, optional
        Curated masks.

    Attributes
    ----------
    out : pathlib.Path
        The model folder the run writes.
    curves : list of dict
        One row per finished epoch (see :func:`~napari_artseg.training_curves.curve_row`);
        saved as PNG and CSV in the model folder when the run ends, however it ends.
    device : str or None
        The device in use (known after the first event).
    in_subprocess : bool
        Run the core generator in a child process (:mod:`napari_artseg.subprocess_jobs`),
        so a Python-heavy training loop never competes with napari's GUI thread for
        the interpreter lock; the napari widget sets it. Off by default.
    threads : int or None
        torch threads of the child process (None: torch's default).
    nice : int
        How much lower the child process's CPU priority is than napari's
        (:data:`CHILD_NICE`), so the GUI thread gets a core first when the
        machine is busy.
    """

    def __init__(self, image_folder: str | os.PathLike, labels: dict[str, str],
                 models_dir: str | os.PathLike, config: ArtSegConfig,
                 masks_dir: str | os.PathLike | None = None) -> None:
        self.image_folder = Path(image_folder)
        self.labels = dict(labels)
        self.config = config
        self.masks_dir = Path(masks_dir) if masks_dir is not None else None
        self.out = new_model_folder(Path(models_dir), config.method)
        self._recorder = CurveRecorder()
        self.curves: list[dict[str, Any]] = self._recorder.rows
        self.device: str | None = None
        self.cancelled = False
        self._events: Generator[ProgressEvent, None, Path] | None = None
        self._curves_written = False
        self.in_subprocess = False
        self.threads: int | None = None
        self.nice = CHILD_NICE

    @classmethod
    def for_project(cls, project: Any, config: ArtSegConfig) -> TrainingJob:
        """A job on a :class:`~napari_artseg.project.Project`'s labels and curated masks.

        For a method that needs no labels (``cdl``) every image of the project
        takes part (unlabelled ones as ``unsure``).
        """
        labels = {k: v for k, v in project.labels.labels.items()
                  if project.image_path(k).is_file()}
        if needs_no_labels(config):
            labels = {k: labels.get(k, "unsure") for k in project.images()}
        masks = project.masks_dir if project.masks_dir.is_dir() else None
        return cls(project.image_folder, labels, project.models_dir, config, masks)

    def missing_inputs(self) -> str:
        """'' when the job's labels and masks suffice for its method, else what is missing."""
        from .methods import get_method

        return get_method(self.config.method).missing_inputs(self.labels, self.masks_dir,
                                                            self.config)

    def _pipeline(self) -> Generator[ProgressEvent, None, Any]:
        """The core generator this job runs."""
        return self._run(train_pipeline, self.image_folder, self.labels, self.out, self.config,
                         masks_dir=self.masks_dir)

    def _run(self, factory: Any, *args: Any, **kwargs: Any) -> Generator[ProgressEvent, None, Any]:
        """``factory(*args, **kwargs)`` here, or in a child process with :attr:`in_subprocess`."""
        if self.in_subprocess:
            from .subprocess_jobs import run_in_subprocess

            return run_in_subprocess(factory, *args, threads=self.threads, nice=self.nice,
                                     **kwargs)
        return factory(*args, **kwargs)

    def _finish(self, result: Any) -> Path:
        """The model folder, from what the core generator returned."""
        return result

    def events(self) -> Generator[ProgressEvent, None, Path]:
        """Run the pipeline: yields its events, returns the model folder.

        Raises
        ------
        TrainingFailed
            On any error, with a message saying what to do (a ``RuntimeError``
            such as CUDA out-of-memory is converted too, so a worker thread
            reports it as an error).
        """
        self._events = self._pipeline()
        try:
            while True:
                try:
                    event = next(self._events)
                except StopIteration as stop:
                    return self._finish(stop.value)
                if self.device is None and "device" in event.metrics:
                    self.device = str(event.metrics["device"])
                self._recorder.add(event)
                yield event
        except Exception as exc:  # every error becomes one line saying what to do
            raise TrainingFailed(advice_for(exc)) from exc
        finally:
            self._events.close()  # cancel: saves a partial model, releases the device
            self.write_curves()

    def cancel(self) -> None:
        """Stop the run at the step it stopped at.

        Call it in the thread that iterates :meth:`events` while that thread is
        not inside the generator (a napari worker's ``aborted`` signal, connected
        directly). The pipeline then saves a ``partial`` model if the classifier
        had finished and releases the device's memory; no other model folder is
        touched. The curves are saved into the partial model.
        """
        self.cancelled = True
        if self._events is not None:
            self._events.close()
        self.write_curves()

    def write_curves(self) -> None:
        """Save the curves as PNG and CSV in the model folder (once, when the folder exists)."""
        if self._curves_written or not self.out.is_dir():
            return
        self._curves_written = True
        try:
            save_curves(self.curves, self.out)
        except OSError:
            pass  # the model itself is saved; missing curves are not worth an error
