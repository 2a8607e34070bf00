"""Score-CAM pseudo-label maps cached on disk, keyed by classifier, settings and image content."""

import json
import shutil

import numpy as np
import pytest
import torch

from generator_helpers import drain
from napari_artseg.config import preset
from napari_artseg.image_files import write_tiff
from napari_artseg.labels_file import read_labels_csv
from napari_artseg.training import pseudo_labels, saliency_cache
from napari_artseg.training.classifier import build_classifier
from napari_artseg.training.data import load_training_items
from napari_artseg.training.pseudo_labels import saliency_maps
from napari_artseg.training.saliency_cache import (
    SaliencyCache,
    default_cache_folder,
    scorecam_settings,
)

CPU = torch.device("cpu")


@pytest.fixture
def counted(monkeypatch):
    """Count the Score-CAM computations of the pseudo-label stage (the real function runs)."""
    calls = []
    real = pseudo_labels.scorecam_runner

    def counting(classifier, config):
        runner = real(classifier, config)

        def run(views):
            calls.append(len(views))
            return runner(views)

        return run

    monkeypatch.setattr(pseudo_labels, "scorecam_runner", counting)
    return calls


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    labels = {}
    for i in range(4):
        image = rng.normal(1000, 40, (64, 64))
        image[10:30, 20:44] += 300 * (i + 1)
        write_tiff(folder / f"im{i}.tif", image.astype(np.uint16))
        labels[f"im{i}.tif"] = "artifact"
    return folder, labels


def _setup(images, config):
    folder, labels = images
    items, _ = drain(load_training_items(folder, labels, config))
    torch.manual_seed(1)
    classifier = build_classifier(config).eval()
    return folder, items, classifier


def _maps(classifier, items, config, cache):
    return drain(saliency_maps(classifier, items, list(range(len(items))), config, CPU, cache))


def test_second_run_hits_the_cache_with_identical_maps(images, tmp_path, counted):
    config = preset("tiny")
    folder, items, classifier = _setup(images, config)
    first = _maps(classifier, items, config, SaliencyCache(tmp_path / "c", classifier, config,
                                                           folder, CPU))
    assert len(counted) == 4
    cache = SaliencyCache(tmp_path / "c", classifier, config, folder, CPU)
    second = _maps(classifier, items, config, cache)
    assert len(counted) == 4 and (cache.hits, cache.misses) == (4, 0)
    for index, value in first.items():
        assert torch.equal(value, second[index]) and value.std() > 0
    files = sorted(p.name for p in cache.folder.iterdir())
    assert len(files) == 5 and "key.json" in files and all(
        f.endswith(".npy") for f in files if f != "key.json")  # no temporaries left
    for path in cache.folder.glob("*.npy"):
        assert np.load(path, allow_pickle=False).dtype == np.float32
    described = json.loads((cache.folder / "key.json").read_text())
    assert described["settings"]["scorecam_weighting"] == config.scorecam_weighting


def test_a_changed_classifier_or_setting_misses(images, tmp_path, counted):
    config = preset("tiny")
    folder, items, classifier = _setup(images, config)
    _maps(classifier, items, config, SaliencyCache(tmp_path / "c", classifier, config, folder,
                                                   CPU))
    with torch.no_grad():
        classifier.fc.bias += 0.5  # another classifier: other weights
    cache = SaliencyCache(tmp_path / "c", classifier, config, folder, CPU)
    _maps(classifier, items, config, cache)
    assert len(counted) == 8 and cache.hits == 0
    other = config.replace(scorecam_weighting="softmax")
    cache = SaliencyCache(tmp_path / "c", classifier, other, folder, CPU)
    _maps(classifier, items, other, cache)
    assert len(counted) == 12 and cache.hits == 0
    assert len([p for p in (tmp_path / "c").iterdir() if p.is_dir()]) == 3
    coarse = other.replace(scorecam_score_scale=0.5)  # an approximation: other maps
    cache = SaliencyCache(tmp_path / "c", classifier, coarse, folder, CPU)
    _maps(classifier, items, coarse, cache)
    assert len(counted) == 16 and cache.hits == 0
    batched = coarse.replace(scorecam_batch_size=3)  # only the speed changes: same maps
    cache = SaliencyCache(tmp_path / "c", classifier, batched, folder, CPU)
    _maps(classifier, items, batched, cache)
    assert len(counted) == 16 and cache.hits == 4
    rounded = batched.replace(scorecam_amp=True)  # bf16 passes: an approximation too
    cache = SaliencyCache(tmp_path / "c", classifier, rounded, folder, CPU)
    _maps(classifier, items, rounded, cache)
    assert len(counted) == 20 and cache.hits == 0
    inside = config.replace(scorecam_mask_stage=2)  # masking inside: other maps
    cache = SaliencyCache(tmp_path / "c", classifier, inside, folder, CPU)
    _maps(classifier, items, inside, cache)
    assert len(counted) == 24 and cache.hits == 0


def test_settings_added_later_keep_earlier_keys():
    """A cache written before ``scorecam_mask_stage`` existed has no such setting in its
    key: at 0 (the maps of before) it stays out, so that cache is still found."""
    config = preset("tiny")
    settings = scorecam_settings(config)
    assert "scorecam_mask_stage" not in settings and "scorecam_stage" in settings
    assert scorecam_settings(config.replace(scorecam_mask_stage=2))["scorecam_mask_stage"] == 2


