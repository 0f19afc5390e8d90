"""End to end on the digits betons (real JPEGs, real ffcv, real processes): training learns
(past a damaged JPEG in the train beton), outputs are complete, eval-only reproduces the logged
metrics, and an interrupted run resumed with ``--training.resume auto`` logs each epoch once with
the LRs of an uninterrupted run. The run is conftest.py's shared ``digits_run``."""
import json
import signal
import subprocess
import time

import pytest
import torch
import torchvision

from helpers import EPOCHS, ROOT, args_for, command, read_log, run, run_script

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
    best = torch.load(run_dir / "checkpoint_best.pt", weights_only=False)
    assert best["best_top1"] == max(r["top_1"] for r in log)
    last = torch.load(run_dir / "checkpoint_last.pt", weights_only=False)
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


@pytest.mark.slow
def test_sigterm_then_resume_matches_uninterrupted_run(digits_run):
    betons, folder, full_dir, _ = digits_run
    run_dir = folder / "interrupted"
    proc = subprocess.Popen(command(*args_for(betons, folder, "--logging.run_id",
                                              "interrupted")),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # epoch 0's checkpoint is written after its log line; once it is there, the run is in
    # epoch 1 (a signal between the two would stop at the epoch's end, not mid-epoch)
    saved = run_dir / "checkpoint_last.pt"
    deadline = time.time() + 300
    while not saved.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err and "stopped by SIGTERM" in err
    state = torch.load(run_dir / "checkpoint_last.pt", weights_only=False)
    # SIGTERM mid-epoch: a step checkpoint at the next optimizer step
    assert 1 <= state["epoch"] < EPOCHS and state["step"]["step"] > 0, err[-2000:]
    assert f"global step {state['step']['step']} of epoch {state['epoch']}" in err

    resumed = run(*args_for(betons, folder, "--logging.run_id", "interrupted",
                            "--training.resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"in epoch {state['epoch']} at global step {state['step']['step']}" in resumed.stderr
    got, want = read_log(run_dir), read_log(full_dir)
    assert [r["epoch"] for r in got] == list(range(EPOCHS))  # each epoch logged once
    for g, w in zip(got, want):
        assert (g["lr"], g["lr_end"], g["train_res"]) == (w["lr"], w["lr_end"], w["train_res"])
        # the same weights, optimizer state, samples and crops: the losses continue exactly
        assert g["train_loss"] == pytest.approx(w["train_loss"], rel=1e-9), (g, w)
    assert got[-1]["top_1"] == want[-1]["top_1"]
    assert torch.load(run_dir / "checkpoint_last.pt", weights_only=False)["epoch"] == EPOCHS


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
