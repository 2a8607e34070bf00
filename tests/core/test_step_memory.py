"""A CPU training step is planned to fit the memory available, or refused with a message."""

import copy

import pytest
import torch

from generator_helpers import collect as run_all
from napari_artseg.cli import main
from napari_artseg.config import preset
from napari_artseg.errors import ArtSegError
from napari_artseg.labels_file import read_labels_csv
from napari_artseg.models.resnet import ResNetClassifier
from napari_artseg.models.unet import UNet
from napari_artseg.training import loop, step_memory, train_pipeline
from napari_artseg.training.step_memory import (
    HEADROOM,
    AllocationTracker,
    bytes_per_image,
    fixed_bytes,
    local_ranks,
    plan_step,
)

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_estimates():
    step_memory.clear_cache()
    yield
    step_memory.clear_cache()


def measured_per_image(network, shape, batch=2):
    """Tracked peak of a step at the full size, per image, less the gradients."""
    probe = copy.deepcopy(network).train()
    gradients = step_memory.gradient_bytes(probe)
    return (step_memory._probe_peak(probe, (batch, *shape)) - gradients) / batch


def test_tracker_counts_each_storage_once_while_it_lives():
    with AllocationTracker() as tracker:
        first = torch.empty(1000)  # 4000 bytes
        view = first.view(10, 100)  # the same storage
        second = torch.empty(500, dtype=torch.float64)  # 4000 bytes
        del first, view
        after_first = tracker.current
        del second
    assert tracker.peak == 8000
    assert after_first == 4000 and tracker.current == 0


@pytest.mark.parametrize("network, shape", [
    (UNet(width=6, levels=3, convs_per_level=2), (1, 160, 160)),
    (UNet(width=4, levels=2, convs_per_level=3, downsample=2), (1, 128, 96)),
    (ResNetClassifier(depth=18, width=4, pool="lse"), (1, 192, 192)),
])
def test_estimate_from_small_probes_matches_the_step_at_full_size(network, shape):
    estimate = bytes_per_image(network, shape)
    assert estimate == pytest.approx(measured_per_image(network, shape), rel=0.05)


def test_probing_leaves_the_network_and_the_random_stream_alone():
    network = UNet(width=4, levels=2, convs_per_level=2)
    before = copy.deepcopy(network.state_dict())
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    bytes_per_image(network, (1, 128, 128))
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    assert all(p.grad is None for p in network.parameters())


