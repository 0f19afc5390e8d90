"""A rank killed with SIGKILL under torchrun (2 CPU processes, gloo) ends the run within bounded
time: the surviving rank says so in one line (no traceback of ours), torchrun exits non-zero,
the last completed epoch's checkpoint is intact and ``--training.resume auto`` finishes the run.
The validation batch size leaves rank 0 (182 of the 363 images) a last batch of one image."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from helpers import ROOT, free_port, read_log

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]


def torchrun(betons, folder, *extra):
    train, val = betons
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
            f"--master_port={free_port()}", str(ROOT / "train_imagenet.py"),
            "-C", str(ROOT / "rn18_configs/rn18_16_epochs.yaml"),  # shrunk to 2 epochs
            "--data.train_dataset", str(train), "--data.val_dataset", str(val),
            "--resolution.min_res", "32", "--resolution.max_res", "32",
            "--validation.resolution", "32", "--validation.batch_size", "181",
            "--training.batch_size", "32", "--data.num_workers", "1",
            "--training.epochs", "2", "--logging.plot", "0", "--logging.log_level", "1",
            "--training.use_blurpool", "0", "--validation.lr_tta", "0",  # faster on CPU
            "--logging.folder", str(folder), "--logging.run_id", "k", *extra]


def test_sigkill_of_one_rank_ends_the_run_and_resume_continues(digits_betons, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run_dir = tmp_path / "k"
    proc = subprocess.Popen(torchrun(digits_betons, tmp_path), cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while not (run_dir / "checkpoint_last.pt").exists():  # epoch 0 done and saved
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.1)
        time.sleep(1.0)  # into epoch 1
        ranks = psutil.Process(proc.pid).children()
        assert len(ranks) == 2
        ranks[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, err[-3000:]
    assert took < 60, took  # the survivor did not wait for a collective forever
    assert "[rank0]: Traceback" not in err and "[rank0]:" not in err, err[-3000:]
    # the survivor's one line: torchrun's SIGTERM only sets its stop flag, and its next
    # collective fails at once on the dead peer's closed connection
    [line] = [l for l in err.splitlines() if "train_imagenet.py: error: rank 0" in l]
    assert "lost contact with another process" in line, line
    assert "--training.resume auto --logging.run_id k" in line, line
    state = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
    assert state["epoch"] == 1
    [record] = read_log(run_dir)
    assert record["val_images"] == 363  # both shards, rank 0's last batch a single image

    resumed = subprocess.run(torchrun(digits_betons, tmp_path, "--training.resume", "auto"),
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "after epoch 1" in resumed.stderr and "Traceback" not in resumed.stderr
    assert "warning: training.epochs 2 is shorter than the config's 16" in resumed.stderr
    assert [r["epoch"] for r in read_log(run_dir)] == [0, 1]
    assert torch.load(run_dir / "checkpoint_last.pt", weights_only=True)["epoch"] == 2
