"""ScoreCAM-U-Net through the method interface and the scripting function ``train_method``."""

from __future__ import annotations

import json

from method_helpers import map_auroc

from napari_artseg.config import preset
from napari_artseg.methods import train_method
from napari_artseg.predictor import ArtSegModel


def test_train_method_trains_scorecam_unet_from_a_labels_file(tiny_dataset, eval_set, tmp_path):
    events = []
    # the pseudo-label threshold is pinned: on 16 images of 96 px the tiny classifier's maps are
    # too weak for any rule to choose one well (pooled Otsu picked 0.40 here: map AUROC 0.51)
    config = preset("tiny", classifier_epochs=10, unet_epochs=6, self_training_rounds=0,
                    pseudo_label_threshold=0.5, device="cpu")
    folder = train_method("scorecam_unet", tiny_dataset / "images", tiny_dataset / "labels.csv",
                          tmp_path / "m", config, progress=events.append)
    assert folder == tmp_path / "m"
    assert [e.stage for e in events if e.kind == "stage"][:3] == ["data", "classifier",
                                                                  "pseudo_labels"]
    document = json.loads((folder / "config.json").read_text())
    assert document["method"] == "scorecam_unet" and document["components"] == ["classifier",
                                                                                 "unet"]
    model = ArtSegModel.load(folder, device="cpu")
    assert type(model) is ArtSegModel and model.method == "scorecam_unet"
    assert map_auroc(model, eval_set) > 0.6


def test_train_method_sets_the_method_and_settings(tiny_dataset, tmp_path):
    folder = train_method("cdl", tiny_dataset / "images", None, tmp_path / "c",
                          preset("tiny", device="cpu"), unet_epochs=1, seed=3)
    config = json.loads((folder / "config.json").read_text())["config"]
    assert (config["method"], config["unet_epochs"], config["seed"]) == ("cdl", 1, 3)
