"""The training generators: progress, cancel, masks rules, refusal of bad label sets."""

import json

import numpy as np
import pytest

from generator_helpers import collect as run_all
from napari_artseg.config import preset
from napari_artseg.errors import ArtSegError
from napari_artseg.image_files import write_tiff
from napari_artseg.labels_file import read_labels_csv
from napari_artseg.training import train_pipeline
from napari_artseg.training.classifier import VALIDATION_CHUNK


@pytest.fixture
def labels(tiny_dataset):
    return read_labels_csv(tiny_dataset / "labels.csv").labels


def test_events_cover_every_stage_in_order(tiny_dataset, labels, tmp_path):
    events, folder = run_all(
        train_pipeline(tiny_dataset / "images", labels, tmp_path / "m", preset("tiny")))
    stages = [e.stage for e in events if e.kind == "stage"]
    assert stages == ["data", "classifier", "pseudo_labels", "unet",
                      "self_training", "unet_finetune", "thresholds", "save", "save"]
    epochs = [e for e in events if e.kind == "epoch"]
    assert {e.stage for e in epochs} == {"classifier", "unet", "unet_finetune"}
    assert all("val_loss" in e.metrics and "train_loss" in e.metrics for e in epochs)
    assert all(0 <= e.step <= e.total for e in events if e.total)
    assert folder == tmp_path / "m" and (folder / "config.json").is_file()
    # every epoch's validation counts its images up to the end, at the epoch's last step
    for stage in ("classifier", "unet", "unet_finetune"):
        judged = [e for e in events if e.stage == stage and e.kind == "validation"]
        ends = [e.step for e in events if e.stage == stage and e.kind == "epoch"]
        assert judged and {e.step for e in judged} == set(ends)
        for end in ends:
            counts = [e.metrics["validated"] for e in judged if e.step == end]
            of = judged[0].metrics["of"]
            # the classifier counts its views in chunks; the U-Net counts image by image
            step = VALIDATION_CHUNK if stage == "classifier" else 1
            assert counts == [min(of, done) for done in range(step, of + step, step)]
    # thresholds: a gate-score step per chunk of views, then one per validation image's map
    steps = [e for e in events if e.stage == "thresholds" and e.kind == "step"]
    n_val = steps[-1].total // 2
    assert n_val > 1 and [e.step for e in steps][-n_val:] == list(range(n_val + 1, 2 * n_val + 1))
    # the save counts the files it writes: weights, tables, two rasters per pseudo-label, config
    saved = [e for e in events if e.stage == "save" and e.kind == "step"]
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert [e.step for e in saved] == list(range(1, len(files) + 1))
    assert {e.total for e in saved} == {len(files)} and len(files) > 6


