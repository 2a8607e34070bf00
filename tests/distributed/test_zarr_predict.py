"""Images as Zarr / OME-Zarr / tiled TIFF, predicted block by block, equal the in-memory path."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile
import zarr

from napari_artseg.cli import main
from napari_artseg.distributed.zarr_predict import predict_store
from napari_artseg.predictor import ArtSegModel

CUT = 0.4977  # the barely trained tiny model's maps sit near 0.4977: masks are mixed


@pytest.fixture(scope="module")
def big_image(tiny_dataset) -> np.ndarray:
    """A 470 x 403 uint16 image (several U-Net blocks at the tiny preset's scale 0.5)."""
    tiles = [tifffile.imread(p) for p in sorted((tiny_dataset / "images").glob("*.tif"))[:6]]
    canvas = np.block([[tiles[(row * 5 + col) % 6] for col in range(5)] for row in range(5)])
    return np.ascontiguousarray(canvas[:470, :403])


@pytest.fixture(scope="module")
def model(tiny_model):
    return ArtSegModel.load(tiny_model, device="cpu")


def write_zarr(path, image, chunks=(100, 100)):
    array = zarr.create_array(store=str(path), shape=image.shape, chunks=chunks,
                              dtype=image.dtype, overwrite=True)
    array[:] = image
    return path


def check_equal(folder, key, expected, cut=CUT):
    prob = zarr.open_array(str(folder / f"{key}_prob.zarr"), mode="r")[:]
    mask = zarr.open_array(str(folder / f"{key}_mask.zarr"), mode="r")[:]
    assert prob.dtype == np.float32 and mask.dtype == np.uint8
    assert np.abs(prob - expected.probability).max() <= 1e-5
    differ = mask.astype(bool) != expected.mask
    assert (np.abs(expected.probability[differ] - cut) <= 1e-5).all()
    assert 0 < mask.mean() < 1  # a mixed mask: the comparison means something
    return prob, mask


def test_zarr_blocks_equal_in_memory_tiled_prediction(model, big_image, tmp_path):
    source = write_zarr(tmp_path / "plate.zarr", big_image)
    expected = model.predict(big_image.astype(np.float32), threshold=CUT, min_size_px=0,
                             gate=False)
    result = predict_store(model, source, tmp_path / "out", "plate", threshold=CUT,
                           min_size_px=0, gate=False, block_tiles=2)
    assert result.score == pytest.approx(expected.score, abs=1e-6)
    prob, mask = check_equal(tmp_path / "out", "plate", expected)
    assert result.artifact_fraction == pytest.approx(mask.mean(), abs=1e-9)
    assert (tifffile.imread(tmp_path / "out" / "plate_prob.tif") == prob).all()
    assert (tifffile.imread(tmp_path / "out" / "plate_mask.tif") == mask).all()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_ome_zarr_and_tiled_tiff_on_the_cluster(model, big_image, dask_client, tmp_path):
    group = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w", zarr_format=2)
    level = group.create_array("0", shape=(1, 1, *big_image.shape), chunks=(1, 1, 128, 128),
                               dtype=big_image.dtype)
    level[:] = big_image[None, None]
    axes = [{"name": "c", "type": "channel"}, {"name": "z", "type": "space"},
            {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 1.0, 0.65, 0.65]}]}]}]
    tifffile.imwrite(tmp_path / "tiled.tif", big_image, tile=(64, 64))
    expected = model.predict(big_image.astype(np.float32), threshold=CUT, min_size_px=0,
                             gate=False)
    for name, source in (("ome", tmp_path / "ome.zarr"), ("tiled", tmp_path / "tiled.tif")):
        result = predict_store(model, source, tmp_path / "out", name, threshold=CUT,
                               min_size_px=0, gate=False, client=dask_client, block_tiles=2)
        assert result.score == pytest.approx(expected.score, abs=1e-6)
        prob = tifffile.imread(tmp_path / "out" / f"{name}_prob.tif")
        assert np.abs(prob - expected.probability).max() <= 1e-5
    assert check_equal(tmp_path / "out", "ome", expected)
    assert zarr.open_array(str(tmp_path / "out" / "ome_prob.zarr")).attrs["pixel_size_um"] == 0.65
    assert not (tmp_path / "out" / "tiled_prob.zarr").exists()  # a TIFF input gets TIFFs


def test_model_without_classifier_gates_on_the_map_maximum(model, big_image, tmp_path):
    source = write_zarr(tmp_path / "img.zarr", big_image[:300, :260], chunks=(64, 64))
    saved = model.classifier
    model.classifier = None
    try:
        expected = model.predict(big_image[:300, :260].astype(np.float32), threshold=CUT,
                                 min_size_px=0)
        result = predict_store(model, source, tmp_path / "out", "img", threshold=CUT,
                               min_size_px=0, block_tiles=2)
    finally:
        model.classifier = saved
    assert result.score == pytest.approx(expected.score, abs=1e-6)
    assert result.gate_passed == expected.gate_passed
    prob = zarr.open_array(str(tmp_path / "out" / "img_prob.zarr"))[:]
    assert np.abs(prob - expected.probability).max() <= 1e-5


