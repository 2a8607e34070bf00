"""The artseg command line: exit codes, one-line errors, the file contract."""

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from napari_artseg.cli import main
from napari_artseg.image_files import read_image, write_tiff


def run_cli(capsys, *args):
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def summary_rows(folder):
    with (folder / "summary.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_synth_writes_the_documented_layout(tmp_path, capsys):
    status, out, _ = run_cli(capsys, "synth", tmp_path / "d", "--n", 4, "--size", 64,
                             "--artifact-fraction", 0.5, "--seed", 3, "--quiet")
    assert status == 0 and "wrote 4 images" in out
    names = sorted(p.name for p in (tmp_path / "d" / "images").iterdir())
    assert names == [f"synth_000{i}.tif" for i in range(4)]
    assert sorted(p.name for p in (tmp_path / "d" / "masks").iterdir()) == names
    lines = (tmp_path / "d" / "labels.csv").read_text().splitlines()
    assert lines[0] == "image,label" and len(lines) == 5


def test_synth_bad_arguments_exit_2(tmp_path, capsys):
    status, _, err = run_cli(capsys, "synth", tmp_path / "d", "--n", 0, "--quiet")
    assert status == 2 and err.count("\n") == 1 and "error" in err


def test_predict_writes_maps_masks_and_summary(tiny_model, tiny_dataset, tmp_path, capsys):
    inputs = tmp_path / "in"
    shutil.copytree(tiny_dataset / "images", inputs / "plate1")
    status, out, _ = run_cli(capsys, "predict", "--model", tiny_model, "--out", tmp_path / "out",
                             "--quiet", inputs)
    assert status == 0, out
    rows = summary_rows(tmp_path / "out")
    assert len(rows) == 16 and {r["status"] for r in rows} == {"ok"}
    required = {"image", "status", "artifact_score", "predicted_label", "artifact_fraction",
                "n_objects", "model_id", "error"}
    assert required <= set(rows[0])
    key = rows[0]["image"]
    assert key.startswith("plate1/")
    prob = read_image(tmp_path / "out" / f"{key}_prob.tif")
    mask = read_image(tmp_path / "out" / f"{key}_mask.tif")
    assert prob.dtype == "float32" and mask.dtype == "uint8" and prob.data.shape == (96, 96)
    assert float(rows[0]["artifact_fraction"]) == pytest.approx(mask.data.mean(), abs=1e-6)
    assert (rows[0]["predicted_label"] == "artifact") == bool(mask.data.any())


def test_one_bad_image_is_reported_and_the_rest_run(tiny_model, tmp_path, capsys):
    inputs = tmp_path / "in"
    write_tiff(inputs / "good.tif", np.random.default_rng(0).normal(900, 30, (80, 70)))
    (inputs / "broken.tif").write_bytes(b"II*\x00garbage")
    status, _, err = run_cli(capsys, "predict", "--model", tiny_model, "--out", tmp_path / "out",
                             "--quiet", inputs)
    assert status == 3
    rows = {r["image"]: r for r in summary_rows(tmp_path / "out")}
    assert rows["good"]["status"] == "ok" and rows["broken"]["status"] == "failed"
    assert "broken.tif" in rows["broken"]["error"]
    assert "Traceback" not in err


def test_nothing_processable_exits_2(tiny_model, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.tif").write_bytes(b"")
    status, _, _ = run_cli(capsys, "predict", "--model", tiny_model, "--out", tmp_path / "o",
                           "--quiet", tmp_path / "in" / "a.tif")
    assert status == 2


@pytest.mark.parametrize("problem", ["missing_model", "missing_input", "duplicate_keys",
                                     "bad_threshold", "not_a_model"])
def test_predict_usage_errors_exit_2_with_one_line(problem, tiny_model, tmp_path, capsys):
    write_tiff(tmp_path / "a" / "x.tif", np.zeros((8, 8), np.uint16))
    write_tiff(tmp_path / "b" / "x.tif", np.zeros((8, 8), np.uint16))
    model, inputs, extra = tiny_model, [tmp_path / "a"], []
    if problem == "missing_model":
        model = tmp_path / "nomodel"
    elif problem == "missing_input":
        inputs = [tmp_path / "nothing-here"]
    elif problem == "duplicate_keys":
        inputs = [tmp_path / "a" / "x.tif", tmp_path / "b" / "x.tif"]
    elif problem == "bad_threshold":
        extra = ["--threshold", "7"]
    elif problem == "not_a_model":
        model = tmp_path / "a"
    status, _, err = run_cli(capsys, "predict", "--model", model, "--out", tmp_path / "o",
                             *extra, *inputs)
    assert status == 2
    assert err.strip().count("\n") == 0 and err.startswith("artseg predict: error:")


@pytest.mark.parametrize("problem", ["no_images", "clean_with_mask", "out_exists",
                                     "one_class", "bad_set"])
def test_train_usage_errors_exit_2(problem, tiny_dataset, tmp_path, capsys):
    args = ["train", "--images", tiny_dataset / "images", "--labels",
            tiny_dataset / "labels.csv", "--out", tmp_path / "m", "--preset", "tiny", "--quiet"]
    if problem == "no_images":
        args[2] = tmp_path / "none"
    elif problem == "clean_with_mask":
        lines = (tiny_dataset / "labels.csv").read_text().splitlines()
        clean = next(line.split(",")[0] for line in lines[1:] if line.endswith("clean"))
        write_tiff(tmp_path / "masks" / clean, np.ones((96, 96), np.uint8))
        args += ["--masks", tmp_path / "masks"]
    elif problem == "out_exists":
        (tmp_path / "m").mkdir()
    elif problem == "one_class":
        lines = (tiny_dataset / "labels.csv").read_text().splitlines()
        (tmp_path / "l.csv").write_text("\n".join(lines[:1] + [x for x in lines if "clean" in x]))
        args[4] = tmp_path / "l.csv"
    elif problem == "bad_set":
        args += ["--set", "input_size=33"]
    status, _, err = run_cli(capsys, *args)
    assert status == 2 and err.strip().count("\n") == 0, err


def test_train_predict_evaluate_end_to_end(tiny_dataset, tmp_path, capsys):
    status, out, _ = run_cli(capsys, "train", "--images", tiny_dataset / "images", "--labels",
                             tiny_dataset / "labels.csv", "--out", tmp_path / "m", "--preset",
                             "tiny", "--epochs", 1, "--seed", 2, "--quiet")
    assert status == 0 and "model" in out
    status, _, _ = run_cli(capsys, "predict", "--model", tmp_path / "m", "--out", tmp_path / "p",
                           "--quiet", tiny_dataset / "images")
    assert status == 0
    status, out, _ = run_cli(capsys, "evaluate", "--pred", tmp_path / "p", "--truth",
                             tiny_dataset / "masks", "--labels", tiny_dataset / "labels.csv")
    assert status == 0 and "pixel_iou" in out
    metrics = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert metrics["summary"]["n_images"] == 16


def test_console_script_runs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "napari_artseg", "predict", "--model",
                             str(tmp_path / "none"), "--out", str(tmp_path), str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_sigterm_during_training_leaves_a_partial_model_and_exit_130(tiny_dataset, tmp_path):
    import os
    import signal
    import time

    out = tmp_path / "m"
    process = subprocess.Popen(
        [sys.executable, "-m", "napari_artseg", "train", "--images", str(tiny_dataset / "images"),
         "--labels", str(tiny_dataset / "labels.csv"), "--out", str(out), "--preset", "tiny",
         "--set", "unet_epochs=400"],
        stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    seen = ""
    while "training the U-Net" not in seen and time.monotonic() < deadline:
        seen += process.stderr.readline()
    os.kill(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    document = json.loads((out / "config.json").read_text())
    assert document["status"] == "partial" and "Traceback" not in err


def test_train_from_a_project_makes_the_model_current(tiny_dataset, tmp_path, capsys):
    from napari_artseg.project import Project

    images = tmp_path / "images"
    shutil.copytree(tiny_dataset / "images", images)
    project = Project.create(images)
    shutil.copy(tiny_dataset / "labels.csv", project.labels_path)
    status, _, err = run_cli(capsys, "train", "--project", project.folder, "--preset", "tiny",
                               "--epochs", 1, "--quiet")
    assert status == 0, err
    models = [p for p in project.models_dir.iterdir() if p.is_dir()]
    assert len(models) == 1 and models[0].name.endswith("-scorecam_unet")
    assert Project.open(project.folder).current_model == models[0].name


def test_demo_runs_the_whole_pipeline_with_its_settings(tmp_path, capsys):
    from napari_artseg.cli.demo_cmd import DEMO_SETTINGS

    status, out, _ = run_cli(capsys, "demo", "--out", tmp_path / "demo", "--n", 12, "--n-test",
                             4, "--size", 64, "--epochs", 1, "--no-viewer", "--quiet")
    assert status == 0, out
    assert "4/4 evaluating" in out and "pixel_iou" in out and "cls_f1" in out
    config = json.loads((tmp_path / "demo" / "model" / "config.json").read_text())["config"]
    expected = {**DEMO_SETTINGS, "classifier_epochs": 1, "unet_epochs": 1}
    assert {key: config[key] for key in expected} == expected
    assert len(list((tmp_path / "demo" / "predictions").glob("*_mask.tif"))) == 4
    # a second demo into the same folder refuses instead of overwriting the model
    status, _, err = run_cli(capsys, "demo", "--out", tmp_path / "demo", "--no-viewer")
    assert status == 2 and "exists" in err
