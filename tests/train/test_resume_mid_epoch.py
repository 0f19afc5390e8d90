"""Mid-epoch resume and the page-aware order through the real trainer: a run killed (SIGKILL)
after a step checkpoint, resumed, stopped by SIGTERM in a later epoch and resumed again logs the
uninterrupted run's per-epoch train_loss and top-1 exactly; a 2-process torchrun stopped
mid-epoch continues on 1 process. Whether the page-aware order learns as well as the random
order is measured, not tested: benchmarks/order_accuracy.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import EPOCHS, ROOT, args_for, command, free_port, read_log, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def wait_for_checkpoint(proc, path, done, deadline_s=300):
    """Poll ``path`` (written atomically) until ``done(state)``, then return the state."""
    deadline = time.time() + deadline_s
    while True:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        try:
            state = torch.load(path, weights_only=True)
            if done(state):
                return state
        except (OSError, EOFError, RuntimeError):
            pass
        time.sleep(0.2)


def test_preempted_twice_then_resumed_equals_the_uninterrupted_run(digits_run):
    """The shared run again, preempted as a spot machine is: killed (SIGKILL) after a periodic
    step checkpoint, resumed, then stopped by SIGTERM in a later epoch (a step checkpoint at the
    next optimizer step, exit 143), resumed again. Same samples, crops, weights and optimizer
    state: the log matches the uninterrupted run's to the last digit."""
    betons, folder, full_dir, _ = digits_run
    run_dir = folder / "preempted"
    saved = run_dir / "checkpoint_last.pt"
    args = args_for(betons, folder, "--logging.run_id", "preempted",
                    "--training.checkpoint_minutes", "0.05")
    resume = ("--training.resume", "auto")

    proc = subprocess.Popen(command(*args), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    killed = wait_for_checkpoint(proc, saved, lambda state: state.get("step"))
    proc.kill()
    proc.communicate(timeout=60)
    assert killed["step"]["step"] > 0 and killed["step"]["images"] > 0
    assert killed["epoch"] < EPOCHS - 1, "the first step checkpoint came in the last epoch"

    proc = subprocess.Popen(command(*args, *resume), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    # an epoch-end checkpoint past the killed epoch: the run is in a later epoch (a signal
    # between an epoch's log line and its checkpoint would stop at the epoch's end instead)
    wait_for_checkpoint(proc, saved, lambda state: state["epoch"] > killed["epoch"])
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert f"in epoch {killed['epoch']} at global step {killed['step']['step']}" in err
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err and "stopped by SIGTERM" in err
    stopped = torch.load(saved, weights_only=True)
    assert killed["epoch"] < stopped["epoch"] < EPOCHS and stopped["step"]["step"] > 0, err[-2000:]
    assert f"global step {stopped['step']['step']} of epoch {stopped['epoch']}" in err

    resumed = run(*args, *resume)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (f"in epoch {stopped['epoch']} at global step {stopped['step']['step']}"
            in resumed.stderr)
    got, want = read_log(run_dir), read_log(full_dir)
    assert [r["epoch"] for r in got] == list(range(EPOCHS))  # each epoch logged once
    assert [r["epoch"] for r in got if "resumed_from_step" in r] == [killed["epoch"],
                                                                      stopped["epoch"]]
    for g, w in zip(got, want):
        assert (g["lr"], g["lr_end"], g["train_res"]) == (w["lr"], w["lr_end"], w["train_res"])
        assert g["train_loss"] == pytest.approx(w["train_loss"], rel=1e-9, abs=1e-12), (g, w)
        assert g["train_images"] == w["train_images"] and g["top_1"] == w["top_1"]
    assert torch.load(saved, weights_only=True)["epoch"] == EPOCHS


def test_two_processes_stopped_mid_epoch_continue_on_one(digits_betons, tmp_path):
    args = args_for(digits_betons, tmp_path, "--logging.run_id", "w2", "--training.epochs", "2",
                    "--training.batch_size", "32", "--lr.batch_size_for_lr", "64")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", str(free_port()), str(ROOT / "train_imagenet.py"), *args]
    proc = subprocess.Popen(torchrun, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    log = tmp_path / "w2" / "log.jsonl"
    deadline = time.time() + 300
    while not (log.exists() and log.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    time.sleep(3)  # into epoch 1
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    state = torch.load(tmp_path / "w2" / "checkpoint_last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step"], err[-3000:]
    one = run(*args, "--training.resume", "auto")  # one process takes the rest of the epoch
    assert one.returncode == 0, one.stderr[-3000:]
    [first, second] = read_log(tmp_path / "w2")
    n_train = json.loads((digits_betons[0].parent / "train.beton.json").read_text())
    total = n_train["num_samples"]
    # epoch 1's images: the two processes' part (carried in the checkpoint) and the rest on one
    # process, each sample at most once (tests/test_order.py checks which), all but the drops
    # of the two deals (under 2 x 32, then under 32)
    assert state["step"]["images"] < second["train_images"] <= total
    assert second["train_images"] > total - 64 - 32
    assert first["train_images"] > total - 64
    assert second["resumed_from_step"] == state["step"]["position"][0][1] // 32
