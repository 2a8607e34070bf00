"""The synthetic brightfield generator: determinism, masks, kinds, files, argument checks."""

import json

import numpy as np
import pytest
from scipy import ndimage

from napari_artseg.image_files import read_image
from napari_artseg.labels_file import read_labels_csv
from napari_artseg.synth import ARTIFACT_KINDS, generate_sample, image_rng, write_dataset


def test_same_seed_same_image_and_image_independent_of_n(tmp_path):
    a = generate_sample(image_rng(3, 5), 128, artifact=True)
    b = generate_sample(image_rng(3, 5), 128, artifact=True)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    for n, folder in ((4, tmp_path / "four"), (6, tmp_path / "six")):
        for _ in write_dataset(folder, n=n, size=64, artifact_fraction=0.0, seed=9):
            pass
    first = read_image(tmp_path / "four" / "images" / "synth_0002.tif").data
    second = read_image(tmp_path / "six" / "images" / "synth_0002.tif").data
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("kind", ARTIFACT_KINDS)
def test_each_kind_is_drawn_with_a_consistent_mask_and_kind_map(kind):
    sample = generate_sample(np.random.default_rng(1), 192, artifact_kinds=[kind])
    assert sample.image.dtype == np.uint16 and sample.mask.dtype == np.uint8
    assert sample.label == "artifact" and sample.mask.any()
    np.testing.assert_array_equal(sample.kinds > 0, sample.mask > 0)
    assert set(np.unique(sample.kinds)) == {0, ARTIFACT_KINDS.index(kind) + 1}


def test_clean_images_have_empty_masks():
    sample = generate_sample(np.random.default_rng(2), 128, artifact=False)
    assert sample.label == "clean" and not sample.mask.any() and not sample.kinds.any()


def test_artifact_pixels_stand_out_from_the_local_background():
    deviations_in, deviations_out = [], []
    for seed in range(4):
        sample = generate_sample(np.random.default_rng(seed), 192, artifact=True)
        image = sample.image.astype(np.float32)
        local = np.abs(image - ndimage.median_filter(image, size=31))
        deviations_in.append(local[sample.mask > 0].mean())
        deviations_out.append(local[sample.mask == 0].mean())
    assert np.mean(deviations_in) > 1.5 * np.mean(deviations_out)


def test_hairs_scale_with_the_image():
    small = generate_sample(np.random.default_rng(4), 256, artifact_kinds=["hair"])
    large = generate_sample(np.random.default_rng(4), 1024, artifact_kinds=["hair"])
    assert large.mask.sum() > 2 * small.mask.sum()


def test_write_dataset_writes_every_file_and_the_exact_artifact_share(tmp_path):
    generator = write_dataset(tmp_path, n=10, size=64, artifact_fraction=0.3, seed=1)
    progress = []
    while True:
        try:
            progress.append(next(generator))
        except StopIteration as stop:
            summary = stop.value
            break
    assert progress[-1] == (10, 10) and summary["n_artifact"] == 3
    labels = read_labels_csv(tmp_path / "labels.csv").labels
    assert sum(v == "artifact" for v in labels.values()) == 3 and len(labels) == 10
    for name, word in labels.items():
        mask = read_image(tmp_path / "masks" / name).data
        assert (word == "artifact") == bool(mask.any())
        assert (tmp_path / "images" / name).is_file() and (tmp_path / "kinds" / name).is_file()
    assert read_image(tmp_path / "images" / name).pixel_size_um == pytest.approx(0.65)
    document = json.loads((tmp_path / "dataset.json").read_text())
    assert document["seed"] == 1 and document["n"] == 10


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [({"n": 0}, "n must"), ({"size": 8}, "size must"), ({"artifact_fraction": 1.5}, "between")],
)
def test_bad_arguments_raise_clear_errors(tmp_path, kwargs, word):
    with pytest.raises(ValueError, match=word):
        next(write_dataset(tmp_path, **{"n": 2, "size": 64, **kwargs}))
