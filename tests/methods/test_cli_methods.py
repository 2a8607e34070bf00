"""``artseg train --method M`` then ``artseg predict`` for every method; method listing; errors."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from method_helpers import anomaly_params

from napari_artseg.cli import main
from napari_artseg.config import METHODS
from napari_artseg.image_files import read_image


def run_cli(capsys, *args):
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def small_set(tiny_dataset, tmp_path_factory):
    """8 of the tiny images (4 clean, 4 artifact) with their labels and masks."""
    root = tmp_path_factory.mktemp("small")
    lines = (tiny_dataset / "labels.csv").read_text().splitlines()
    rows = [line.split(",") for line in lines[1:]]
    chosen = [r for r in rows if r[1] == "clean"][:4] + [r for r in rows if r[1] == "artifact"][:4]
    for folder in ("images", "masks"):
        (root / folder).mkdir()
        for name, _ in chosen:
            shutil.copy(tiny_dataset / folder / name, root / folder / name)
    (root / "labels.csv").write_text("\n".join([lines[0], *(",".join(r) for r in chosen)]) + "\n")
    return root


@pytest.mark.parametrize("method", METHODS)
def test_train_then_predict_from_the_command_line(method, small_set, detectors, tmp_path,
                                                  capsys):
    args = ["train", "--method", method, "--images", small_set / "images", "--out",
            tmp_path / "m", "--preset", "tiny", "--epochs", 1, "--device", "cpu", "--quiet",
            "--set", "self_training_rounds=0", "--set", "scorecam_max_channels=8",
            "--set", "anomaly_params=" + json.dumps(anomaly_params()),
            "--set", 'ensemble_members=["cdl", "ae_ssim"]']
    if method != "cdl":
        args += ["--labels", small_set / "labels.csv"]
    if method == "supervised_unet":
        args += ["--masks", small_set / "masks"]
    if method in ("ae_ssim", "padim", "patchsvdd", "ensemble"):
        args += ["--set", "scale=1.0"]  # the detectors' patches need images of 64 px or more
    status, out, err = run_cli(capsys, *args)
    assert status == 0, err
    assert f"{method} model" in out and "thresholds: " in out and "gate" in out
    document = json.loads((tmp_path / "m" / "config.json").read_text())
    assert document["method"] == document["config"]["method"] == method
    if method in ("ae_ssim", "padim", "patchsvdd"):  # --epochs reaches the detectors
        assert document["detector_params"]["epochs"] == 1
    images = sorted((small_set / "images").iterdir())[3:5]
    status, _, err = run_cli(capsys, "predict", "--model", tmp_path / "m", "--out",
                             tmp_path / "p", "--device", "cpu", "--quiet", *images)
    assert status == 0, err
    with open(tmp_path / "p" / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert {r["model_id"] for r in rows} == {document["model_id"]}
    for row in rows:
        prob = read_image(tmp_path / "p" / f"{row['image']}_prob.tif").data
        mask = read_image(tmp_path / "p" / f"{row['image']}_mask.tif").data
        assert prob.shape == mask.shape == (96, 96)
        assert 0 <= float(row["artifact_score"]) <= 1


def test_list_methods_names_each_with_its_supervision(capsys):
    status, out, _ = run_cli(capsys, "train", "--list-methods")
    assert status == 0
    for method in METHODS:
        assert f"\n{method} " in f"\n{out}"
    assert out.count("needs:") == len(METHODS) and "no human labels" in out


@pytest.mark.parametrize(
    ("method", "message"),
    [("supervised_unet", "needs pixel masks"), ("magic", "invalid choice")])
def test_method_errors_are_one_line(method, message, small_set, tmp_path, capsys):
    with pytest.raises(SystemExit) if method == "magic" else _no_raise():
        status, _, err = run_cli(capsys, "train", "--method", method, "--images",
                                 small_set / "images", "--labels", small_set / "labels.csv",
                                 "--out", tmp_path / "m", "--preset", "tiny", "--quiet")
        assert status == 2 and err.strip().count("\n") == 0 and message in err
    if method == "magic":
        assert message in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_cdl_trains_a_project_without_labels(tiny_dataset, tmp_path, capsys):
    from napari_artseg.project import Project

    images = tmp_path / "images"
    shutil.copytree(tiny_dataset / "images", images)
    project = Project.create(images)
    status, out, err = run_cli(capsys, "train", "--project", project.folder, "--method", "cdl",
                               "--preset", "tiny", "--epochs", 1, "--device", "cpu", "--quiet")
    assert status == 0, err
    reopened = Project.open(project.folder)
    assert reopened.current_model.endswith("-cdl") and "now the project's current model" in out
    rows = (reopened.models_dir / reopened.current_model / "manifest.csv").read_text()
    assert len(rows.splitlines()) == 1 + 16
