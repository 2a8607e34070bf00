"""Odd and hostile image files: each has a defined outcome, and a folder of them still runs.

``read_image`` either returns a 2-D float32 image (with a note for every
conversion) or raises :class:`ImageReadError` with one line naming the file.
``artseg predict`` on a folder holding all of them predicts the readable ones,
lists each unreadable one in summary.csv with that line, exits 3 and prints no
traceback.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image
from reliability_helpers import summary_rows

from napari_artseg.cli import main
from napari_artseg.errors import ImageReadError
from napari_artseg.image_files import read_image, write_tiff


def _truncated_tiff(path):
    data = np.random.default_rng(0).integers(0, 60000, (200, 300)).astype(np.uint16)
    tifffile.imwrite(path, data, compression="zlib", rowsperstrip=16)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _truncated_raw_tiff(path):
    tifffile.imwrite(path, np.ones((200, 300), np.uint16))
    path.write_bytes(path.read_bytes()[:-5000])


def _truncated_png(path):
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (100, 100), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:-300])


def _float_with_nan(path):
    data = np.random.default_rng(2).normal(size=(50, 60)).astype(np.float32)
    data[0, :5] = np.nan
    data[1, :5] = np.inf
    data[2, :5] = -np.inf
    tifffile.imwrite(path, data)


def _all_nan(path):
    tifffile.imwrite(path, np.full((20, 20), np.nan, np.float32))


# name -> (writer, expected) where expected is a shape (read) or an error fragment
CASES = {
    "zero bytes.tif": (lambda p: p.write_bytes(b""), "empty file"),
    "truncated zlib.tif": (_truncated_tiff, "not a readable TIFF"),
    "truncated raw.tif": (_truncated_raw_tiff, "not a readable TIFF"),
    "truncated.png": (_truncated_png, "not a readable image"),
    "text as tif.tif": (lambda p: p.write_text("hello, not an image"), "not a readable TIFF"),
    "text as png.png": (lambda p: p.write_text("hello, not an image"), "not a readable image"),
    "text as jpg.jpg": (lambda p: p.write_bytes(b"\xff\xd8\xff\xe0garbage"),
                        "not a readable image"),
    "rgb.png": (lambda p: Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(p), (30, 40)),
    "rgba.png": (lambda p: Image.fromarray(np.full((30, 40, 4), 90, np.uint8)).save(p),
                 (30, 40)),
    "rgb tiff.tif": (lambda p: tifffile.imwrite(p, np.full((30, 40, 3), 90, np.uint8),
                                           photometric="rgb"), (30, 40)),
    "palette.png": (lambda p: Image.fromarray(np.full((30, 40), 3, np.uint8)).convert("P")
                    .save(p), (30, 40)),
    "grey16.tif": (lambda p: tifffile.imwrite(p, np.full((30, 40), 65535, np.uint16)),
                   (30, 40)),
    "grey16 png.png": (lambda p: Image.fromarray(np.full((30, 40), 40000, np.uint16)).save(p),
                   (30, 40)),
    "float32 nan inf.tif": (_float_with_nan, (50, 60)),
    "float32 all nan.tif": (_all_nan, (20, 20)),
    "float64.tif": (lambda p: tifffile.imwrite(p, np.linspace(0, 1, 600).reshape(20, 30)),
                    (20, 30)),
    "constant.tif": (lambda p: tifffile.imwrite(p, np.full((64, 64), 7, np.uint8)), (64, 64)),
    "one pixel.tif": (lambda p: tifffile.imwrite(p, np.full((1, 1), 100, np.uint16)), (1, 1)),
    "thin 3x5000.tif": (lambda p: tifffile.imwrite(
        p, np.random.default_rng(3).integers(0, 4000, (3, 5000)).astype(np.uint16)), (3, 5000)),
    "tall 5000x3.tif": (lambda p: tifffile.imwrite(
        p, np.random.default_rng(3).integers(0, 4000, (5000, 3)).astype(np.uint16)), (5000, 3)),
    "stack 3d.tif": (lambda p: tifffile.imwrite(p, np.zeros((5, 16, 16), np.uint16),
                                                photometric="minisblack"), "planes"),
    "multipage.tif": (lambda p: [tifffile.imwrite(p, np.zeros((16, 16), np.uint8),
                                                  append=True) for _ in range(3)], "planes"),
    "animated.png": (lambda p: Image.fromarray(np.zeros((8, 8), np.uint8)).save(
        p, save_all=True, append_images=[Image.fromarray(np.ones((8, 8), np.uint8))]),
        "frames"),
    "complex.tif": (lambda p: tifffile.imwrite(p, np.ones((8, 8), np.complex64)),
                    "unsupported pixel type"),
    "ünïcødé 图像 name.tif": (lambda p: tifffile.imwrite(p, np.full((16, 16), 5, np.uint8)),
                             (16, 16)),
}


def _write_cases(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name, (writer, _) in CASES.items():
        writer(folder / name)


@pytest.mark.parametrize("name", sorted(CASES))
def test_read_image_outcome(tmp_path, name):
    writer, expected = CASES[name]
    path = tmp_path / name
    writer(path)
    if isinstance(expected, tuple):
        loaded = read_image(path)
        assert loaded.data.shape == expected and loaded.data.dtype == np.float32
        assert np.isfinite(loaded.data).all()
        if any(word in name for word in ("rgb", "nan")):
            assert loaded.notes
    else:
        with pytest.raises(ImageReadError, match=expected) as info:
            read_image(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message


def test_predict_on_a_folder_of_odd_files(tiny_model, tmp_path, capsys):
    _write_cases(tmp_path / "in")
    status = main(["predict", "--model", str(tiny_model), "--out", str(tmp_path / "out"),
                   "--quiet", str(tmp_path / "in")])
    _, err = capsys.readouterr()
    assert status == 3 and "Traceback" not in err
    rows = {row["image"]: row for row in summary_rows(tmp_path / "out")}
    assert len(rows) == len(CASES)
    for name, (_, expected) in CASES.items():
        key = name.rsplit(".", 1)[0]
        row = rows[key]
        if isinstance(expected, tuple):
            assert row["status"] == "ok", row
            assert (int(row["height"]), int(row["width"])) == expected
            prob = read_image(tmp_path / "out" / f"{key}_prob.tif").data
            assert prob.shape == expected and np.isfinite(prob).all()
        else:
            assert row["status"] == "failed" and expected in row["error"], row
            assert name in row["error"] and "\n" not in row["error"]


def test_non_image_extension_given_directly_is_a_usage_error(tiny_model, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    status = main(["predict", "--model", str(tiny_model), "--out", str(tmp_path / "out"),
                   str(tmp_path / "notes.txt")])
    _, err = capsys.readouterr()
    assert status == 2 and "notes.txt" in err and err.count("\n") == 1


def test_same_key_from_two_extensions_is_refused(tiny_model, tmp_path, capsys):
    write_tiff(tmp_path / "in" / "a.tif", np.ones((8, 8), np.uint8))
    Image.fromarray(np.ones((8, 8), np.uint8)).save(tmp_path / "in" / "a.png")
    status = main(["predict", "--model", str(tiny_model), "--out", str(tmp_path / "out"),
                   str(tmp_path / "in")])
    _, err = capsys.readouterr()
    assert status == 2 and "both give the output name" in err