def test_plan_splits_the_batch_to_fit_with_headroom_or_refuses_one_image():
    network = UNet(width=4, levels=2, convs_per_level=2)
    shape = (8, 1, 128, 128)
    image, fixed = bytes_per_image(network, shape[1:]), fixed_bytes(network)
    roomy = plan_step(network, shape, CPU, "the U-Net", available=int(1e12))
    assert roomy.chunks == 1
    tight = plan_step(network, shape, CPU, "the U-Net",
                      available=int(HEADROOM * (fixed + 3 * image)))
    assert tight.chunks == 3  # 3 images per micro-batch: 3, 3 and 2
    assert tight.step_bytes(8) == pytest.approx(fixed + 8 * image)
    with pytest.raises(ArtSegError, match=r"training the U-Net needs about [\d.]+ MB for one image "
                                          r"of 128 x 128 px and \d+\.\d MB is available"):
        plan_step(network, shape, CPU, "the U-Net", available=int(image // 2))


def test_sizes_read_in_gigabytes_or_megabytes():
    assert step_memory.gigabytes(2.456e9) == "2.46 GB"
    assert step_memory.gigabytes(46.24e6) == "46.2 MB"


def test_no_plan_off_the_cpu_or_without_a_memory_reading(monkeypatch):
    network = UNet(width=4, levels=2, convs_per_level=2)
    assert plan_step(network, (8, 1, 64, 64), torch.device("cuda"), "the U-Net").chunks == 1
    monkeypatch.setattr(step_memory, "available_memory_bytes", lambda: None)
    assert plan_step(network, (8, 1, 64, 64), CPU, "the U-Net").chunks == 1


def test_ranks_on_one_machine_share_its_memory(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert local_ranks() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "x")
    assert local_ranks() == 1


def test_micro_batches_take_the_same_step_as_the_whole_batch():
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                  torch.nn.Conv2d(4, 1, 3, padding=1))
    batch = (torch.randn(6, 1, 16, 16), torch.rand(6, 1, 16, 16))

    def loss_fn(output, part):
        return torch.nn.functional.mse_loss(output, part[1])

    steps = []
    for chunks in (1, 3):
        copied = copy.deepcopy(network)
        optimizer = torch.optim.SGD(copied.parameters(), lr=0.5)
        loss = loop.train_step(copied, optimizer, batch, loss_fn, CPU, amp=False, chunks=chunks)
        steps.append((loss, torch.cat([p.detach().flatten() for p in copied.parameters()])))
    assert steps[0][0] == pytest.approx(steps[1][0], rel=1e-5)
    assert torch.allclose(steps[0][1], steps[1][1], atol=1e-6)


def tight_memory(monkeypatch, images_per_step):
    """Make the memory reading leave room for ``images_per_step`` images of each network."""
    real = step_memory.plan_step

    def planned(network, batch_shape, device, what, available=None):
        image = bytes_per_image(network, batch_shape[1:])
        room = int(HEADROOM * (fixed_bytes(network) + images_per_step * image))
        return real(network, batch_shape, device, what, available=room)

    monkeypatch.setattr(loop, "plan_step", planned)


@pytest.fixture
def labels(tiny_dataset):
    return read_labels_csv(tiny_dataset / "labels.csv").labels


def test_training_in_micro_batches_says_so_and_finishes(tiny_dataset, labels, tmp_path,
                                                       monkeypatch):
    tight_memory(monkeypatch, images_per_step=1)
    events, folder = run_all(train_pipeline(
        tiny_dataset / "images", labels, tmp_path / "m",
        preset("tiny", self_training_rounds=0, classifier_epochs=1, unet_epochs=1)))
    notes = [e for e in events if e.kind == "info"]
    assert [e.stage for e in notes] == ["classifier", "unet"]
    batch = preset("tiny").batch_size
    assert all(e.metrics["micro_batches"] == batch for e in notes)
    assert all(f"a step on {batch} images needs about" in e.message
               and f"trains in {batch} micro-batches" in e.message for e in notes)
    assert (folder / "config.json").is_file()


def test_a_step_too_large_for_the_memory_stops_training_with_one_line(tiny_dataset, tmp_path,
                                                                       monkeypatch, capsys):
    monkeypatch.setattr(step_memory, "available_memory_bytes", lambda: 1000)
    status = main([str(a) for a in (
        "train", "--images", tiny_dataset / "images", "--labels", tiny_dataset / "labels.csv",
        "--out", tmp_path / "m", "--preset", "tiny", "--quiet")])
    err = capsys.readouterr().err
    assert status != 0 and err.strip().count("\n") == 0, err
    assert "training the classifier needs about" in err and "and 0.0 MB is available" in err
    assert not (tmp_path / "m").exists()


def test_a_larger_batch_later_is_planned_again_against_the_first_reading(monkeypatch):
    network = UNet(width=4, levels=2, convs_per_level=2)
    image = {side: bytes_per_image(network, (1, side, side)) for side in (64, 128)}
    readings = iter([int(HEADROOM * (fixed_bytes(network) + 4 * image[128])), 1])
    monkeypatch.setattr(step_memory, "available_memory_bytes", lambda: next(readings))
    real, calls = step_memory.plan_step, []

    def recorded(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "plan_step", recorded)
    sizes = [(4, 64), (4, 64), (8, 128), (4, 64)]

    def batches(epoch):
        for count, side in sizes:
            yield torch.rand(count, 1, side, side), torch.rand(count, 1, side, side)

    def loss_fn(output, batch):
        return torch.nn.functional.binary_cross_entropy_with_logits(output, batch[1])

    def validate(net):
        yield 1, 1
        return {"val_loss": 1.0}

    events, result = run_all(loop.fit("unet", network, preset("tiny"), 1, CPU, batches,
                                      len(sizes), loss_fn, validate))
    assert calls == [(4, 1, 64, 64), (8, 1, 128, 128)]  # the memory read once, before step 1
    notes = [e for e in events if e.kind == "info"]
    assert [(e.step, e.metrics["micro_batches"]) for e in notes] == [(2, 2)]
    assert result.micro_batches == 2
