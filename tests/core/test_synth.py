"""Tests of the synthetic brightfield generator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

from generator_helpers import collect as _run
from napari_artseg.labels_file import read_labels_csv
from napari_artseg.synth import (
    ARTIFACT_KINDS,
    SynthSample,
    generate_sample,
    image_rng,
    write_dataset,
)


def _sample(seed: int, size=128, **kwargs) -> SynthSample:
    return generate_sample(np.random.default_rng(seed), size, **kwargs)


def test_same_seed_same_arrays():
    a, b = _sample(3), _sample(3)
    for field in ("image", "mask", "kinds"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.label == b.label and a.artifacts == b.artifacts
    assert not np.array_equal(a.image, _sample(4).image)


def test_dtypes_and_shapes():
    s = _sample(0, size=(96, 160))
    assert s.image.shape == s.mask.shape == s.kinds.shape == (96, 160)
    assert s.image.dtype == np.uint16
    assert s.mask.dtype == np.uint8 and s.kinds.dtype == np.uint8
    assert set(np.unique(s.mask)) <= {0, 1}
    assert s.kinds.max() <= len(ARTIFACT_KINDS)
    # 12-bit brightfield: a bright background well inside the range.
    assert 1500 < np.median(s.image) < 3500 and s.image.max() <= 4095


def test_clean_and_artifact_masks():
    clean = _sample(1, artifact=False)
    assert clean.label == "clean" and clean.artifacts == ()
    assert not clean.mask.any() and not clean.kinds.any()
    for seed in range(5):
        s = _sample(seed)
        assert s.label == "artifact" and 1 <= len(s.artifacts)
        assert s.mask.any()
        np.testing.assert_array_equal(s.kinds > 0, s.mask == 1)


def test_clean_and_artifact_share_cells():
    clean, dirty = _sample(7, artifact=False), _sample(7)
    # Same cells and noise: outside the mask, pixels are equal except where an
    # artifact's faint tail (below the mask threshold) shifts them a little.
    outside = dirty.mask == 0
    diff = np.abs(clean.image[outside].astype(int) - dirty.image[outside])
    assert np.mean(diff == 0) > 0.8
    assert np.percentile(diff, 99) < 0.03 * np.median(clean.image)


@pytest.mark.parametrize("kind", ARTIFACT_KINDS)
def test_each_kind_can_be_drawn(kind):
    kind_id = ARTIFACT_KINDS.index(kind) + 1
    s = _sample(11, artifact_kinds=(kind,))
    assert s.artifacts[0] == kind
    assert (s.kinds == kind_id).any()


def test_random_kinds_cover_all():
    seen = set()
    for seed in range(40):
        seen.update(_sample(seed, size=64).artifacts)
    assert seen == set(ARTIFACT_KINDS)


def test_unknown_kind_rejected():
    with pytest.raises(ValueError, match="unknown artifact kind"):
        _sample(0, artifact_kinds=("smudge",))
    with pytest.raises(ValueError, match="unknown artifact kind"):
        _sample(0, kind_weights={"smudge": 1.0})


def test_artifact_pixels_differ_from_background():
    inside, outside = [], []
    for seed in range(6):
        s = _sample(seed)
        image = s.image.astype(np.float64)
        background = ndi.uniform_filter(image, size=41, mode="reflect")
        deviation = np.abs(image - background)
        inside.append(deviation[s.mask > 0].mean())
        outside.append(deviation[s.mask == 0].mean())
    assert np.mean(inside) > 2 * np.mean(outside)


def test_not_separable_by_a_global_threshold():
    # Cells have dark parts too: some clean pixels are as dark as typical debris.
    clean = _sample(5, size=256, artifact=False)
    debris = _sample(5, size=256, artifact_kinds=("debris", "debris", "debris"))
    median_debris = np.median(debris.image[debris.mask > 0])
    assert (clean.image < median_debris).sum() > 20


def _hair_length(size: int, seed: int) -> int:
    """Length in pixels of the drawn hair's skeleton."""
    s = _sample(seed, size=size, artifact_kinds=("hair",))
    return int(skeletonize(s.kinds == 3).sum())


