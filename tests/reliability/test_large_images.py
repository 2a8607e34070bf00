"""Very large inputs: a 20000 x 20000 TIFF in bounded memory, a decompression-bomb PNG.

The 20000 x 20000 TIFF would take 1.6 GB as float32 (and several copies in the
in-memory path); ``artseg predict`` reads it tile by tile, area-averaged to the
model's processing scale, and writes the full-resolution maps in strips. Peak
memory is measured in the child process (its own peak, VmHWM).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from reliability_helpers import child_env, copy_model, summary_rows

from child_memory import PRINT_PEAK_RSS
from napari_artseg.errors import ImageReadError
from napari_artseg.image_files import read_image
from napari_artseg.large_images import (
    Upsampler,
    predict_large_file,
    read_header,
    read_tiff_downscaled,
    tiled_probability,
)
from napari_artseg.predictor import ArtSegModel

RSS_LIMIT_MB = 2500


def write_huge_tiff(path, size=20000, tile=512):
    """A tiled, compressed uint8 TIFF: flat background and a few dark objects."""
    objects = {(3, 5), (20, 31), (37, 8)}

    def tiles():
        for y in range(0, size, tile):
            for x in range(0, size, tile):
                block = np.full((tile, tile), 180, np.uint8)
                if (y // tile, x // tile) in objects:
                    block[100:260, 150:330] = 40
                yield block

    tifffile.imwrite(path, tiles(), shape=(size, size), dtype=np.uint8, tile=(tile, tile),
                     compression="zlib", compressionargs={"level": 1})


CHILD = r"""
import sys
import torch
torch.set_num_threads(1)
from napari_artseg.cli import main
status = main(sys.argv[1:])
""" + PRINT_PEAK_RSS + "sys.exit(status)\n"


@pytest.mark.slow
def test_20000_px_tiff_is_predicted_in_bounded_memory(tiny_model, tmp_path):
    source = tmp_path / "in" / "huge slide.tif"
    source.parent.mkdir()
    write_huge_tiff(source)
    # the tiny model at scale 0.02 (same weights): 400 x 400 px at the processing scale keeps
    # the U-Net's CPU time to a second; memory is dominated by the full-resolution I/O tested here
    model = copy_model(tiny_model, tmp_path / "model", scale=0.02)
    out = tmp_path / "out"
    try:
        check_huge_prediction(source, model, out)
    finally:  # 2 GB of outputs: do not leave them in pytest's kept temporary folders
        shutil.rmtree(out, ignore_errors=True)
        source.unlink()


def check_huge_prediction(source, model, out):
    result = subprocess.run(
        [sys.executable, "-c", CHILD, "predict", "--model", str(model), "--out", str(out),
         "--quiet", "--no-gate", str(source)],
        capture_output=True, text=True, timeout=300, env=child_env())
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    rss_mb = int(result.stdout.split("MAXRSS_KB")[1].split()[0]) / 1024
    assert rss_mb < RSS_LIMIT_MB, f"peak RSS {rss_mb:.0f} MB"
    (row,) = summary_rows(out)
    assert row["status"] == "ok" and (row["height"], row["width"]) == ("20000", "20000")
    for suffix, dtype in (("_prob.tif", "float32"), ("_mask.tif", "uint8")):
        with tifffile.TiffFile(out / f"huge slide{suffix}") as tif:
            page = tif.pages[0]
            assert page.shape == (20000, 20000) and str(page.dtype) == dtype
            assert page.is_tiled
    assert not list(out.glob(".*"))  # no temporary file left


def test_streamed_path_matches_in_memory_prediction(tiny_model, tmp_path):
    rng = np.random.default_rng(0)
    image = (1000 + rng.integers(0, 30, (700, 950))).astype(np.uint16)
    image[300:360, 400:470] = 200
    tifffile.imwrite(tmp_path / "a.tif", image, tile=(128, 128), compression="zlib")
    model = ArtSegModel.load(tiny_model, device="cpu")
    reference = model.predict(read_image(tmp_path / "a.tif").data, gate=False)
    streamed = predict_large_file(model, tmp_path / "a.tif", tmp_path / "p.tif",
                                  tmp_path / "m.tif", gate=False, min_size_px=0)
    np.testing.assert_allclose(tifffile.imread(tmp_path / "p.tif"), reference.probability,
                               atol=1e-5)
    assert streamed.score == pytest.approx(reference.score, abs=1e-5)
    mask = tifffile.imread(tmp_path / "m.tif").astype(bool)
    reference_mask = reference.probability >= model.thresholds["mask"]
    assert (mask != reference_mask).mean() < 1e-3
    # an empty mask at the model's threshold: its empty-mask fallback cuts it
    cut = float(np.median(reference.probability))
    saved = dict(model.document["thresholds"])
    model.document["thresholds"].update(mask=float(reference.probability.max()) + 0.01,
                                        fallback=cut)
    try:
        fallen = predict_large_file(model, tmp_path / "a.tif", tmp_path / "p.tif",
                                    tmp_path / "m.tif", gate=False, min_size_px=0)
    finally:
        model.document["thresholds"] = saved
    mask = tifffile.imread(tmp_path / "m.tif").astype(bool)
    assert (mask != (reference.probability >= cut)).mean() < 1e-3
    assert 0.3 < fallen.artifact_fraction < 0.7 and fallen.n_objects > 0


@pytest.mark.parametrize("layout", [{"tile": (64, 64)}, {"rowsperstrip": 5}, {}])
def test_downscaled_read_equals_area_resize(tmp_path, layout):
    rng = np.random.default_rng(1)
    image = rng.normal(500, 40, (333, 517)).astype(np.float32)
    tifffile.imwrite(tmp_path / "a.tif", image, compression="zlib", **layout)
    reference = torch.from_numpy(image)[None, None]
    for shape in [(166, 258), (17, 300), (333, 517), (1, 1)]:
        got = read_tiff_downscaled(tmp_path / "a.tif", shape)
        expected = F.interpolate(reference, size=shape, mode="area")[0, 0].numpy()
        np.testing.assert_allclose(got.data, expected, rtol=1e-5)
        assert got.full_shape == (333, 517)


def test_upsampler_equals_bilinear_resize():
    small = np.random.default_rng(2).random((37, 53)).astype(np.float32)
    for full in [(37, 53), (74, 106), (301, 999), (37, 500)]:
        expected = F.interpolate(torch.from_numpy(small)[None, None], size=full,
                                 mode="bilinear", align_corners=False)[0, 0].numpy()
        up = Upsampler(small, full)
        got = np.vstack([up.band(t, min(t + 50, full[0])) for t in range(0, full[0], 50)])
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_out_of_memory_halves_the_batch_then_gives_a_clear_message(tiny_model, monkeypatch):
    model = ArtSegModel.load(tiny_model, device="cpu")
    image = np.random.default_rng(3).normal(size=(200, 300)).astype(np.float32)
    reference = tiled_probability(model, image.copy())
    network = model.inference_unet  # what the streamed path runs (made once per model)
    real_forward = network.forward
    sizes = []

    def flaky(batch):
        sizes.append(batch.shape[0])
        if batch.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(batch)

    monkeypatch.setattr(network, "forward", flaky)
    np.testing.assert_allclose(tiled_probability(model, image.copy(), batch_size=4), reference,
                               atol=1e-6)
    assert sizes[:3] == [4, 2, 1]

    def always(batch):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(network, "forward", always)
    from napari_artseg.errors import ArtSegError

    with pytest.raises(ArtSegError, match="even with one"):
        tiled_probability(model, image.copy(), batch_size=2)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_bomb_png(path, width=40000, height=40000):
    """A tiny PNG whose header claims 1.6 gigapixels (Pillow's bomb guard must refuse it)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
                     + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))


def test_decompression_bomb_png_gives_our_message(tmp_path):
    path = tmp_path / "huge scan.png"
    write_bomb_png(path)
    with pytest.raises(ImageReadError, match="decompression-bomb guard") as info:
        read_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    header = read_header(path)  # the header alone is still readable (no pixels decoded)
    assert header is not None and header.shape == (40000, 40000)


def test_decompression_bomb_png_in_a_folder_fails_alone(tiny_model, tmp_path):
    from napari_artseg.cli import main
    from napari_artseg.image_files import write_tiff

    folder = tmp_path / "in"
    folder.mkdir()
    write_bomb_png(folder / "bomb.png")
    write_tiff(folder / "good.tif", np.full((40, 40), 100, np.uint16))
    status = main(["predict", "--model", str(tiny_model), "--out", str(tmp_path / "out"),
                   "--quiet", str(folder)])
    assert status == 3
    rows = {r["image"]: r for r in summary_rows(tmp_path / "out")}
    assert rows["good"]["status"] == "ok"
    assert rows["bomb"]["status"] == "failed" and "decompression-bomb" in rows["bomb"]["error"]
