"""Watching a run and using its model, on the shared trainer run (conftest.py's ``digits_run``):
TensorBoard event files, W&B offline run folder, telemetry in log.jsonl, the metrics plot,
prediction on image files and ONNX/TorchScript export checked against PyTorch (an export that
disagrees is refused). The command-line tools run in process (conftest.py's ``tool``)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from helpers import EPOCHS, read_log, run_script

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def watched_run(digits_run):
    """conftest.py's shared run (TensorBoard and offline W&B on): ``(run_dir, result)``."""
    _, _, run_dir, result = digits_run
    return run_dir, result


def test_tensorboard_event_files_hold_step_and_epoch_scalars(watched_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run_dir, _ = watched_run
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"step/loss", "step/lr", "epoch/train_loss", "epoch/top_1", "epoch/val_loss",
            "epoch/train_images_per_s", "epoch/train_res", "epoch/data_wait_s"} <= tags
    assert len(acc.Scalars("epoch/top_1")) == EPOCHS
    steps = [e.step for e in acc.Scalars("step/loss")]
    assert steps and all(s % 5 == 0 for s in steps) and len(steps) > 2


def test_wandb_offline_run_folder_and_id_kept_for_resume(watched_run):
    run_dir, _ = watched_run
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    runs = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert runs, list((run_dir / "wandb").iterdir())
    assert list(runs[0].glob("*.wandb"))


def test_log_has_telemetry_and_classes_are_recorded(watched_run, digits_dir):
    run_dir, _ = watched_run
    rows = read_log(run_dir)
    for r in rows:
        assert r["peak_gpu_mem_gb"] is None  # CPU: no allocator statistics
        assert 0 <= r["data_wait_s"] <= r["train_seconds"]
        assert r["loader_bound"] == (r["data_wait_fraction"] > 0.10)
    assert json.loads((run_dir / "classes.json").read_text()) == sorted(
        d.name for d in (Path(digits_dir) / "train").iterdir())


def test_trainer_writes_plot_and_plot_cli_overlays_runs(watched_run, tmp_path, capsys,
                                                        monkeypatch):
    from PIL import Image
    run_dir, result = watched_run
    png = run_dir / "metrics.png"
    assert f"plot: {png}" in result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(png).size[0] > 1000
    out = tmp_path / "both.png"
    code, _, err = run_script("-m ffcv_utils.tools.plot", [run_dir, run_dir, "--out", out], capsys,
                              monkeypatch)
    assert code == 0 and out.is_file(), err
    from ffcv_utils.train.metrics_plot import PANELS, load_runs, make_figure
    fig = make_figure(load_runs([run_dir, run_dir]))
    assert [ax.get_title() for ax in fig.axes] == [title for title, _ in PANELS]
    accuracy = fig.axes[1]
    assert len(accuracy.get_lines()) == 4  # top-1 and top-5 for each of the two runs (no EMA)
    code, _, err = run_script("-m ffcv_utils.tools.plot", [tmp_path], capsys, monkeypatch)
    assert code == 2 and "no log.jsonl" in err
    assert len(err.strip().splitlines()) == 1


def test_predict_on_image_folder_matches_the_trainers_validation(watched_run, digits_dir, tool):
    run_dir, _ = watched_run
    logged = read_log(run_dir)[-1]["top_1"]
    result = tool("predict.py", "--weights", run_dir / "final_weights.pt",
                  Path(digits_dir) / "val")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("accuracy on ")
    top1 = float(line.split("top-1 ")[1].split()[0])
    # same preprocessing as the val loader: only the beton's JPEG re-encoding differs
    assert abs(top1 - logged) < 0.03, (top1, logged)
    assert top1 > 0.2  # well above chance (0.1) on 10 classes
    first = result.stdout.splitlines()[0]
    assert first.count(", ") == 4  # top-5 names with probabilities


