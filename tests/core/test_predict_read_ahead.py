"""The serial predict loop reads the next image and writes the last one in background threads."""

from __future__ import annotations

import csv
import threading

import numpy as np

from napari_artseg import process_memory
from napari_artseg.cli import main, predict_image
from napari_artseg.image_files import read_image, write_tiff


def read_summary(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_next_image_is_read_in_the_background_and_results_match(tiny_model, tmp_path,
                                                                  monkeypatch, capsys):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        write_tiff(images / f"im{i}.tif", rng.integers(0, 4000, (70, 90)).astype(np.uint16))
    (images / "broken.tif").write_bytes(b"not a tiff at all")
    # a serial reference without read-ahead: each image predicted on its own
    reference = tmp_path / "reference"
    for i in range(4):
        assert main(["predict", "--model", str(tiny_model), "--out", str(reference),
                     str(images / f"im{i}.tif")]) == 0

    readers = []
    real_read = predict_image.read_image

    def recording_read(path):
        readers.append((threading.current_thread().name, path.name))
        return real_read(path)

    monkeypatch.setattr(predict_image, "read_image", recording_read)
    thresholds = []  # heap_reuse's glibc calls, recorded instead of made
    monkeypatch.setattr(process_memory, "MALLOPT", lambda *call: thresholds.append(call) or 1)
    out = tmp_path / "out"
    code = main(["predict", "--model", str(tiny_model), "--out", str(out), str(images)])
    assert thresholds == [(process_memory.M_MMAP_THRESHOLD, process_memory.JOB_MMAP_THRESHOLD),
                          (process_memory.M_TRIM_THRESHOLD, process_memory.JOB_TRIM_THRESHOLD),
                          (process_memory.M_TRIM_THRESHOLD, process_memory.IDLE_TRIM_THRESHOLD)]
    assert code != 0  # the broken image failed ...
    assert "broken.tif" in capsys.readouterr().err  # ... with its name
    assert sorted(name for _, name in readers) == ["broken.tif"] + [f"im{i}.tif" for i in range(4)]
    assert all(thread.startswith("artseg-read") for thread, _ in readers)
    for i in range(4):  # ... and the others are the same as predicted one by one
        for suffix in ("_prob.tif", "_mask.tif"):
            np.testing.assert_array_equal(read_image(out / f"im{i}{suffix}").data,
                                          read_image(reference / f"im{i}{suffix}").data)

    readers.clear()  # a re-run reads nothing: every output is complete
    main(["predict", "--model", str(tiny_model), "--out", str(out), str(images)])
    assert [name for _, name in readers] == ["broken.tif"]


def test_outputs_are_written_behind_and_a_failed_write_fails_only_its_image(
        tiny_model, tmp_path, monkeypatch, capsys):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        write_tiff(images / f"im{i}.tif", rng.integers(0, 4000, (64, 64)).astype(np.uint16))
    writers = []
    real_write = predict_image.write_tiff

    def recording_write(path, array, pixel_size_um=None):
        writers.append(threading.current_thread().name)
        if path.name == "im1_mask.tif":
            raise OSError(28, "No space left on device")
        return real_write(path, array, pixel_size_um)

    monkeypatch.setattr(predict_image, "write_tiff", recording_write)
    out = tmp_path / "out"
    code = main(["predict", "--model", str(tiny_model), "--out", str(out), str(images)])
    assert code == 3  # some images failed
    assert "im1_mask.tif: cannot write (No space left on device)" in capsys.readouterr().err
    assert len(writers) == 6 and all(name.startswith("artseg-write") for name in writers)
    rows = {row["image"]: row for row in read_summary(out / "summary.csv")}
    assert [rows[f"im{i}"]["status"] for i in range(3)] == ["ok", "failed", "ok"]
    assert "im1_mask.tif" in rows["im1"]["error"]
    assert (out / "im2_mask.tif").is_file() and not (out / "im1_mask.tif").exists()

    monkeypatch.setattr(predict_image, "write_tiff", real_write)  # the disk has room again
    assert main(["predict", "--model", str(tiny_model), "--out", str(out), str(images)]) == 0
    assert (out / "im1_mask.tif").is_file()
