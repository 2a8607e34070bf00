"""The CUDA paths end to end: training, prediction, the streamed large-image path, the CLI.

Skipped without a CUDA GPU (CI has none). ``ARTSEG_TEST_DEVICE=cpu`` runs the same tests on
the CPU, to check the tests themselves on a machine without a GPU;
``benchmarks/gpu_checks.sh`` runs them on a lent GPU. On CUDA, convolutions may use TF32 and
training and prediction run under bf16 autocast (``amp``), so maps are compared to the CPU's
within a tolerance, not exactly.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import tifffile
import torch

from generator_helpers import collect as drain
from napari_artseg.cli import main
from napari_artseg.config import preset
from napari_artseg.labels_file import read_labels_csv
from napari_artseg.large_images import tiled_probability
from napari_artseg.predictor import ArtSegModel
from napari_artseg.training import train_pipeline

DEVICE = os.environ.get("ARTSEG_TEST_DEVICE", "cuda")
#: bf16 autocast against fp32 on the CPU: probabilities agree to about 1e-2 (a map in [0, 1]).
TOLERANCE = 0.03

pytestmark = pytest.mark.skipif(
    DEVICE == "cuda" and not torch.cuda.is_available(),
    reason="needs a CUDA GPU (ARTSEG_TEST_DEVICE=cpu runs these tests on the CPU)")


@pytest.fixture(scope="module")
def device_model(tiny_dataset, tmp_path_factory):
    """A ``tiny`` model trained on the device; the events of its run."""
    labels = read_labels_csv(tiny_dataset / "labels.csv").labels
    out = tmp_path_factory.mktemp("device_models") / "tiny"
    events, folder = drain(train_pipeline(tiny_dataset / "images", labels, out,
                                          preset("tiny", device=DEVICE)))
    return events, folder


def test_training_on_the_device_completes_and_names_it(device_model):
    events, folder = device_model
    assert events[0].metrics["device"].startswith(DEVICE)
    document = json.loads((folder / "config.json").read_text())
    assert document["status"] == "complete"
    assert set(document["components"]) == {"classifier", "unet"}
    assert all(np.isfinite(row["val_loss"]) for row in
               (e.metrics for e in events if e.kind == "epoch"))


def test_a_model_trained_on_the_device_predicts_the_same_on_the_cpu(device_model, tiny_dataset):
    _, folder = device_model
    on_device = ArtSegModel.load(folder, device=DEVICE)
    on_cpu = ArtSegModel.load(folder, device="cpu")
    for path in sorted((tiny_dataset / "images").glob("*.tif"))[:4]:
        image = tifffile.imread(path)
        a = on_device.predict(image, gate=False)
        b = on_cpu.predict(image, gate=False)
        assert a.probability.shape == b.probability.shape == image.shape
        np.testing.assert_allclose(a.probability, b.probability, atol=TOLERANCE)
        assert a.score == pytest.approx(b.score, abs=TOLERANCE)


def test_tiled_inference_on_the_device_matches_the_cpu(tiny_model):
    """A 700 x 950 image in tiles, several per batch: the blended map as on the CPU."""
    rng = np.random.default_rng(0)
    image = rng.normal(500, 40, (700, 950)).astype(np.float32)
    image[300:360, 400:470] = 200
    on_device = tiled_probability(ArtSegModel.load(tiny_model, device=DEVICE), image.copy(),
                                  batch_size=4)
    on_cpu = tiled_probability(ArtSegModel.load(tiny_model, device="cpu"), image.copy(),
                               batch_size=4)
    assert on_device.shape == on_cpu.shape
    np.testing.assert_allclose(on_device, on_cpu, atol=TOLERANCE)


def test_the_predict_command_runs_on_the_device(tiny_model, tiny_dataset, tmp_path, capsys):
    status = main(["predict", "--model", str(tiny_model), "--out", str(tmp_path / "out"),
                   "--device", DEVICE, "--quiet", str(tiny_dataset / "images")])
    capsys.readouterr()
    assert status == 0
    with (tmp_path / "out" / "summary.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 16 and all(row["status"] == "ok" for row in rows)
    for row in rows[:3]:
        stem = row["image"].rsplit(".", 1)[0]
        probability = tifffile.imread(tmp_path / "out" / f"{stem}_prob.tif")
        assert probability.dtype == np.float32 and 0 <= probability.min() <= probability.max() <= 1