def test_cli_predicts_zarr_inputs_and_resumes(tiny_model, big_image, tmp_path, capsys):
    inputs = tmp_path / "in"
    write_zarr(inputs / "wells" / "a1.zarr", big_image[:200, :180])
    tifffile.imwrite(inputs / "b1.tif", big_image[:90, :80])
    args = ["predict", "--model", str(tiny_model), "--out", str(tmp_path / "out"), "--quiet",
            "--no-gate", "--threshold", str(CUT), "--min-size", "4", str(inputs)]
    assert main(args) == 0
    out, _ = capsys.readouterr()
    assert "2 image(s) predicted" in out
    names = {p.name for p in (tmp_path / "out" / "wells").iterdir()}
    assert names == {"a1_prob.zarr", "a1_mask.zarr", "a1_prob.tif", "a1_mask.tif"}
    with (tmp_path / "out" / "summary.csv").open(newline="") as handle:
        rows = {r["image"]: r for r in csv.DictReader(handle)}
    assert rows["wells/a1"]["status"] == "ok" and rows["wells/a1"]["height"] == "200"
    assert rows["b1"]["status"] == "ok"
    assert main(args) == 0
    out, _ = capsys.readouterr()
    assert "0 image(s) predicted, 2 already done" in out


@pytest.mark.filterwarnings("ignore:Port .* is already in use")
def test_large_tiff_under_dask_is_predicted_in_blocks(tiny_model, big_image, tmp_path, capsys,
                                                      monkeypatch):
    """A TIFF above LARGE_IMAGE_PIXELS is sent back by its task and spread over blocks."""
    import logging

    from distributed import Client, LocalCluster

    from napari_artseg import large_images

    monkeypatch.setattr(large_images, "LARGE_IMAGE_PIXELS", 10_000)  # seen by thread workers
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "large.tif", big_image[:240, :200], tile=(64, 64))
    tifffile.imwrite(tmp_path / "in" / "small.tif", big_image[:60, :50])
    common = ["predict", "--model", str(tiny_model), "--quiet", "--no-gate", "--threshold",
              str(CUT), "--min-size", "0"]
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:
        assert main([*common, "--out", str(tmp_path / "dask"), "--dask", "--scheduler",
                     client.scheduler.address, str(tmp_path / "in")]) == 0
    monkeypatch.setattr(large_images, "LARGE_IMAGE_PIXELS", 10**9)
    assert main([*common, "--out", str(tmp_path / "memory"), str(tmp_path / "in")]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in (tmp_path / "dask").iterdir() if p.suffix != ".csv") == [
        "large_mask.tif", "large_prob.tif", "small_mask.tif", "small_prob.tif"]
    for key in ("large", "small"):
        blocked = tifffile.imread(tmp_path / "dask" / f"{key}_prob.tif")
        expected = tifffile.imread(tmp_path / "memory" / f"{key}_prob.tif")
        assert np.abs(blocked - expected).max() <= 1e-5


def test_unreadable_zarr_store_is_a_failure_row(tiny_model, big_image, tmp_path, capsys):
    write_zarr(tmp_path / "in" / "good.zarr", big_image[:80, :90])
    broken = tmp_path / "in" / "broken.zarr"
    broken.mkdir()
    (broken / "zarr.json").write_text("{not json")
    status = main(["predict", "--model", str(tiny_model), "--out", str(tmp_path / "out"),
                   "--quiet", str(tmp_path / "in")])
    _out, err = capsys.readouterr()
    assert status == 3 and "Traceback" not in err
    with (tmp_path / "out" / "summary.csv").open(newline="") as handle:
        rows = {r["image"]: r for r in csv.DictReader(handle)}
    assert rows["good"]["status"] == "ok"
    assert rows["broken"]["status"] == "failed" and "broken.zarr" in rows["broken"]["error"]


def test_an_empty_mask_at_the_models_threshold_is_cut_at_its_fallback(model, big_image,
                                                                     tmp_path):
    source = write_zarr(tmp_path / "plate.zarr", big_image)
    expected = model.predict(big_image.astype(np.float32), threshold=CUT, min_size_px=0,
                             gate=False)
    saved = dict(model.document["thresholds"])
    model.document["thresholds"].update(mask=float(expected.probability.max()) + 0.01,
                                        fallback=CUT)
    try:
        result = predict_store(model, source, tmp_path / "out", "plate", min_size_px=0,
                               gate=False, block_tiles=2)
    finally:
        model.document["thresholds"] = saved
    check_equal(tmp_path / "out", "plate", expected)
    assert result.artifact_fraction == pytest.approx(expected.artifact_fraction, abs=1e-3)