def test_images_are_known_by_content(images, tmp_path, counted):
    config = preset("tiny")
    folder, items, classifier = _setup(images, config)
    _maps(classifier, items, config, SaliencyCache(tmp_path / "c", classifier, config, folder,
                                                   CPU))
    shutil.move(folder / "im0.tif", folder / "renamed.tif")
    items[0].key = "renamed.tif"
    write_tiff(folder / "im1.tif", np.full((64, 64), 900, np.uint16))  # edited image
    cache = SaliencyCache(tmp_path / "c", classifier, config, folder, CPU)
    np.save(cache.path_for("im2.tif"), np.zeros((3, 3), np.float32))  # a damaged entry
    _maps(classifier, items, config, cache)
    assert (cache.hits, cache.misses) == (2, 2) and len(counted) == 6
    assert np.load(cache.path_for("im2.tif")).shape == (64, 64)  # rewritten


def test_an_unwritable_cache_never_stops_the_stage(images, tmp_path, counted):
    config = preset("tiny")
    folder, items, classifier = _setup(images, config)
    (tmp_path / "file").write_text("not a folder")
    cache = SaliencyCache(tmp_path / "file" / "c", classifier, config, folder, CPU)
    maps = _maps(classifier, items, config, cache)
    assert len(maps) == 4 and "saliency cache not written" in cache.write_error


def test_old_classifier_keys_are_pruned(images, tmp_path):
    config = preset("tiny")
    folder, items, classifier = _setup(images, config)
    for bias in range(5):
        with torch.no_grad():
            classifier.fc.bias.fill_(float(bias))
        cache = SaliencyCache(tmp_path / "c", classifier, config, folder, CPU)
        cache.store(items[0].key, torch.zeros(64, 64))
    kept = [p for p in (tmp_path / "c").iterdir() if p.is_dir()]
    cache.prune(keep=2)
    left = [p for p in (tmp_path / "c").iterdir() if p.is_dir()]
    assert len(kept) == 5 and len(left) == 2 and cache.folder in left


def test_cache_folder_is_the_projects_or_the_named_one(tmp_path, monkeypatch):
    monkeypatch.delenv(saliency_cache.CACHE_ENV, raising=False)
    project = tmp_path / "p"
    (project / "models").mkdir(parents=True)
    assert default_cache_folder(project / "models" / "m") is None  # no project.json
    (project / "project.json").write_text("{}")
    assert default_cache_folder(project / "models" / "m") == project / "cache" / "saliency"
    assert default_cache_folder(tmp_path / "elsewhere" / "m") is None
    monkeypatch.setenv(saliency_cache.CACHE_ENV, str(tmp_path / "named"))
    assert default_cache_folder(tmp_path / "elsewhere" / "m") == tmp_path / "named" / "saliency"


def test_retraining_the_unet_reuses_the_maps(tiny_dataset, tmp_path, counted, monkeypatch):
    """A project run, then a U-Net-only run from it: no Score-CAM recomputed, same pseudo-labels."""
    from napari_artseg.training import train_pipeline

    monkeypatch.delenv(saliency_cache.CACHE_ENV, raising=False)
    project = tmp_path / "p"
    (project / "models").mkdir(parents=True)
    (project / "project.json").write_text("{}")
    labels = read_labels_csv(tiny_dataset / "labels.csv").labels
    config = preset("tiny", classifier_epochs=1, unet_epochs=1, self_training_rounds=0)
    first = drain(train_pipeline(tiny_dataset / "images", labels, project / "models" / "a", config))
    n_maps = len(counted)
    assert n_maps > 0 and len(list((project / "cache" / "saliency").glob("*/*.npy"))) == n_maps
    second = drain(train_pipeline(tiny_dataset / "images", labels, project / "models" / "b",
                                config.replace(classifier_epochs=0), init=first))
    assert len(counted) == n_maps  # every map came from the cache
    document = json.loads((second / "config.json").read_text())
    assert document["pseudo_labels"]["saliency_cached"] == n_maps
    for sub in ("saliency", "pseudo_labels"):
        names = sorted(p.name for p in (first / sub).iterdir())
        assert names == sorted(p.name for p in (second / sub).iterdir()) and names
        for name in names:
            assert (first / sub / name).read_bytes() == (second / sub / name).read_bytes()


def test_the_config_switch_turns_the_cache_off(tiny_dataset, tmp_path, counted, monkeypatch):
    from napari_artseg.training import train_pipeline

    monkeypatch.delenv(saliency_cache.CACHE_ENV, raising=False)
    project = tmp_path / "p"
    (project / "models").mkdir(parents=True)
    (project / "project.json").write_text("{}")
    labels = read_labels_csv(tiny_dataset / "labels.csv").labels
    config = preset("tiny", classifier_epochs=1, unet_epochs=1, self_training_rounds=0,
                    pseudo_label_cache=False)
    folder = drain(train_pipeline(tiny_dataset / "images", labels, project / "models" / "a",
                                  config))
    assert counted and not (project / "cache").exists()
    assert json.loads((folder / "config.json").read_text())["config"]["pseudo_label_cache"] is False


def test_one_scorecam_runner_per_stage_and_none_when_all_cached(images, tmp_path, monkeypatch):
    config = preset("tiny")
    folder, items, classifier = _setup(images, config)
    built = []
    real = pseudo_labels.scorecam_runner

    def counting(classifier, config):
        built.append(classifier)
        return real(classifier, config)

    monkeypatch.setattr(pseudo_labels, "scorecam_runner", counting)
    _maps(classifier, items, config, SaliencyCache(tmp_path / "c", classifier, config, folder,
                                                   CPU))
    assert built == [classifier]  # four maps, one runner: its networks are built once
    _maps(classifier, items, config, SaliencyCache(tmp_path / "c", classifier, config, folder,
                                                   CPU))
    assert built == [classifier]  # every map from the cache: nothing built
