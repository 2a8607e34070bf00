"""Reading and writing images: formats, dtypes, odd inputs, atomic writes."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_artseg.atomic import atomic_folder, atomic_write_text
from napari_artseg.errors import ImageReadError
from napari_artseg.image_files import (
    discover_images,
    image_key,
    read_image,
    read_mask,
    write_tiff,
)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiff_round_trip_keeps_values_and_pixel_size(tmp_path, dtype):
    data = (np.arange(12 * 7).reshape(12, 7) % 200).astype(dtype)
    path = write_tiff(tmp_path / "sub" / "a.tif", data, pixel_size_um=0.65)
    loaded = read_image(path)
    assert loaded.data.dtype == np.float32 and loaded.data.shape == (12, 7)
    np.testing.assert_array_equal(loaded.data, data.astype(np.float32))
    assert loaded.dtype == np.dtype(dtype).name
    assert loaded.pixel_size_um == pytest.approx(0.65, rel=1e-6)


def test_png_and_jpeg_and_rgb_are_read_as_grey(tmp_path):
    rgb = np.zeros((10, 8, 3), np.uint8)
    rgb[..., 1] = 100
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(rgb[..., 1]).save(tmp_path / "g.jpg")
    loaded = read_image(tmp_path / "c.png")
    assert loaded.data.shape == (10, 8)
    assert loaded.data[0, 0] == pytest.approx(100 * 0.587, abs=0.01)
    assert any("grey" in note for note in loaded.notes)
    assert read_image(tmp_path / "g.jpg").data.shape == (10, 8)


def test_rgba_tiff_is_converted(tmp_path):
    tifffile.imwrite(tmp_path / "rgba.tif", np.full((6, 5, 4), 50, np.uint8), photometric="rgb")
    assert read_image(tmp_path / "rgba.tif").data.shape == (6, 5)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty file"), (b"not an image at all", "not a readable"),
     (b"II*\x00\x08\x00\x00\x00\x10\x00", "not a readable TIFF")],
)
def test_bad_files_raise_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad image.tif"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=message) as info:
        read_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_stack_is_refused_with_advice(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 16, 16), np.uint16),
                     photometric="minisblack")
    with pytest.raises(ImageReadError, match="planes"):
        read_image(tmp_path / "stack.tif")


def test_planar_rgb_tiff_is_converted(tmp_path):
    tifffile.imwrite(tmp_path / "planar.tif", np.full((3, 6, 5), 9, np.uint8),
                     photometric="rgb", planarconfig="separate")
    assert read_image(tmp_path / "planar.tif").data.shape == (6, 5)


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "nope.tif")


def test_non_finite_values_are_replaced_with_a_note(tmp_path):
    data = np.ones((4, 4), np.float32)
    data[0, 0], data[1, 1] = np.nan, np.inf
    write_tiff(tmp_path / "f.tif", data)
    loaded = read_image(tmp_path / "f.tif")
    assert np.isfinite(loaded.data).all() and loaded.notes


def test_mask_shape_is_checked(tmp_path):
    write_tiff(tmp_path / "m.tif", np.ones((4, 4), np.uint8))
    assert read_mask(tmp_path / "m.tif").all()
    with pytest.raises(ImageReadError, match="does not match"):
        read_mask(tmp_path / "m.tif", shape=(5, 4))


def test_discover_skips_hidden_and_project_folders(tmp_path):
    for rel in ["a.tif", "sub/b.png", ".hidden/c.tif", "artseg/masks/d.tif", "notes.txt",
                "sub/.e.tif", "out/f.tif"]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    found = [image_key(p, tmp_path) for p in discover_images(tmp_path, exclude=[tmp_path / "out"])]
    assert found == ["a", "sub/b"]


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_text(tmp_path / "x.txt", "hello")
    atomic_write_text(tmp_path / "x.txt", "again")
    assert (tmp_path / "x.txt").read_text() == "again"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_atomic_folder_is_complete_or_absent(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError), atomic_folder(target) as tmp:
        (tmp / "half.bin").write_bytes(b"1")
        raise RuntimeError("crash while writing")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_folder(target) as tmp:
        (tmp / "whole.bin").write_bytes(b"1")
    assert [p.name for p in target.iterdir()] == ["whole.bin"]
    with pytest.raises(FileExistsError):
        with atomic_folder(target):
            pass


@pytest.mark.parametrize("shape", [(1, 1), (1, 50), (50, 1)])
def test_single_row_column_and_pixel_images_stay_2d(tmp_path, shape):
    tifffile.imwrite(tmp_path / "x.tif", np.ones(shape, np.uint16))
    assert read_image(tmp_path / "x.tif").data.shape == shape


def test_truncated_compressed_tiff_is_an_image_read_error(tmp_path):
    data = np.random.default_rng(0).integers(0, 60000, (100, 100)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "t.tif", data, compression="zlib", rowsperstrip=10)
    raw = (tmp_path / "t.tif").read_bytes()
    (tmp_path / "t.tif").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageReadError, match="not a readable TIFF"):
        read_image(tmp_path / "t.tif")
