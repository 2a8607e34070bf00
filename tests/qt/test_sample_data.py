"""The sample-data contribution opens in a real viewer."""

import numpy as np


def test_sample_data_opens_image_and_mask(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-artseg", "brightfield")
    names = [layer.name for layer in viewer.layers]
    assert names == ["brightfield (synthetic)", "true artifact mask"]
    image, mask = viewer.layers
    assert image.data.shape == mask.data.shape == (512, 512)
    assert image.data.dtype == np.uint16 and mask.data.any()
