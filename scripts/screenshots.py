"""Regenerate the walkthrough screenshots (docs/images/walkthrough_*.png) from the real plugin.

Builds a synthetic labelled project, docks the ArtSeg widget in a napari window,
and captures the window at each step: label, train (during and after the run),
predict, correct and accept.

    xvfb-run -a -s "-screen 0 1600x1200x24" python scripts/screenshots.py
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "docs" / "images"


def wait_until(condition, timeout: float = 600.0) -> None:
    """Run the Qt event loop until ``condition()`` is true."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    end = time.time() + timeout
    while not condition():
        if time.time() > end:
            raise TimeoutError("step did not finish in time")
        app.processEvents()
        time.sleep(0.01)


def settle(seconds: float = 0.5) -> None:
    """Let the window repaint."""
    end = time.time() + seconds
    wait_until(lambda: time.time() > end)


def shot(viewer, name: str) -> Path:
    """Save the whole window (canvas and docks) as ``docs/images/<name>.png``."""
    settle()
    path = OUT / f"{name}.png"
    viewer.screenshot(str(path), canvas_only=False)
    print(f"wrote {path}")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 24 images and 8 epochs made a model whose masks covered the whole image (2026-12-07)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()

    import napari
    import numpy as np

    from napari_artseg._widgets import ArtSegWidget
    from napari_artseg.project import Project
    from napari_artseg.synth import write_dataset

    OUT.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="artseg_shots_"))
    try:
        data = root / "plate1"
        for _ in write_dataset(data, n=args.images, size=args.size, artifact_fraction=0.5,
                               seed=11):
            pass
        Project.create(data / "images")
        viewer = napari.Viewer(title="napari-artseg walkthrough")
        viewer.window._qt_window.resize(1500, 950)
        widget = ArtSegWidget(viewer)
        viewer.window.add_dock_widget(widget, name="ArtSeg", area="right")
        widget.open_folder(data / "images")
        labelling = widget.labelling
        wait_until(lambda: labelling.shown_image is not None)

        # 1. label: keys K / J on a few images, then all the rest from the synthetic truth
        truth = dict(line.split(",") for line in
                     (data / "labels.csv").read_text().splitlines()[1:])
        for _ in range(3):
            image = labelling.navigator.current
            labelling.label(truth[image].strip())
            wait_until(lambda: labelling.shown_image == labelling.navigator.current)
        for image, word in truth.items():
            widget.project.labels.set(image, word.strip())
        labelling._update_info()
        shot(viewer, "walkthrough_1_label")

        # 2. train: during the U-Net stage, and after
        training = widget.training
        widget.setCurrentWidget(training)
        training.settings.preset_box.setCurrentText("fast")
        training.settings.fields["classifier_epochs"].setValue(args.epochs)
        training.settings.fields["unet_epochs"].setValue(args.epochs)
        training.settings.fields["input_size"].setValue(96)
        wait_until(lambda: not training.warm_up_thread.is_alive())
        training.start_button.click()
        if not training.running:
            raise RuntimeError(training.status_label.text())
        wait_until(lambda: training.progress.current == "unet"
                   and training.progress.bars["unet"].value() > 300)
        shot(viewer, "walkthrough_2_training")
        wait_until(lambda: not training.running)
        wait_until(lambda: training.plot.points >= 4 * args.epochs)
        shot(viewer, "walkthrough_3_trained")

        # 3. predict the shown image (an artifact image), with its Score-CAM map beside it
        predict = widget.predict
        widget.setCurrentWidget(predict)
        artifact = next(i for i, w in truth.items() if w.strip() == "artifact")
        labelling.navigator.go_to(artifact)
        labelling._show_current()
        wait_until(lambda: predict.image == artifact)
        predict.predict_current()
        wait_until(lambda: predict.worker is None and predict.prediction is not None)
        viewer.reset_view()
        shot(viewer, "walkthrough_4_predict")

        # 4. correct: paint a stroke with the brush, then accept as curated (G)
        mask = predict.layers.mask
        mask.mode = "paint"
        h, w = mask.data.shape
        for x in range(w // 5, w // 2):
            mask.paint((h // 5, x), 1, refresh=False)
        mask.refresh()
        predict.accept_mask()
        shot(viewer, "walkthrough_5_correct")
        assert np.asarray(mask.data)[h // 5, w // 4]
        widget.release()
        viewer.close()
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