def test_sizes_scale_with_image_size():
    # Artifacts have their own random stream: the same seed at 128 and 512 px draws
    # the same hair, 4x longer and wider (less where it leaves the field).
    for seed in range(3):
        assert _hair_length(512, seed) > 2 * _hair_length(128, seed)
        small = _sample(seed, size=128, artifact_kinds=("hair",)).mask.sum()
        large = _sample(seed, size=512, artifact_kinds=("hair",)).mask.sum()
        assert large > 4 * small


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "n must be"),
        ({"size": 16}, "size must be"),
        ({"artifact_fraction": 1.5}, "artifact_fraction must be"),
        ({"artifact_fraction": -0.1}, "artifact_fraction must be"),
        ({"seed": -1}, "seed must be"),
        ({"pixel_size_um": 0}, "pixel_size_um must be"),
    ],
)
def test_argument_validation(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        next(write_dataset(tmp_path, **kwargs))
    assert not any(tmp_path.iterdir())


def test_generate_sample_size_validation():
    with pytest.raises(ValueError, match="at least 32"):
        _sample(0, size=8)


def test_write_dataset_files(tmp_path: Path):
    out = tmp_path / "synth"
    progress, summary = _run(
        write_dataset(out, n=5, size=64, artifact_fraction=0.4, seed=2, pixel_size_um=0.5)
    )
    assert progress == [(i, 5) for i in range(1, 6)]
    assert summary == {"n": 5, "n_artifact": 2, "n_clean": 3, "out": str(out)}
    names = [f"synth_{i:04d}.tif" for i in range(5)]
    for folder in ("images", "masks", "kinds"):
        assert sorted(p.name for p in (out / folder).iterdir()) == names
    table = read_labels_csv(out / "labels.csv")
    labels = table.labels
    assert sorted(labels) == names
    assert sorted(labels.values()) == ["artifact"] * 2 + ["clean"] * 3
    assert (out / "labels.csv").read_text().splitlines()[0] == "image,label"
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["seed"] == 2 and meta["n"] == 5 and meta["size"] == 64
    assert meta["artifact_fraction"] == 0.4 and meta["pixel_size_um"] == 0.5
    assert meta["complete"] is True and "generator_version" in meta
    for record in meta["images"]:
        name = record["image"]
        image = tifffile.imread(out / "images" / name)
        mask = tifffile.imread(out / "masks" / name)
        kinds = tifffile.imread(out / "kinds" / name)
        assert image.dtype == np.uint16 and mask.dtype == np.uint8 and image.shape == (64, 64)
        np.testing.assert_array_equal(kinds > 0, mask == 1)
        assert record["label"] == labels[name]
        assert (record["label"] == "artifact") == bool(mask.any())
        present = {ARTIFACT_KINDS[k - 1] for k in np.unique(kinds) if k}
        assert set(record["kinds"]) == present


def test_exact_artifact_count(tmp_path: Path):
    for n, fraction in [(7, 0.5), (10, 0.0), (3, 1.0), (9, 0.25)]:
        _, summary = _run(
            write_dataset(
                tmp_path / f"d{n}_{fraction}", n=n, size=32, artifact_fraction=fraction, seed=1
            )
        )
        assert summary["n_artifact"] == round(n * fraction)
        assert summary["n_clean"] == n - round(n * fraction)


def test_image_independent_of_n(tmp_path: Path):
    _run(write_dataset(tmp_path / "a", n=2, size=48, artifact_fraction=1.0, seed=9))
    _run(write_dataset(tmp_path / "b", n=4, size=48, artifact_fraction=1.0, seed=9))
    for i in range(2):
        name = f"synth_{i:04d}.tif"
        a = (tmp_path / "a" / "images" / name).read_bytes()
        b = (tmp_path / "b" / "images" / name).read_bytes()
        assert a == b
    expected = generate_sample(image_rng(9, 1), 48, True)
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "b" / "images/synth_0001.tif"), expected.image
    )


def test_same_seed_same_files(tmp_path: Path):
    for name in ("a", "b"):
        _run(write_dataset(tmp_path / name, n=3, size=48, seed=4))
    for folder in ("images", "masks", "kinds"):
        for path in (tmp_path / "a" / folder).iterdir():
            assert path.read_bytes() == (tmp_path / "b" / folder / path.name).read_bytes()
    assert (tmp_path / "a/labels.csv").read_text() == (tmp_path / "b/labels.csv").read_text()


def test_stopping_early_keeps_a_consistent_dataset(tmp_path: Path):
    gen = write_dataset(tmp_path, n=5, size=32, seed=0)
    assert next(gen) == (1, 5)
    assert next(gen) == (2, 5)
    gen.close()
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["complete"] is False and len(meta["images"]) == 2
    assert len((tmp_path / "labels.csv").read_text().splitlines()) == 3


def test_name_padding_grows_with_n(tmp_path: Path):
    gen = write_dataset(tmp_path, n=10001, size=32, seed=0)
    next(gen)
    gen.close()
    assert (tmp_path / "images" / "synth_00000.tif").exists()