def test_predict_lists_unreadable_images_and_refuses_bad_input(watched_run, digits_dir, tmp_path,
                                                               tool):
    run_dir, _ = watched_run
    good = next((Path(digits_dir) / "val").rglob("*.jpg"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    result = tool("predict.py", "--weights", run_dir / "final_weights.pt", good, broken)
    assert result.returncode == 0 and str(good) in result.stdout
    assert f"skipped unreadable {broken}" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(b"garbage")
    for args, why in [((run_dir / "final_weights.pt", empty), "no images"),
                      ((foreign, good), "no params.json"),
                      ((tmp_path / "missing.pt", good), "no such file")]:
        bad = tool("predict.py", "--weights", *args)
        assert bad.returncode == 2 and why in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("fmt,images", [("onnx", "folder"), ("torchscript", "val beton")])
def test_export_agrees_with_pytorch_on_real_images(watched_run, digits_dir, tmp_path, fmt, images,
                                                  tool):
    run_dir, _ = watched_run  # the run's model uses BlurPool (args_for)
    out = tmp_path / f"model.{fmt}"
    check = ("--check-images", Path(digits_dir) / "val") if images == "folder" else ()
    result = tool("export.py", "--weights", run_dir / "final_weights.pt", "--format", fmt,
                  *check, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "matches PyTorch on 32 images" in result.stdout
    side = json.loads(Path(str(out) + ".json").read_text())
    assert side["classes"] == json.loads((run_dir / "classes.json").read_text())
    assert side["preprocessing"]["resolution"] == 32
    # independent check: run the exported file ourselves on one real image
    import numpy as np
    import torch
    from ffcv_utils.tools.export import run_exported
    from ffcv_utils.tools.predict import load_run_model, preprocess, to_input
    rm = load_run_model(run_dir / "final_weights.pt")
    x = to_input(np.stack([preprocess(f, 32) for f in
                           sorted((Path(digits_dir) / "val").rglob("*.jpg"))[:3]]))
    with torch.no_grad():
        ref = rm.model(x).numpy()
    assert np.allclose(run_exported(fmt, out, x), ref, atol=1e-3)


def test_export_that_disagrees_with_pytorch_is_refused_and_leaves_nothing(
        watched_run, digits_dir, tmp_path, tool, monkeypatch):
    """The ONNX exporter is made to export a slightly different model (one logit's bias moved),
    as a faulty exporter or an op ONNX computes differently would: the check on real images
    refuses it in one line and no model file or sidecar is left behind."""
    import copy

    import torch

    real_export = torch.onnx.export

    def faulty_export(model, *args, **kwargs):
        wrong = copy.deepcopy(model)
        with torch.no_grad():
            wrong.fc.bias[0] += 0.5
        return real_export(wrong, *args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", faulty_export)
    run_dir, _ = watched_run
    out = tmp_path / "model.onnx"
    result = tool("export.py", "--weights", run_dir / "final_weights.pt", "--format", "onnx",
                  "--check-images", Path(digits_dir) / "val", "--out", out)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"export.py: error: {out}: exported model disagrees with PyTorch "
                           "(max |logit diff| 5.00e-01"), line
    assert list(tmp_path.iterdir()) == []  # no model.onnx, no sidecar, no temporary file


def test_tracking_is_one_line_when_missing_and_wandb_id_survives_resume(tmp_path, monkeypatch,
                                                                         capsys):
    from types import SimpleNamespace

    from ffcv_utils.train import tracking
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    log = SimpleNamespace(step_interval=1, tensorboard=1, wandb_project="p", wandb_name="",
                          wandb_mode="offline")
    p = SimpleNamespace(logging=log)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    first = tracking.Trackers(p, tmp_path, {"a": 1})
    assert "logging.tensorboard: cannot start TensorBoard" in capsys.readouterr().err
    first.epoch({"epoch": 0, "train_loss": 1.0}, 10)
    first.close()
    run_id = (tmp_path / tracking.WANDB_ID_FILE).read_text().strip()
    again = tracking.Trackers(p, tmp_path, {"a": 1})  # the resumed run
    assert again.sinks[-1].run.id == run_id
    again.close()
    assert len(list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))) >= 1
    off = tracking.Trackers(SimpleNamespace(logging=SimpleNamespace(
        step_interval=1, tensorboard=0, wandb_project="", wandb_name="", wandb_mode="online")),
        tmp_path, {})
    assert off.sinks == []  # off by default: nothing started


def test_wandb_online_without_login_is_one_line_not_a_prompt(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from ffcv_utils.train import tracking
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr("sys.stdin", open(os.devnull))
    log = SimpleNamespace(step_interval=1, tensorboard=0, wandb_project="p", wandb_name="",
                          wandb_mode="online")
    t = tracking.Trackers(SimpleNamespace(logging=log), tmp_path, {})
    assert t.sinks == []
    err = capsys.readouterr().err
    assert "no W&B login" in err and "training goes on without it" in err
