"""Training images past the memory budget are kept on disk, memory-mapped: same model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from napari_artseg.config import ArtSegConfig, preset
from napari_artseg.errors import ArtSegError
from napari_artseg.labels_file import read_labels_csv
from napari_artseg.training import train_pipeline
from napari_artseg.training.classifier import (
    build_classifier,
    classifier_probabilities,
    global_views,
)
from napari_artseg.training.data import TrainingItem, derived_bytes, load_training_items
from napari_artseg.training.pseudo_labels import saliency_maps
from napari_artseg.training.spill import (
    TensorSpill,
    available_memory_bytes,
    budget_bytes,
    cgroup_memory_room,
    remove_orphans,
)


def _drain(generator, on_event=None):
    while True:
        try:
            event = next(generator)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)


def _spill_folders(parent):
    return [p for p in parent.iterdir() if p.name.startswith(".") and ".spill-" in p.name]


def test_budget_is_the_setting_or_a_quarter_of_the_available_memory():
    assert budget_bytes(2.5) == 2_500_000_000
    available = available_memory_bytes()
    assert available is None or available > 0  # /proc/meminfo here, psutil elsewhere
    if available is not None:
        assert 0 < budget_bytes(None) <= available


def test_images_past_the_budget_go_to_disk_with_the_same_values(tiny_dataset, tmp_path):
    labels = read_labels_csv(tiny_dataset / "labels.csv").labels
    config = preset("tiny")
    plain, _ = _drain(load_training_items(tiny_dataset / "images", labels, config))
    # an image, a target of its size, and what training derives from it
    needs = [2 * p.image.numel() * 4 + derived_bytes(p.image, p.label, config) for p in plain]
    spill = TensorSpill(tmp_path / ".spill", budget=sum(needs[:3]))
    items, _ = _drain(load_training_items(tiny_dataset / "images", labels, config,
                                          spill=spill))
    on_disk = [item for item in items if item.spill is not None]
    assert len(on_disk) == len(items) - 3 and spill.spilled == len(on_disk)
    assert len(list((tmp_path / ".spill").glob("*.npy"))) == len(on_disk)
    for mine, theirs in zip(items, plain, strict=True):
        torch.testing.assert_close(mine.image, theirs.image, atol=0, rtol=0)
    # a target set later lands on disk too, and replaces the slot's earlier file
    item = on_disk[0]
    item.target = torch.ones_like(item.image)
    item.target = torch.full_like(item.image, 0.25)
    assert len(list((tmp_path / ".spill").glob("*.npy"))) == len(on_disk) + 1
    assert float(item.target.max()) == 0.25 and item.target.dtype == torch.float32
    kept_in_memory = next(i for i in items if i.spill is None)
    kept_in_memory.target = torch.zeros_like(kept_in_memory.image)  # untouched by the spill
    assert spill.spilled == len(on_disk) + 2
    spill.close()
    assert not (tmp_path / ".spill").exists()
    assert float(item.target.max()) == 0.25  # mapped values stay readable after the files go


def test_derived_bytes_count_the_view_and_an_artifact_images_map_and_rasters():
    config = preset("tiny")  # 64 px views
    image = torch.zeros(1, 48, 40)
    assert derived_bytes(image, 0, config) == 4 * 64 * 64
    assert derived_bytes(image, 1, config) == (4 + 4 + 1) * 64 * 64 + 48 * 40


def test_views_and_maps_of_images_on_disk_stay_on_disk(tiny_dataset, tmp_path):
    labels = read_labels_csv(tiny_dataset / "labels.csv").labels
    config = preset("tiny")
    plain, _ = _drain(load_training_items(tiny_dataset / "images", labels, config))
    spill = TensorSpill(tmp_path / ".spill", budget=0)
    items, _ = _drain(load_training_items(tiny_dataset / "images", labels, config,
                                          spill=spill))

    def files():
        return len(list((tmp_path / ".spill").glob("*.npy")))

    assert files() == len(items)
    views = global_views(items, config)
    assert files() == 2 * len(items)  # one view per image, beside it
    expected = global_views(plain, config)
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(views, expected, strict=True))
    assert global_views(plain[:2], config) and files() == 2 * len(items)  # in memory: no file
    classifier = build_classifier(config).eval()
    cpu = torch.device("cpu")
    np.testing.assert_array_equal(  # batches stacked from the list: the same P(artifact)
        classifier_probabilities(classifier, views, cpu, batch_size=5),
        classifier_probabilities(classifier, torch.stack(expected), cpu, batch_size=5))
    artifact = [i for i, item in enumerate(items) if item.label == 1]
    maps = _drain(saliency_maps(classifier, items, artifact, config, cpu))
    assert files() == 2 * len(items) + len(artifact)
    theirs = _drain(saliency_maps(classifier, plain, artifact, config, cpu))
    assert all(torch.equal(maps[i], theirs[i]) for i in artifact)
    spill.close()


def test_a_disk_that_cannot_take_the_images_gives_one_clear_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    spill = TensorSpill(blocker / "spill", budget=0)
    item = TrainingItem("a.tif", 1, torch.zeros(1, 8, 8), (8, 8))
    with pytest.raises(ArtSegError, match="cannot keep training images on disk") as caught:
        item.move_to(spill)
    assert str(blocker / "spill") in str(caught.value) and "\n" not in str(caught.value)


def test_memory_budget_setting_is_checked():
    config = ArtSegConfig.from_dict({**preset("tiny").to_dict(), "memory_budget_gb": 0.5})
    assert config.memory_budget_gb == 0.5
    with pytest.raises(ArtSegError, match="memory_budget_gb must be > 0"):
        preset("tiny", memory_budget_gb=0)


def test_training_from_disk_gives_the_same_model_and_leaves_nothing(tiny_dataset, tmp_path):
    labels = read_labels_csv(tiny_dataset / "labels.csv").labels
    config = preset("tiny")
    _drain(train_pipeline(tiny_dataset / "images", labels, tmp_path / "memory", config))
    seen_on_disk = []

    def watch(event):
        if event.stage == "unet" and event.kind == "stage":
            seen_on_disk.append(sum(len(list(p.glob("*.npy"))) for p in _spill_folders(tmp_path)))

    spilled = config.replace(memory_budget_gb=1e-6)  # 1 kB: every image goes to disk
    out = _drain(train_pipeline(tiny_dataset / "images", labels, tmp_path / "disk", spilled),
                 watch)
    artifact = sum(word == "artifact" for word in labels.values())
    # 16 images and their views, the artifact images' Score-CAM maps; targets and rasters too
    assert seen_on_disk and seen_on_disk[0] >= 16 + 16 + artifact
    assert _spill_folders(tmp_path) == []
    for part in ("classifier", "unet"):
        mine = load_file(str(out / f"{part}.safetensors"))
        theirs = load_file(str(tmp_path / "memory" / f"{part}.safetensors"))
        assert mine.keys() == theirs.keys()
        for name in mine:
            assert torch.equal(mine[name], theirs[name]), f"{part}.{name}"
    document = json.loads((out / "config.json").read_text())
    assert document["n_images_on_disk"] == 16


def test_a_cancelled_run_removes_its_disk_images(tiny_dataset, tmp_path):
    labels = read_labels_csv(tiny_dataset / "labels.csv").labels
    run = train_pipeline(tiny_dataset / "images", labels, tmp_path / "cancelled",
                         preset("tiny", memory_budget_gb=1e-6))
    for event in run:
        if event.stage == "classifier" and event.kind == "stage":
            break
    assert len(_spill_folders(tmp_path)) == 1
    assert np.load(next(_spill_folders(tmp_path)[0].glob("*.npy"))).ndim == 3
    run.close()
    assert _spill_folders(tmp_path) == []


def test_a_killed_runs_disk_images_go_with_the_next_run(tmp_path):
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    orphan = tmp_path / f".model-a.spill-{int(gone.stdout)}"
    (orphan / "1.npy").parent.mkdir()
    np.save(orphan / "1.npy", np.zeros(3))
    running = tmp_path / ".model-b.spill-1"  # pid 1 exists: left alone
    running.mkdir()
    other = tmp_path / ".model-c.tmp"
    other.write_text("not a spill")
    spill = TensorSpill.beside(tmp_path / "model-d", 1.0)
    assert not orphan.exists() and running.is_dir() and other.is_file()
    assert spill.folder.name.startswith(".model-d.spill-") and spill.budget == 1_000_000_000
    assert remove_orphans(tmp_path / "missing") == []


@pytest.mark.parametrize("shape", [(40, 56), (16, 16), (10, 40), (40, 9), (5, 6)])
def test_random_crop_weighs_the_image_and_not_its_padding(shape):
    from napari_artseg.training.data import random_crop

    size = 16
    gen = torch.Generator().manual_seed(3)
    image = torch.randn(1, *shape, generator=gen)
    target = (torch.rand(1, *shape, generator=gen) > 0.5).float()
    for seed in range(5):
        crop, part, weight = random_crop(image, target, size, torch.Generator().manual_seed(seed))
        assert crop.shape == part.shape == weight.shape == (1, size, size)
        draws = torch.Generator().manual_seed(seed)  # the same two draws, made here
        top = int(torch.randint(0, max(shape[0], size) - size + 1, (1,), generator=draws))
        left = int(torch.randint(0, max(shape[1], size) - size + 1, (1,), generator=draws))
        rows, cols = min(size, shape[0] - top), min(size, shape[1] - left)
        assert float(weight.sum()) == rows * cols  # padding weighs 0, the image 1
        assert bool((weight[:, :rows, :cols] == 1).all())
        torch.testing.assert_close(crop[:, :rows, :cols],
                                   image[:, top : top + rows, left : left + cols])
        torch.testing.assert_close(part[:, :rows, :cols],
                                   target[:, top : top + rows, left : left + cols])
        assert float(part[:, rows:].sum()) == 0 and float(part[:, :, cols:].sum()) == 0


def test_a_cgroup_limit_caps_the_available_memory(tmp_path, monkeypatch):
    from napari_artseg.training import spill

    def layout(lines, files):
        proc = tmp_path / "proc-cgroup"
        proc.write_text("\n".join(lines) + "\n")
        for relative, value in files.items():
            (tmp_path / "cg" / relative).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "cg" / relative).write_text(value + "\n")
        return proc

    v2 = layout(["0::/job/step"], {"job/step/memory.max": "4000000000",
                                    "job/step/memory.current": "1500000000"})
    assert cgroup_memory_room(v2, tmp_path / "cg") == 2_500_000_000
    # v1, as seen inside a container: the named path is absent, the root holds the limit
    v1 = layout(["9:name=systemd:/", "4:cpuacct,memory:/docker/abc", "0::/"],
                {"memory/memory.limit_in_bytes": "3000000000",
                 "memory/memory.usage_in_bytes": "1000000000", "memory.max": "max"})
    assert cgroup_memory_room(v1, tmp_path / "cg") == 2_000_000_000
    unlimited = layout(["4:memory:/"], {"memory/memory.limit_in_bytes": str(2**63 - 4096)})
    assert cgroup_memory_room(unlimited, tmp_path / "cg") is None
    assert cgroup_memory_room(tmp_path / "missing", tmp_path / "cg") is None
    monkeypatch.setattr(spill, "cgroup_memory_room", lambda: 1_000_000)
    assert available_memory_bytes() == 1_000_000  # far below this machine's MemAvailable
    assert budget_bytes(None) == 250_000


def test_the_supervised_unet_trains_the_same_from_disk(tiny_dataset, tmp_path):
    labels = read_labels_csv(tiny_dataset / "labels.csv").labels
    config = preset("tiny", method="supervised_unet")
    masks = tiny_dataset / "masks"
    _drain(train_pipeline(tiny_dataset / "images", labels, tmp_path / "memory", config,
                          masks_dir=masks))
    out = _drain(train_pipeline(tiny_dataset / "images", labels, tmp_path / "disk",
                                config.replace(memory_budget_gb=1e-6), masks_dir=masks))
    mine = load_file(str(out / "unet.safetensors"))
    theirs = load_file(str(tmp_path / "memory" / "unet.safetensors"))
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[name], theirs[name]) for name in mine)
    assert json.loads((out / "config.json").read_text())["n_images_on_disk"] == 16
    assert _spill_folders(tmp_path) == []


def _tensor_files(folder):
    """Every safetensors file of a model folder (members' too), by relative path."""
    return {p.relative_to(folder).as_posix(): load_file(str(p))
            for p in sorted(folder.rglob("*.safetensors"))}


#: A small autoencoder for the 48 px images of the tiny preset.
TINY_AE = {"anomaly_params": {"ae_ssim": {"patch_size": 32, "width": 8, "latent": 16, "epochs": 2,
                                          "steps_per_epoch": 4, "batch_size": 8}}}


@pytest.mark.parametrize(("method", "changes"), [
    ("scorecam", {}), ("ae_ssim", TINY_AE), ("cdl", {}),
    ("ensemble", {"ensemble_members": ["scorecam", "ae_ssim"], **TINY_AE}),
])
def test_every_method_trains_the_same_from_disk(tiny_dataset, tmp_path, method, changes):
    labels = read_labels_csv(tiny_dataset / "labels.csv").labels
    config = preset("tiny", method=method, **changes)
    _drain(train_pipeline(tiny_dataset / "images", labels, tmp_path / "memory", config))
    on_disk, messages = [], []

    def watch(event):
        messages.append(event.message)
        if event.kind == "stage":
            on_disk.append(sum(len(list(p.glob("*.npy"))) for p in _spill_folders(tmp_path)))

    out = _drain(train_pipeline(tiny_dataset / "images", labels, tmp_path / "disk",
                                config.replace(memory_budget_gb=1e-6)), watch)
    assert max(on_disk) >= 16  # every image was on disk during the run
    assert "16 of 16 images kept on disk (memory budget 0.0 GB)" in messages
    assert _spill_folders(tmp_path) == []
    mine, theirs = _tensor_files(out), _tensor_files(tmp_path / "memory")
    assert mine.keys() == theirs.keys() and mine
    for part, tensors in mine.items():
        assert tensors.keys() == theirs[part].keys()
        for name in tensors:
            assert torch.equal(tensors[name], theirs[part][name]), f"{part}: {name}"
    assert json.loads((out / "config.json").read_text())["n_images_on_disk"] == 16