@pytest.mark.parametrize(("module", "stage", "kind"), [
    ("napari_artseg.training.segmenter", "unet", "validation"),
    ("napari_artseg.training.pipeline", "thresholds", "step"),
])
def test_cancel_stops_between_validation_images(tiny_dataset, labels, tmp_path, monkeypatch,
                                                module, stage, kind):
    """Validation and the choice of thresholds judge one image per step: a cancel there
    stops after the image in hand, not after the whole validation split."""
    import importlib

    target = importlib.import_module(module)
    calls = []
    real = target.unet_probability
    monkeypatch.setattr(target, "unet_probability",
                        lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    generator = train_pipeline(tiny_dataset / "images", labels, tmp_path / "m", preset("tiny"))
    for event in generator:
        if event.stage == stage and event.kind == kind and calls:
            break
    left = (event.metrics["of"] if kind == "validation" else event.total - event.step)
    assert left > 1 and len(calls) == 1  # images were left to judge when it stopped
    generator.close()
    assert len(calls) == 1
    document = json.loads((tmp_path / "m" / "config.json").read_text())
    assert document["status"] == "partial"


def test_deletion_rule_with_per_image_thresholds_records_what_flipped(tiny_dataset, labels,
                                                                      tmp_path):
    config = preset("tiny", pseudo_label_rule="deletion", pseudo_label_per_image=True)
    events, folder = run_all(train_pipeline(tiny_dataset / "images", labels, tmp_path / "m",
                                            config))
    assert "pseudo_thresholds" in [e.stage for e in events if e.kind == "stage"]
    document = json.loads((folder / "config.json").read_text())
    report = document["pseudo_labels"]
    # the threshold's deletion test counts its validation images, then the per-image one its maps
    tested = [e.step for e in events if e.stage == "pseudo_thresholds" and e.kind == "step"]
    assert report["n_images"] > 1
    assert tested[:report["n_images"]] == list(range(1, report["n_images"] + 1))
    assert {"n_images", "n_flipped", "n_own_threshold"} <= set(report)
    assert 0 <= report["n_flipped"] <= report["n_images"]
    assert 0 < document["thresholds"]["pseudo_label"] <= 1


def test_cancel_during_unet_saves_a_partial_model(tiny_dataset, labels, tmp_path):
    generator = train_pipeline(tiny_dataset / "images", labels, tmp_path / "m", preset("tiny"))
    for event in generator:
        if event.stage == "unet" and event.kind == "step":
            break
    generator.close()
    document = json.loads((tmp_path / "m" / "config.json").read_text())
    assert document["status"] == "partial" and document["components"] == ["classifier"]


def test_cancel_while_saving_keeps_a_partial_model_and_no_half_folder(tiny_dataset, labels,
                                                                     tmp_path):
    generator = train_pipeline(tiny_dataset / "images", labels, tmp_path / "m", preset("tiny"))
    for event in generator:
        if event.stage == "save" and event.kind == "step" and event.step == 3:
            break
    generator.close()
    document = json.loads((tmp_path / "m" / "config.json").read_text())
    assert document["status"] == "partial" and document["components"] == ["classifier", "unet"]
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # the half-written folder is gone


def test_cancel_during_classifier_writes_nothing(tiny_dataset, labels, tmp_path):
    generator = train_pipeline(tiny_dataset / "images", labels, tmp_path / "m", preset("tiny"))
    for event in generator:
        if event.stage == "classifier" and event.kind == "step":
            break
    generator.close()
    assert list(tmp_path.iterdir()) == []


def test_one_class_is_refused_with_advice(tiny_dataset, labels, tmp_path):
    only_clean = {k: v for k, v in labels.items() if v == "clean"}
    with pytest.raises(ArtSegError, match="at least 2 clean and 2 artifact"):
        run_all(train_pipeline(tiny_dataset / "images", only_clean, tmp_path / "m",
                               preset("tiny")))


def test_nonzero_mask_on_a_clean_image_is_an_error(tiny_dataset, labels, tmp_path):
    clean = next(k for k, v in labels.items() if v == "clean")
    write_tiff(tmp_path / "masks" / clean, np.ones((96, 96), np.uint8))
    with pytest.raises(ArtSegError, match="labelled clean"):
        run_all(train_pipeline(tiny_dataset / "images", labels, tmp_path / "m", preset("tiny"),
                               masks_dir=tmp_path / "masks"))


def test_curated_masks_supervise_their_images_and_the_rest_get_pseudo_labels(
        tiny_dataset, labels, tmp_path, tiny_model):
    artifact = [k for k, v in labels.items() if v == "artifact"]
    clean = next(k for k, v in labels.items() if v == "clean")
    masks = tmp_path / "masks"
    write_tiff(masks / artifact[0], (np.arange(96 * 96).reshape(96, 96) % 7 == 0).astype("u1"))
    write_tiff(masks / clean, np.zeros((96, 96), np.uint8))
    _, folder = run_all(train_pipeline(tiny_dataset / "images", labels, tmp_path / "m",
                                       preset("tiny"), masks_dir=masks, init=tiny_model))
    manifest = (folder / "manifest.csv").read_text().splitlines()
    rows = dict((line.split(",")[0], line.split(",")[2]) for line in manifest[1:])
    assert rows[artifact[0]] == "curated" and rows[clean] == "curated"
    assert rows[artifact[1]] == "pseudo"
    assert sum(v == "zero" for v in rows.values()) == sum(v == "clean" for v in labels.values()) - 1
    document = json.loads((folder / "config.json").read_text())
    parent = json.loads((tiny_model / "config.json").read_text())["model_id"]
    assert document["parent"] == parent and document["n_curated_masks"] == 2


def test_existing_output_folder_is_never_overwritten(tiny_dataset, labels, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("mine")
    with pytest.raises(ArtSegError, match="already exists"):
        run_all(train_pipeline(tiny_dataset / "images", labels, tmp_path / "m", preset("tiny")))
    assert (tmp_path / "m" / "keep.txt").read_text() == "mine"


def test_out_of_memory_retries_in_smaller_micro_batches_then_explains():
    import torch

    from napari_artseg.training.loop import train_step

    class Flaky(torch.nn.Module):
        """Runs out of memory on batches larger than ``limit``."""

        def __init__(self, limit):
            super().__init__()
            self.limit, self.sizes = limit, []
            self.weight = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            self.sizes.append(len(x))
            if len(x) > self.limit:
                raise torch.OutOfMemoryError("simulated")
            return x * self.weight

    def loss_fn(output, batch):
        return ((output - batch[1]) ** 2).mean()

    batch = (torch.ones(8, 1), torch.zeros(8, 1))
    net = Flaky(limit=2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = train_step(net, optimizer, batch, loss_fn, torch.device("cpu"), amp=False)
    assert loss == pytest.approx(1.0) and net.sizes[-1] == 2
    assert net.weight.item() == pytest.approx(0.8)  # one full-batch gradient step
    with pytest.raises(ArtSegError, match="out of cpu memory"):
        train_step(Flaky(limit=0), optimizer, batch, loss_fn, torch.device("cpu"), amp=False)


def test_self_training_is_skipped_when_every_target_is_a_curated_mask(tiny_dataset, labels,
                                                                       tmp_path):
    events, _ = run_all(train_pipeline(tiny_dataset / "images", labels, tmp_path / "m",
                                       preset("tiny"), masks_dir=tiny_dataset / "masks"))
    stages = {e.stage for e in events}
    assert "unet" in stages and not {"self_training", "unet_finetune"} & stages


def test_fine_tuning_starts_pseudo_labelled_images_from_the_parent_masks(
        tiny_dataset, labels, tmp_path, tiny_model, monkeypatch):
    import torch

    from napari_artseg.model_files import load_weights
    from napari_artseg.training import pipeline
    from napari_artseg.training.segmenter import build_unet

    parent_unet = build_unet(preset("tiny"))
    load_weights(tiny_model, "unet", parent_unet)
    seen = []
    real = pipeline.refresh_pseudo_targets

    def recording(unet, items, config, device, *args):
        seen.append({k: v.detach().cpu().clone() for k, v in unet.state_dict().items()})
        return (yield from real(unet, items, config, device, *args))

    monkeypatch.setattr(pipeline, "refresh_pseudo_targets", recording)
    config = preset("tiny", self_training_rounds=0)
    events, folder = run_all(train_pipeline(tiny_dataset / "images", labels, tmp_path / "m",
                                            config, init=tiny_model))
    stages = [e.message for e in events if e.kind == "stage"]
    first = stages.index("targets from the parent model's masks")
    assert first < stages.index("training the U-Net")
    assert len(seen) == 1  # no self-training round: the only refresh is the parent's
    for name, tensor in parent_unet.state_dict().items():
        assert torch.equal(seen[0][name], tensor), name
    report = json.loads((folder / "config.json").read_text())["pseudo_labels"]
    assert 0.0 <= report["parent_mask_targets"] <= 1.0

    seen.clear()
    events, _ = run_all(train_pipeline(tiny_dataset / "images", labels, tmp_path / "m2",
                                       config.replace(parent_mask_targets=False),
                                       init=tiny_model))
    assert not seen
    assert "targets from the parent model's masks" not in [e.message for e in events]


def test_fine_tuning_trains_at_the_fine_tune_share_of_the_learning_rate(
        tiny_dataset, labels, tmp_path, tiny_model):
    config = preset("tiny", self_training_rounds=0, learning_rate=0.004, fine_tune_lr_factor=0.5)
    _, folder = run_all(train_pipeline(tiny_dataset / "images", labels, tmp_path / "m", config,
                                       init=tiny_model))
    for table in ("history_classifier", "history_unet"):
        first = (folder / f"{table}.csv").read_text().splitlines()[1].split(",")
        header = (folder / f"{table}.csv").read_text().splitlines()[0].split(",")
        assert float(first[header.index("lr")]) == pytest.approx(0.002), table
    _, scratch = run_all(train_pipeline(tiny_dataset / "images", labels, tmp_path / "s", config))
    rows = (scratch / "history_unet.csv").read_text().splitlines()
    assert float(rows[1].split(",")[rows[0].split(",").index("lr")]) == pytest.approx(0.004)


@pytest.mark.parametrize("rounds", [0, 1])
def test_mask_ties_move_toward_half_only_after_the_unet_made_its_own_targets(
        tiny_dataset, labels, tmp_path, monkeypatch, rounds):
    from napari_artseg.training import pipeline

    seen = []
    real = pipeline.choose_gate_and_mask_from

    def recording(*args):
        seen.append(args[-1])  # own_targets
        gate, _, fraction, report = real(*args)
        return gate, 0.2, fraction, report  # image F1 chose 0.2

    monkeypatch.setattr(pipeline, "choose_gate_and_mask_from", recording)
    config = preset("tiny", self_training_rounds=rounds)
    _, folder = run_all(train_pipeline(tiny_dataset / "images", labels, tmp_path / "m", config))
    assert seen == [rounds > 0]
    # the saved model answers as the run did (bench_gate_rule re-chooses from it)
    document = json.loads((folder / "config.json").read_text())
    assert pipeline.targets_are_own(document["pseudo_labels"]) == (rounds > 0)
    # on its own masks the U-Net's masks are cut at 0.5, and 0.2 only serves empty ones
    thresholds = document["thresholds"]
    if rounds:
        assert thresholds["mask"] == 0.5 and thresholds["fallback"] == 0.2
    else:
        assert thresholds["mask"] == 0.2 and "fallback" not in thresholds
    if rounds:
        _, plain = run_all(train_pipeline(tiny_dataset / "images", labels, tmp_path / "p",
                                          config.replace(mask_fallback=False)))
        thresholds = json.loads((plain / "config.json").read_text())["thresholds"]
        assert thresholds["mask"] == 0.2 and "fallback" not in thresholds
