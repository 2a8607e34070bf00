"""The labelling dock widget in a real viewer, driven by real keypresses on the canvas."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_artseg._widgets import LabellingWidget
from napari_artseg._widgets.keys import LABELLING_KEYS
from napari_artseg._widgets.label_overlay import LABEL_COLOURS
from napari_artseg.image_files import write_tiff
from napari_artseg.labels_file import read_labels_csv

N_IMAGES = 6
SHIFT = Qt.KeyboardModifier.ShiftModifier


def image_value(i: int) -> int:
    return 1000 * (i + 1)


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    gradient = np.arange(32 * 48, dtype=np.uint16).reshape(32, 48) % 50
    for i in range(N_IMAGES):
        write_tiff(folder / f"img{i}.tif", (image_value(i) + gradient).astype(np.uint16))
    return folder


@pytest.fixture
def labelling(make_napari_viewer, qtbot, image_folder):
    """A viewer with the widget docked and the image folder opened."""
    viewer = make_napari_viewer()
    widget = LabellingWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name="Label images")
    with qtbot.waitSignal(widget.project_changed):
        assert widget.open_folder(image_folder)
    wait_drawn(qtbot, widget)
    return viewer, widget, dock


def wait_drawn(qtbot, widget):
    qtbot.waitUntil(lambda: widget.shown_image == widget.navigator.current, timeout=5000)


def press(qtbot, viewer, widget, key, modifier=Qt.KeyboardModifier.NoModifier):
    """Press a key on the napari canvas and wait until the resulting image is drawn."""
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, key, modifier)
    wait_drawn(qtbot, widget)


def shown_index(widget) -> int:
    """Which test image the layer shows (from its pixels)."""
    return int(widget.layer.data[0, 0]) // 1000 - 1


def text_overlay(viewer):
    from napari_artseg._widgets.label_overlay import canvas_text_overlay

    return canvas_text_overlay(viewer)


def labels_on_disk(widget) -> dict[str, str]:
    return dict(read_labels_csv(widget.project.labels_path).labels)


def test_label_keys_save_and_advance(labelling, qtbot):
    viewer, widget, _ = labelling
    assert shown_index(widget) == 0
    assert widget.position_label.text() == f"Image 1 of {N_IMAGES}: img0.tif"
    assert "unlabelled 6" in widget.counts_label.text()
    assert text_overlay(viewer).visible and text_overlay(viewer).text.startswith("unlabelled")

    expected = {}
    for i, (key, word) in enumerate(
        [(Qt.Key.Key_K, "artifact"), (Qt.Key.Key_J, "clean"), (Qt.Key.Key_U, "unsure")]
    ):
        press(qtbot, viewer, widget, key)
        expected[f"img{i}.tif"] = word
        assert labels_on_disk(widget) == expected  # on disk once the next image is up
        assert shown_index(widget) == i + 1
        assert widget.position_label.text().startswith(f"Image {i + 2} of {N_IMAGES}")
    assert widget.counts_label.text() == "clean 1 · artifact 1 · unsure 1 · unlabelled 3"

    press(qtbot, viewer, widget, Qt.Key.Key_H)  # previous: the unsure image
    assert shown_index(widget) == 2
    assert text_overlay(viewer).text.startswith("UNSURE")
    assert np.allclose(text_overlay(viewer).color, widget.layer.bounding_box.line_color)
    assert widget.overlay.colour == LABEL_COLOURS["unsure"]
    assert widget.layer.bounding_box.visible

    press(qtbot, viewer, widget, Qt.Key.Key_Q)  # clear the label, stay
    assert shown_index(widget) == 2
    assert "img2.tif" not in labels_on_disk(widget)
    assert text_overlay(viewer).text.startswith("unlabelled")
    assert "unlabelled 4" in widget.counts_label.text()

    press(qtbot, viewer, widget, Qt.Key.Key_N)
    press(qtbot, viewer, widget, Qt.Key.Key_N)
    assert shown_index(widget) == 4
    press(qtbot, viewer, widget, Qt.Key.Key_N, SHIFT)  # next unlabelled
    assert shown_index(widget) == 5
    press(qtbot, viewer, widget, Qt.Key.Key_N, SHIFT)  # wraps round to img2
    assert shown_index(widget) == 2


def test_undo_restores_label_and_image(labelling, qtbot):
    viewer, widget, _ = labelling
    press(qtbot, viewer, widget, Qt.Key.Key_K)
    press(qtbot, viewer, widget, Qt.Key.Key_J)
    assert labels_on_disk(widget) == {"img0.tif": "artifact", "img1.tif": "clean"}
    press(qtbot, viewer, widget, Qt.Key.Key_Z, SHIFT)
    assert labels_on_disk(widget) == {"img0.tif": "artifact"}
    assert shown_index(widget) == 1 and text_overlay(viewer).text.startswith("unlabelled")
    press(qtbot, viewer, widget, Qt.Key.Key_Z, SHIFT)
    assert labels_on_disk(widget) == {}
    assert shown_index(widget) == 0
    assert "unlabelled 6" in widget.counts_label.text()


def test_filter_steps_only_through_matching(labelling, qtbot):
    viewer, widget, _ = labelling
    for key in (Qt.Key.Key_K, Qt.Key.Key_J, Qt.Key.Key_K):
        press(qtbot, viewer, widget, key)
    widget.filter_box.setCurrentText("artifact")
    wait_drawn(qtbot, widget)
    assert shown_index(widget) == 0  # img3 was current: first artifact image wraps to img0
    press(qtbot, viewer, widget, Qt.Key.Key_N)
    assert shown_index(widget) == 2
    press(qtbot, viewer, widget, Qt.Key.Key_N)  # no further artifact image: stays
    assert shown_index(widget) == 2 and "No next image" in widget.status_label.text()

    widget.filter_box.setCurrentText("unlabelled")
    wait_drawn(qtbot, widget)
    assert shown_index(widget) == 3
    press(qtbot, viewer, widget, Qt.Key.Key_U)  # labelled: leaves the filter, next unlabelled
    assert shown_index(widget) == 4
    assert labels_on_disk(widget)["img3.tif"] == "unsure"


def test_resume_where_the_user_stopped(labelling, qtbot, make_napari_viewer, image_folder):
    viewer, widget, dock = labelling
    press(qtbot, viewer, widget, Qt.Key.Key_K)
    widget.filter_box.setCurrentText("unlabelled")
    press(qtbot, viewer, widget, Qt.Key.Key_N)
    press(qtbot, viewer, widget, Qt.Key.Key_N)
    assert shown_index(widget) == 3
    viewer.window.remove_dock_widget(dock)  # closing saves where the user stopped

    other = make_napari_viewer()
    again = LabellingWidget(other)
    other.window.add_dock_widget(again)
    assert again.open_folder(image_folder / "artseg")  # the project folder this time
    wait_drawn(qtbot, again)
    assert again.navigator.current == "img3.tif" and shown_index(again) == 3
    assert again.filter_box.currentText() == "unlabelled"
    assert again.project.labels.get("img0.tif") == "artifact"
    assert "artifact 1" in again.counts_label.text()


def test_keys_released_on_close_and_not_shadowed(labelling, qtbot):
    viewer, widget, dock = labelling
    labels_layer = viewer.add_labels(np.zeros((32, 48), np.uint8))
    viewer.layers.selection.active = labels_layer  # its keymap comes first in the chain
    press(qtbot, viewer, widget, Qt.Key.Key_K)
    assert labels_on_disk(widget) == {"img0.tif": "artifact"}
    assert labels_layer.mode == "pan_zoom"

    bound = {str(k) for k in viewer.keymap}
    assert {a.key for a in LABELLING_KEYS} <= bound
    for action in LABELLING_KEYS:
        assert f"[{action.key}]" in widget.buttons[action.method].text()

    viewer.window.remove_dock_widget(dock)
    assert not {a.key for a in LABELLING_KEYS} & {str(k) for k in viewer.keymap}
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, Qt.Key.Key_J)
    assert labels_on_disk(widget) == {"img0.tif": "artifact"}
    assert not text_overlay(viewer).visible


def test_camera_kept_and_contrast_per_image(labelling, qtbot):
    viewer, widget, _ = labelling
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.zoom = 3.0
    camera.center = (0, 10, 20)
    press(qtbot, viewer, widget, Qt.Key.Key_N)
    assert camera.zoom == pytest.approx(3.0)
    assert tuple(camera.center)[-2:] == pytest.approx((10, 20))
    low, high = widget.layer.contrast_limits
    assert image_value(1) <= low < high <= image_value(1) + 50  # dim image spread out


def test_corrupt_labels_file_refused(make_napari_viewer, image_folder):
    project_folder = image_folder / "artseg"
    project_folder.mkdir()
    (project_folder / "project.json").write_text('{"image_folder": ".."}')
    bad = "image,label\nimg0.tif,sort of\n"
    (project_folder / "labels.csv").write_text(bad)
    viewer = make_napari_viewer()
    widget = LabellingWidget(viewer)
    assert not widget.open_folder(image_folder)
    assert "line 2" in widget.status_label.text()
    assert (project_folder / "labels.csv").read_text() == bad
    assert widget.project is None


def test_problems_in_labels_file_reported(make_napari_viewer, qtbot, image_folder):
    project_folder = image_folder / "artseg"
    project_folder.mkdir()
    (project_folder / "project.json").write_text('{"image_folder": ".."}')
    (project_folder / "labels.csv").write_text(
        "image,label\nimg0.tif,clean\ngone.tif,artifact\nimg0.tif,artifact\n"
    )
    viewer = make_napari_viewer()
    widget = LabellingWidget(viewer)
    assert widget.open_folder(image_folder)
    wait_drawn(qtbot, widget)
    assert "gone.tif" in widget.status_label.text()
    assert "several rows" in widget.status_label.text()
    assert shown_index(widget) == 1  # resumes at the first unlabelled image


def test_label_open_layers_in_place(make_napari_viewer, qtbot, image_folder, monkeypatch):
    from qtpy.QtWidgets import QMessageBox

    viewer = make_napari_viewer()
    viewer.open(str(image_folder / "img4.tif"))
    viewer.open(str(image_folder / "img1.tif"))
    viewer.add_image(np.full((16, 16), 7, np.uint16), name="from script")
    widget = LabellingWidget(viewer)
    viewer.window.add_dock_widget(widget)
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    widget.layers_button.click()
    wait_drawn(qtbot, widget)
    assert widget.navigator.images == ["img4.tif", "img1.tif", "from_layers/from_script.tif"]
    assert (image_folder / "from_layers" / "from_script.tif").is_file()
    assert widget.layer is None  # the user's layers are shown, not a copy
    assert viewer.layers["img4"].visible and not viewer.layers["img1"].visible
    press(qtbot, viewer, widget, Qt.Key.Key_K)
    assert viewer.layers["img1"].visible and not viewer.layers["img4"].visible
    press(qtbot, viewer, widget, Qt.Key.Key_J)
    assert labels_on_disk(widget) == {"img4.tif": "artifact", "img1.tif": "clean"}
    assert widget.counts_label.text() == "clean 1 · artifact 1 · unsure 0 · unlabelled 1"


def test_reader_opens_project_in_widget(make_napari_viewer, qtbot, image_folder):
    from napari_artseg.project import Project

    project = Project.create(image_folder)
    project.labels.set("img0.tif", "clean")
    viewer = make_napari_viewer()
    layers = viewer.open(str(project.folder), plugin="napari-artseg")
    assert layers == []
    docked = [w for w in viewer.window.dock_widgets.values() if isinstance(w, LabellingWidget)]
    assert len(docked) == 1
    widget = docked[0]
    wait_drawn(qtbot, widget)
    assert widget.project.folder == project.folder
    assert shown_index(widget) == 1  # first unlabelled image
    # dropping the image folder itself finds its default project too
    viewer.open(str(image_folder), plugin="napari-artseg")
    docked = [w for w in viewer.window.dock_widgets.values() if isinstance(w, LabellingWidget)]
    assert docked == [widget]


def test_writer_saves_labels_layer_as_mask(make_napari_viewer, tmp_path):
    from napari_artseg.image_files import read_mask

    viewer = make_napari_viewer()
    data = np.zeros((20, 30), np.uint8)
    data[5:10, 3:8] = 2
    layer = viewer.add_labels(data, name="mask")
    written = viewer.layers.save(str(tmp_path / "mask.tif"), selected=False, plugin="napari-artseg")
    assert written == [str(tmp_path / "mask.tif")]
    assert np.array_equal(read_mask(tmp_path / "mask.tif"), data != 0)
    assert layer.data is data
