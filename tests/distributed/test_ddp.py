"""Multi-process training under torchrun (gloo on the CPU, 2 processes)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from napari_artseg.predictor import ArtSegModel

#: torchrun launch failures that come from the shared machine's network, not from our code
NETWORK_ERRORS = ("DistNetworkError", "RendezvousConnectionError", "Address already in use",
                  "Connection refused", "RendezvousTimeoutError")


def torchrun(*args: str, timeout: int = 600,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 ARGS``; one retry after a network error.

    ``env`` adds variables to this process's environment for the run.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", *args]
    environ = {**os.environ, **(env or {})}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environ)
    if result.returncode != 0 and any(e in result.stderr for e in NETWORK_ERRORS):
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                env=environ)
    return result


@pytest.mark.slow
def test_two_process_gloo_training_completes_and_its_model_predicts(tiny_dataset, tmp_path):
    with (tiny_dataset / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    chosen = [r for r in rows if r["label"] == "artifact"][:5] + \
        [r for r in rows if r["label"] == "clean"][:5]
    (tmp_path / "images").mkdir()
    for row in chosen:
        shutil.copy(tiny_dataset / "images" / row["image"], tmp_path / "images" / row["image"])
    (tmp_path / "labels.csv").write_text(
        "image,label\n" + "".join(f"{r['image']},{r['label']}\n" for r in chosen))
    result = torchrun("-m", "napari_artseg.training.torchrun", "--images", str(tmp_path / "images"),
                      "--labels", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "model"),
                      "--preset", "tiny", "--epochs", "1", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("model written to") == 1  # rank 0 alone reports and saves
    assert result.stderr.count("[classifier] epoch 1/1") == 1  # rank-0-only logging
    model = ArtSegModel.load(tmp_path / "model", device="cpu")
    with (tmp_path / "model" / "manifest.csv").open(newline="") as handle:
        pseudo = [r["image"] for r in csv.DictReader(handle) if r["target"] == "pseudo"]
    saliency = sorted(p.stem for p in (tmp_path / "model" / "saliency").glob("*.tif"))
    assert len(pseudo) == 5 and saliency == sorted(p.rsplit(".", 1)[0] for p in pseudo)
    from napari_artseg.image_files import read_image

    image = read_image(tmp_path / "images" / chosen[0]["image"]).data
    prediction = model.predict(image, gate=False)
    assert prediction.probability.shape == image.shape
    assert np.isfinite(prediction.probability).all()
    assert 0 <= prediction.probability.min() <= prediction.probability.max() <= 1



def small_project(tmp_path, n=8, size=64):
    """A project of ``n`` synthetic ``size`` px images (half artifacts), all labelled."""
    from napari_artseg.project import Project
    from napari_artseg.synth import write_dataset

    for _ in write_dataset(tmp_path / "data", n=n, size=size, artifact_fraction=0.5, seed=11):
        pass
    project = Project.create(tmp_path / "data" / "images", tmp_path / "project")
    shutil.copy(tmp_path / "data" / "labels.csv", project.labels_path)
    return project


@pytest.mark.slow
def test_two_process_gloo_training_of_a_project_makes_its_model_current(tmp_path):
    from napari_artseg.image_files import read_image
    from napari_artseg.project import Project

    project = small_project(tmp_path)
    # SyncBatchNorm asked for: gloo on the CPU has none, so a note and per-rank statistics
    result = torchrun("-m", "napari_artseg.training.torchrun", "--project", str(project.folder),
                      "--preset", "tiny", "--epochs", "1", "--device", "cpu",
                      env={"ARTSEG_SYNC_BATCHNORM": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("ARTSEG_SYNC_BATCHNORM: SyncBatchNorm needs CUDA") == 1
    assert result.stdout.count("is now the project's current model") == 1  # rank 0 alone
    models = [p for p in project.models_dir.iterdir() if p.is_dir()]
    assert len(models) == 1 and models[0].name.endswith("-scorecam_unet")
    assert Project.open(project.folder).current_model == models[0].name
    model = ArtSegModel.load(models[0], device="cpu")
    image = read_image(sorted(project.image_folder.glob("*.tif"))[0]).data
    prediction = model.predict(image, gate=False)
    assert prediction.probability.shape == image.shape == (64, 64)
    assert np.isfinite(prediction.probability).all()
    assert 0 <= prediction.probability.min() <= prediction.probability.max() <= 1


def test_project_inputs_resolve_like_artseg_train(tmp_path):
    """Outside a process group: the project's folders, and the refusals, in one line each."""
    import argparse

    from napari_artseg.cli import train_cmd
    from napari_artseg.errors import ArtSegError
    from napari_artseg.training.torchrun import resolve_inputs

    project = small_project(tmp_path, n=6, size=32)
    parser = argparse.ArgumentParser()
    train_cmd.add_parser(parser.add_subparsers())

    def resolve(*options):
        args = parser.parse_args(["train", "--preset", "tiny", *map(str, options)])
        return resolve_inputs(args, train_cmd.build_config(args))

    inputs = resolve("--project", project.folder)
    assert inputs.images == project.image_folder and inputs.masks == project.masks_dir
    assert inputs.out.parent == project.models_dir and inputs.out.name.endswith("-scorecam_unet")
    assert sorted(inputs.labels) == sorted(p.name for p in project.image_folder.glob("*.tif"))
    assert resolve("--project", project.folder, "--out", tmp_path / "m").out == tmp_path / "m"
    with pytest.raises(ArtSegError, match="either --project or --images"):
        resolve("--project", project.folder, "--images", project.image_folder)
    with pytest.raises(ArtSegError, match="not an artseg project"):
        resolve("--project", tmp_path / "data")
    with pytest.raises(ArtSegError, match=r"--images, --labels and --out \(or --project\)"):
        resolve("--images", project.image_folder)
    # curated masks: artseg train --project retrains with a held-out comparison (one process)
    artifact = next(k for k, v in project.labels.labels.items() if v == "artifact")
    shutil.copy(tmp_path / "data" / "masks" / artifact, project.masks_dir / artifact)
    with pytest.raises(ArtSegError, match=r"has curated masks.*add --masks"):
        resolve("--project", project.folder)
    assert resolve("--project", project.folder, "--masks", project.masks_dir).masks == \
        str(project.masks_dir)


