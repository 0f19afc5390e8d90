"""End to end on the digits betons (real JPEGs, real ffcv, real processes): training learns
(past a damaged JPEG in the train beton), outputs are complete, eval-only reproduces the logged
metrics, and a finished run is never overwritten. The run is conftest.py's shared
``digits_run``; tests/test_resume_mid_epoch.py stops and resumes a copy of it."""
import json

import pytest
import torch
import torchvision

from helpers import EPOCHS, args_for, read_log, run, run_script

LOG_KEYS = {"epoch", "lr", "train_loss", "top_1", "top_5", "val_loss", "val_images", "train_res",
            "epoch_seconds", "train_images_per_s"}


def test_training_learns_and_writes_every_output(digits_run):
    _, _, run_dir, result = digits_run
    log = read_log(run_dir)
    assert [r["epoch"] for r in log] == list(range(EPOCHS))
    for record in log:
        assert LOG_KEYS <= set(record), LOG_KEYS - set(record)
        assert record["val_images"] == 363  # the whole val split, each image once
        assert record["train_res"] == 32
    # chance is 0.1 (+-0.016 on 363 images); three CPU epochs at 32 px get well past 0.3
    assert log[-1]["top_1"] > 0.3, log
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert "final top-1:" in result.stdout
    # one damaged JPEG in the train beton: grey, counted, the run goes on (it may fall among
    # the 26 images drop_last leaves out of an epoch)
    counts = [r["decode_failures"] for r in log]
    assert set(counts) <= {0, 1} and sum(counts) >= EPOCHS - 1, counts
    assert "image(s) failed to decode" in result.stderr
    params = json.loads((run_dir / "params.json").read_text())
    assert params["training.batch_size"] == 64 and params["logging.run_id"] == "full"
    assert params["derived.num_classes"] == 10 and params["lr.lr_schedule_type"] == "cyclic"
    for name in ("checkpoint_last.pt", "checkpoint_best.pt", "final_weights.pt"):
        assert (run_dir / name).is_file()
    assert not list(run_dir.glob("*.tmp"))
    # final weights: a plain state_dict for the stock torchvision model
    plain = torchvision.models.resnet18(num_classes=10)
    plain.load_state_dict(torch.load(run_dir / "final_weights.pt", weights_only=True))
    best = torch.load(run_dir / "checkpoint_best.pt", weights_only=True)
    assert best["best_top1"] == max(r["top_1"] for r in log)
    last = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
    assert last["epoch"] == EPOCHS and {"model", "optimizer", "scaler"} <= set(last)


def test_eval_only_reproduces_logged_metrics(digits_run):
    betons, folder, run_dir, _ = digits_run
    result = run(*args_for(betons, folder, "--training.eval_only", "1",
                           "--model.weights", str(run_dir / "final_weights.pt"),
                           "--logging.run_id", "eval"))
    assert result.returncode == 0, result.stderr[-3000:]
    [record] = read_log(folder / "eval")
    last = read_log(run_dir)[-1]
    assert record["eval_only"] is True and record["val_images"] == 363
    assert record["top_1"] == pytest.approx(last["top_1"], abs=1.5 / 363)
    assert record["val_loss"] == pytest.approx(last["val_loss"], rel=1e-3)


def test_existing_run_is_not_overwritten(digits_run, capsys, monkeypatch):
    betons, folder, run_dir, _ = digits_run
    before = (run_dir / "log.jsonl").read_bytes()
    code, _, err = run_script("train_imagenet.py",
                              args_for(betons, folder, "--logging.run_id", "full"),
                              capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err
    [line] = err.strip().splitlines()
    assert line.startswith("train_imagenet.py: error: ") and "already holds a run" in line
    assert (run_dir / "log.jsonl").read_bytes() == before
