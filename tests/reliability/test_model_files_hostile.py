"""Model folders from elsewhere: loading runs no code; wrong or odd files get a clear message.

Complements tests/core/test_model_files.py (pickle payload in a .safetensors
file, wrong architecture, newer format, unknown method).
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from napari_artseg.errors import ModelFileError
from napari_artseg.model_files import read_model_document
from napari_artseg.predictor import ArtSegModel

SRC = Path(__file__).resolve().parents[2] / "src" / "napari_artseg"


class Exploit:
    """Unpickling this creates a marker file (stands for arbitrary code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _edit_config(model, **changes):
    document = json.loads((model / "config.json").read_text())
    for key, value in changes.items():
        if key == "config":
            document["config"].update(value)
        else:
            document[key] = value
    (model / "config.json").write_text(json.dumps(document))


def test_no_unpickling_call_anywhere_in_the_package():
    pattern = re.compile(r"torch\.load\(|pickle\.loads?\(|allow_pickle\s*=\s*True|"
                         r"torch\.jit\.load\(|joblib\.load\(|dill\.load")
    offenders = [f"{p.relative_to(SRC)}:{n}" for p in SRC.rglob("*.py")
                 for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                 if pattern.search(line)]
    assert offenders == []


@pytest.mark.parametrize("name", ["classifier.pt", "unet.pth", "model.pkl", "classifier.ckpt"])
def test_pickle_files_beside_the_weights_are_never_opened(model_copy, tmp_path, name):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": Exploit(marker)}, model_copy / name)
    ArtSegModel.load(model_copy, device="cpu")
    assert not marker.exists()


def test_pickle_renamed_to_safetensors_is_refused(model_copy, tmp_path):
    marker = tmp_path / "pwned"
    (model_copy / "classifier.safetensors").write_bytes(pickle.dumps(Exploit(marker)))
    with pytest.raises(ModelFileError, match="not a valid safetensors"):
        ArtSegModel.load(model_copy, device="cpu")
    assert not marker.exists()


def test_wrong_channel_count_is_a_clear_error(model_copy):
    from napari_artseg.training.classifier import build_classifier

    config = read_model_document(model_copy)["config"]
    state = build_classifier(config).state_dict()
    first = next(k for k, v in state.items() if v.ndim == 4)
    out_ch, _, kh, kw = state[first].shape
    state[first] = torch.zeros(out_ch, 3, kh, kw)  # an RGB network's first convolution
    save_file({k: v.contiguous() for k, v in state.items()},
              str(model_copy / "classifier.safetensors"))
    with pytest.raises(ModelFileError, match="do not match the architecture") as info:
        ArtSegModel.load(model_copy, device="cpu")
    assert "classifier.safetensors" in str(info.value) and "\n" not in str(info.value)


def test_truncated_weights_file_is_refused(model_copy):
    path = model_copy / "unet.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match="not a valid safetensors"):
        ArtSegModel.load(model_copy, device="cpu")


@pytest.mark.parametrize(
    ("config", "message"),
    [({"scale": "0.5"}, "scale must be a number"),
     ({"input_size": "64"}, "input_size must be an integer"),
     ({"input_size": 64.0}, "input_size must be an integer"),
     ({"amp": "yes"}, "amp must be true or false"),
     ({"scale": float("nan")}, "scale must be in"),
     ({"tile_halo": 40}, "tile_halo"),
     ({"resnet_depth": 19}, "resnet_depth"),
     ({"unexpected_field": 1}, "unknown setting"),
     ({"mask_threshold": 3}, "mask_threshold must be between")],
)
def test_config_is_validated_before_use(model_copy, config, message):
    _edit_config(model_copy, config=config)
    with pytest.raises(ModelFileError, match=message) as info:
        ArtSegModel.load(model_copy, device="cpu")
    assert "config.json" in str(info.value) or "invalid setting" in str(info.value)


@pytest.mark.parametrize("text", ["[]", "null", '"a string"', "{nope", ""])
def test_config_json_that_is_not_an_object(model_copy, text):
    (model_copy / "config.json").write_text(text)
    with pytest.raises(ModelFileError, match=r"config\.json"):
        ArtSegModel.load(model_copy, device="cpu")


@pytest.mark.parametrize("thresholds", [{"mask": "high"}, "0.5", {"gate": None}])
def test_thresholds_are_validated_on_load(model_copy, thresholds):
    _edit_config(model_copy, thresholds=thresholds)
    with pytest.raises(ModelFileError, match="thresholds"):
        ArtSegModel.load(model_copy, device="cpu")


def test_bad_thresholds_still_never_crash_predict(model_copy, tmp_path, capsys):
    from napari_artseg.cli import main
    from napari_artseg.image_files import write_tiff

    _edit_config(model_copy, thresholds={"mask": "high", "gate": 0.5, "min_size_px": 0})
    import numpy as np

    write_tiff(tmp_path / "in" / "a.tif", np.ones((16, 16), np.uint8))
    status = main(["predict", "--model", str(model_copy), "--out", str(tmp_path / "o"),
                   "--quiet", str(tmp_path / "in")])
    _, err = capsys.readouterr()
    assert status in (2, 3) and "Traceback" not in err