RANK_SCRIPT = r"""
import json, os, sys
import torch
import torch.distributed as dist
from napari_artseg.config import preset
from napari_artseg.training.ddp import gather_dict, local_batch, rank_share, split, world
from napari_artseg.training.loop import fit

dist.init_process_group("gloo")
rank, size = world()
torch.manual_seed(0)
model = torch.nn.Linear(3, 1)
data = torch.randn(12, 3, generator=torch.Generator().manual_seed(1))
target = data @ torch.tensor([[1.0], [-2.0], [0.5]])
seen = []

def batches(epoch):
    order = rank_share(list(range(12)))
    seen.extend(order)
    step = local_batch(4)
    for start in range(0, len(order), step):
        chosen = order[start:start + step]
        yield data[chosen], target[chosen]

def validate(net):
    with torch.no_grad():
        loss = float(((net(data) - target) ** 2).mean()) + rank
    yield 1, 1
    return {"val_loss": loss}

config = preset("tiny", amp=False, learning_rate=0.05)
gen = fit("toy", model, config, 3, torch.device("cpu"), batches, 3,
          lambda out, batch: ((out - batch[1]) ** 2).mean(), validate)
try:
    while True:
        next(gen)
except StopIteration as stop:
    result = stop.value
shares = gather_dict({rank: split(list(range(10)))})
with open(sys.argv[1] + f"/rank{rank}.json", "w") as handle:
    json.dump({"weights": model.weight.detach().tolist(), "seen": seen,
               "history": [row["val_loss"] for row in result.history], "shares": shares},
              handle)
# Both ranks are done with every collective before either leaves. Tearing gloo down then still
# aborted one rank now and then with "terminate called without an active exception" (3 of 25
# runs without the barrier, 1 in a CI run of 2026-12-06 with it), after this script's work was
# written. So the ranks leave without running gloo's destructors, which this test is not about.
dist.barrier()
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
"""


def test_ranks_train_on_their_shares_and_keep_identical_weights(tmp_path):
    import json

    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    result = torchrun(str(script), str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    print(ranks, result.stderr[-2000:])  # shown by pytest when an assertion below fails
    assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP averaged every step
    assert ranks[0]["weights"] != [[0.0, 0.0, 0.0]]
    first, second = ranks[0]["seen"][:6], ranks[1]["seen"][:6]
    assert not set(first) & set(second) and sorted(first + second) == list(range(12))
    # rank 0 validated and broadcast: both ranks saw rank 0's metrics (rank 1 would add 1)
    assert ranks[0]["history"] == ranks[1]["history"]
    assert ranks[0]["shares"] == ranks[1]["shares"] == {"0": [0, 2, 4, 6, 8], "1": [1, 3, 5, 7, 9]}
